"""The contenders: every way of getting Grad-CAM maps (or plain logits, for the floors) that the
benchmarks time, each run as its own documentation says, and their one registry (`ContenderSpec`:
the CPU rows by name in `CONTENDERS`, the GPU rows in `GPU_CONTENDERS` in the order gpu_check
times them). `benchmarks.checks` holds the check every contender passes before it is timed.

A contender is opened on a `Setup` (on its device), called as `run(images, classes)` (the timed
call; classes [B,K] chosen by the reference), and converted by `output(raw)` to a `GradCAMResult`
holding the outputs it exposes, outside the timing.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from gradcam_fast.cams.postprocess import gradcam_lowres, upsample_normalize
from gradcam_fast.check.reference import eager_gradcam
from gradcam_fast.format.result import GradCAMResult
from gradcam_fast.model.loading import load_model
from gradcam_fast.runtime.backends import Int8SaturationError
from gradcam_fast.runtime.ort_backend import session_options
from gradcam_fast.runtime.session import GradCAMSession

__all__ = [
    "CONTENDERS", "EAGER_FP32", "GPU_CONTENDERS", "GPU_FLOOR", "PEERS", "SESSIONS",
    "ContenderSpec", "ContenderUnavailable", "Setup", "export_floor", "export_plain", "exposed",
    "gpu_plan", "make_model", "open_contender", "seeded_images", "weights_bytes",
]  # fmt: skip

TINY_CFG = [16, "M", 32, "M", 64, 64, "M"]  # features of the CI-sized VGG (32 px images)


class ContenderUnavailable(RuntimeError):
    """A contender cannot run here for a known reason (an optional library is not installed:
    install the `bench` extra; TensorRT does not load): skipped, not failed."""


@dataclass
class Setup:
    """Everything contenders are built from, shared by one benchmark run."""

    model: nn.Module | None  # None for contenders that run from their ONNX file alone
    target_layer: str  # a module's name (the peers hook modules): features.35, layer4, ...
    image_size: int
    # "gradcam_k1", "gradcam_k5", "floor", ...; on a GPU "float32" and "float16", or the error
    # their export raised
    paths: dict[str, Path | Exception] = field(default_factory=dict)
    device: str = "cpu"
    unavailable: dict[str, str] = field(default_factory=dict)  # "cuda", "tensorrt" -> why not

    @property
    def target_module(self) -> nn.Module:
        """The module whose output is the target: what the other libraries hook."""
        return self.model.get_submodule(self.target_layer)

    @classmethod
    def from_folder(
        cls, model: nn.Module | None, folder: Path, image_size: int, target: str | None = None
    ) -> Setup:
        """The setup of `model` (its default target layer unless `target`; None for
        contenders that run from their ONNX file alone) and every ONNX file in `folder`, each
        under its stem."""
        from gradcam_fast.model.loading import default_target_layer

        target = target or (default_target_layer(model) if model is not None else "")
        return cls(model, target, image_size, {p.stem: p for p in folder.glob("*.onnx")})


def exposed(cams=None, lowres=None, classes=None, logits=None) -> GradCAMResult:
    """What a contender produced, as a `GradCAMResult` holding only the outputs it exposes."""
    return GradCAMResult(cams, lowres, classes, logits, None, None)


def make_model(kind: str, seed: int = 0) -> nn.Module:
    """The benchmarked network: a torchvision CNN by arch name, seeded random weights (weights do
    not change the cost), or "tiny" (a small seeded VGG, for CI)."""
    if kind != "tiny":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "random weights explain nothing": known here
            return load_model(kind, "random", seed=seed)
    from gradcam_fast.testing import make_tiny_vgg

    return make_tiny_vgg(TINY_CFG, num_classes=10, pool=7, seed=seed)


def seeded_images(batch: int, size: int) -> torch.Tensor:
    """Normal noise images [batch, 3, size, size] seeded by the batch size: every contender and
    every process of a run gets the same tensor."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))


