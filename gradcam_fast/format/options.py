"""The values export's options accept, listed once, and the deprecated spellings still taken.

Torch-free and onnx-free: the command line's parsers offer these lists without loading either.

- A file's precision: `EXPORT_PRECISIONS` (`export_onnx(precision=)`, `export --precision`);
  `one_precision` picks the one asked for, under whichever spellings, and refuses two.
- int8 calibration: `CALIBRATION_METHODS`, ONNX Runtime's (`calibration_method=`,
  `--calibration-method`).
- The channel-weights model, whose name is `channel_weights_only` (`export_onnx(...,
  channel_weights_only=True)`, `export --channel-weights-only`; cached files end in `-cw`): it
  outputs Grad-CAM's channel weights [B, K, C] instead of the gradients. `gradients=False` is
  its deprecated spelling (`channel_weights_only_of`). The file's metadata keeps its
  `gradients` key (the format is unchanged: `ModelMetadata.channel_weights_only` reads it).
"""

from __future__ import annotations

import warnings

__all__ = [
    "CALIBRATION_METHODS",
    "EXPORT_PRECISIONS",
    "channel_weights_only_of",
    "check_calibration_method",
    "one_precision",
]

EXPORT_PRECISIONS = ("float32", "float16", "int8")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def check_calibration_method(method: str) -> str:
    """`method` if it is one of CALIBRATION_METHODS, else a ValueError listing them."""
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    return method


def one_precision(asked: dict[str, str], option: str = "precision") -> str:
    """The precision of `asked` ({spelling as the caller wrote it: precision}), "float32" when
    empty; two different precisions are refused, naming both spellings and `option`."""
    if len(set(asked.values())) > 1:
        raise ValueError(f"{' and '.join(asked)} exclude each other: choose one {option}")
    chosen = next(iter(asked.values()), "float32")
    if chosen not in EXPORT_PRECISIONS:
        raise ValueError(
            f"precision must be one of {', '.join(EXPORT_PRECISIONS)}, got {chosen!r} "
            "(bfloat16 is a session's precision: GradCAMSession(..., precision='bfloat16'))"
        )
    return chosen


def channel_weights_only_of(
    channel_weights_only: bool, gradients: bool | None, where: str, stacklevel: int = 3
) -> bool:
    """`channel_weights_only`, or from its deprecated spelling `gradients` (False: the
    channel-weights model), warned with a DeprecationWarning naming `where`; asking for both
    models at once is refused."""
    if gradients is None:
        return bool(channel_weights_only)
    warnings.warn(
        f"{where}(gradients={gradients}) is deprecated: use channel_weights_only={not gradients}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    if channel_weights_only and gradients:
        raise ValueError(
            "channel_weights_only=True and gradients=True exclude each other: pass "
            "channel_weights_only alone (gradients= is its deprecated spelling)"
        )
    return not gradients
