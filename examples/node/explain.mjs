#!/usr/bin/env node
// Grad-CAM in Node.js with no Python: one ONNX Runtime call of a gradcam_fast model exported
// with maps (`gradcam-fast export --maps`) returns the heatmaps.
//
//   node explain.mjs --model vgg19_maps.onnx --out out/ cat.jpg dog.png
//
// For each image: an overlay PNG per explained class in --out, and one JSON line on stdout with
// the top classes. A missing file, a file that is not a PNG or JPEG, or one that fails to decode
// gives one line on stderr, the other images are still processed, and the exit code is 1. A
// model that is not a gradcam_fast model or was exported without maps: one line, exit code 1.

import { mkdirSync, writeFileSync } from "node:fs";
import { basename, extname, join } from "node:path";
import { parseArgs } from "node:util";
import ort from "onnxruntime-node";
import { encodePng, ImageError, loadImage, modelView, overlay } from "./image.mjs";
import { gradcamMetadata, ModelError } from "./onnx-metadata.mjs";

const USAGE = `usage: node explain.mjs --model MODEL.onnx [--out DIR] [--top N] [--targets=T1,T2,..]
                         [--full-image] [--alpha A] [--dump-maps] IMAGE...

  --model, -m   a gradcam_fast model exported with maps (gradcam-fast export --maps)
  --out, -o     folder for the overlays (default: out)
  --top         classes listed per image (default: 5)
  --targets     K comma-separated targets: a class index (>= 0) or -r, the r-th highest
                logit (default: -1,..,-K, the top K classes); write --targets=-1,-2
                with "=": a value that starts with "-" is read as an option otherwise
  --full-image  resize the whole image to S x S instead of the model's resize + centre crop
  --alpha       the heatmap's weight in the overlay (default: 0.5)
  --dump-maps   also write DIR/<name>.maps.json: the model's input pixels, cams, cams_lowres`;

class UsageError extends Error {}

