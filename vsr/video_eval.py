"""Video evaluation: a model on real clips through a named degradation chain.

Per clip: the first ``frames`` frames are decoded to 8-bit RGB and cropped to a multiple of the
scale (top-left kept, as :func:`vsr.evaluate.modcrop`); the LR clip is made from them by the
degradation chain (:mod:`vsr.degradations`; the whole clip in one draw, video codecs over the
whole clip as a real encoder would); the model upscales every LR frame through its handle; each
frame is scored against its HR frame by Y-PSNR and SSIM with ``scale`` pixels shaved
(:func:`vsr.metrics.psnr_y` / :func:`vsr.metrics.ssim_y`, the image protocol's metrics) and the
clip's figures are the means over its frames. In the mean a frame's PSNR counts at most
:data:`vsr.metrics.PSNR_CEILING` dB (libvmaf's ceiling for 8-bit video, 6 * 8 + 12): a frame
the upscaler reproduces exactly (a black or flat frame) scores infinite dB, which made the
clip's mean infinite, whatever its other frames; ``per_frame_psnr`` keeps the uncapped figures.

Temporal stability, ``flicker``: with Y the 8-bit luma of :func:`vsr.metrics.rgb_to_y`
(rounded, as the metrics use it) and ``scale`` pixels shaved from every border,

    flicker = 1/(T-1) * sum_{t=1}^{T-1} sqrt(mean_pixels(((Y(SR_t) - Y(SR_{t-1}))
                                                         - (Y(HR_t) - Y(HR_{t-1})))^2))

i.e. the mean over consecutive frame pairs of the RMSE (in 8-bit Y levels) between the output's
frame-to-frame change and the HR's. Equivalently the RMSE of the change of the error image
``SR_t - HR_t`` from one frame to the next: an error that stays put costs nothing, an error
that appears, vanishes or moves differently from the content (flicker, shimmering detail,
crawling edges) does. It is 0 for a perfect upscaler and needs no optical flow. Lower is
better; compare a model's with the bicubic baseline's on the same LR frames.

The library never prints: progress goes to an optional callback, details to ``logging``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vsr.degradations import DegradationChain, check_seed
from vsr.device import resolve_device
from vsr.errors import ConfigError, InputError, ModelError
from vsr.evaluate import (
    BASELINES,
    Progress,
    ProgressCallback,
    UpscaleHandle,
    check_scorable,
    json_number,
    modcrop,
)
from vsr.io.source import PyAVSource
from vsr.metrics import mean_psnr, psnr_y, rgb_to_y, ssim_y
from vsr.options import (
    PRECISIONS,
    Config,
    as_paths,
    check_choice,
    check_deflicker,
    check_model,
    check_scale,
    check_type,
)
from vsr.pipeline.temporal import Deflicker

__all__ = ["ClipResult", "Scores", "VideoEvalConfig", "evaluate_clip", "flicker", "read_hr_frames",
           "run_video_evaluation", "summarize_video"]

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Scores:
    """Mean figures of one upscaler on one clip: Y-PSNR (dB), SSIM, flicker (Y levels)."""

    psnr: float
    ssim: float
    flicker: float

    def to_json(self, prefix: str = "") -> dict[str, float | None]:
        """PSNR to 4 decimals, SSIM to 5, flicker to 4, null where not finite
        (:func:`vsr.evaluate.json_number`); keys prefixed (e.g. ``baseline_``)."""
        return {f"{prefix}psnr": json_number(self.psnr, 4),
                f"{prefix}ssim": json_number(self.ssim, 5),
                f"{prefix}flicker": json_number(self.flicker, 4)}


@dataclass(frozen=True)
class ClipResult:
    """One clip's row: the model's scores and, if asked, the bicubic baseline's."""

    dataset: str
    scale: int
    frames: int
    degrade: str
    model: str
    scores: Scores
    baseline: Scores | None = None
    seed: int | None = None
    per_frame_psnr: tuple[float, ...] = field(default=(), repr=False)
    precision: str = "float32"  # the dtype the model computed in
    deflicker: float = 0.0  # the model's frames' temporal filter strength (0: off)
    path: str = ""  # the clip as given: two clips of one name are told apart by it

    def to_json(self) -> dict[str, Any]:
        """The ``vsr eval --video --json`` row: the image eval row plus video fields."""
        s = self.scores.to_json()
        row: dict[str, Any] = {
            "dataset": self.dataset, "scale": self.scale, "psnr": s["psnr"], "ssim": s["ssim"],
            "images": self.frames, "frames": self.frames, "degrade": self.degrade,
            "flicker": s["flicker"], "model": self.model, "precision": self.precision,
            "deflicker": self.deflicker, "path": self.path,
        }
        if self.seed is not None:
            row["seed"] = self.seed
        if self.baseline is not None:
            row["baseline"] = "bicubic"
            row.update(self.baseline.to_json("baseline_"))
            row["gain_psnr"] = json_number(self.scores.psnr - self.baseline.psnr, 4)
        return row


