"""Faithfulness metrics: does removing what the map points at change the model's answer?

Every function takes `score(x, classes) -> probabilities`, the model's softmax probability of
`classes` [N] for normalized images x [N, 3, S, S], and calls it on batches of at most
`batch_size` perturbed images (the audit passes one built on the session's forward). Images are
[R, 3, S, S] normalized model inputs, maps [R, S, S] in [0, 1] on the same pixels, `p0` [R] the
probability of each row's class for the unperturbed image (already known: never recomputed).

- Deletion / insertion (Petsiuk et al., "RISE", 2018): pixels ranked by the map (highest first,
  ties in row-major order), n_t = t x ceil(N / S) of them (t = 0..S, last N) replaced by the
  baseline (deletion) or taken from the image on top of the baseline (insertion); the score is
  the area under p(fraction) by the trapezoid rule, with fractions n_t / N, p not divided by
  p0. Deletion: lower is better; insertion: higher. The same points as TorchCAM's
  DeletionInsertionMetric. One baseline serves both curves (default "blur"); RISE's code fills
  deletion with zeros ("constant" here) and insertion with the blur, and steps 224 pixels.
- The maps are the session's, Grad-CAM of the class logit; p is the softmax probability. A peer
  that backpropagates the probability (TorchCAM's extractor with a softmax `logits_fn`,
  pytorch-grad-cam's ClassifierOutputSoftmaxTarget) maps p's gradient instead, a different map
  once p is peaked: see `benchmarks.audit_speed.softmax_scores`.
- Average drop and increase in confidence (Chattopadhyay et al., "Grad-CAM++", 2018): the image
  times the map, E = m * x; drop = max(0, p0 - p(E)) / p0, increase = 1[p(E) > p0].
- ROAD (Rong et al., 2022): remove a fraction q of the pixels, the most relevant first (MoRF)
  or the least relevant first (LeRF), fill them by noisy linear imputation
  (`imputation.impute`), and record p - p0; averaged over q in 0.1..0.9 as pytorch-grad-cam's
  ROADMostRelevantFirstAverage / ROADLeastRelevantFirstAverage do (a pixel is kept when m, resp.
  1 - m, is below its (1 - q) quantile: its percentile 100 (1 - q)). MoRF: lower is better;
  LeRF: higher. `road` = (LeRF - MoRF) / 2, pytorch-grad-cam's ROADCombined. The paper
  reports accuracy over a data set at each fraction; per image, the probability change stands
  in for it, as in pytorch-grad-cam (whose imputation noise is unseeded; ours is seeded).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from .imputation import impute

__all__ = [
    "BASELINES",
    "ROAD_FRACTIONS",
    "Scorer",
    "auc",
    "baseline_images",
    "confidence_change",
    "deletion_insertion",
    "road",
]

Scorer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BASELINES = ("blur", "constant")
ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
BLUR_SIZE, BLUR_SIGMA = 11, 5.0  # RISE's insertion baseline


def baseline_images(images: torch.Tensor, baseline: str = "blur") -> torch.Tensor:
    """What removed pixels become: "blur", a Gaussian blur of the image (kernel 11, sigma 5, as
    RISE's code; reflected at the border), or "constant", 0 in normalized units (the dataset's
    mean color)."""
    if baseline == "constant":
        return torch.zeros_like(images)
    if baseline != "blur":
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    t = torch.arange(BLUR_SIZE, dtype=torch.float32) - BLUR_SIZE // 2
    g = torch.exp(-(t**2) / (2 * BLUR_SIGMA**2))
    g = (g / g.sum()).to(images)
    c, pad = images.shape[1], BLUR_SIZE // 2
    x = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def auc(curve: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """Trapezoid-rule area under curves [R, P] at `fractions` [P] (0 to 1): [R]."""
    return torch.trapezoid(curve, fractions.to(curve), dim=-1)


def _chunks(jobs: list, size: int) -> Iterator[list]:
    for i in range(0, len(jobs), size):
        yield jobs[i : i + size]


def deletion_insertion(
    score: Scorer,
    images: torch.Tensor,
    cams: torch.Tensor,
    classes: torch.Tensor,
    p0: torch.Tensor,
    *,
    steps: int = 20,
    baseline: str = "blur",
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fractions [P], deletion curves [R, P], insertion curves [R, P]); P = S + 1 points for S
    steps (fewer when the image has fewer pixels than steps). 2S - 1 perturbed images per row:
    the all-baseline image is shared by both curves, the unperturbed one is `p0`."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    rows, n = images.shape[0], cams[0].numel()
    step = -(-n // steps)
    counts = [*range(0, n, step), n]
    fractions = torch.tensor(counts, dtype=torch.float32) / n
    order = torch.argsort(cams.flatten(1), dim=1, descending=True, stable=True)
    ranks = torch.argsort(order, dim=1)
    base = baseline_images(images, baseline)
    deletion = torch.empty(rows, len(counts))
    insertion = torch.empty(rows, len(counts))
    deletion[:, 0] = p0
    insertion[:, -1] = p0
    # (row, curve, point): curve 2 is the all-baseline image (deletion's last, insertion's first)
    jobs = [(r, 2, len(counts) - 1) for r in range(rows)]
    jobs += [(r, c, i) for r in range(rows) for i in range(1, len(counts) - 1) for c in (0, 1)]
    flat_x, flat_b = images.flatten(2), base.flatten(2)
    for chunk in _chunks(jobs, batch_size):
        r = torch.tensor([j[0] for j in chunk])
        count = torch.tensor([counts[j[2]] for j in chunk])
        top = ranks[r] < count[:, None]  # the pixels ranked in the first `count`
        insert = torch.tensor([j[1] == 1 for j in chunk])[:, None]
        keep = torch.where(insert, top, ~top)
        x = torch.where(keep[:, None], flat_x[r], flat_b[r]).view(-1, *images.shape[1:])
        probs = score(x, classes[r]).float().cpu()
        for p, (row, curve, point) in zip(probs.tolist(), chunk, strict=True):
            if curve != 1:
                deletion[row, point] = p
            if curve != 0:
                insertion[row, 0 if curve == 2 else point] = p
    return fractions, deletion, insertion


def confidence_change(
    score: Scorer,
    images: torch.Tensor,
    cams: torch.Tensor,
    classes: torch.Tensor,
    p0: torch.Tensor,
    *,
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(drop [R], increase [R]) for the images multiplied by their maps (see the module)."""
    probs = torch.cat(
        [
            score(
                images[i : i + batch_size] * cams[i : i + batch_size, None],
                classes[i : i + batch_size],
            )
            .float()
            .cpu()
            for i in range(0, images.shape[0], batch_size)
        ]
    )
    p0 = p0.float()
    drop = torch.relu(p0 - probs) / p0.clamp_min(1e-12)
    return drop, (probs > p0).float()


