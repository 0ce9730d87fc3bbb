"""`vsr export`: a model as an ONNX file (dynamic batch, height and width), a traced
TorchScript file, or a TensorRT program (static shape, torch-tensorrt on CUDA).

Each artefact is checked after writing: ONNX in onnxruntime (when installed) and TorchScript
in torch at two input sizes, TensorRT at its own shape, against the eager model.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vsr.backends.base import TOLERANCE, NetworkOnly
from vsr.backends.onnx import export_onnx, import_onnxruntime, onnx_signature
from vsr.device import resolve_device
from vsr.errors import ConfigError, OutputError, VsrError
from vsr.io.image import MAX_PIXELS_ENV, max_pixels
from vsr.io.output import check_output_path, discard, finish, temp_path_for
from vsr.loading import dtype_name, load_model
from vsr.options import (
    EXPORT_FORMATS,
    Config,
    as_path,
    check_at_least,
    check_choice,
    check_device,
    check_model,
    check_precision,
    check_scale,
)

log = logging.getLogger(__name__)

FORMATS = EXPORT_FORMATS


# The traced sample's height and width where none is given: the dynamic formats take any size
# (so a small, cheap trace); a TensorRT engine takes only its own, so a frame size.
DEFAULT_SIZE = {"onnx": (32, 32), "torchscript": (32, 32), "tensorrt": (540, 960)}
# the file names each format is written to (any case): torch.jit.save's TorchScript archive,
# torch_tensorrt.save's ExportedProgram (as vsr.backends.tensorrt caches it)
SUFFIXES = {"onnx": (".onnx",), "torchscript": (".pt", ".ts", ".pth"), "tensorrt": (".ep",)}


@dataclass(frozen=True)
class ExportConfig(Config):
    """One export to ``output``, a file named as its format is (:data:`SUFFIXES`);
    ``height``/``width``/``batch`` are the traced sample's size (for TensorRT
    the engine's fixed input size; None: ``DEFAULT_SIZE`` of the format). Validated on
    construction (ConfigError)."""

    model: str | None
    format: str
    output: Path
    scale: int | None = None
    height: int | None = None
    width: int | None = None
    batch: int = 1
    precision: str = "auto"  # auto: fp16 for tensorrt, fp32 otherwise
    device: str = "auto"
    overwrite: bool = False
    check: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "output", as_path("output", self.output))
        check_choice("format", self.format, FORMATS)
        suffixes = SUFFIXES[self.format]
        if self.output.suffix.lower() not in suffixes:  # ONNX in a .mp4 was written, exit 0
            raise ConfigError(f"a {self.format} export is written to a {' or '.join(suffixes)} "
                              f"file, not {self.output.name}")
        object.__setattr__(self, "precision", check_precision(self.precision))
        check_model(self.model)
        check_scale(self.scale)
        check_device(self.device)
        if self.format == "onnx" and self.precision not in ("auto", "fp32"):
            raise ConfigError("ONNX export is fp32 only")
        check_at_least("height", self.height, 1, optional=True)
        check_at_least("width", self.width, 1, optional=True)
        check_at_least("batch", self.batch, 1)
        # the traced sample is allocated at once: sized as a picture is, before it fails inside
        limit = max_pixels()
        n, _, h, w = self.sample_shape
        if n * h * w > limit:
            raise ConfigError(f"a traced input of {n}x{h}x{w} ({n * h * w:,} pixels) is over "
                              f"the limit of {limit:,} pixels; set {MAX_PIXELS_ENV} to raise it")

    @property
    def sample_shape(self) -> tuple[int, int, int, int]:
        """(batch, 3, height, width) of the input traced (TensorRT: the engine's input)."""
        h, w = DEFAULT_SIZE[self.format]
        return (self.batch, 3, self.height or h, self.width or w)

    @property
    def run_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        return "fp16" if self.format == "tensorrt" else "fp32"


@dataclass(frozen=True)
class ExportResult:
    output: str
    format: str
    model: str
    scale: int
    precision: str
    # the input the artefact takes, (N, 3, H, W): an int for a fixed axis, the axis' name for
    # one that may differ at run time (ONNX: as the file itself declares it)
    shape: list[int | str]
    dynamic: list[str]  # the axes of ``shape`` given by name: "batch", "height", "width"
    traced: list[int]  # the input the artefact was traced (TensorRT: built) on
    bytes: int
    max_error: float | None  # |artefact - eager| over the checks; None when not checked
    seconds: float
    # ONNX: what the file declares, {"input": {"name", "shape", "dtype"}, "output": {...}}
    # (vsr.backends.onnx.onnx_signature); None for the other formats
    signature: dict | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def export_torchscript(module: nn.Module, path: str | Path, sample: torch.Tensor) -> None:
    """Trace ``module(x, return_all=False)`` on ``sample`` and save it (any input size)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated but still the portable format
        traced = torch.jit.trace(NetworkOnly(module).eval(), (sample,), check_trace=False)
    # saved into memory, then written by Python: torch.jit.save to a path aborts the whole
    # process (SIGABRT, a partial file left) when the write fails, e.g. on a full disk
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    Path(path).write_bytes(buffer.getbuffer())


_AXES = ("batch", "channels", "height", "width")  # of an (N, 3, H, W) input

# Two small shapes the dynamic formats are checked at (odd sizes, another batch).
CHECK_SHAPES = ((1, 3, 24, 40), (2, 3, 37, 18))


def _error(y: torch.Tensor | np.ndarray, ref: torch.Tensor) -> float:
    y = torch.as_tensor(y).to(ref.device, torch.float32)
    if y.shape != ref.shape:
        raise OutputError(f"the exported model gives {tuple(y.shape)}, eager {tuple(ref.shape)}")
    return float((y - ref.float()).abs().max())


def _check(cfg: ExportConfig, handle, path: Path) -> float | None:
    errors = []
    if cfg.format == "onnx":
        try:
            ort = import_onnxruntime()
        except ImportError:
            log.warning("onnxruntime is not installed; the ONNX file was not run")
            return None
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            name = session.get_inputs()[0].name
            for shape in CHECK_SHAPES:
                x = torch.rand(shape)
                errors.append(_error(session.run(None, {name: x.numpy()})[0], handle.infer(x)))
        except Exception as exc:  # onnxruntime's own errors: the file does not run as claimed
            if isinstance(exc, VsrError):
                raise
            raise OutputError(f"the exported ONNX file does not run in onnxruntime "
                              f"({' '.join(str(exc).split())[:200]}); nothing was written"
                              ) from None
    elif cfg.format == "torchscript":
        loaded = torch.jit.load(str(path), map_location=handle.device)
        for shape in CHECK_SHAPES:
            x = torch.rand(shape, device=handle.device, dtype=handle.dtype)
            with torch.inference_mode():
                errors.append(_error(loaded(x), handle.infer(x)))
    else:
        loaded = torch.export.load(str(path)).module()
        x = torch.rand(cfg.sample_shape, device=handle.device, dtype=handle.dtype)
        with torch.inference_mode():
            errors.append(_error(loaded(x), handle.infer(x)))
    return max(errors)


def _model_file(model: str | None) -> Path | None:
    """The weights file ``model`` is read from: a registry name's shipped weights or the
    checkpoint path itself (None: bicubic, an unknown name, no file)."""
    from vsr.models import DEFAULT_MODEL, REGISTRY

    text = model or DEFAULT_MODEL
    if text in REGISTRY:
        return REGISTRY.get(text).weights_path
    return Path(text)


def _write(cfg: ExportConfig, handle, shape: tuple[int, ...], tmp: Path) -> None:
    """Write the artefact ``cfg.format`` asks for into ``tmp``."""
    if cfg.format == "onnx":
        export_onnx(handle.module, tmp, sample_hw=shape[2:], batch=shape[0])
    elif cfg.format == "torchscript":
        sample = torch.rand(shape, device=handle.device, dtype=handle.dtype)
        export_torchscript(handle.module, tmp, sample)
    else:
        from vsr.backends.tensorrt import compile_engine, save_engine

        save_engine(compile_engine(handle, shape), tmp, shape, handle)


def export_model(cfg: ExportConfig) -> ExportResult:
    """Write the artefact to ``cfg.output`` (atomically). Raises ConfigError (bad model,
    missing package, TensorRT without CUDA), OutputError, ModelError, CheckpointError."""
    t0 = time.perf_counter()
    # the model's own file is refused as an input is, with --overwrite too (links included)
    out = check_output_path(cfg.output, overwrite=cfg.overwrite,
                            input_path=_model_file(cfg.model))
    device = resolve_device(cfg.device)
    if cfg.format == "onnx":
        device = torch.device("cpu")  # exported from the CPU; runs anywhere onnxruntime does
    if cfg.format == "tensorrt":
        from vsr.backends.tensorrt import versions

        try:
            versions()
        except ImportError as exc:
            raise ConfigError(f"TensorRT export needs torch-tensorrt ({exc}); "
                              "pip install 'vsr[tensorrt]' on a CUDA machine") from None
        if device.type != "cuda":
            raise ConfigError("TensorRT export needs a CUDA device")
    handle = load_model(cfg.model, scale=cfg.scale, device=device, precision=cfg.run_precision)
    if handle.module is None:
        raise ConfigError(f"{handle.name} has no network to export")
    shape = cfg.sample_shape
    tmp = temp_path_for(out)
    try:
        try:
            _write(cfg, handle, shape, tmp)
        except OSError as exc:  # a full disk, a file-size limit, a folder gone
            raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
        # what an ONNX file accepts is read back from the file, not assumed
        signature = onnx_signature(tmp) if cfg.format == "onnx" else None
        max_error = _check(cfg, handle, tmp) if cfg.check else None
        tol = TOLERANCE.get(handle.dtype, 1e-3)
        if max_error is not None and not max_error <= tol:  # NaN fails too
            raise OutputError(f"the exported model differs from eager by {max_error:.2e} "
                              f"(tolerance {tol:.0e}); nothing was written")
        # without --overwrite a file that appeared meanwhile (another run) is kept
        finish(tmp, out, replace=cfg.overwrite)
    except BaseException:
        discard(tmp)
        raise
    if signature is not None:
        accepts = [d if isinstance(d, int) else (d or axis)
                   for axis, d in zip(_AXES, signature["input"]["shape"], strict=True)]
    elif cfg.format == "torchscript":  # a trace takes any size (what the checks ran at)
        accepts = ["batch", 3, "height", "width"]
    else:
        accepts = list(shape)
    return ExportResult(
        output=str(out), format=cfg.format, model=handle.name, scale=handle.scale,
        precision=dtype_name(handle.dtype), shape=accepts,
        dynamic=[axis for axis, d in zip(_AXES, accepts, strict=True) if isinstance(d, str)],
        traced=list(shape),
        bytes=out.stat().st_size, max_error=max_error,
        seconds=round(time.perf_counter() - t0, 3), signature=signature)
