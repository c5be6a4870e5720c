"""Is bfloat16 faster than float32 on this CPU, in torch? The evidence behind issue 13's bfloat16
figures (benchmarks/RESULTS.md):

    python -m benchmarks.bf16_probe [--batch 8] [--rounds 3]

1. The GEMM rate: a 2048 x 2048 matrix product in float32 and in bfloat16 (GFLOP/s).
2. VGG19's body (seeded random weights, 224 px) in float32 (NCHW and channels-last) and in
   bfloat16 three ways: bfloat16 weights channels-last (what the torch backend runs),
   `torch.autocast`, and weights reordered once into oneDNN's blocked layout (which rules out
   per-call weight reorders as the cause).

Medians of `--rounds` timed calls after two untimed ones. Prints one line per variant.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable

import torch

from benchmarks.timing import median_s


def _median_ms(fn: Callable[[], object], rounds: int) -> float:
    return 1e3 * median_s(fn, rounds, warmup=2)


def gemm_gflops(dtype: torch.dtype, n: int = 2048, rounds: int = 5) -> float:
    """GFLOP/s of an n x n matrix product in `dtype`."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
    return 2 * n**3 / (_median_ms(lambda: torch.mm(a, b), rounds) / 1e3) / 1e9


def body_variants(batch: int) -> dict[str, Callable[[], torch.Tensor]]:
    """VGG19's body in float32 and bfloat16 layouts, each a call on the same images."""
    from torch.utils import mkldnn

    from benchmarks.contenders import make_model, seeded_images

    body = make_model("vgg19").features[:36].eval()
    x = seeded_images(batch, 224)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    f32_cl = copy.deepcopy(body).to(memory_format=torch.channels_last)
    bf16_cl = copy.deepcopy(body).to(torch.bfloat16).to(memory_format=torch.channels_last)
    x_bf16 = x_cl.to(torch.bfloat16)
    bf16_packed = mkldnn.to_mkldnn(copy.deepcopy(body), torch.bfloat16)

    def packed(x: torch.Tensor) -> torch.Tensor:
        return bf16_packed(x.to_mkldnn(torch.bfloat16))

    def autocast() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return f32_cl(x_cl)

    return {
        "float32 NCHW": lambda: body(x),
        "float32 channels-last": lambda: f32_cl(x_cl),
        "bfloat16 weights, channels-last": lambda: bf16_cl(x_bf16),
        "bfloat16 autocast, channels-last": autocast,
        "bfloat16 oneDNN-packed weights": lambda: packed(x).to_dense(torch.float32),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bf16_probe", description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    from gradcam_fast.runtime.session import cpu_count
    from gradcam_fast.runtime.torch_backend import native_bfloat16

    torch.set_num_threads(cpu_count())
    print(f"torch {torch.__version__}, {cpu_count()} threads, native bfloat16: {native_bfloat16()}")
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        print(f"GEMM 2048^3 {name:9s} {gemm_gflops(dtype):7.0f} GFLOP/s")
    with torch.inference_mode():
        reference = None
        for name, fn in body_variants(args.batch).items():
            ms = _median_ms(fn, args.rounds)
            out = fn().float()
            reference = out if reference is None else reference
            error = ((out - reference).abs().max() / reference.abs().max()).item()
            line = f"VGG19 body, batch {args.batch}, {name:34s} {ms:8.1f} ms"
            print(f"{line}  (max rel. diff {error:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
