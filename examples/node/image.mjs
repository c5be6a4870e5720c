// Decoding PNG/JPEG files, the model's view of them (gradcam_fast.io.images.model_view), overlays.
//
// The resize is PIL's bilinear or bicubic resampling with antialiasing (what torchvision's Resize
// does on PIL images, and what gradcam_fast uses, as the model's metadata says), re-implemented
// with PIL's own 8-bit fixed-point arithmetic: one pass along each axis, each rounded to 8 bits,
// in Pillow 13's order (see `resize`); a dimension whose size does not change is not resampled.
// PNG pixels therefore match Python's exactly; JPEG decoders differ (jpeg-js versus libjpeg in
// Pillow) by a few levels at some pixels.

import { readFileSync } from "node:fs";
import jpeg from "jpeg-js";
import pngjs from "pngjs";

const { PNG } = pngjs;
const PRECISION_BITS = 32 - 8 - 2; // PIL's ImagingResample for 8-bit images
const WHITE = 255; // transparent pixels are composited on white, as gradcam_fast does

/** A problem with one image: reported on one line, the other images are still processed. */
export class ImageError extends Error {}

/** An RGB image: width, height, data (Uint8Array, 3 bytes a pixel, row-major). */
function rgbFromRgba(width, height, rgba) {
  const data = new Uint8Array(width * height * 3);
  for (let i = 0, j = 0; i < rgba.length; i += 4, j += 3) {
    const a = rgba[i + 3];
    for (let c = 0; c < 3; c++) {
      // PIL's alpha_composite over opaque white: (src * a + white * (255 - a)) / 255, rounded
      data[j + c] = a === 255 ? rgba[i + c] : Math.round((rgba[i + c] * a + WHITE * (255 - a)) / 255);
    }
  }
  return { width, height, data };
}

/** Decode a PNG or JPEG file into RGB, or throw an ImageError naming the problem. */
export function loadImage(path) {
  let bytes;
  try {
    bytes = readFileSync(path);
  } catch (err) {
    const reason = err.code === "ENOENT" ? "no such file" : (err.code ?? err.message);
    throw new ImageError(`${path}: ${reason}`);
  }
  const isPng = bytes.length >= 8 && bytes.subarray(0, 8).equals(Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]));
  const isJpeg = bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff;
  if (!isPng && !isJpeg) {
    throw new ImageError(`${path}: not a PNG or JPEG file (this example reads those two formats)`);
  }
  try {
    if (isPng) {
      const png = PNG.sync.read(bytes);
      return rgbFromRgba(png.width, png.height, png.data);
    }
    const img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true, maxMemoryUsageInMB: 1024 });
    return rgbFromRgba(img.width, img.height, img.data);
  } catch (err) {
    throw new ImageError(`${path}: cannot decode the ${isPng ? "PNG" : "JPEG"} (${err.message})`);
  }
}

/** PIL's resampling filters (Resample.c): the kernel and its support. */
const FILTERS = {
  bilinear: {
    support: 1,
    kernel: (t) => (t < 1 ? 1 - t : 0),
  },
  bicubic: {
    support: 2,
    kernel: (t) => {
      const a = -0.5; // PIL's bicubic_filter
      if (t < 1) return ((a + 2) * t - (a + 3)) * t * t + 1;
      if (t < 2) return (((t - 5) * t + 8) * t - 4) * a;
      return 0;
    },
  },
};

/** The interpolations this example resamples with (gradcam_fast.io.images.INTERPOLATIONS). */
export const INTERPOLATIONS = Object.keys(FILTERS);

/** PIL's coefficients for resampling `inSize` samples to `outSize` with `filter`, antialiased. */
function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filter.support * filterscale;
  const bounds = [];
  const weights = [];
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const k = [];
    let sum = 0;
    for (let x = 0; x < xmax; x++) {
      const w = filter.kernel(Math.abs((x + xmin - center + 0.5) * ss));
      k.push(w);
      sum += w;
    }
    // normalized, then to fixed point as PIL's normalize_coeffs_8bpc does: halves away from 0
    // (bicubic weights can be negative)
    const fixed = (w) => {
      const v = (sum ? w / sum : 0) * 2 ** PRECISION_BITS;
      return Math.trunc(v < 0 ? v - 0.5 : v + 0.5);
    };
    weights.push(k.map(fixed));
    bounds.push(xmin);
  }
  return { bounds, weights };
}

function clip8(acc) {
  const v = Math.floor(acc / 2 ** PRECISION_BITS);
  return v < 0 ? 0 : v > 255 ? 255 : v;
}

