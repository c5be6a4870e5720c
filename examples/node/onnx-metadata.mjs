// The metadata_props of an ONNX file, read straight from its protobuf, and checked against the
// gradcam_fast contract.
//
// onnxruntime-node (1.30) exposes inputNames/outputNames and inputMetadata/outputMetadata, but not
// the model's custom metadata map (microsoft/onnxruntime#16547), which Python's
// InferenceSession.get_modelmeta().custom_metadata_map and the C, C++, C#, Java and Go APIs give.
// So the few top-level fields of ModelProto are walked here: metadata_props is field 14, a
// repeated StringStringEntryProto {key = 1, value = 2}. Every other field, the graph with its
// weights among them, is skipped by its length without being read.

import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { INTERPOLATIONS } from "./image.mjs";

const METADATA_PROPS = 14;
const PREFIX = "gradcam_fast.";
const FORMAT_VERSION = 1;

/** A problem with the model file: the program prints its message and exits with 1. */
export class ModelError extends Error {}

/** Reads a file at increasing offsets through a small buffer. */
class FileReader {
  constructor(fd, size) {
    this.fd = fd;
    this.size = size;
    this.pos = 0;
  }

  bytes(n) {
    if (this.pos + n > this.size) throw new ModelError("truncated protobuf");
    const buf = Buffer.alloc(n);
    readSync(this.fd, buf, 0, n, this.pos);
    this.pos += n;
    return buf;
  }

  varint() {
    let value = 0;
    for (let shift = 1; ; shift *= 128) {
      const byte = this.bytes(1)[0];
      value += (byte & 0x7f) * shift;
      if (byte < 0x80) return value;
      if (shift > 2 ** 56) throw new ModelError("malformed varint");
    }
  }
}

function skip(reader, wireType) {
  switch (wireType) {
    case 0:
      reader.varint();
      break;
    case 1:
      reader.pos += 8;
      break;
    case 2: {
      const length = reader.varint(); // read before pos is: `pos += varint()` would lose its bytes
      reader.pos += length;
      break;
    }
    case 5:
      reader.pos += 4;
      break;
    default:
      throw new ModelError(`unsupported protobuf wire type ${wireType}`);
  }
}

/** {key, value} of one StringStringEntryProto held in `buf`. */
function parseEntry(buf) {
  const entry = { key: "", value: "" };
  let pos = 0;
  while (pos < buf.length) {
    let tag = 0;
    for (let shift = 1; ; shift *= 128) {
      const byte = buf[pos++];
      tag += (byte & 0x7f) * shift;
      if (byte < 0x80) break;
    }
    let length = 0;
    for (let shift = 1; ; shift *= 128) {
      const byte = buf[pos++];
      length += (byte & 0x7f) * shift;
      if (byte < 0x80) break;
    }
    const text = buf.toString("utf8", pos, pos + length);
    pos += length;
    if (tag >> 3 === 1) entry.key = text;
    if (tag >> 3 === 2) entry.value = text;
  }
  return entry;
}

/** The ONNX file's metadata_props as a plain object {key: value}. */
export function readMetadataProps(path) {
  let fd;
  try {
    fd = openSync(path, "r");
  } catch (err) {
    throw new ModelError(`${path}: cannot open the model (${err.code ?? err.message})`);
  }
  const props = {};
  try {
    const { size } = fstatSync(fd);
    const reader = new FileReader(fd, size);
    while (reader.pos < size) {
      const tag = reader.varint();
      const field = Math.floor(tag / 8);
      const wireType = tag % 8;
      if (field === METADATA_PROPS && wireType === 2) {
        const { key, value } = parseEntry(reader.bytes(reader.varint()));
        props[key] = value;
      } else {
        skip(reader, wireType);
      }
    }
    if (reader.pos !== size) throw new ModelError("truncated protobuf");
  } catch (err) {
    if (err instanceof ModelError) {
      throw new ModelError(`${path} is not a readable ONNX model (${err.message})`);
    }
    throw err;
  } finally {
    closeSync(fd);
  }
  return props;
}

/**
 * The gradcam_fast metadata of `path` (JSON-decoded values, keys without the prefix), refused
 * with a ModelError when the file is not a gradcam_fast model, has another format version, or
 * was exported without maps.
 */
export function gradcamMetadata(path) {
  const props = readMetadataProps(path);
  const meta = {};
  for (const [key, value] of Object.entries(props)) {
    if (!key.startsWith(PREFIX)) continue;
    try {
      meta[key.slice(PREFIX.length)] = JSON.parse(value);
    } catch {
      throw new ModelError(`${path} has corrupt gradcam_fast metadata at ${key}`);
    }
  }
  if (!("format_version" in meta)) {
    throw new ModelError(
      `${path} is not a gradcam_fast model (no gradcam_fast metadata): export one with ` +
        "`gradcam-fast export --maps`",
    );
  }
  if (meta.format_version !== FORMAT_VERSION) {
    throw new ModelError(
      `${path} has gradcam_fast format version ${meta.format_version}; this program reads ` +
        `version ${FORMAT_VERSION}`,
    );
  }
  if (!meta.maps) {
    throw new ModelError(
      `${path} was exported without maps (it outputs activations and gradients only): export ` +
        "it with `gradcam-fast export --maps` (export_onnx(..., maps=True))",
    );
  }
  for (const key of ["image_size", "num_targets", "num_classes", "mean", "std"]) {
    if (!(key in meta)) throw new ModelError(`${path} lacks gradcam_fast metadata field ${key}`);
  }
  meta.input_format ??= "float_nchw";
  meta.categories ??= [];
  // the weights' preprocessing; files exported before these fields existed used VGG's
  meta.resize_size ??= 256;
  meta.crop_size ??= 224;
  meta.interpolation ??= "bilinear";
  if (!INTERPOLATIONS.includes(meta.interpolation)) {
    throw new ModelError(
      `${path} asks for ${JSON.stringify(meta.interpolation)} interpolation; this program ` +
        `resamples with ${INTERPOLATIONS.join(" or ")} only`,
    );
  }
  const { resize_size: resize, crop_size: crop } = meta;
  if (!(Number.isInteger(resize) && Number.isInteger(crop) && crop >= 1 && resize >= crop)) {
    throw new ModelError(`${path} has unusable resize_size ${resize} and crop_size ${crop}`);
  }
  return meta;
}
