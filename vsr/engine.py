"""The one recipe every job runs: source -> model handle -> backend prepared on the first frame
-> processor -> sink -> run_pipeline.

``upscale_file`` (one file), the batch workers (segments and whole files), ``run_bench`` and
``run_stream`` all load models through a :class:`ModelCache` and prepare the backend with
:meth:`ModelCache.prepare`, so the same model, options and frame size get the same backend
and the same frames whoever runs them. :func:`run_source` is the recipe for a file source.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import threading
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

    Safe to share between threads (a web service's pool passing one to
    :func:`vsr.upscale_file`): each model loads, and each backend is prepared, once; a thread
    asking for one that another is loading or preparing waits for it. A run in a reduced
    precision holds its handle alone (:meth:`lease`), since its fp32 fallback changes the
    handle itself: a concurrent run of the same model gets a handle of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the dicts and the set below
        self._handles: dict[tuple, list] = {}  # first: the one handle() gives
        self._prepared: dict[tuple, Prepared] = {}
        self._held: set[int] = set()  # ids of handles a run holds alone
        self._dtypes: dict[int, torch.dtype] = {}  # by id: each handle's dtype when loaded
        self._once: dict[tuple, threading.Lock] = {}  # per key: one thread loads or prepares

    def _unchanged(self, handle) -> bool:
        """Whether ``handle`` is still in the dtype it was loaded in (not one that a run
        holding it has just switched to fp32, and is about to release); under ``_lock``."""
        return handle.dtype == self._dtypes.get(id(handle), handle.dtype)

    def _key_lock(self, key: tuple) -> threading.Lock:
        with self._lock:
            return self._once.setdefault(key, threading.Lock())

    @staticmethod
    def _handle_key(options: ModelOptions, device: torch.device, bit_depth: int,
                    pixels: int | None) -> tuple:
        return (options.model, options.scale, options.precision,
                BACKEND_PRECISIONS.get(options.backend), str(device), bit_depth,
                is_small_frame(pixels))  # what auto's choice depends on

    def _load(self, key: tuple, options: ModelOptions, device: torch.device, bit_depth: int,
              pixels: int | None, *, held: bool):
        handle = load_model(options.model, scale=options.scale, device=device,
                            precision=options.precision, bit_depth=bit_depth, pixels=pixels,
                            backend=options.backend)
        with self._lock:
            self._handles.setdefault(key, []).append(handle)
            self._dtypes[id(handle)] = handle.dtype
            if held:
                self._held.add(id(handle))
        return handle

    def handle(self, options: ModelOptions, device: str | torch.device, *, bit_depth: int = 8,
               pixels: int | None = None):
        """The model of ``options`` on ``device`` for input frames of ``bit_depth`` bits and
        ``pixels`` pixels (None: not known); raises like :func:`vsr.loading.load_model`."""
        if not isinstance(device, torch.device):
            device = resolve_device(device, require_available=True)
        key = self._handle_key(options, device, bit_depth, pixels)
        with self._key_lock(("handle", key)):
            with self._lock:
                loaded = [h for h in self._handles.get(key, ()) if self._unchanged(h)]
                if loaded:
                    return loaded[0]
            return self._load(key, options, device, bit_depth, pixels, held=False)

    @contextlib.contextmanager
    def lease(self, options: ModelOptions, device: str | torch.device, *, bit_depth: int = 8,
              pixels: int | None = None) -> Iterator[object]:
        """:meth:`handle` for the length of one run. A handle whose dtype a run may change (a
        network in fp16 or bf16: the fp32 fallback) is the run's alone: one that another run
        holds is not given, another is loaded. On exit a handle whose dtype changed is
        released, so that a later run loads one in the precision asked for."""
        if not isinstance(device, torch.device):
            device = resolve_device(device, require_available=True)
        handle = self.handle(options, device, bit_depth=bit_depth, pixels=pixels)
        with self._lock:
            loaded_in = self._dtypes.get(id(handle), handle.dtype)
        if loaded_in != torch.float32 and getattr(handle, "can_fail", True):
            key = self._handle_key(options, device, bit_depth, pixels)
            with self._lock:
                handle = next((h for h in self._handles.get(key, ())
                               if id(h) not in self._held and self._unchanged(h)), None)
                if handle is not None:
                    self._held.add(id(handle))
            if handle is None:
                handle = self._load(key, options, device, bit_depth, pixels, held=True)
        dtype = handle.dtype
        try:
            yield handle
        finally:
            with self._lock:
                self._held.discard(id(handle))
            if handle.dtype != dtype:
                # the run fell back to fp32 (a bad frame in fp16/bf16), which changes the
                # handle itself: the next run of this cache (a batch worker's next file or
                # segment) loads its own, in the precision asked for, not this one in fp32
                self.release(handle)

    def release(self, handle) -> None:
        """Forget ``handle`` and the backends prepared for it, so that nothing here keeps it
        (e.g. one loaded before the frames were known, replaced by one loaded for them)."""
        with self._lock:
            self._handles = {k: kept for k, hs in self._handles.items()
                             if (kept := [h for h in hs if h is not handle])}
            self._prepared = {k: p for k, p in self._prepared.items()
                              if p.handle is not handle}
            self._held.discard(id(handle))
            self._dtypes.pop(id(handle), None)
            self._once = {k: lock for k, lock in self._once.items()
                          if not (k[0] == "prepare" and k[1][0] == id(handle))}

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
        with self._key_lock(("prepare", key)):
            with self._lock:
                prepared = self._prepared.get(key)
            if prepared is None or prepared.handle is not handle:
                from vsr.backends import prepare_for_frame

                runner = prepare_for_frame(handle, options.backend, image, batch=options.batch)
                prepared = Prepared(handle, runner, options)
                with self._lock:
                    self._prepared[key] = prepared
        return prepared


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
    dtype: torch.dtype = torch.float32  # the precision the run ended in


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
    if pictures := [o.index for o in info.others if o.type == "video" and not o.cover]:
        log.warning("%s has %d video streams: upscaling stream %d (%dx%d), the one the ffmpeg "
                    "program picks (by size, one marked default first), copying stream%s %s",
                    Path(info.path).name, len(pictures) + 1, info.index,
                    info.width, info.height, "s" if len(pictures) > 1 else "",
                    ", ".join(map(str, pictures)))
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
    # the run's own handle where its fp32 fallback would change it (see ModelCache.lease)
    with models.lease(options, device, bit_depth=info.bit_depth,
                      pixels=info.width * info.height) as handle:
        width, height = info.width * handle.scale, info.height * handle.scale
        frames = frames if frames is not None else source.frames()
        first = next(frames, None)
        prepared = models.prepare(handle, options, first.image if first is not None else None)
        if first is not None:
            frames = itertools.chain([first], frames)
        log.info("%s %dx%d -> %dx%d with %s x%d on %s (%s, backend %s)", Path(info.path).name,
                 info.width, info.height, width, height, handle.name, handle.scale,
                 handle.device, handle.dtype, prepared.backend)
        with open_sink(info, width, height) as sink:
            processor = prepared.processor(overlap,
                                           alpha=info.alpha and getattr(sink, "alpha", False))
            stats = run_pipeline(frames, processor, sink, depth=depth,
                                 frames_total=frames_total if frames_total is not None
                                 else info.frames, progress=progress)
        dtype = handle.dtype  # read now: once the lease ends another run may hold the handle
    return EngineRun(stats=stats, prepared=prepared, report=processor.report, width=width,
                     height=height, pix_fmt=sink.pix_fmt, copied_packets=sink.copied_packets,
                     dtype=dtype)