def road(
    score: Scorer,
    images: torch.Tensor,
    cams: torch.Tensor,
    classes: torch.Tensor,
    p0: torch.Tensor,
    *,
    fractions: Sequence[float] = ROAD_FRACTIONS,
    noise: float = 0.01,
    seeds: Sequence[int] | None = None,
    batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(MoRF [R], LeRF [R]): mean over `fractions` of p(imputed) - p0 when that fraction of the
    pixels is removed, most resp. least relevant first. `seeds` [R]: the imputation noise's seed
    per row (default: the row index)."""
    rows = images.shape[0]
    seeds = list(range(rows)) if seeds is None else list(seeds)
    flat = cams.flatten(1).float()
    jobs = [
        (r, most, i, q) for r in range(rows) for most in (1, 0) for i, q in enumerate(fractions)
    ]
    diffs = torch.empty(len(jobs))
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        removed = []
        for r, most, _, q in chunk:
            if most:  # kept: below the (1 - q) quantile of m
                kept = flat[r] < torch.quantile(flat[r], 1.0 - q)
            else:  # kept: 1 - m below the (1 - q) quantile of 1 - m
                kept = (1.0 - flat[r]) < torch.quantile(1.0 - flat[r], 1.0 - q)
            removed.append(~kept.view(cams.shape[1:]))
        r = torch.tensor([j[0] for j in chunk])
        # one seed per (row, order, fraction): the noise does not depend on the batching
        noise_seeds = [seeds[j[0]] * 64 + j[1] * 32 + j[2] for j in chunk]
        x = impute(images[r], torch.stack(removed), noise, noise_seeds)
        diffs[start : start + len(chunk)] = score(x, classes[r]).float().cpu() - p0[r].float()
    per = diffs.view(rows, 2, len(fractions)).mean(dim=2)
    return per[:, 0], per[:, 1]