def weights_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers: the 'size of the weights'."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def export_plain(
    module: nn.Module, inputs: tuple, path: str | os.PathLike, names: list[str], outputs: list[str]
) -> Path:
    """Export `module` as it is (dynamo, weights inside, every input's batch dimension dynamic)
    to ONNX at `path`, its inputs and outputs named `names` and `outputs`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module.eval(), inputs, dynamo=True, external_data=False, input_names=names,
            output_names=outputs, dynamic_shapes=tuple({0: batch} for _ in inputs), verbose=False,
        )  # fmt: skip
    program.save(str(path))
    return path


def export_floor(model: nn.Module, path: str | os.PathLike, image_size: int) -> Path:
    """Export the unmodified model (images -> logits, dynamic batch) to ONNX: the floor."""
    example = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    return export_plain(model, (example,), path, ["images"], ["logits"])


@contextlib.contextmanager
def _no_tf32():
    """float32 convolutions and matrix products in full float32 (no TF32) within the block."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def _on_gpu_at(device: str, precision: str) -> contextlib.AbstractContextManager:
    """How an eager torch call runs at `precision` on a GPU: float32 without TF32, float16 under
    autocast, tf32 with torch's defaults (TF32 convolutions); on the CPU as it is."""
    if device != "cuda" or precision == "tf32":
        return contextlib.nullcontext()
    if precision == "float16":
        return torch.autocast("cuda", dtype=torch.float16)
    return _no_tf32()


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-map min-max into [0, 1] (flat maps become zeros), as visualizations do."""
    flat = maps.flatten(2)
    low = flat.amin(-1, keepdim=True)
    span = flat.amax(-1, keepdim=True) - low
    return ((flat - low) / span.clamp_min(1e-12)).reshape(maps.shape)


def _library(module: str, what: str):
    """Import `module` (an optional peer library) or raise ContenderUnavailable."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ContenderUnavailable(
            f"{what} is not installed ({exc}): pip install 'gradcam_fast[bench]'"
        ) from None


# --- contenders -----------------------------------------------------------------------------


class _Contender:
    """Base: `run` is timed, `output` converts its result for the check, `close` undoes setup."""

    def run(self, images: torch.Tensor, classes: torch.Tensor) -> Any:
        raise NotImplementedError

    def output(self, raw: Any) -> GradCAMResult:
        return raw

    def close(self) -> None:
        pass


class EagerHook(_Contender):
    """1. `eager_gradcam`: forward hook, parameters requiring grad, a full `backward()`; on a GPU
    at `precision` (`_on_gpu_at`)."""

    def __init__(self, setup: Setup, precision: str = "float32"):
        self.setup, self.precision = setup, precision

    def run(self, images, classes):
        with _on_gpu_at(self.setup.device, self.precision):
            return eager_gradcam(self.setup.model, images, classes, self.setup.target_layer)


class EagerAutograd(_Contender):
    """2. autograd with respect to the target activations only (TorchCAM/Captum style), the
    parameters frozen: the backward runs through the head alone."""

    def __init__(self, setup: Setup):
        self.setup = setup
        self.model = setup.model
        self.activations: torch.Tensor | None = None

    def _hook(self, module, inputs, output):
        self.activations = output.detach().requires_grad_()
        return self.activations.clone()  # not a leaf: an in-place op may follow (DenseNet)

    def run(self, images, classes):
        # frozen and hooked during this call only: the other contenders share the model unfrozen
        flags = [p.requires_grad for p in self.model.parameters()]
        for p in self.model.parameters():
            p.requires_grad_(False)
        handle = self.setup.target_module.register_forward_hook(self._hook)
        try:
            return self._run(images, classes)
        finally:
            handle.remove()
            for p, flag in zip(self.model.parameters(), flags, strict=True):
                p.requires_grad_(flag)

    def _run(self, images, classes):
        with torch.enable_grad():
            logits = self.model(images)
            activations = self.activations
            scores = logits.gather(1, classes)
            grads = [
                torch.autograd.grad(scores[:, k].sum(), activations, retain_graph=True)[0]
                for k in range(classes.shape[1])
            ]
        self.activations = None
        lowres = gradcam_lowres(activations.detach(), torch.stack(grads, dim=1))
        cams = upsample_normalize(lowres, self.setup.image_size)
        return exposed(cams, lowres, classes, logits.detach())


class PytorchGradCam(_Contender):
    """3a. pytorch-grad-cam's `GradCAM` with `ClassifierOutputTarget`, as its README shows
    (CAM object made once, called per batch; it returns NumPy maps at the input size)."""

    def __init__(self, setup: Setup):
        library = _library("pytorch_grad_cam", "pytorch-grad-cam")
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        self.target_cls = ClassifierOutputTarget
        self.cam = library.GradCAM(model=setup.model, target_layers=[setup.target_module])

    def run(self, images, classes):
        targets = [self.target_cls(int(c)) for c in classes[:, 0]]
        return self.cam(input_tensor=images, targets=targets)

    def output(self, raw):
        return exposed(cams=torch.from_numpy(raw)[:, None])

    def close(self):
        self.cam.activations_and_grads.release()