function parse(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      model: { type: "string", short: "m" },
      out: { type: "string", short: "o", default: "out" },
      top: { type: "string", default: "5" },
      targets: { type: "string" },
      "full-image": { type: "boolean", default: false },
      alpha: { type: "string", default: "0.5" },
      "dump-maps": { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  if (!values.model) throw new UsageError("--model is required");
  if (positionals.length === 0) throw new UsageError("give at least one image");
  const top = Number(values.top);
  const alpha = Number(values.alpha);
  if (!Number.isInteger(top) || top < 1) throw new UsageError(`--top must be a positive integer, got ${values.top}`);
  if (!(alpha >= 0 && alpha <= 1)) throw new UsageError(`--alpha must be in [0, 1], got ${values.alpha}`);
  return { ...values, top, alpha, images: positionals };
}

/** Targets [K] as BigInt64, checked as GradCAMSession checks them. */
function targetsFor(text, meta) {
  const k = meta.num_targets;
  const values = text === undefined ? Array.from({ length: k }, (_, i) => -1 - i) : text.split(",").map(Number);
  if (values.length !== k || values.some((t) => !Number.isInteger(t))) {
    throw new UsageError(`--targets needs ${k} integers (the model's K), got ${text}`);
  }
  for (const t of values) {
    if (t >= meta.num_classes || t < -meta.num_classes) {
      throw new UsageError(`target ${t} is out of range for ${meta.num_classes} classes`);
    }
  }
  return BigInt64Array.from(values, BigInt);
}

/** The model's `images` input for one S x S RGB view, as the model's metadata says. */
function inputTensor(view, meta) {
  const s = meta.image_size;
  if (meta.input_format === "uint8_nhwc") return new ort.Tensor("uint8", view.data, [1, s, s, 3]);
  // float_nchw: (x / 255 - mean) / std per channel, in float32 steps as torch computes it
  const f = Math.fround;
  const x = new Float32Array(3 * s * s);
  for (let c = 0; c < 3; c++) {
    const mean = f(meta.mean[c]);
    const std = f(meta.std[c]);
    for (let p = 0; p < s * s; p++) x[c * s * s + p] = f(f(f(view.data[p * 3 + c] / 255) - mean) / std);
  }
  return new ort.Tensor("float32", x, [1, 3, s, s]);
}

function softmaxTop(logits, n, categories) {
  const max = Math.max(...logits);
  const exp = Array.from(logits, (v) => Math.exp(v - max));
  const sum = exp.reduce((a, b) => a + b, 0);
  return exp
    .map((e, i) => ({ class: i, name: categories[i] ?? String(i), probability: e / sum }))
    .sort((a, b) => b.probability - a.probability)
    .slice(0, n);
}

function uniqueStem(path, used) {
  const stem = basename(path, extname(path)) || "image";
  let name = stem;
  for (let i = 2; used.has(name); i++) name = `${stem}-${i}`;
  used.add(name);
  return name;
}

async function explainOne(session, meta, args, targets, path, stem) {
  const view = modelView(loadImage(path), meta.image_size, args["full-image"], meta);
  const out = await session.run({
    images: inputTensor(view, meta),
    targets: new ort.Tensor("int64", targets, [1, targets.length]),
  });
  const s = meta.image_size;
  const classes = Array.from(out.target_classes.data, Number);
  const overlays = classes.map((cls, k) => {
    const cam = out.cams.data.subarray(k * s * s, (k + 1) * s * s);
    const file = join(args.out, `${stem}_cam${k}.png`);
    writeFileSync(file, encodePng(overlay(view, cam, args.alpha)));
    return file;
  });
  const record = {
    image: path,
    top: softmaxTop(out.logits.data, Math.min(args.top, meta.num_classes), meta.categories),
    explained: classes.map((c) => ({ class: c, name: meta.categories[c] ?? String(c) })),
    method: meta.method,
    overlays,
  };
  if (args["dump-maps"]) {
    record.maps = join(args.out, `${stem}.maps.json`);
    const dump = {
      pixels: Array.from(view.data),
      target_classes: classes,
      logits: Array.from(out.logits.data),
      cams_shape: out.cams.dims,
      cams: Array.from(out.cams.data),
      cams_lowres_shape: out.cams_lowres.dims,
      cams_lowres: Array.from(out.cams_lowres.data),
    };
    writeFileSync(record.maps, JSON.stringify(dump));
  }
  return record;
}

async function openModel(path) {
  const meta = gradcamMetadata(path); // refuses non-gradcam_fast models and models without maps
  let session;
  try {
    session = await ort.InferenceSession.create(path, { executionProviders: ["cpu"] });
  } catch (err) {
    throw new ModelError(`${path}: ONNX Runtime cannot load it (${err.message.split("\n")[0]})`);
  }
  for (const name of ["cams", "cams_lowres", "logits", "target_classes"]) {
    if (!session.outputNames.includes(name)) {
      throw new ModelError(`${path} has no output ${name} (outputs: ${session.outputNames.join(", ")})`);
    }
  }
  return { meta, session };
}

async function main(argv) {
  let args;
  try {
    args = parse(argv);
  } catch (err) {
    console.error(`explain.mjs: error: ${err.message.split("\n").join(" ")} (see --help)`);
    return 1;
  }
  let model;
  try {
    model = await openModel(args.model);
  } catch (err) {
    if (!(err instanceof ModelError)) throw err;
    console.error(`explain.mjs: error: ${err.message}`);
    return 1;
  }
  const { meta, session } = model;
  let targets;
  try {
    targets = targetsFor(args.targets, meta);
  } catch (err) {
    console.error(`explain.mjs: error: ${err.message}`);
    return 1;
  }
  mkdirSync(args.out, { recursive: true });
  const used = new Set();
  let failed = 0;
  for (const path of args.images) {
    try {
      const record = await explainOne(session, meta, args, targets, path, uniqueStem(path, used));
      console.log(JSON.stringify(record));
    } catch (err) {
      failed += 1;
      const message = err instanceof ImageError ? err.message : `${path}: ${err.message.split("\n")[0]}`;
      console.error(`explain.mjs: error: ${message}`);
    }
  }
  return failed ? 1 : 0;
}

process.exitCode = await main(process.argv.slice(2));
