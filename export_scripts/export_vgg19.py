"""Export VGG19's Grad-CAM graph to ONNX: `gradcam-fast export` as a script.

    python export_scripts/export_vgg19.py -o vgg19.onnx [--weights imagenet|random|FILE]
        [--target-layer features.35] [--image-size 224] [-k 1] [--precision float16] [--raw-pixels]
        [--channel-weights-only] [--external-data] [--opset N] [--no-validate] [--arch ...]

It runs the command line's own `export` subcommand (its parser, options, defaults and error
handling: `--help` lists them), so the two cannot drift apart. The file is validated against
the eager implementation in ONNX Runtime before the script returns, unless --no-validate.
"""

from __future__ import annotations

import sys

from gradcam_fast.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