/** One resampling pass along x (`horizontal`) or y, PIL's ImagingResampleHorizontal/Vertical. */
function resamplePass(img, outSize, horizontal, filter) {
  const { width, height, data } = img;
  const inSize = horizontal ? width : height;
  const { bounds, weights } = coefficients(inSize, outSize, filter);
  const w = horizontal ? outSize : width;
  const h = horizontal ? height : outSize;
  const out = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const o = horizontal ? x : y;
      const k = weights[o];
      for (let c = 0; c < 3; c++) {
        let acc = 2 ** (PRECISION_BITS - 1);
        for (let i = 0; i < k.length; i++) {
          const src = horizontal ? (y * width + bounds[o] + i) * 3 : ((bounds[o] + i) * width + x) * 3;
          acc += data[src + c] * k[i];
        }
        out[(y * w + x) * 3 + c] = clip8(acc);
      }
    }
  }
  return { width: w, height: h, data: out };
}

/** PIL's Image.resize((width, height), BILINEAR or BICUBIC). */
export function resize(img, width, height, interpolation = "bilinear") {
  const filter = FILTERS[interpolation];
  if (filter === undefined) {
    throw new Error(`interpolation must be one of ${INTERPOLATIONS.join(", ")}, got ${interpolation}`);
  }
  // Pillow 13 resamples vertically first when the height loses more than twice as many pixels as
  // the width (python-pillow/Pillow#9549); Pillow 12 and earlier always went horizontally first,
  // which differs by a level at some pixels of tall images.
  const verticalFirst = height < img.height && img.height - height > 2 * (img.width - width);
  let out = img;
  if (verticalFirst && height !== out.height) out = resamplePass(out, height, false, filter);
  if (width !== out.width) out = resamplePass(out, width, true, filter);
  if (height !== out.height) out = resamplePass(out, height, false, filter);
  return out;
}

function crop(img, left, top, width, height) {
  const data = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    const src = ((top + y) * img.width + left) * 3;
    data.set(img.data.subarray(src, src + width * 3), y * width * 3);
  }
  return { width, height, data };
}

/** Python's round(): halves to even. */
function roundHalfEven(x) {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * The S x S RGB pixels the model sees: the shorter side resized to round(S * resize / crop), the
 * centre S x S cropped (torchvision's Resize + CenterCrop), or with `fullImage` the whole image
 * resized to S x S (gradcam_fast.io.images.model_view). `preprocessing` is the model metadata's
 * {resize_size, crop_size, interpolation} (default VGG's 256, 224, bilinear).
 */
export function modelView(img, size, fullImage = false, preprocessing = {}) {
  const { resize_size: resizeSize = 256, crop_size: cropSize = 224 } = preprocessing;
  const { interpolation = "bilinear" } = preprocessing;
  if (fullImage) return resize(img, size, size, interpolation);
  const short = roundHalfEven((size * resizeSize) / cropSize);
  const [w, h] =
    img.width <= img.height
      ? [short, Math.trunc((short * img.height) / img.width)]
      : [Math.trunc((short * img.width) / img.height), short];
  const resized = resize(img, w, h, interpolation);
  return crop(resized, roundHalfEven((w - size) / 2), roundHalfEven((h - size) / 2), size, size);
}

// matplotlib's jet (as gradcam_fast.io.colormaps): (x, value) breakpoints per channel.
const JET = [
  [[0, 0], [0.35, 0], [0.66, 1], [0.89, 1], [1, 0.5]],
  [[0, 0], [0.125, 0], [0.375, 1], [0.64, 1], [0.91, 0], [1, 0]],
  [[0, 0.5], [0.11, 1], [0.34, 1], [0.65, 0], [1, 0]],
];

function interp(x, points) {
  for (let i = 1; i < points.length; i++) {
    const [x1, y1] = points[i];
    const [x0, y0] = points[i - 1];
    if (x <= x1) return y0 + ((y1 - y0) * (x - x0)) / (x1 - x0);
  }
  return points[points.length - 1][1];
}

const JET_LUT = Array.from({ length: 256 }, (_, i) =>
  JET.map((points) => Math.min(255, Math.max(0, roundHalfEven(interp(i / 255, points) * 255)))),
);

/** The image blended with the jet-colored map: (1 - alpha) * image + alpha * jet(map). */
export function overlay(img, cam, alpha = 0.5) {
  const data = new Uint8Array(img.data.length);
  for (let p = 0; p < cam.length; p++) {
    const color = JET_LUT[Math.min(255, Math.max(0, Math.trunc(cam[p] * 256)))];
    for (let c = 0; c < 3; c++) {
      data[p * 3 + c] = roundHalfEven((1 - alpha) * img.data[p * 3 + c] + alpha * color[c]);
    }
  }
  return { width: img.width, height: img.height, data };
}

/** PNG file bytes of an RGB image. */
export function encodePng(img) {
  const png = new PNG({ width: img.width, height: img.height, colorType: 2, inputColorType: 2 });
  png.data = Buffer.from(img.data);
  return PNG.sync.write(png, { colorType: 2, inputColorType: 2 });
}
