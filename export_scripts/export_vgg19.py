"""Export VGG19's Grad-CAM graph to ONNX: a thin script over `gradcam_fast.export_onnx`.

    python export_scripts/export_vgg19.py vgg19.onnx [--weights imagenet|random|FILE]
        [--target-layer features.35] [--image-size 224] [--num-targets 1] [--fp16] [--raw-pixels]

The same as `gradcam-fast export --arch vgg19 ...`; the file is validated against the eager
implementation in ONNX Runtime before the script returns.
"""

from __future__ import annotations

import argparse
import logging

from gradcam_fast import export_onnx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="output .onnx path")
    parser.add_argument("--weights", default="imagenet", help="imagenet, random or a state_dict")
    parser.add_argument("--target-layer", default=None, help="default: features.35")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-targets", type=int, default=1)
    parser.add_argument("--fp16", action="store_true", help="float16 body (for CUDA)")
    parser.add_argument("--raw-pixels", action="store_true", help="uint8 [B,S,S,3] input")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = export_onnx(
        "vgg19",
        args.out,
        weights=args.weights,
        target_layer=args.target_layer,
        image_size=args.image_size,
        num_targets=args.num_targets,
        fp16=args.fp16,
        raw_pixels=args.raw_pixels,
    )
    print(path)


if __name__ == "__main__":
    main()
