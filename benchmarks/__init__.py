"""The gradcam_fast benchmark suite (pytest-benchmark) and its report (`python -m benchmarks.report`).

Not part of the installed package: nothing in `gradcam_fast` imports it.
"""

__all__: list[str] = []
