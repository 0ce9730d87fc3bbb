"""Benchmark evaluation with the standard SR protocol (docs/method.md, "Evaluation protocol").

Per image: the HR image is cropped to a multiple of the scale (top-left kept); the LR input is
MATLAB's antialiased bicubic downscale of it, rounded to uint8; the model's uint8 output is scored
against the HR image by PSNR and SSIM on the 8-bit Y channel with ``scale`` pixels shaved from
every border. A dataset's figures are the means over its images.

The library never prints: progress goes to an optional callback, details to ``logging``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from vsr.device import resolve_device
from vsr.errors import ConfigError, InputError, ModelError
from vsr.metrics import SSIM_WINDOW, mean_psnr, psnr_y, ssim_y
from vsr.options import (
    EVAL_BASELINES,
    PRECISIONS,
    Config,
    as_paths,
    check_callable,
    check_choice,
    check_device,
    check_model,
    check_scale,
    check_type,
)
from vsr.resize import imresize, to_uint8

__all__ = [
    "BASELINES", "DatasetResult", "EvalConfig", "ImageResult", "Progress", "UpscaleHandle",
    "benchmark_images", "check_benchmark", "check_scorable", "degrade", "evaluate_dataset",
    "evaluate_image", "json_number", "min_size", "modcrop", "run_evaluation", "summarize",
]

log = logging.getLogger(__name__)

BASELINES: tuple[str, ...] = EVAL_BASELINES


class UpscaleHandle(Protocol):
    """What evaluation needs of a model handle (``vsr.models.load_model`` returns one)."""

    scale: int

    def upscale(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, H, W) 0..255 -> uint8 (N, 3, scale*H, scale*W), clamped and rounded."""
        ...


@dataclass(frozen=True)
class ImageResult:
    """Scores of one image."""

    name: str
    psnr: float
    ssim: float


@dataclass(frozen=True)
class DatasetResult:
    """Mean scores of one benchmark set, with the per-image scores in file-name order."""

    dataset: str
    scale: int
    psnr: float
    ssim: float
    images: int
    per_image: tuple[ImageResult, ...] = field(default=(), repr=False)
    precision: str = "float32"  # the dtype the model computed in
    path: str = ""  # the folder as given: two sets of one name are told apart by it

    def to_json(self) -> dict[str, Any]:
        """The ``vsr eval --json`` row: PSNR to 4 decimals, SSIM to 5; null where infinite
        (:func:`json_number`)."""
        return {"dataset": self.dataset, "scale": self.scale, "psnr": json_number(self.psnr, 4),
                "ssim": json_number(self.ssim, 5), "images": self.images,
                "precision": self.precision, "path": self.path}


def json_number(value: float, digits: int) -> float | None:
    """``value`` rounded to ``digits`` decimals for a JSON row, or None (null) where it is not
    finite: strict JSON has no Infinity or NaN, and the PSNR of a picture scored against an
    identical one (a flat image, a black frame) is infinite."""
    return round(value, digits) if math.isfinite(value) else None


@dataclass(frozen=True)
class Progress:
    """One finished image, handed to the progress callback."""

    dataset: str
    index: int  # 1-based
    total: int
    image: str
    psnr: float
    ssim: float


ProgressCallback = Callable[[Progress], None]


def benchmark_images(folder: str | os.PathLike) -> tuple[str, list[Path]]:
    """Resolve a benchmark folder: its ``HR/`` subfolder if present, else the folder itself.

    Returns:
        (dataset name, sorted HR image paths). The name is the folder's own, or its parent's
        when the folder given is itself named ``HR``.

    Raises:
        InputError: the folder is missing, cannot be listed or holds no images, or an image
            name in it is no regular file: a broken link, a folder, a FIFO (never opened), a
            socket (the set would be scored without that image).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"benchmark folder not found: {folder}")
    from vsr.imageio import list_images  # lazy: scoring in-memory images needs no PyAV
    from vsr.io.image import IMAGE_SUFFIXES

    hr_dir = folder / "HR" if (folder / "HR").is_dir() else folder
    resolved = folder.resolve()
    name = resolved.parent.name if resolved.name == "HR" else resolved.name
    try:
        images = list_images(hr_dir)
        # names list_images leaves out as no file: refused, as the set's mean would be of the
        # images left. stat only: a FIFO is never opened (that would block)
        odd = sorted(p for p in hr_dir.iterdir()
                     if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
                     and not p.is_file())
        why = _no_image_file(odd[0]) if odd else None
    except OSError as exc:  # a folder this user may not list
        raise InputError(f"cannot list benchmark folder {hr_dir}: "
                         f"{exc.strerror or exc}") from exc
    if why:
        raise InputError(why)
    if not images:
        raise InputError(f"no images in benchmark folder {hr_dir}")
    return name, images


def _no_image_file(path: Path) -> str:
    """Why ``path``, named like an image but no regular file, is not one of a set's images."""
    if path.is_symlink() and not path.exists():
        return f"{path} is a broken link: its target {os.readlink(path)} is missing"
    mode = path.stat().st_mode
    kind = ("folder" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode)
            else "socket" if stat.S_ISSOCK(mode) else "device" if stat.S_ISCHR(mode)
            or stat.S_ISBLK(mode) else "special file")
    return f"{path} is a {kind}, not an image file: the set would be scored without it"


