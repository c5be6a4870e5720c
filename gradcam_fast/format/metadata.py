"""The metadata a gradcam_fast ONNX model carries, and reading it back with clear refusals."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

__all__ = [
    "CHANNEL_WEIGHTS_OUTPUT_NAMES",
    "FORMAT_VERSION",
    "INPUT_NAMES",
    "MAP_OUTPUT_NAMES",
    "OUTPUT_NAMES",
    "ModelMetadata",
    "NotAGradCAMModel",
]

FORMAT_VERSION = 1
PREFIX = "gradcam_fast."
INPUT_NAMES = ("images", "targets")
OUTPUT_NAMES = ("logits", "target_classes", "activations", "gradients")
# The channel-weights model (exported with channel_weights_only=True): Grad-CAM's channel
# weights [B, K, C] instead of the gradients.
CHANNEL_WEIGHTS_OUTPUT_NAMES = ("logits", "target_classes", "activations", "channel_weights")
# A model exported with maps=True: these follow the outputs above (see export/maps.py).
MAP_OUTPUT_NAMES = ("cams", "cams_lowres")


class NotAGradCAMModel(ValueError):
    """The file is not an ONNX model exported by gradcam_fast (or of a format this version lacks)."""


@dataclass(frozen=True)
class ModelMetadata:
    """What `export_onnx` records in `metadata_props` and `GradCAMSession` relies on."""

    arch: str
    target_layer: str
    image_size: int
    num_targets: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    weights: str
    categories: tuple[str, ...] = field(default=(), repr=False)
    precision: str = "float32"  # or "float16" / "int8": the precision of the body below the target
    input_format: str = "float_nchw"  # or "uint8_nhwc": raw decoded pixels, normalized in-graph
    # False: the channel-weights model, channel_weights [B,K,C] out (`channel_weights_only`; the
    # file's key keeps this name, so files of every version read alike)
    gradients: bool = True
    maps: bool = False  # True: also outputs cams [B,K,S,S] and cams_lowres [B,K,h,w] (export/maps)
    method: str | None = None  # the CAM method of those maps (None without maps)
    calibration_method: str = ""  # int8: how activation ranges were calibrated (e.g. "minmax")
    calibration_images: int = 0  # int8: how many images calibrated them
    # The weights' preprocessing: the shorter side resized to resize_size * image_size /
    # crop_size, then a center crop of image_size, with this interpolation (io/images.py).
    resize_size: int = 256
    crop_size: int = 224
    interpolation: str = "bilinear"
    format_version: int = FORMAT_VERSION

    @property
    def channel_weights_only(self) -> bool:
        """Whether this is the channel-weights model (export_onnx(..., channel_weights_only=True))."""
        return not self.gradients

    @property
    def output_names(self) -> tuple[str, ...]:
        names = CHANNEL_WEIGHTS_OUTPUT_NAMES if self.channel_weights_only else OUTPUT_NAMES
        return names + MAP_OUTPUT_NAMES if self.maps else names

    def to_props(self) -> dict[str, str]:
        """String key/values for `ModelProto.metadata_props`."""
        return {PREFIX + k: json.dumps(v) for k, v in asdict(self).items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelMetadata:
        """Parse `metadata_props`; refuse files that are not gradcam_fast models of a known format."""
        ours = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
        if "format_version" not in ours:
            raise NotAGradCAMModel(
                f"{source} is an ONNX model but not a gradcam_fast model (no gradcam_fast metadata):"
                " export one with gradcam_fast.export_onnx or `gradcam-fast export`"
            )
        try:
            values = {k: json.loads(v) for k, v in ours.items()}
        except json.JSONDecodeError as exc:
            raise NotAGradCAMModel(f"{source} has corrupt gradcam_fast metadata: {exc}") from None
        version = values["format_version"]
        if version != FORMAT_VERSION:
            raise NotAGradCAMModel(
                f"{source} has gradcam_fast format version {version}; this gradcam_fast reads "
                f"version {FORMAT_VERSION}: export the model again with this version"
            )
        names = set(cls.__dataclass_fields__)
        optional = {"categories", "precision", "input_format", "gradients", "maps", "method"}
        optional |= {"calibration_method", "calibration_images"}
        optional |= {"resize_size", "crop_size", "interpolation"}
        missing = sorted(names - set(values) - optional)
        if missing:
            raise NotAGradCAMModel(f"{source} lacks gradcam_fast metadata fields {missing}")
        values = {k: v for k, v in values.items() if k in names}
        for key in ("mean", "std", "categories"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)