@dataclass(frozen=True)
class VideoEvalConfig(Config):
    """One ``vsr eval --video`` run.

    ``model`` defaults to the registry's default model; ``baseline="bicubic"`` scores bicubic
    on the same LR frames as well. ``seed`` is required when ``degrade`` has ranges.
    """

    videos: tuple[Path, ...]
    degrade: str = "bicubic"
    frames: int = 16
    model: str | None = None
    baseline: str | None = None
    scale: int | None = None
    device: str = "auto"
    seed: int | None = None
    precision: str = "fp32"  # as EvalConfig's: the reference unless asked
    deflicker: float = 0.0  # the model's frames through vsr.pipeline.temporal (0: off)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "videos", as_paths("videos", self.videos))
        if not self.videos:
            raise ConfigError("give at least one clip (--video)")
        check_type("degrade", self.degrade, str)
        check_seed(self.seed)
        chain = DegradationChain.parse(self.degrade)
        object.__setattr__(self, "degrade", str(chain))
        if chain.is_random and self.seed is None:
            raise ConfigError(f"degradation {chain} has ranges; give --seed to draw them")
        if not isinstance(self.frames, int) or self.frames < 2:
            raise ConfigError(f"frames must be an integer >= 2 (flicker needs two), "
                              f"got {self.frames!r}")
        if self.baseline is not None and self.baseline not in BASELINES:
            raise ConfigError(f"unknown baseline {self.baseline!r}; known: "
                              f"{', '.join(BASELINES)}")
        check_scale(self.scale)  # the shared options' validator, as EvalConfig's
        check_model(self.model)
        if self.model == "bicubic" and self.scale is None:
            raise ConfigError("--model bicubic needs --scale")
        resolve_device(self.device)  # the spelling; availability is checked when it runs
        check_choice("precision", self.precision, PRECISIONS)
        check_deflicker(self.deflicker)

    @property
    def chain(self) -> DegradationChain:
        return DegradationChain.parse(self.degrade)