def modcrop(image: torch.Tensor, scale: int) -> torch.Tensor:
    """Crop (..., H, W) to a multiple of ``scale`` in both dimensions, keeping the top-left."""
    h, w = image.shape[-2:]
    h, w = h - h % scale, w - w % scale
    if h == 0 or w == 0:
        raise InputError(f"image {tuple(image.shape[-2:])} is smaller than the scale {scale}")
    return image[..., :h, :w]


def min_size(scale: int) -> int:
    """The smallest HR side that can be scored at ``scale``: cropped to a multiple of
    ``scale`` and shaved by ``scale`` on both sides, it must still hold SSIM's window."""
    need = SSIM_WINDOW + 2 * scale
    return -(-need // scale) * scale


def check_scorable(width: int, height: int, scale: int, name: object) -> None:
    """Raise InputError, naming ``name`` (an image, a clip), unless a ``width`` x ``height``
    HR picture is large enough to score at ``scale`` (:func:`min_size`)."""
    side = min_size(scale)
    if width < side or height < side:
        raise InputError(f"{name} is {width}x{height} pixels, too small to score at x{scale}: "
                         f"the protocol needs at least {side}x{side} (the crop to a multiple of "
                         f"{scale}, {scale} pixels shaved per border, an {SSIM_WINDOW}x"
                         f"{SSIM_WINDOW} SSIM window)")


def check_benchmark(folder: str | os.PathLike, scale: int) -> None:
    """Raise InputError unless every image of the benchmark ``folder`` can be read and scored
    at ``scale``: what a training or compression run checks of its validation folder before
    it starts, rather than at its first validation, steps (and maybe hours) later."""
    from vsr.imageio import read_image

    for path in benchmark_images(folder)[1]:
        image = read_image(path)
        check_scorable(image.shape[-1], image.shape[-2], scale, path)


def degrade(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The protocol's LR input: MATLAB bicubic (antialiased) downscale by ``scale``, to uint8.

    Args:
        hr: uint8 (..., 3, H, W), H and W multiples of ``scale``, any device.

    Returns:
        uint8 (..., 3, H/scale, W/scale), same device.
    """
    h, w = hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} is not a multiple of {scale}; modcrop it first")
    # float64 so the result matches MATLAB's double arithmetic to the last rounding
    lr = imresize(hr.to(torch.float64), 1.0 / scale, size=(h // scale, w // scale))
    return to_uint8(lr)


def evaluate_image(handle: UpscaleHandle, hr: torch.Tensor, scale: int, *,
                   gray: bool = False, name: object = "image") -> tuple[float, float]:
    """Score ``handle`` on one HR image.

    Args:
        hr: uint8 (3, H, W) RGB, at least :func:`min_size` on each side; cropped here to a
            multiple of ``scale``.
        gray: score on gray values instead of Y (for grayscale files under ``raw_gray``, see
            :func:`evaluate_dataset`); the output's gray is the rounded mean of its channels.
        name: what error messages call the image (its file).

    Returns:
        (PSNR dB, SSIM) on Y, ``scale`` pixels shaved.

    Raises:
        InputError: the image is too small to score at ``scale``.
        ModelError: the model's output is not uint8 (1, 3, >=H, >=W).
    """
    check_scorable(hr.shape[-1], hr.shape[-2], scale, name)
    hr = modcrop(hr, scale)
    lr = degrade(hr, scale)
    with torch.inference_mode():  # no autograd state is needed while scoring
        sr = handle.upscale(lr[None])
    if not torch.is_tensor(sr) or sr.dtype != torch.uint8 or sr.ndim != 4 \
            or sr.shape[:2] != (1, 3) or sr.shape[-2] < hr.shape[-2] or sr.shape[-1] < hr.shape[-1]:
        got = f"{tuple(sr.shape)} {sr.dtype}" if torch.is_tensor(sr) else type(sr).__name__
        raise ModelError(f"model output {got} does not fit uint8 (1, 3, "
                         f"{hr.shape[-2]}, {hr.shape[-1]})")
    sr = sr[0, :, : hr.shape[-2], : hr.shape[-1]].cpu()
    if gray:
        sr, hr = _to_gray(sr), _to_gray(hr)
    return psnr_y(sr, hr, scale), ssim_y(sr, hr, scale)


def _to_gray(image: torch.Tensor) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (1, H, W): the rounded channel mean (exact for gray images)."""
    return to_uint8(image.to(torch.float64).mean(dim=0, keepdim=True))


def evaluate_dataset(handle: UpscaleHandle, folder: str | os.PathLike, scale: int, *,
                     progress: ProgressCallback | None = None,
                     raw_gray: bool = False) -> DatasetResult:
    """Evaluate ``handle`` at ``scale`` on one benchmark folder (see :func:`benchmark_images`).

    Every image is loaded as RGB (grayscale files as three equal channels) and scored on Y, as
    docs/method.md ("Evaluation protocol") states. ``raw_gray=True`` instead scores grayscale
    *files* on their gray values, skipping the RGB -> Y step, which is what the MATLAB scripts
    behind the published tables do for single-channel images (it lowers Set14's mean by ~0.09 dB
    through bridge.png).

    Raises:
        InputError: missing folder, no images, an unreadable image or one too small to score
            (:func:`min_size`), named.
        ModelError: the model's output breaks the handle contract.
    """
    from vsr.imageio import read_image_and_gray

    name, paths = benchmark_images(folder)
    results = []
    for i, path in enumerate(paths, 1):
        hr, gray_file = read_image_and_gray(path)  # the pixels and format of one read
        p, s = evaluate_image(handle, hr, scale, gray=raw_gray and gray_file, name=path)
        results.append(ImageResult(path.name, p, s))
        log.debug("%s %s: %.4f dB, SSIM %.5f", name, path.name, p, s)
        if progress is not None:
            progress(Progress(name, i, len(paths), path.name, p, s))
    # an image identical to its reference scores inf dB; in the mean it counts PSNR_CEILING
    mean_ssim = math.fsum(r.ssim for r in results) / len(results)
    return DatasetResult(name, scale, mean_psnr([r.psnr for r in results]), mean_ssim,
                         len(results), tuple(results), path=os.fspath(folder))


@dataclass(frozen=True)
class EvalConfig(Config):
    """One ``vsr eval`` run: benchmark folders, a model (or a baseline), scale, device and
    precision (fp32, the reference, unless asked; ``auto`` scores, on every image, what
    ``vsr upscale`` runs here for large 8-bit frames, see :func:`vsr.loading.auto_dtype`)."""

    data: tuple[Path, ...]
    scale: int | None = None
    model: str | None = None
    baseline: str | None = None
    device: str = "auto"
    raw_gray: bool = False
    precision: str = "fp32"

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "data", as_paths("data", self.data))
        if not self.data:
            raise ConfigError("give at least one benchmark folder (--data)")
        if (self.model is None) == (self.baseline is None):
            raise ConfigError("give exactly one of --model and --baseline")
        if self.baseline is not None and self.baseline not in BASELINES:
            raise ConfigError(f"unknown baseline {self.baseline!r}; known: {', '.join(BASELINES)}")
        if self.baseline is not None and self.scale is None:
            raise ConfigError(f"--baseline {self.baseline} needs --scale")
        check_model(self.model)
        check_scale(self.scale)  # the shared options' validators (vsr.options)
        check_device(self.device)
        check_choice("precision", self.precision, PRECISIONS)


def run_evaluation(config: EvalConfig, *,
                   progress: ProgressCallback | None = None) -> list[DatasetResult]:
    """Load the model (or baseline) once and evaluate it on every folder of ``config.data``.

    All folders are checked for images before the model is loaded, so a bad path fails fast.

    Returns:
        one :class:`DatasetResult` per folder, in the order given.

    Raises:
        ConfigError, InputError, ModelError (and its CheckpointError) as they arise.
    """
    check_type("config", config, EvalConfig)
    check_callable("progress", progress)
    for folder in config.data:
        benchmark_images(folder)
    from vsr.loading import dtype_name, load_model  # lazy: the model zoo is only needed here

    name = config.baseline if config.baseline is not None else config.model
    device = resolve_device(config.device, require_available=True)
    handle = load_model(name, scale=config.scale, device=device, precision=config.precision)
    scale = config.scale if config.scale is not None else int(handle.scale)
    precision = dtype_name(handle.dtype)
    log.info("evaluating %s x%d in %s on %d folder(s)", name, scale, precision, len(config.data))
    return [dataclasses.replace(evaluate_dataset(handle, folder, scale, progress=progress,
                                                 raw_gray=config.raw_gray), precision=precision)
            for folder in config.data]


def summarize(results: Sequence[DatasetResult]) -> dict[str, Any]:
    """The ``vsr eval --json`` object."""
    return {"results": [r.to_json() for r in results]}
