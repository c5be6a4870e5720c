"""The CAM family as post-processing of one session run: activations and gradients -> maps.

Every method takes activations A [B, C, h, w] and gradients g = d score_k / dA [B, K, C, h, w]
and returns the low-resolution maps [B, K, h, w] after the ReLU, before the upsampling and
min-max normalization of `postprocess.upsample_normalize`. All are batched torch ops on the
tensors' own device, for all B images and K targets at once; none loops over images.

Names (`METHODS`) follow pytorch-grad-cam's, lower-cased:

- `gradcam` (Selvaraju et al.): w_kc = mean_ij g, map = ReLU(sum_c w_kc A_c).
- `gradcam++` (Chattopadhay et al.), the closed form over first-order gradients of
  pytorch-grad-cam and the paper's eq. 19: alpha = g^2 / (2 g^2 + sum_ij(A) g^3), zero where g
  is zero, w_kc = sum_ij alpha ReLU(g). Since alpha ReLU(g) = ReLU(g) / (2 + sum_ij(A) g) where
  g > 0, that is what is computed: the same value without g^3, which underflows in float32 for
  the small gradients of a trained network's last block. No epsilon is added (pytorch-grad-cam
  adds 1e-6 to the denominator, which changes the result when g^2 is near 1e-6).
- `xgradcam` (Fu et al.): w_kc = sum_ij(g A) / sum_ij(A), 0 where sum_ij(A) is 0.
- `hirescam` (Draelos and Carin): map = ReLU(sum_c g A), no spatial averaging.
- `gradcamelementwise`: map = sum_c ReLU(g A).
- `layercam` (Jiang et al.): map = ReLU(sum_c ReLU(g) A).
- `eigencam` (Muhammad and Yeasin): the projection of the activations on their first principal
  component, see `eigencam`. It uses no gradient: its K maps are the same map.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .postprocess import gradcam_lowres, weighted_sum

__all__ = [
    "METHODS",
    "cam_lowres",
    "check_method",
    "eigencam",
    "gradcam",
    "gradcam_elementwise",
    "gradcam_plusplus",
    "hirescam",
    "layercam",
    "xgradcam",
]

CamMethod = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def gradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM: channel weights are the spatial mean of the gradients."""
    return gradcam_lowres(activations, gradients)


def gradcam_plusplus(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++: channel weights sum_ij ReLU(g) / (2 + sum_ij(A) g) (alpha times ReLU(g))."""
    sum_a = activations.sum(dim=(-2, -1))[:, None, :, None, None]  # [B, 1, C, 1, 1]
    positive = gradients.clamp(min=0)
    denom = 2 + sum_a * positive  # 2 where g <= 0, so those terms are exactly 0
    terms = torch.where(denom != 0, positive / denom, torch.zeros((), dtype=denom.dtype))
    return weighted_sum(terms.sum(dim=(-2, -1)), activations)


def xgradcam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """XGrad-CAM: channel weights sum_ij(g A) / sum_ij(A)."""
    sum_a = activations.sum(dim=(-2, -1)).unsqueeze(1)  # [B, 1, C]
    num = torch.einsum("bkchw,bchw->bkc", gradients, activations)
    safe = torch.where(sum_a != 0, sum_a, torch.ones((), dtype=sum_a.dtype))
    weights = torch.where(sum_a != 0, num / safe, torch.zeros((), dtype=num.dtype))
    return weighted_sum(weights, activations)


def hirescam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """HiResCAM: ReLU(sum_c g A), the element-wise product summed over channels."""
    return torch.einsum("bkchw,bchw->bkhw", gradients, activations).relu_()


def gradcam_elementwise(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM element-wise: sum_c ReLU(g A)."""
    return (gradients * activations.unsqueeze(1)).relu_().sum(dim=2)


def layercam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """LayerCAM: ReLU(sum_c ReLU(g) A)."""
    return torch.einsum("bkchw,bchw->bkhw", gradients.clamp(min=0), activations).relu_()


def eigencam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Eigen-CAM: ReLU of the activations' projection on their first principal component.

    Per image, X [h*w, C] holds one row per position; its columns are centered (as
    pytorch-grad-cam's `get_2d_projection` does) and the map is X v, v the first right singular
    vector of X. It is computed from the eigendecomposition of the smaller Gram matrix (X X^T or
    X^T X, batched over images, in float64): the same vector as the SVD's, at a fraction of the
    cost. An eigenvector is fixed only up to sign, and the ReLU keeps one side, so the sign is
    fixed here: the map is oriented to correlate non-negatively with the channel sum of the
    activations, sum_c A_c, i.e. it is high where the layer responds strongly overall (a zero
    correlation keeps the solver's sign). pytorch-grad-cam leaves the sign to its SVD routine.
    `gradients` only gives K: all K maps of an image are the same.
    """
    b, c, h, w = activations.shape
    k = gradients.shape[1]
    x = activations.reshape(b, c, h * w).transpose(1, 2).double()  # [B, hw, C]
    x = x - x.mean(dim=1, keepdim=True)
    if h * w <= c:  # X v1 = sigma1 u1, u1 the top eigenvector of X X^T
        evals, evecs = torch.linalg.eigh(x @ x.transpose(1, 2))
        projection = evecs[..., -1] * evals[:, -1:].clamp(min=0).sqrt()
    else:
        _, evecs = torch.linalg.eigh(x.transpose(1, 2) @ x)
        projection = (x @ evecs[..., -1:]).squeeze(-1)  # [B, hw]
    overall = x.sum(dim=-1)  # centered channel sum
    flip = (projection * overall).sum(dim=-1, keepdim=True) < 0
    projection = torch.where(flip, -projection, projection).to(activations.dtype)
    return projection.relu_().reshape(b, 1, h, w).expand(b, k, h, w).contiguous()


# Names as in the CLI's --method (`catalog.METHOD_NAMES`) and `GradCAMSession(..., method=)`.
METHODS: dict[str, CamMethod] = {
    "gradcam": gradcam,
    "gradcam++": gradcam_plusplus,
    "xgradcam": xgradcam,
    "hirescam": hirescam,
    "gradcamelementwise": gradcam_elementwise,
    "layercam": layercam,
    "eigencam": eigencam,
}


def check_method(method: str) -> CamMethod:
    """The function for `method`, or a ValueError naming the valid methods."""
    try:
        return METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown CAM method {method!r}; choose one of {', '.join(METHODS)}"
        ) from None


def cam_lowres(method: str, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Low-resolution maps [B, K, h, w] of `method` from activations [B, C, h, w] and gradients
    [B, K, C, h, w]; upsample and normalize them with `postprocess.upsample_normalize`."""
    if (
        activations.ndim != 4
        or gradients.ndim != 5
        or (gradients.shape[:1] + gradients.shape[2:] != activations.shape)
    ):
        raise ValueError(
            f"expected activations [B, C, h, w] and gradients [B, K, C, h, w], got "
            f"{list(activations.shape)} and {list(gradients.shape)}"
        )
    return check_method(method)(activations, gradients)
