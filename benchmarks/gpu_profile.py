"""Where the time of one torch-backend Grad-CAM call goes on a GPU (torch profiler, top kernels).

    python benchmarks/gpu_profile.py [--batch 64]

Times the body alone, the whole graph and the session call, next to the plain forward, and
prints the profiler's table of CUDA time by operator for the session call.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from benchmarks.timing import median_s
from gradcam_fast import GradCAMSession, load_vgg


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.backends.cudnn.benchmark = True
    model = load_vgg("vgg19", "random")
    x = torch.randn(args.batch, 3, 224, 224, device="cuda")
    t = torch.full((args.batch, 1), -1, device="cuda")
    for precision in ("float16", "tf32", "float32"):
        session = GradCAMSession.from_model(model, device="cuda", precision=precision)
        runner = session._runner
        dtype = runner.dtype
        xc = x.to(dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), runner._context():
            parts = {
                "body": lambda r=runner, xc=xc: r.graph.run_body(xc),
                "graph": lambda r=runner, xc=xc: r.graph(xc, t),
                "runner": lambda r=runner: r(x, t),
            }
            figures = {k: 1e3 * median_s(f, 15, 3, cuda=True) for k, f in parts.items()}
        figures["session"] = 1e3 * median_s(lambda s=session: s(x, t), 15, 3, cuda=True)
        rounded = {k: round(v, 2) for k, v in figures.items()}
        print(precision, rounded, "body dtype", runner.graph.body_dtype, flush=True)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            session(x, t)
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12), flush=True)


if __name__ == "__main__":
    main()