class CaptumLayerGradCam(_Contender):
    """3b. Captum's `LayerGradCam(...).attribute(..., relu_attributions=True)`, upsampled with
    `LayerAttribution.interpolate(..., "bilinear")` and min-max normalized, as in its tutorial."""

    def __init__(self, setup: Setup):
        attr = _library("captum.attr", "captum")
        self.interpolate = attr.LayerAttribution.interpolate
        self.size = setup.image_size
        self.method = attr.LayerGradCam(setup.model, setup.target_module)

    def run(self, images, classes):
        lowres = self.method.attribute(images, target=classes[:, 0], relu_attributions=True)
        cams = _minmax(self.interpolate(lowres, (self.size, self.size), "bilinear"))
        return exposed(cams, lowres.detach(), classes)


class TorchCamGradCAM(_Contender):
    """3c. TorchCAM's `GradCAM(model, target_layer)` (extractor made once), the model called as
    usual, then `cam_extractor(class_idx, scores)`, as its README shows: maps min-max normalized
    at the layer's resolution, which are upsampled and normalized here (timed), as for Captum."""

    def __init__(self, setup: Setup):
        methods = _library("torchcam.methods", "torchcam")
        self.model = setup.model
        self.size = setup.image_size
        self.extractor = methods.GradCAM(setup.model, setup.target_module)

    def run(self, images, classes):
        scores = self.model(images)
        lowres = self.extractor(classes[:, 0].tolist(), scores)[0]  # [B, h, w], in [0, 1]
        size = (self.size, self.size)
        up = F.interpolate(lowres[:, None], size, mode="bilinear", align_corners=False)
        return exposed(cams=_minmax(up), classes=classes)

    def close(self):
        self.extractor.remove_hooks()
        self.extractor.reset_hooks()  # drops the last activations and the graph they hold


class FastSession(_Contender):
    """4. the gradcam_fast session (ONNX Runtime, CPU), post-processing included; with
    `backend="openvino"`, 8. the session on OpenVINO; on a GPU, ONNX Runtime's CUDA provider
    (or with `tensorrt=True`, TensorRT's)."""

    def __init__(self, setup: Setup, key: str = "gradcam_k1", **options: Any):
        if options.get("tensorrt") and (why := setup.unavailable.get("tensorrt")):
            raise ContenderUnavailable(f"TensorRT does not load here: {why}")
        if options.get("backend") == "openvino":
            _library("openvino", "openvino")
            if key not in setup.paths:
                raise ContenderUnavailable(
                    f"no {key} model in this run (OpenVINO's int8 needs nncf)"
                )
        path = setup.paths[key]
        if isinstance(path, Exception):
            raise RuntimeError(f"the {key} export failed: {path}")
        if setup.device in setup.unavailable:
            raise RuntimeError(setup.unavailable[setup.device])
        try:
            self.session = GradCAMSession(path, device=setup.device, **options)
        except Int8SaturationError as exc:  # ONNX Runtime on NNCF's 8-bit kernels, no VNNI
            raise ContenderUnavailable(str(exc)) from None

    def run(self, images, classes):
        return self.session(images, classes)


class FloorOrt(_Contender):
    """5a. the floor: the unmodified model in ONNX Runtime with the session's settings and
    IOBinding (an output buffer per batch size), like the session."""

    def __init__(self, setup: Setup):
        self.session = ort.InferenceSession(
            str(setup.paths["floor"]), session_options(), providers=["CPUExecutionProvider"]
        )
        self.num_classes = self.session.get_outputs()[0].shape[1]
        self.bindings: dict[int, tuple[ort.IOBinding, torch.Tensor]] = {}

    def _binding(self, batch: int) -> tuple[ort.IOBinding, torch.Tensor]:
        if batch not in self.bindings:
            binding = self.session.io_binding()
            logits = torch.empty(batch, self.num_classes)
            binding.bind_output(
                "logits", "cpu", 0, logits.numpy().dtype, logits.shape, logits.data_ptr()
            )
            self.bindings[batch] = (binding, logits)
        return self.bindings[batch]

    def run(self, images, classes):
        images = images.contiguous()
        binding, logits = self._binding(images.shape[0])
        binding.bind_input(
            "images", "cpu", 0, images.numpy().dtype, tuple(images.shape), images.data_ptr()
        )
        self.session.run_with_iobinding(binding)
        return exposed(logits=logits.clone())