def read_hr_frames(path: str | os.PathLike, frames: int, scale: int) -> torch.Tensor:
    """The first ``frames`` frames of a clip as 8-bit RGB, cropped to a multiple of ``scale``.

    Returns:
        uint8 (frames, 3, H - H % scale, W - W % scale), top-left kept. Deeper input is
        rounded to 8 bits.

    Raises:
        InputError: missing or unreadable clip, fewer than ``frames`` frames in it, or frames
            too small to score at ``scale`` (:func:`vsr.evaluate.min_size`).
    """
    out: list[np.ndarray] = []
    with PyAVSource(path) as src:
        check_scorable(src.info.width, src.info.height, scale, path)
        for frame in src.frames():
            img = frame.image
            if img.dtype != np.uint8:  # 16-bit scale -> 8 bits, rounded
                img = np.floor(img.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
            out.append(img)
            if len(out) == frames:
                break
    if len(out) < frames:
        have = f"{len(out)} frame" + ("s" if len(out) != 1 else "")
        raise InputError(f"{path} has only {have}; {frames} asked for (--frames)")
    hr = torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()
    return modcrop(hr, scale)


def flicker(sr: torch.Tensor, hr: torch.Tensor, shave: int) -> float:
    """Mean RMSE (8-bit Y levels) of the frame-to-frame change of SR against HR's.

    Args:
        sr, hr: uint8 (T, 3, H, W) RGB, same shape, T >= 2.
        shave: pixels removed from every border.

    Returns:
        the module docstring's ``flicker``; 0.0 when ``sr`` equals ``hr``.
    """
    if sr.shape != hr.shape or sr.ndim != 4 or sr.shape[0] < 2:
        raise ValueError(f"flicker needs two equal (T>=2, 3, H, W) clips, got "
                         f"{tuple(sr.shape)} and {tuple(hr.shape)}")
    rmses = []
    prev_err = None
    for t in range(sr.shape[0]):
        y_sr, y_hr = rgb_to_y(sr[t].cpu()), rgb_to_y(hr[t].cpu())
        if shave:
            y_sr, y_hr = y_sr[shave:-shave, shave:-shave], y_hr[shave:-shave, shave:-shave]
        err = y_sr - y_hr
        if prev_err is not None:
            rmses.append(math.sqrt(torch.mean((err - prev_err) ** 2).item()))
        prev_err = err
    return math.fsum(rmses) / len(rmses)


def _upscale_clip(handle: UpscaleHandle, lr: torch.Tensor, hr_shape: Sequence[int], *,
                  deflicker: float = 0.0) -> torch.Tensor:
    """uint8 (T, 3, h, w) -> uint8 (T, 3, H, W) on the CPU, one frame per model call, in order
    through the deflicker filter when ``deflicker`` > 0 (as ``vsr upscale --deflicker``)."""
    h, w = hr_shape[-2:]
    steady = Deflicker(deflicker, int(handle.scale)) if deflicker else None
    out = []
    with torch.inference_mode():
        for t in range(lr.shape[0]):
            sr = handle.upscale(lr[t:t + 1])
            if not torch.is_tensor(sr) or sr.dtype != torch.uint8 or sr.ndim != 4 \
                    or sr.shape[:2] != (1, 3) or sr.shape[-2] < h or sr.shape[-1] < w:
                got = f"{tuple(sr.shape)} {sr.dtype}" if torch.is_tensor(sr) else type(sr).__name__
                raise ModelError(f"model output {got} does not fit uint8 (1, 3, {h}, {w})")
            sr = sr[0].cpu()
            if steady is not None:  # the filter sees the model's whole output, as the engine's
                sr = steady(lr[t].permute(1, 2, 0), sr.permute(1, 2, 0)).permute(2, 0, 1)
            out.append(sr[:, :h, :w])
    return torch.stack(out)


def _score(sr: torch.Tensor, hr: torch.Tensor, scale: int, *, name: str = "",
           progress: ProgressCallback | None = None) -> tuple[Scores, tuple[float, ...]]:
    psnrs, ssims = [], []
    for t, (s, r) in enumerate(zip(sr, hr, strict=True), 1):
        psnrs.append(psnr_y(s, r, scale))
        ssims.append(ssim_y(s, r, scale))
        if progress is not None:
            progress(Progress(name, t, sr.shape[0], f"frame {t}", psnrs[-1], ssims[-1]))
    scores = Scores(mean_psnr(psnrs), math.fsum(ssims) / len(ssims), flicker(sr, hr, scale))
    return scores, tuple(psnrs)


def evaluate_clip(handle: UpscaleHandle, path: str | os.PathLike, chain: DegradationChain,
                  scale: int, frames: int, *, baseline: UpscaleHandle | None = None,
                  seed: int | None = None, progress: ProgressCallback | None = None,
                  deflicker: float = 0.0) -> ClipResult:
    """Score ``handle`` (and ``baseline``, on the same LR frames) on one clip; the model's
    frames pass through the deflicker filter when ``deflicker`` > 0, the baseline's never.

    Raises:
        InputError: the clip is missing, unreadable or too short.
        ModelError: the model's output breaks the handle contract.
    """
    name = Path(path).stem
    hr = read_hr_frames(path, frames, scale)
    lr = chain.apply_clip(hr, scale, seed=seed)
    log.debug("%s: %d frames %dx%d -> LR %dx%d by %s", name, frames, hr.shape[-1],
              hr.shape[-2], lr.shape[-1], lr.shape[-2], chain)
    sr = _upscale_clip(handle, lr, hr.shape, deflicker=deflicker)
    scores, per_frame = _score(sr, hr, scale, name=name, progress=progress)
    base = _score(_upscale_clip(baseline, lr, hr.shape), hr, scale)[0] if baseline else None
    return ClipResult(name, scale, frames, str(chain), getattr(handle, "name", "model"), scores,
                      base, seed, per_frame, deflicker=deflicker, path=os.fspath(path))


def run_video_evaluation(config: VideoEvalConfig, *,
                         progress: ProgressCallback | None = None) -> list[ClipResult]:
    """Load the model once and evaluate it on every clip of ``config.videos``, in order.

    Every clip is checked to exist before the model is loaded, so a bad path fails fast.

    Raises:
        ConfigError, InputError, ModelError (and its CheckpointError) as they arise.
    """
    for video in config.videos:
        if not video.is_file():
            raise InputError(f"clip not found: {video}")
    from vsr.loading import dtype_name, load_model  # lazy: the model zoo is only needed here
    from vsr.models import DEFAULT_MODEL

    name = config.model if config.model is not None else DEFAULT_MODEL
    device = resolve_device(config.device, require_available=True)
    handle = load_model(name, scale=config.scale, device=device, precision=config.precision)
    scale = config.scale if config.scale is not None else int(handle.scale)
    baseline = (load_model(config.baseline, scale=scale, device=device, precision="fp32")
                if config.baseline is not None else None)
    chain = config.chain
    precision = dtype_name(handle.dtype)
    log.info("evaluating %s x%d in %s on %d clip(s), %d frames, %s", name, scale, precision,
             len(config.videos), config.frames, chain)
    return [dataclasses.replace(
                evaluate_clip(handle, video, chain, scale, config.frames, baseline=baseline,
                              seed=config.seed, progress=progress,
                              deflicker=config.deflicker), precision=precision)
            for video in config.videos]


def summarize_video(results: Sequence[ClipResult]) -> dict[str, Any]:
    """The ``vsr eval --video --json`` object."""
    return {"results": [r.to_json() for r in results]}
