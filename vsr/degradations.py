"""Degradation chains: how low-resolution input is made from HR frames, in one spec language.

Used by ``vsr eval --video --degrade SPEC`` (a whole clip, one draw of the strengths),
``vsr train --degrade SPEC`` (a batch of independent crops, strengths drawn per crop) and the
peer harness, so that every number compared was made by the same chain.

Spec: stages separated by commas, applied in order; parameters after the stage name, each
``:key=value``::

    blur:sigma=S           Gaussian blur of the HR frames, S in HR pixels (0 = none)
    bicubic                MATLAB's antialiased bicubic downscale by the model's scale
                           (bit for bit :func:`vsr.evaluate.degrade` when alone)
    bilinear               antialiased bilinear (triangle-filter) downscale (torch, PIL-like)
    area                   box average over scale x scale blocks
    noise:sigma=S          additive Gaussian noise on the LR, S on the 0..255 scale, per pixel,
                           per channel and per frame
    jpeg:q=Q               per-frame JPEG at IJG quality Q (1..100; Pillow, 4:2:0 chroma)
    x264:crf=C[:preset=P]  libx264 through PyAV, yuv420p, CRF C (0..51; 0 codes the yuv420p
                           frames losslessly), preset P (default medium)
    x265:crf=C[:preset=P]  the same with libx265 (HEVC), but lossy at every CRF, 0 included
                           (x265's lossless mode is another option, not set; vsr.codecs)

Every stage but the downscale also takes ``:p=P``, the probability (0..1, default 1) that the
stage is applied at all: drawn once per clip, once per sample. ``bicubic,x264:crf=18~36:p=0.7``
trains on a mix of compressed and clean LR (30% of the crops are not coded), so that a model
for compressed input does not lose what it knew about clean input.

Exactly one downscale stage (``bicubic``, ``bilinear`` or ``area``) is required; ``blur`` may
only come before it; ``noise``, ``jpeg``, ``x264`` and ``x265`` only after it, in any order and
number. Until the first compression stage the chain works in floating point (float64 for a
clip, float32 for a training batch; a lone ``bicubic`` is :func:`vsr.evaluate.degrade` itself
either way) and rounds once to uint8 (MATLAB's ``uint8``), as the evaluation protocol does;
compression stages work on uint8 frames.

Ranges: any numeric value may be ``A~B`` (``~``, not ``-``, which would read as a negative
number), meaning "drawn uniformly from [A, B]": once per clip in :meth:`apply_clip`, once per
sample in :meth:`apply_images`. Integer parameters (``q``, ``crf``) are drawn as integers in
[A, B] inclusive; ``sigma`` as reals. :attr:`DegradationChain.is_random` tells whether a chain
has a range. The noise of a ``noise`` stage is random even without a range; it is drawn from the
seed too, so a seeded chain gives the same LR frames every time.

Video codecs (:mod:`vsr.codecs`, which says how) code a clip as one stream, as a real encoder
would: GOP, B- and P-frames. Training crops (:meth:`apply_images`) are independent images, not
clips: a video codec codes each crop as a short panning clip of its own ending on the crop
(:func:`vsr.codecs.code_crop`), so the kept frame is inter-coded, as most frames of a real stream
are, and stays aligned with its HR target; :meth:`apply_image_pairs` also returns the frame
before it (``vsr train --consistency``). Crops are coded on a thread pool (PyAV releases the GIL
while encoding and decoding). Measured on 2 CPU cores: see ``benchmarks/VIDEO_EVAL.md``.

Dual regression with compressed LR: the dual network maps the primal's SR output back to LR.
When the LR input is compressed, the compression is random, lossy and not a function of the
HR image a network could usefully invert (block edges, ringing and dropped detail depend on
the encoder's decisions across the clip). Asking the dual to reproduce the *compressed* LR
would ask the primal to put compression artefacts back into its output so that they survive
a downscale. The deterministic part of the chain, its downscale (:meth:`clean`), is what the
dual should model: the dual maps SR back to the clean bicubic LR of the HR target, while the
primal learns to remove the compression (and noise) on the way up. The dual loss then still
constrains the primal to outputs that are consistent with a clean LR image, which is exactly
the image the compressed input was a noisy observation of.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vsr.codecs import VIDEO_CODECS, code_clip, code_crop, code_crop_pair, jpeg_round_trip
from vsr.errors import ConfigError
from vsr.evaluate import degrade
from vsr.io.sink import X26X_PRESETS
from vsr.resize import imresize, to_uint8
from vsr.train.degrade import gaussian_taps

__all__ = ["DOWNSCALES", "SEED_LIMIT", "DegradationChain", "Stage", "Value", "check_seed"]

DOWNSCALES: tuple[str, ...] = ("bicubic", "bilinear", "area")
_POST = ("noise", "jpeg", "x264", "x265")
_RANGE_SEP = "~"
_ON = "on"  # key of a draw: whether the stage is applied (see the p parameter)
SEED_LIMIT = 2 ** 64  # seeds are 0 .. SEED_LIMIT - 1: what torch.Generator.manual_seed takes


@dataclass(frozen=True)
class _Param:
    name: str
    lo: float
    hi: float
    integer: bool


# per stage kind: its numeric parameters (all required) and whether it takes a preset
_SCHEMA: dict[str, tuple[tuple[_Param, ...], bool]] = {
    "blur": ((_Param("sigma", 0.0, 20.0, False),), False),
    "bicubic": ((), False),
    "bilinear": ((), False),
    "area": ((), False),
    "noise": ((_Param("sigma", 0.0, 100.0, False),), False),
    "jpeg": ((_Param("q", 1, 100, True),), False),
    "x264": ((_Param("crf", 0, 51, True),), True),
    "x265": ((_Param("crf", 0, 51, True),), True),
}


@dataclass(frozen=True)
class Value:
    """A parameter value: fixed (``lo == hi``) or a uniform range [lo, hi]."""

    lo: float
    hi: float
    integer: bool = False

    @property
    def is_random(self) -> bool:
        return self.lo != self.hi

    def draw(self, generator: torch.Generator | None) -> float:
        """One value: ``lo`` when fixed, else uniform in [lo, hi] (integers inclusive)."""
        if not self.is_random:
            return self.lo
        if self.integer:
            return float(torch.randint(int(self.lo), int(self.hi) + 1, (1,),
                                       generator=generator).item())
        u = torch.rand((), dtype=torch.float64, generator=generator).item()
        return self.lo + (self.hi - self.lo) * u

    def __str__(self) -> str:
        fmt = (lambda v: str(int(v))) if self.integer else _real
        return fmt(self.lo) if not self.is_random else f"{fmt(self.lo)}{_RANGE_SEP}{fmt(self.hi)}"


@dataclass(frozen=True)
class Stage:
    """One stage of a chain: its kind, numeric values (in schema order) and codec preset."""

    kind: str
    values: tuple[tuple[str, Value], ...] = ()
    preset: str | None = None
    p: float = 1.0  # probability that the stage is applied (per clip / per sample)

    def value(self, name: str) -> Value:
        return dict(self.values)[name]

    @property
    def is_random(self) -> bool:
        return 0 < self.p < 1 or any(v.is_random for _, v in self.values)

    def __str__(self) -> str:
        parts = [self.kind, *(f"{k}={v}" for k, v in self.values)]
        if self.preset is not None and self.preset != "medium":
            parts.append(f"preset={self.preset}")
        if self.p < 1:
            parts.append(f"p={_real(self.p)}")
        return ":".join(parts)


def _real(v: float) -> str:
    """``v`` as the canonical spec writes it: short (``%g``) where that reads back as ``v``,
    else exactly (``repr``): the spec string is what a run records and re-parses, so it must
    not round 1.23456789 to 1.23457."""
    short = f"{v:g}"
    return short if float(short) == v else repr(v)


def _parse_number(text: str, param: _Param, stage: str) -> float:
    try:
        v = float(text) + 0.0  # + 0.0: -0 reads as 0
    except ValueError:
        raise ConfigError(f"degradation {stage}: {param.name}={text!r} is not a number") from None
    if not math.isfinite(v) or not param.lo <= v <= param.hi:
        raise ConfigError(f"degradation {stage}: {param.name} must be in "
                          f"[{param.lo:g}, {param.hi:g}], got {text}")
    if param.integer and v != int(v):
        raise ConfigError(f"degradation {stage}: {param.name} must be an integer, got {text}")
    return v


def _parse_value(text: str, param: _Param, stage: str) -> Value:
    parts = text.split(_RANGE_SEP)
    if len(parts) > 2:
        raise ConfigError(f"degradation {stage}: bad range {param.name}={text!r} (use A~B)")
    lo = _parse_number(parts[0], param, stage)
    hi = _parse_number(parts[-1], param, stage)
    if hi < lo:
        raise ConfigError(f"degradation {stage}: range {param.name}={text} is reversed")
    return Value(lo, hi, param.integer)


def _parse_stage(text: str) -> Stage:
    kind, *args = text.split(":")
    kind = kind.strip().lower()
    if kind not in _SCHEMA:
        raise ConfigError(f"unknown degradation stage {kind!r}; known: {', '.join(_SCHEMA)}")
    params, takes_preset = _SCHEMA[kind]
    given: dict[str, str] = {}
    for arg in args:
        key, eq, val = arg.partition("=")
        key, val = key.strip().lower(), val.strip()
        if not eq or not key or not val:
            raise ConfigError(f"degradation {kind}: expected key=value, got {arg!r}")
        if key in given:
            raise ConfigError(f"degradation {kind}: {key} given twice")
        given[key] = val
    p = 1.0
    if "p" in given and kind not in DOWNSCALES:
        p = _parse_number(given.pop("p"), _Param("p", 0.0, 1.0, False), kind)
    preset = None
    if takes_preset:
        preset = given.pop("preset", "medium").lower()
        if preset not in X26X_PRESETS:
            raise ConfigError(f"degradation {kind}: unknown preset {preset!r}; "
                              f"known: {', '.join(X26X_PRESETS)}")
    known = {p.name for p in params}
    extra = sorted(set(given) - known)
    if extra:
        takes = known | ({"preset"} if takes_preset else set())
        want = ", ".join(sorted(takes | ({"p"} if kind not in DOWNSCALES else set()))) or "none"
        raise ConfigError(f"degradation {kind}: unknown parameter {extra[0]!r} (takes: {want})")
    missing = [p.name for p in params if p.name not in given]
    if missing:
        raise ConfigError(f"degradation {kind} needs {missing[0]}=VALUE "
                          f"(or a range {missing[0]}=A~B)")
    values = tuple((p.name, _parse_value(given[p.name], p, kind)) for p in params)
    return Stage(kind, values, preset, p)


@dataclass(frozen=True)
class CropPairs:
    """A degraded training batch: uint8 ``lr`` (N, 3, h, w); with
    :meth:`DegradationChain.apply_image_pairs`, ``prev`` (the same shape), each crop's second
    observation, and ``shifts`` (N, 2) its (dy, dx): ``prev[i, :, y + dy, x + dx]`` shows what
    ``lr[i, :, y, x]`` shows. ``prev`` is None from :meth:`DegradationChain.apply_images`."""

    lr: torch.Tensor
    prev: torch.Tensor | None
    shifts: torch.Tensor


@dataclass(frozen=True)
class DegradationChain:
    """A parsed degradation spec (see the module docstring); ``str(chain)`` is canonical."""

    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        kinds = [s.kind for s in self.stages]
        downs = [i for i, k in enumerate(kinds) if k in DOWNSCALES]
        if len(downs) != 1:
            raise ConfigError(f"a degradation chain needs exactly one downscale stage "
                              f"({', '.join(DOWNSCALES)}), got {len(downs)}")
        d = downs[0]
        if any(k != "blur" for k in kinds[:d]):
            raise ConfigError(f"only blur may come before the downscale, got {kinds[:d]}")
        late = [k for k in kinds[d + 1:] if k not in _POST]
        if late:
            raise ConfigError(f"{late[0]} must come before the downscale stage {kinds[d]}")

    @classmethod
    def parse(cls, text: str) -> DegradationChain:
        """Parse a spec like ``blur:sigma=0.2~1.5,bicubic,x264:crf=18~32``.

        Raises:
            ConfigError: unknown stage or parameter, bad number or range, wrong stage order.
        """
        if not isinstance(text, str) or not text.strip():
            raise ConfigError("empty degradation spec; e.g. bicubic or bicubic,x264:crf=28")
        parts = [p.strip() for p in text.split(",")]
        if any(not p for p in parts):
            raise ConfigError(f"empty stage in degradation spec {text!r}")
        return cls(tuple(_parse_stage(p) for p in parts))

    def __str__(self) -> str:
        return ",".join(str(s) for s in self.stages)

    @property
    def is_random(self) -> bool:
        """Whether any value is a range (drawn per clip or per sample)."""
        return any(s.is_random for s in self.stages)

    @property
    def codes_video(self) -> bool:
        """Whether a video codec stage (x264, x265) is in the chain."""
        return any(s.kind in VIDEO_CODECS for s in self.stages)

    @property
    def downscale(self) -> str:
        """The downscale kernel's name."""
        return next(s.kind for s in self.stages if s.kind in DOWNSCALES)

    def clean(self) -> DegradationChain:
        """The chain's deterministic part: only its downscale stage (see the module docstring)."""
        return DegradationChain(tuple(s for s in self.stages if s.kind in DOWNSCALES))

    def apply_clip(self, hr: torch.Tensor, scale: int, *, seed: int | None = None
                   ) -> torch.Tensor:
        """Degrade a clip with one draw of the chain's values.

        Args:
            hr: uint8 (T, 3, H, W) RGB HR frames in order, H and W multiples of ``scale``
                (crop first, e.g. with :func:`vsr.evaluate.modcrop`: top-left kept).
            scale: the downscale factor (the model's scale), >= 1.
            seed: seeds the drawn values and the noise; None means seed 0 when the chain has
                no range, and is an error when it has one.

        Returns:
            uint8 (T, 3, H/scale, W/scale) LR frames on the CPU.

        Raises:
            ConfigError: bad shapes or scale, a random chain without a seed, or a seed
                outside 0 .. 2**64 - 1.
            PipelineError: a codec failed or lost frames.
        """
        _check_hr(hr, scale)
        if seed is None and self.is_random:
            raise ConfigError(f"degradation {self} has ranges; give a seed to draw them")
        seed = 0 if seed is None else int(seed)
        check_seed(seed)  # torch would raise a bare overflow, or wrap negatives
        gen = torch.Generator().manual_seed(seed)
        draws = [_draw(s, gen) for s in self.stages]
        lr = self._float_part(hr.cpu(), scale, [draws], gen)
        for stage, d in self._late(draws):
            if not d[_ON]:
                continue
            if stage.kind in VIDEO_CODECS:
                lr = code_clip(lr, stage.kind, int(d["crf"]), stage.preset or "medium")
            elif stage.kind == "jpeg":
                lr = torch.stack([jpeg_round_trip(f, int(d["q"])) for f in lr])
            else:
                lr = to_uint8(lr.to(torch.float64) + _noise(lr.shape, d["sigma"], gen))
        return lr

    def apply_images(self, hr: torch.Tensor, scale: int, *,
                     generator: torch.Generator | None = None,
                     workers: int | None = None,
                     executor: Executor | None = None) -> torch.Tensor:
        """Degrade a training batch, drawing the chain's values per sample.

        Args:
            hr: uint8 (N, 3, H, W) RGB HR crops, H and W multiples of ``scale``.
            scale: the downscale factor, >= 1.
            generator: source of the drawn values and noise (torch's default one if None).
            workers: threads for the per-sample codecs (default: the CPU count, at most 8),
                in a pool made for this call; ignored when ``executor`` is given.
            executor: runs the per-sample codecs instead, so that a caller degrading many
                batches (:class:`vsr.train.prefetch.DegradedBatches`) starts its threads once;
                the caller owns it and shuts it down. The result does not depend on it.

        Returns:
            uint8 (N, 3, H/scale, W/scale) LR crops on the CPU.

        Raises:
            ConfigError: bad shapes or scale. PipelineError: a codec failed.
        """
        return self._apply_images(hr, scale, generator, workers, executor, pairs=False).lr

    def apply_image_pairs(self, hr: torch.Tensor, scale: int, *,
                          generator: torch.Generator | None = None,
                          workers: int | None = None,
                          executor: Executor | None = None) -> CropPairs:
        """:meth:`apply_images` (the same draws, the same ``lr``) plus, per crop, a second
        observation of it: the video codec's previous frame of the crop's clip
        (:func:`vsr.codecs.code_crop_pair`), through the same later stages (their noise drawn
        apart). Crops that no video codec coded get themselves, unmoved. Arguments and errors
        as :meth:`apply_images`.
        """
        return self._apply_images(hr, scale, generator, workers, executor, pairs=True)

    def _apply_images(self, hr: torch.Tensor, scale: int, generator: torch.Generator | None,
                      workers: int | None, executor: Executor | None, *, pairs: bool
                      ) -> CropPairs:
        _check_hr(hr, scale)
        n = hr.shape[0]
        draws = [[_draw(s, generator) for s in self.stages] for _ in range(n)]
        lr = self._float_part(hr.cpu(), scale, draws, generator, dtype=torch.float32)
        if not self._late(draws[0]):
            return CropPairs(lr, lr if pairs else None, torch.zeros(n, 2, dtype=torch.long))
        # each crop gets its own generator, seeded here in order, so the result does not
        # depend on which thread runs first
        seeds = torch.randint(0, 2 ** 62, (n,), generator=generator).tolist()
        lrs = list(lr)

        def finish(i: int) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
            gen = torch.Generator().manual_seed(seeds[i])
            lr, prev, shift = lrs[i], None, (0, 0)
            prev_gen = None
            for stage, d in self._late(draws[i]):
                if not d[_ON]:
                    continue
                if stage.kind in VIDEO_CODECS and pairs and prev is None:
                    lr, prev, shift = code_crop_pair(lr, stage.kind, int(d["crf"]),
                                                     stage.preset or "medium", gen)
                    prev_gen = torch.Generator().manual_seed(seeds[i] ^ 0x5EED)
                    continue
                lr = self._late_stage(stage, d, lr, gen)
                if prev is not None:  # later stages see the other frame too, their own noise
                    prev = self._late_stage(stage, d, prev, prev_gen)
            if pairs and prev is None:  # not coded by a video codec: itself, unmoved
                prev = lr
            return lr, prev, shift

        if executor is not None and n > 1:
            done = list(executor.map(finish, range(n)))
        else:
            n_workers = workers if workers is not None else default_workers()
            if n_workers <= 1 or n == 1:
                done = [finish(i) for i in range(n)]
            else:
                with ThreadPoolExecutor(max_workers=n_workers) as pool:
                    done = list(pool.map(finish, range(n)))
        return CropPairs(torch.stack([d[0] for d in done]),
                         torch.stack([d[1] for d in done]) if pairs else None,
                         torch.tensor([d[2] for d in done], dtype=torch.long))

    @staticmethod
    def _late_stage(stage: Stage, d: dict[str, float], lr: torch.Tensor,
                    gen: torch.Generator | None) -> torch.Tensor:
        """One stage after the first compression on a uint8 (3, h, w) crop."""
        if stage.kind in VIDEO_CODECS:
            return code_crop(lr, stage.kind, int(d["crf"]), stage.preset or "medium", gen)
        if stage.kind == "jpeg":
            return jpeg_round_trip(lr, int(d["q"]))
        return to_uint8(lr.to(torch.float64) + _noise(lr.shape, d["sigma"], gen))

    @property
    def _first_codec(self) -> int:
        """Index of the first compression stage (the chain's length if none): the float part
        of the chain ends there, with one rounding to uint8."""
        return next((i for i, s in enumerate(self.stages) if s.kind in ("jpeg", *VIDEO_CODECS)),
                    len(self.stages))

    def _late(self, draws: Sequence[dict[str, float]]) -> list[tuple[Stage, dict[str, float]]]:
        """The stages on uint8 frames (from the first compression on), with their draws."""
        first = self._first_codec
        return list(zip(self.stages[first:], draws[first:], strict=True))

    def _float_part(self, hr: torch.Tensor, scale: int,
                    draws: Sequence[Sequence[dict[str, float]]], gen: torch.Generator | None, *,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """Blur, downscale and any noise before the first compression stage; one rounding.

        ``draws`` holds the drawn values per sample of ``hr`` (one entry: all samples alike).
        A lone ``bicubic`` is :func:`vsr.evaluate.degrade` itself, whatever ``dtype``.
        """
        first = self._first_codec
        if [s.kind for s in self.stages[:first]] == ["bicubic"]:
            return degrade(hr, scale)  # the evaluation protocol's LR, bit for bit
        x = hr.to(dtype)
        for i, stage in enumerate(self.stages[:first]):
            if stage.kind == "blur":
                x = _blur(x, [d[i]["sigma"] for d in draws])
            elif stage.kind in DOWNSCALES:
                x = _downscale(x, stage.kind, scale)
            elif stage.kind == "noise":
                sigma = torch.tensor([d[i]["sigma"] for d in draws], dtype=dtype)
                noise = torch.randn(x.shape, dtype=dtype, generator=gen)
                x = x + noise * sigma.view(-1, 1, 1, 1)
        return to_uint8(x)


def check_seed(seed: object) -> None:
    """Raise ConfigError unless ``seed`` is None or an integer in [0, :data:`SEED_LIMIT`)."""
    if seed is not None and (type(seed) is not int or not 0 <= seed < SEED_LIMIT):
        raise ConfigError(f"seed must be an integer from 0 to 2**64 - 1, got {seed!r}")


def default_workers() -> int:
    """Threads for the per-sample codecs when none are asked for: the CPU count, at most 8."""
    return min(8, os.cpu_count() or 1)


def _draw(stage: Stage, gen: torch.Generator | None) -> dict[str, float]:
    """The stage's values for one clip or sample, and ``_ON``: 1.0 if it is applied, else 0.0
    (with its strengths at zero, so a skipped blur or noise is the identity). The coin is
    drawn after the values and only when ``p < 1``, so chains without ``p`` draw as before."""
    draw = {k: v.draw(gen) for k, v in stage.values}
    on = stage.p >= 1 or torch.rand((), dtype=torch.float64, generator=gen).item() < stage.p
    if not on and "sigma" in draw:
        draw["sigma"] = 0.0
    return {**draw, _ON: float(on)}


def _check_hr(hr: torch.Tensor, scale: int) -> None:
    if not isinstance(scale, int) or scale < 1:
        raise ConfigError(f"scale must be an integer >= 1, got {scale!r}")
    if not torch.is_tensor(hr) or hr.dtype != torch.uint8 or hr.ndim != 4 or hr.shape[1] != 3:
        got = f"{tuple(hr.shape)} {hr.dtype}" if torch.is_tensor(hr) else type(hr).__name__
        raise ConfigError(f"degradation needs uint8 (N, 3, H, W) frames, got {got}")
    h, w = hr.shape[-2:]
    if h % scale or w % scale or h < scale or w < scale or hr.shape[0] == 0:
        raise ConfigError(f"HR size {h}x{w} is not a positive multiple of {scale}; crop it first")


def _blur(x: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """Separable Gaussian on float (N, 3, H, W), reflected borders; ``sigmas``: one (pixels)
    for all samples, or one per sample. Sigma 0 leaves a sample as it is."""
    if all(sg <= 0 for sg in sigmas):
        return x
    kernels = [gaussian_taps(sg, 1) if sg > 0 else torch.ones(1, dtype=torch.float64)
               for sg in sigmas]
    r = max(k.numel() // 2 for k in kernels)
    taps = torch.stack([F.pad(k, (r - k.numel() // 2,) * 2) for k in kernels]).to(x.dtype)
    n, c, h, w = x.shape
    taps = taps.repeat_interleave(c, dim=0) if len(kernels) > 1 else taps.expand(n * c, -1)
    mode = "reflect" if r < min(h, w) else "replicate"
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode=mode)
    y = F.conv2d(y, taps.reshape(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, taps.reshape(n * c, 1, -1, 1), groups=n * c)
    return y.reshape(n, c, h, w)


def _downscale(x: torch.Tensor, kind: str, scale: int) -> torch.Tensor:
    h, w = x.shape[-2] // scale, x.shape[-1] // scale
    if scale == 1:
        return x
    if kind == "bicubic":
        return imresize(x, 1.0 / scale, size=(h, w))
    if kind == "bilinear":
        return F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
    return F.avg_pool2d(x, scale)


def _noise(shape: Sequence[int], sigma: float, gen: torch.Generator | None) -> torch.Tensor:
    return sigma * torch.randn(tuple(shape), dtype=torch.float64, generator=gen)