class OpenVinoBare(_Contender):
    """8'. a bare OpenVINO call on the session's own compiled model (float32, channel weights),
    no checks, post-processing or copies: the session's overhead is its time over this one."""

    def __init__(self, setup: Setup):
        session = _openvino(CW, "float32")(setup).session
        self.request = session._runner.compiled.create_infer_request()

    def run(self, images, classes):
        self.request.infer({"images": images.numpy(), "targets": classes.numpy()})
        return self.request

    def output(self, raw):
        return exposed(logits=torch.from_numpy(raw.get_output_tensor(0).data.copy()))


class TorchBackend(_Contender):
    """7. the torch backend, `GradCAMSession.from_model(model, device=..., precision=...)` (on a
    GPU also with `cuda_graphs`)."""

    def __init__(self, setup: Setup, precision: str, **options: Any):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # no native bfloat16: timed anyway
            self.session = GradCAMSession.from_model(
                setup.model, target_layer=setup.target_layer, image_size=setup.image_size,
                device=setup.device, precision=precision, **options,
            )  # fmt: skip

    def run(self, images, classes):
        return self.session(images, classes)


class TorchNoGrad(_Contender):
    """5b. torch inference of the unmodified model under `no_grad`, for reference."""

    def __init__(self, setup: Setup):
        self.model = setup.model

    def run(self, images, classes):
        with torch.no_grad():
            return exposed(logits=self.model(images))


