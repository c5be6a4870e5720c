"""Heatmap overlays: colormaps (no matplotlib needed) and blending a colored map onto an image.
Writing them to files: `files.py`.

Colormaps are 256-entry lookup tables with matplotlib's definitions: jet from its piecewise-linear
segments (exact), viridis, inferno and turbo from every fifth entry of matplotlib's tables,
linearly interpolated (within 1.2/255 of matplotlib's). Any other name is looked up in matplotlib
when it is installed.
"""

from __future__ import annotations

from functools import cache

import numpy as np

__all__ = [
    "COLORMAPS",
    "apply_colormap",
    "colormap_lut",
    "overlay",
]

# matplotlib's jet (_cm.py `_jet_data`): (x, value) breakpoints per channel.
_JET = (
    ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
)

# Entries 0, 5, 10, ..., 255 of matplotlib's 256-color tables, as RRGGBB hex.
_TABLES = {
    "viridis": "44015446085c471063481769481d6f482475472a7a46307e453781433d844142873f48893d4e8a3a538b38598c"
    "355e8d33638d31688e2e6d8e2c718e2a768e297b8e27808e25848e23898e218e8d20928c1f978b1e9c891fa188"
    "21a58524aa8328ae802eb37c35b7793dbc7446c06f50c46a5ac86465cb5e70cf577cd25089d54895d840a2da37"
    "b0dd2fbddf26cae11fd8e219e5e419f1e51dfde725",
    "inferno": "00000402020c0504170a072210092d160b391e0c45260c512f0a5b380962400a67490b6a510e6c59106e61136e"
    "69166e71196e781c6d801f6c88226a902568982766a02a63a82e5fb0315bb73557bf3952c63d4dcc4248d34743"
    "d94d3ddf5337e45a31e9612bed6925f1711ff47918f78212f98b0bfa9407fb9d07fca60cfcb014fbba1ffac42a"
    "f8cd37f6d746f4e156f2ea69f2f27df5f992fcffa4",
    "turbo": "30123b36215f3b2f803f3e9c424bb54559cb4666dd4773eb4680f6458cfd4099ff38a5fb2fb2f427bee91fc9dd"
    "1ad4d018ddc21ae4b622ebaa2ff19b3ff68a52fa7a65fd6979fe598bff4b9cfe40a9fb39b7f735c3f134d0ea34"
    "dbe236e5d938eecf3af5c53afaba39fdae35fea130fe932afc8423f9751df46617ef5811e84b0ce14109d83706"
    "ce2d04c32503b71d02a916019b0f018b09027a0403",
}

COLORMAPS = ("jet", *_TABLES)  # built in; other names need matplotlib


@cache
def colormap_lut(name: str = "jet") -> np.ndarray:
    """The colormap `name` as a read-only uint8 [256, 3] table (entry i is the color of i/255)."""
    x = np.linspace(0.0, 1.0, 256)
    if name == "jet":
        lut = np.stack([np.interp(x, *zip(*points, strict=True)) for points in _JET], 1) * 255
    elif name in _TABLES:
        rgb = np.frombuffer(bytes.fromhex(_TABLES[name]), np.uint8).reshape(-1, 3)
        at = np.linspace(0.0, 1.0, len(rgb))
        lut = np.stack([np.interp(x, at, rgb[:, c].astype(np.float64)) for c in range(3)], 1)
    else:
        try:
            import matplotlib
        except ImportError:
            raise ValueError(
                f"unknown colormap {name!r}: built in are {', '.join(COLORMAPS)}; install "
                "matplotlib for its other colormaps"
            ) from None
        if name not in matplotlib.colormaps:
            raise ValueError(
                f"unknown colormap {name!r}: built in are {', '.join(COLORMAPS)}, or one of "
                "matplotlib's (matplotlib.colormaps)"
            )
        lut = matplotlib.colormaps[name].resampled(256)(x)[:, :3] * 255
    table = np.clip(np.rint(lut), 0, 255).astype(np.uint8)
    table.flags.writeable = False
    return table


def apply_colormap(cam: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """uint8 [H, W, 3] colors for a map [H, W] in [0, 1] (values outside are clipped, NaN gives
    the color of 0). Values index the table as matplotlib does: floor(v * 256), capped at 255."""
    lut = colormap_lut(colormap)
    cam = np.nan_to_num(np.asarray(cam, dtype=np.float32), nan=0.0)
    index = np.clip((cam * 256.0).astype(np.int32), 0, 255)
    return lut[index]


def overlay(
    image: np.ndarray, cam: np.ndarray, colormap: str = "jet", alpha: float = 0.5
) -> np.ndarray:
    """The image with the colored map blended on top: (1 - alpha) * image + alpha * color(cam).

    `image` is uint8 [H, W, 3], `cam` [H, W] in [0, 1]; where `cam` is NaN (pixels the model did
    not see) the image is left as it is. Returns uint8 [H, W, 3].
    """
    image = np.asarray(image)
    cam = np.asarray(cam, dtype=np.float32)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    if cam.shape != image.shape[:2]:
        raise ValueError(
            f"map shape {list(cam.shape)} differs from the image's {list(image.shape[:2])}: "
            "resize the map to the image first (gradcam_fast.io.images.cam_to_image)"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (the heatmap's weight), got {alpha}")
    colors = apply_colormap(cam, colormap).astype(np.float32)
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colors
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    unseen = np.isnan(cam)
    if unseen.any():
        out[unseen] = image[unseen]
    return out
