"""An ONNX file's `metadata_props` (and its gradcam_fast metadata), read without onnx or a runtime.

The OpenVINO runner needs the gradcam_fast metadata before it compiles, and a compiled model
loaded from OpenVINO's cache no longer carries it. Parsing the whole file with `onnx` would load
every weight (VGG19: 580 MB) and import the exporter; instead the top-level fields of the
ModelProto are walked and every one but `metadata_props` (field 14) is skipped by its length.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

from .metadata import ModelMetadata, NotAGradCAMModel

__all__ = ["file_metadata", "read_metadata_props"]

_METADATA_PROPS = (
    14  # ModelProto.metadata_props: repeated StringStringEntryProto {1: key, 2: value}
)


def _varint(data, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(data, start: int, end: int):
    """(field number, wire type, value or (start, end) of a length-delimited payload)."""
    pos = start
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = (pos, pos + length), pos + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise ValueError("field runs past the end of the file")
        yield number, wire, value


def read_metadata_props(path: str | os.PathLike) -> dict[str, str]:
    """The key/value pairs of the ONNX model's `metadata_props`; ValueError when the file is not
    a well-formed protobuf at its top level (empty, truncated, another format)."""
    with Path(path).open("rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ValueError(f"{path} is empty")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            props = {}
            for number, wire, span in _fields(data, 0, len(data)):
                if number != _METADATA_PROPS or wire != 2:
                    continue
                entry = {
                    n: bytes(data[s:e]).decode() for n, w, (s, e) in _fields(data, *span) if w == 2
                }
                props[entry.get(1, "")] = entry.get(2, "")
            return props


def file_metadata(path: str | os.PathLike) -> ModelMetadata:
    """The gradcam_fast metadata of an ONNX file, read without loading its weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}: export one with `gradcam-fast export`")
    try:
        props = read_metadata_props(path)
    except ValueError as exc:
        raise NotAGradCAMModel(
            f"{path} is not a readable ONNX model (truncated, corrupt or another format): {exc}"
        ) from None
    return ModelMetadata.from_props(props, source=str(path))
