"""The one recipe every job runs: source -> model handle -> backend prepared on the first frame
-> processor -> sink -> run_pipeline.

``upscale_file`` (one file), the batch workers (segments and whole files), ``run_bench`` and
``run_stream`` all load models through a :class:`ModelCache` and prepare the backend with
:meth:`ModelCache.prepare`, so the same model, options and frame size get the same backend
and the same frames whoever runs them. :func:`run_source` is the recipe for a file source.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vsr.device import resolve_device
from vsr.io.info import StreamInfo, has_alpha
from vsr.io.source import Frame, Source
from vsr.loading import is_small_frame, load_model
from vsr.options import BACKEND_PRECISIONS, ModelOptions
from vsr.pipeline import ComputeReport, Progress, RunStats, make_processor, run_pipeline
from vsr.pipeline.alpha import AlphaCarried
from vsr.pipeline.repeats import RepeatsReused
from vsr.pipeline.temporal import Deflicker, Deflickered

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """A handle and the backend runner prepared for one frame size (None: the handle's own
    eager ``infer``: tiles, or no frame to prepare on)."""

    handle: object
    runner: object | None  # vsr.backends.Runner
    options: ModelOptions

    @property
    def backend(self) -> str:
        return self.runner.backend if self.runner is not None else "eager"

    @property
    def notes(self) -> tuple[str, ...]:
        return tuple(self.runner.notes) if self.runner is not None else ()

    def processor(self, overlap: int = 16, *, alpha: bool = False, reuse: bool = True):
        """A fresh inference stage (one per run: it holds the run's in-flight frames and the
        deflicker filter's running output); a frame identical to the one before is not
        computed again (:class:`RepeatsReused`; ``reuse=False``: every frame is, as a
        measurement of the model wants). ``alpha``: finished frames of a Frame with an
        alpha plane come out as RGBA, the plane resized (:class:`AlphaCarried`) after the
        deflicker filter, which sees the colour only."""
        processor = make_processor(self.handle, tile=self.options.tile, overlap=overlap,
                                   runner=self.runner, batch=self.options.batch)
        if reuse:
            processor = RepeatsReused(processor)
        if self.options.deflicker:
            processor = Deflickered(processor, Deflicker(self.options.deflicker,
                                                         self.handle.scale),
                                    device=self.handle.device)
        if alpha:
            processor = AlphaCarried(processor, self.handle.scale)
        return processor


class ModelCache:
    """Loaded handles by (model, scale, precision, device, frame depth and size) and prepared
    backends by handle, backend, batch and frame size: a worker that runs many files loads and
    prepares once.
    Not thread-safe: one per worker thread."""

    def __init__(self) -> None:
        self._handles: dict[tuple, object] = {}
        self._prepared: dict[tuple, Prepared] = {}

    def handle(self, options: ModelOptions, device: str | torch.device, *, bit_depth: int = 8,
               pixels: int | None = None):
        """The model of ``options`` on ``device`` for input frames of ``bit_depth`` bits and
        ``pixels`` pixels (None: not known); raises like :func:`vsr.loading.load_model`."""
        if not isinstance(device, torch.device):
            device = resolve_device(device, require_available=True)
        key = (options.model, options.scale, options.precision,
               BACKEND_PRECISIONS.get(options.backend), str(device), bit_depth,
               is_small_frame(pixels))  # what auto's choice depends on
        if key not in self._handles:
            self._handles[key] = load_model(options.model, scale=options.scale, device=device,
                                            precision=options.precision, bit_depth=bit_depth,
                                            pixels=pixels, backend=options.backend)
        return self._handles[key]

    def release(self, handle) -> None:
        """Forget ``handle`` and the backends prepared for it, so that nothing here keeps it
        (e.g. one loaded before the frames were known, replaced by one loaded for them)."""
        self._handles = {k: h for k, h in self._handles.items() if h is not handle}
        self._prepared = {k: p for k, p in self._prepared.items() if p.handle is not handle}

    def prepare(self, handle, options: ModelOptions, image: np.ndarray | None) -> Prepared:
        """``options.backend`` for frames like ``image`` (H, W, 3) uint8/uint16, checked against
        eager on it (:func:`vsr.backends.prepare_for_frame`). Tiles always run eagerly."""
        if image is None:
            return Prepared(handle, None, options)
        if options.tile:
            if options.backend not in ("auto", "eager"):
                log.warning("--tile runs the model eagerly; --backend %s is not used",
                            options.backend)
            return Prepared(handle, None, options)
        key = (id(handle), options.backend, options.batch, image.shape, str(image.dtype))
        if key not in self._prepared:
            from vsr.backends import prepare_for_frame

            runner = prepare_for_frame(handle, options.backend, image, batch=options.batch)
            self._prepared[key] = Prepared(handle, runner, options)
        return self._prepared[key]


@dataclass(frozen=True)
class EngineRun:
    """What one :func:`run_source` did."""

    stats: RunStats
    prepared: Prepared
    report: ComputeReport  # fp32 fallbacks, tiles, notes of the inference stage
    width: int  # output size
    height: int
    pix_fmt: str | None
    copied_packets: dict[int, int]


def run_source(source: Source, options: ModelOptions, device: str | torch.device,
               open_sink: Callable[[StreamInfo, int, int], object], *,
               models: ModelCache | None = None, frames: Iterator[Frame] | None = None,
               frames_total: int | None = None, depth: int = 2, overlap: int = 16,
               progress: Callable[[Progress], None] | None = None) -> EngineRun:
    """Upscale ``frames`` (default: all of ``source``) into the sink ``open_sink(info, width,
    height)`` returns (a context manager; it is entered here, after the model is loaded).

    The input's alpha plane (frames with ``Frame.alpha``) is carried where the sink holds
    one (its ``alpha``: it then takes RGBA frames); a sink that cannot says so itself.

    ``options.batch`` is held to the frames there are (``frames_total``, else the source's
    count, where known): the run's is ``EngineRun.prepared.options.batch``.

    Raises what loading, the pipeline and the sink raise (ConfigError, ModelError,
    PipelineError, OutputError...); KeyboardInterrupt propagates with the sink aborted.
    """
    models = models if models is not None else ModelCache()
    info = source.info
    if has_alpha(info.pix_fmt) and not info.alpha:
        log.warning("%s has an alpha channel (%s) that this decoder does not read: the colour "
                    "is upscaled, the output has no alpha (--decoder pyav reads it)",
                    Path(info.path).name, info.pix_fmt)
    if info.interlaced:
        log.warning("%s: interlaced video (%s) is upscaled with the two fields of each frame "
                    "woven together, and the output keeps their combing (vsr deinterlaces it "
                    "with --decoder pyav, unless --no-deinterlace)", Path(info.path).name,
                    info.interlaced)
    total = frames_total if frames_total is not None else info.frames
    if total is not None and 0 < total < options.batch:
        # a batch is never more than the frames there are: --batch 1000 on a picture built
        # and checked a backend for 1000 copies of it and ran them all (66 s, 9 GB, for 0.3 s)
        options = dataclasses.replace(options, batch=total)
    handle = models.handle(options, device, bit_depth=info.bit_depth,
                           pixels=info.width * info.height)
    width, height = info.width * handle.scale, info.height * handle.scale
    frames = frames if frames is not None else source.frames()
    first = next(frames, None)
    prepared = models.prepare(handle, options, first.image if first is not None else None)
    if first is not None:
        frames = itertools.chain([first], frames)
    log.info("%s %dx%d -> %dx%d with %s x%d on %s (%s, backend %s)", Path(info.path).name,
             info.width, info.height, width, height, handle.name, handle.scale, handle.device,
             handle.dtype, prepared.backend)
    dtype = handle.dtype
    try:
        with open_sink(info, width, height) as sink:
            processor = prepared.processor(overlap,
                                           alpha=info.alpha and getattr(sink, "alpha", False))
            stats = run_pipeline(frames, processor, sink, depth=depth,
                                 frames_total=frames_total if frames_total is not None
                                 else info.frames, progress=progress)
    finally:
        if handle.dtype != dtype:
            # the run fell back to fp32 (a bad frame in fp16/bf16), which changes the handle
            # itself: the next run of this cache (a batch worker's next file or segment)
            # loads its own, in the precision asked for, not this one silently in fp32
            models.release(handle)
    return EngineRun(stats=stats, prepared=prepared, report=processor.report, width=width,
                     height=height, pix_fmt=sink.pix_fmt, copied_packets=sink.copied_packets)