class PlainForward(_Contender):
    """The GPU floor: the plain forward of a copy of the model (no Grad-CAM) at `precision`,
    channels-last unless not, under inference_mode; with `graphs`, replayed from a CUDA graph
    captured once per batch size. Its output is the logits tensor, unchecked."""

    def __init__(
        self, setup: Setup, precision: str, channels_last: bool = True, graphs: bool = False
    ):
        self.half, self.precision = precision == "float16", precision
        self.format = torch.channels_last if channels_last else torch.contiguous_format
        dtype = torch.float16 if self.half else torch.float32
        self.net = copy.deepcopy(setup.model).to(dtype=dtype, memory_format=self.format)
        self.graphs = {} if graphs else None  # batch -> (graph, static input, static output)

    def _forward(self, x):
        exact = _no_tf32() if self.precision == "float32" else contextlib.nullcontext()
        with torch.inference_mode(), exact:
            return self.net(x)

    def _prepare(self, images):
        return (images.half() if self.half else images).contiguous(memory_format=self.format)

    def run(self, images, classes):
        if self.graphs is None:
            return self._forward(self._prepare(images))
        if images.shape[0] not in self.graphs:
            self.graphs[images.shape[0]] = self._capture(self._prepare(images).clone())
        graph, static, out = self.graphs[images.shape[0]]
        static.copy_(self._prepare(images))
        graph.replay()
        return out

    def _capture(self, static):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._forward(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self._forward(static)
        return graph, static, out


# --- the registry ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ContenderSpec:
    """A contender: its name, how to open it (`factory(setup)`: an object with `run`, `output`
    and `close`; on the GPU a callable `run(images, targets)`), and how it is checked."""

    name: str
    factory: Callable[[Setup], Any]
    precision: str = "float32"  # float32, tf32, float16, bfloat16, int8
    floor: bool = False
    label: str = ""  # its label in the CPU report's tables


CW = "gradcam_channel_weights"


def _session(key: str = "gradcam_k1", **options: Any) -> Callable[[Setup], FastSession]:
    return lambda setup: FastSession(setup, key, **options)


def _openvino(key: str, precision: str, **options: Any) -> Callable[[Setup], FastSession]:
    return _session(key, backend="openvino", precision=precision, **options)


def _torch(precision: str, **options: Any) -> Callable[[Setup], TorchBackend]:
    return lambda setup: TorchBackend(setup, precision, **options)


# the groups the commands time together
PEERS = ("eager_autograd", "pytorch_grad_cam", "captum", "torchcam")  # 2 and 3
SESSIONS = ("gradcam_fast", "gradcam_fast_cw", "gradcam_fast_int8", "torch_float32",
            "torch_bfloat16")  # fmt: skip
THROUGHPUT = {"performance_hint": "THROUGHPUT"}
FLOORS = ("floor_ort", "torch_no_grad", "openvino_bare")  # checked on their logits alone
# name, factory, label in the CPU report's tables; a name holding "int8" or "bfloat16" is checked
# against that precision's LIMITS, every other against float32's
_CPU = [
    ("eager_hook", EagerHook, "1. eager hook (full backward)"),
    ("eager_autograd", EagerAutograd, "2. eager autograd on the activation"),
    ("pytorch_grad_cam", PytorchGradCam, "3a. pytorch-grad-cam GradCAM"),
    ("captum", CaptumLayerGradCam, "3b. Captum LayerGradCam"),
    ("torchcam", TorchCamGradCAM, "3c. TorchCAM GradCAM"),
    ("gradcam_fast", _session(), "4. gradcam_fast session (ORT)"),
    ("floor_ort", FloorOrt, "5a. floor: plain model in ORT"),
    ("torch_no_grad", TorchNoGrad, "5b. torch no_grad inference"),
    ("gradcam_fast_cw", _session(CW),
     "4''. gradcam_fast session, channel weights only (channel_weights_only=True)"),
    ("gradcam_fast_low_memory", _session(low_memory=True),
     "4'. gradcam_fast session, low_memory=True"),
    ("gradcam_fast_low_memory_external", _session("gradcam_external", low_memory=True),
     "4'. gradcam_fast session, low_memory=True, external-data model"),
    ("gradcam_fast_int8", _session("gradcam_int8"),
     "4i. gradcam_fast session, int8 body, channel weights only"),
    ("torch_float32", _torch("float32"), "7. gradcam_fast torch backend, float32"),
    ("torch_bfloat16", _torch("bfloat16"), "7b. gradcam_fast torch backend, bfloat16 body"),
    ("ort_qdq_int8", _session("gradcam_ov_int8"),
     "4q. gradcam_fast session (ORT) on the NNCF QDQ int8 file"),
    ("openvino_float32", _openvino(CW, "float32"),
     "8. session on OpenVINO, float32 (f32 hint), channel weights only"),
    ("openvino_full_float32", _openvino("gradcam_k1", "float32"),
     "8. session on OpenVINO, float32, full export (gradients)"),
    ("openvino_bfloat16", _openvino(CW, "bfloat16"),
     "8b. session on OpenVINO, bf16 hint, channel weights only"),
    ("openvino_full_bfloat16", _openvino("gradcam_k1", "bfloat16"),
     "8b. session on OpenVINO, bf16 hint, full export (gradients)"),
    ("openvino_int8", _openvino("gradcam_ov_int8", "int8"),
     "8i. session on OpenVINO, NNCF int8 body, channel weights only"),
    ("openvino_int8_head_int8", _openvino("gradcam_ov_int8_head_int8", "int8"),
     "8i'. session on OpenVINO, NNCF int8 body and head weights, channel weights only"),
    ("openvino_full_int8", _openvino("gradcam_ov_int8_full", "int8"),
     "8i. session on OpenVINO, NNCF int8 body, full export (gradients)"),
    ("openvino_throughput", _openvino(CW, "float32", **THROUGHPUT),
     "8t. session on OpenVINO, float32, PERFORMANCE_HINT=THROUGHPUT"),
    ("openvino_bfloat16_throughput", _openvino(CW, "bfloat16", **THROUGHPUT),
     "8t. session on OpenVINO, bf16, PERFORMANCE_HINT=THROUGHPUT"),
    ("openvino_bare", OpenVinoBare,
     "8'. bare OpenVINO call on the session's compiled model (float32)"),
    ("gradcam_fast_k5", _session("gradcam_k5"), "6. gradcam_fast session, K=5"),
]  # fmt: skip


def _precision(name: str) -> str:
    return next((p for p in ("int8", "bfloat16") if p in name), "float32")


CONTENDERS: dict[str, ContenderSpec] = {
    name: ContenderSpec(name, factory, _precision(name), name in FLOORS, label)
    for name, factory, label in _CPU
}


def _plain(precision: str, **options: Any) -> Callable[[Setup], PlainForward]:
    return lambda setup: PlainForward(setup, precision, **options)


def _eager(precision: str) -> Callable[[Setup], EagerHook]:
    return lambda setup: EagerHook(setup, precision)


# The GPU rows (Setup.paths holds the float32 and float16 exports by precision), in the order
# gpu_check times them, most important first (a spent budget skips the tail): the plain forward
# (the floor), the eager hook, the torch backend and ONNX Runtime's CUDA provider (with and
# without CUDA graphs), the levers that may push the floor down (prefer_nhwc, cuDNN EXHAUSTIVE
# search, CUDA graphs, NCHW), the TF32 rows and TensorRT. A name with its precision is one row.
GPU_FLOOR = "plain forward (floor)"
EAGER_FP32 = "eager hook fp32"
GRAPHS = {"cuda_graphs": True}
NHWC, EXHAUSTIVE = {"cuda_options": {"prefer_nhwc": "1"}}, {"cudnn_search": "EXHAUSTIVE"}
_GPU = [  # name, factory, the precision it is checked at (TensorRT's float32 may use TF32)
    (GPU_FLOOR, _plain("float32"), "float32"),
    (GPU_FLOOR, _plain("float16"), "float16"),
    (EAGER_FP32, _eager("float32"), "float32"),
    ("eager hook fp16 (autocast)", _eager("float16"), "float16"),
    ("torch backend fp16 + CUDA graphs", _torch("float16", **GRAPHS), "float16"),
    ("torch backend fp32 + CUDA graphs", _torch("float32", **GRAPHS), "float32"),
    ("onnxruntime CUDA fp16", _session("float16"), "float16"),
    ("onnxruntime CUDA fp16 + CUDA graphs", _session("float16", **GRAPHS), "float16"),
    ("onnxruntime CUDA fp32", _session("float32"), "float32"),
    ("onnxruntime CUDA fp32 + CUDA graphs", _session("float32", **GRAPHS), "float32"),
    ("torch backend fp16", _torch("float16"), "float16"),
    ("torch backend fp32", _torch("float32"), "float32"),
    # levers on the floor: NHWC kernels, cuDNN's exhaustive search, graphs, channels-last
    ("onnxruntime CUDA fp16 + CUDA graphs + prefer_nhwc",
     _session("float16", **GRAPHS, **NHWC), "float16"),
    ("onnxruntime CUDA fp16 + CUDA graphs + EXHAUSTIVE",
     _session("float16", **GRAPHS, **EXHAUSTIVE), "float16"),
    ("onnxruntime CUDA fp16 + CUDA graphs + prefer_nhwc + EXHAUSTIVE",
     _session("float16", **GRAPHS, **EXHAUSTIVE, **NHWC), "float16"),
    (GPU_FLOOR + " + CUDA graphs", _plain("float16", graphs=True), "float16"),
    (GPU_FLOOR + " NCHW", _plain("float16", channels_last=False), "float16"),
    (GPU_FLOOR, _plain("tf32"), "tf32"),
    ("eager hook (torch defaults: TF32 convs)", _eager("tf32"), "tf32"),
    ("torch backend tf32 + CUDA graphs", _torch("tf32", **GRAPHS), "tf32"),
    ("onnxruntime TensorRT fp32", _session("float32", tensorrt=True), "tf32"),
    ("onnxruntime TensorRT fp16", _session("float16", tensorrt=True), "float16"),
]  # fmt: skip
GPU_CONTENDERS = [
    ContenderSpec(name, factory, precision, name.startswith(GPU_FLOOR))
    for name, factory, precision in _GPU
]
# what gpu_check --quick leaves out: the runs without CUDA graphs
FULL_ONLY = {"onnxruntime CUDA fp16", "onnxruntime CUDA fp32", "torch backend fp16",
             "torch backend fp32"}  # fmt: skip


def gpu_plan(quick: bool) -> list[ContenderSpec]:
    """The GPU contenders gpu_check times, in order; `quick`: fewer variants."""
    return [c for c in GPU_CONTENDERS if not (quick and c.name in FULL_ONLY)]


# earlier names, so that the command lines in RESULTS.md still run
ALIASES = {"gradcam_fast_lean": "gradcam_fast_cw"}


def open_contender(name: str, setup: Setup) -> _Contender:
    """Build contender `name` on `setup` (raises ContenderUnavailable for a missing library)."""
    name = ALIASES.get(name, name)
    if name not in CONTENDERS:
        raise ValueError(f"unknown contender {name!r}; choose one of {sorted(CONTENDERS)}")
    return CONTENDERS[name].factory(setup)
