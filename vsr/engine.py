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
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vsr.device import resolve_device
from vsr.errors import ModelError
from vsr.io.info import StreamInfo, has_alpha
from vsr.io.source import Frame, Source
from vsr.loading import is_small_frame, load_model, resolve_precision
from vsr.options import BACKEND_PRECISIONS, ModelOptions, check_at_least
from vsr.pipeline import ComputeReport, Progress, RunStats, make_processor, run_pipeline
from vsr.pipeline.alpha import AlphaCarried
from vsr.pipeline.repeats import RepeatsReused
from vsr.pipeline.temporal import Deflicker, Deflickered
from vsr.tiling import cpu_tile

log = logging.getLogger(__name__)


# Backends whose prepared runner several threads may call at once: eager (the module itself,
# in eval mode under inference_mode: it only reads its weights) and onnx (onnxruntime's
# InferenceSession.run is thread-safe). The others are prepared once per thread: compile
# replays CUDA graphs, whose trees are per thread and asserted when shared
# (pytorch/pytorch#123177), and a TensorRT engine runs in one execution context.
_THREAD_SAFE_BACKENDS = frozenset({"eager", "onnx"})
# Backends that come out per thread when asked for by name: each thread builds its own
# without a lock shared with the other threads' builds
_PER_THREAD_BACKENDS = frozenset({"compile", "tensorrt"})


@dataclass(frozen=True)
class Prepared:
    """A handle and the backend runner prepared for one frame size (None: the handle's own
    eager ``infer``: tiles, or no frame to prepare on); ``fp32`` gives the handle a run
    switches to when it falls back to fp32 (:class:`_RunHandle`)."""

    handle: object
    runner: object | None  # vsr.backends.Runner
    options: ModelOptions
    fp32: Callable[[], object]

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
        processor = make_processor(_RunHandle(self.handle, self.fp32), tile=self.options.tile,
                                   overlap=overlap, runner=self.runner,
                                   batch=self.options.batch)
        if reuse:
            processor = RepeatsReused(processor)
        if self.options.deflicker:
            processor = Deflickered(processor, Deflicker(self.options.deflicker,
                                                         self.handle.scale),
                                    device=self.handle.device)
        if alpha:
            processor = AlphaCarried(processor, self.handle.scale)
        return processor


class _RunHandle:
    """The handle one run computes with: the cache's shared handle, until the run falls back
    to fp32 (the inference stage's guard calls ``to(dtype=torch.float32)``, see
    :meth:`vsr.pipeline.compute.Forward.fall_back`). That switches this run to an fp32 handle
    of the weights the shared one was loaded with (``fp32()``: the cache's, see
    :meth:`ModelCache._fp32_of`), where converting the shared one would change it under every
    other run computing with it. Every other attribute is the current handle's."""

    def __init__(self, shared, fp32: Callable[[], object]) -> None:
        self._current = shared
        self._fp32 = fp32

    def __getattr__(self, name: str):
        return getattr(self._current, name)

    def to(self, *, dtype: torch.dtype) -> _RunHandle:
        if dtype != torch.float32:
            raise ModelError(f"a run only falls back to fp32, not {dtype}")
        if self._current.dtype != torch.float32:
            self._current = self._fp32()
        return self


class ModelCache:
    """Loaded handles and prepared backends, shared by the runs that pass one cache: a worker
    that runs many files loads and prepares once.

    Handles: one per model, scale, device (cuda and cuda:0 are one where 0 is the current
    device, see :func:`_one_spelling`) and dtype, the precision resolved
    (:func:`vsr.loading.resolve_precision`: ``auto`` by the frames' bit depth and size and the
    backend), so ``auto`` that comes to fp32, ``fp32`` and a run's fp32 fallback compute with
    one handle. A model loads from its file once per cache: its other dtypes are made from
    that load (:meth:`vsr.models.handle.Upscaler.with_dtype`; on the CPU they share its fp32
    tensors), so every handle of it here computes with the same weights, whatever happens to
    the file later. Backends: one per handle, backend, batch and frame size.

    Safe to share between threads (a web service's pool passing one to
    :func:`vsr.upscale_file`, the workers of one ``vsr batch``): each model loads, and each
    shared backend is prepared, once; a thread asking for one that another is loading or
    preparing waits for it. Concurrent runs compute with one handle: inference only reads
    it, and a run in fp16 or bf16 that falls back to fp32 switches to this cache's fp32
    handle of the same weights instead of converting the shared one (:class:`_RunHandle`).
    A compile or tensorrt backend is each thread's own (``_THREAD_SAFE_BACKENDS``), built
    without waiting for other threads' builds."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the dicts below
        self._handles: dict[tuple, object] = {}  # by what was asked (see _handle)
        self._models: dict[tuple, object] = {}  # by (model, scale, device, dtype)
        self._prepared: dict[tuple, Prepared] = {}
        self._once: dict[tuple, threading.Lock] = {}  # per key: one thread loads or prepares
        # prepare keys whose backend came out per thread (options.backend "auto")
        self._per_thread: set[tuple] = set()
        # each thread's own prepared backends (compile, tensorrt), by the Thread itself: not by
        # thread id, which the next thread often gets again once a thread has ended; weakly,
        # so that they go with their thread; in one place, so that release() reaches them all
        self._own: weakref.WeakKeyDictionary[threading.Thread, dict[tuple, Prepared]] = \
            weakref.WeakKeyDictionary()

    def _thread_prepared(self) -> dict[tuple, Prepared]:
        """This thread's own prepared backends, by the key :meth:`prepare` uses (change it
        under ``_lock``: :meth:`release` goes through every thread's)."""
        with self._lock:
            return self._own.setdefault(threading.current_thread(), {})

    def _key_lock(self, key: tuple) -> threading.Lock:
        with self._lock:
            return self._once.setdefault(key, threading.Lock())

    def handle(self, options: ModelOptions, device: str | torch.device, *, bit_depth: int = 8,
               pixels: int | None = None):
        """The model of ``options`` on ``device`` for input frames of ``bit_depth`` bits and
        ``pixels`` pixels (None: not known); raises like :func:`vsr.loading.load_model`."""
        if not isinstance(device, torch.device):
            device = resolve_device(device, require_available=True)
        check_at_least("bit_depth", bit_depth, 1)
        check_at_least("pixels", pixels, 1, optional=True)
        return self._handle(options, options.precision, device, bit_depth, pixels)

    def _handle(self, options: ModelOptions, precision: str, device: torch.device,
                bit_depth: int, pixels: int | None):
        """:meth:`handle`, remembered by what was asked (``asked``). The first request for
        a model loads it; later ones resolve the precision on a held handle of it (what
        :func:`vsr.loading.load_model` would resolve: the same model, dtypes and device) and
        get the handle of that dtype, made from the held ones where there is none."""
        auto = precision == "auto"  # only auto's choice depends on the frames
        device = _one_spelling(device)
        model = (options.model, options.scale, str(device))
        asked = (*model, precision, BACKEND_PRECISIONS.get(options.backend),
                 bit_depth if auto else None, is_small_frame(pixels) if auto else None)
        with self._lock:
            handle = self._handles.get(asked)
        if handle is not None:
            return handle
        with self._key_lock(("model", model)):  # one load of a model, whatever the precision
            with self._lock:
                held = {k[3]: h for k, h in self._models.items() if k[:3] == model}
            if held:  # the dtype, from a handle of the model: its dtypes, network or not
                dtype = resolve_precision(precision, next(iter(held.values())),
                                          bit_depth=bit_depth, pixels=pixels,
                                          backend=options.backend)
                handle = held.get(dtype)
                if handle is None:
                    handle = self._made(model, held, dtype)
            else:
                handle = load_model(options.model, scale=options.scale, device=device,
                                    precision=precision, bit_depth=bit_depth, pixels=pixels,
                                    backend=options.backend)
                with self._lock:
                    self._models[(*model, handle.dtype)] = handle
            with self._lock:
                self._handles[asked] = handle
        return handle

    def _made(self, model: tuple, held: dict, dtype: torch.dtype, source=None):
        """The model's handle in ``dtype``, made from one this cache holds (``source``, else
        the fp32 one, else any: each has the weights as loaded) and kept (under the model's
        key lock)."""
        if source is None:
            source = held.get(torch.float32, next(iter(held.values())))
        handle = source.with_dtype(dtype)
        with self._lock:
            self._models[(*model, dtype)] = handle
        return handle

    def _fp32_of(self, shared):
        """What a run of ``shared`` (a handle of this cache, fp16 or bf16) that falls back to
        fp32 computes with: this cache's fp32 handle of the model (made from ``shared``'s exact
        weights if there is none yet), never loaded again from its file mid-run (replaced or
        deleted by then). A handle this cache no longer holds gets its own fp32 copy."""
        with self._lock:
            model = next((k[:3] for k, h in self._models.items() if h is shared), None)
        if model is None:
            return shared.with_dtype(torch.float32)
        with self._key_lock(("model", model)):
            with self._lock:
                held = {k[3]: h for k, h in self._models.items() if k[:3] == model}
            fp32 = held.get(torch.float32)
            return fp32 if fp32 is not None else self._made(model, held, torch.float32, shared)

    def release(self, handle) -> None:
        """Forget ``handle`` and the backends prepared for it, so that nothing here keeps it
        (e.g. one loaded before the frames were known, replaced by one loaded for them)."""
        with self._lock:
            self._handles = {k: h for k, h in self._handles.items() if h is not handle}
            self._models = {k: h for k, h in self._models.items() if h is not handle}
            self._prepared = {k: p for k, p in self._prepared.items()
                              if p.handle is not handle}
            self._once = {k: lock for k, lock in self._once.items()
                          if not (k[0] == "prepare" and k[1][0] == id(handle))}
            self._per_thread = {k for k in self._per_thread if k[0] != id(handle)}
            for own in self._own.values():
                for key in [k for k, p in own.items() if p.handle is handle]:
                    del own[key]

    def _fp32(self, handle) -> Callable[[], object]:
        """What a run of ``handle`` that falls back to fp32 computes with
        (:meth:`_fp32_of`). Holds the cache by a weak reference: a Prepared in a result
        (EngineRun) must not keep the cache and every model in it."""
        ref = weakref.ref(self)

        def fp32():
            cache = ref()
            return (cache._fp32_of(handle) if cache is not None  # else: a Prepared used
                    else handle.with_dtype(torch.float32))        # after its cache is gone
        return fp32

    def prepare(self, handle, options: ModelOptions, image: np.ndarray | None) -> Prepared:
        """``options.backend`` for frames like ``image`` (H, W, 3) uint8/uint16, checked against
        eager on it (:func:`vsr.backends.prepare_for_frame`). Tiles always run eagerly.

        A thread-safe backend is prepared once, and a thread asking for it meanwhile waits; a
        per-thread one (compile, tensorrt) is built by each thread without waiting for the
        others' builds (``auto`` that came to one: from the second build on)."""
        fp32 = self._fp32(handle)
        if image is None:
            return Prepared(handle, None, options, fp32)
        if options.tile:
            if options.backend not in ("auto", "eager"):
                log.warning("--tile runs the model eagerly; --backend %s is not used",
                            options.backend)
            return Prepared(handle, None, options, fp32)
        key = (id(handle), options.backend, options.batch, image.shape, str(image.dtype))
        own = self._thread_prepared()

        def held() -> Prepared | None:
            with self._lock:
                prepared = self._prepared.get(key) or own.get(key)
            return prepared if prepared is not None and prepared.handle is handle else None

        def alone() -> bool:  # this thread builds its own: no other thread waits for it
            with self._lock:
                return options.backend in _PER_THREAD_BACKENDS or key in self._per_thread

        if (prepared := held()) is not None:
            return prepared
        if not alone():
            with self._key_lock(("prepare", key)):
                if (prepared := held()) is not None:
                    return prepared
                if not alone():
                    return self._build(handle, options, image, key, own, fp32)
        return self._build(handle, options, image, key, own, fp32)

    def _build(self, handle, options: ModelOptions, image: np.ndarray, key: tuple,
               own: dict[tuple, Prepared], fp32: Callable[[], object]) -> Prepared:
        """Prepare the backend and keep it: for every thread where it is thread-safe, else
        for this one."""
        from vsr.backends import prepare_for_frame

        runner = prepare_for_frame(handle, options.backend, image, batch=options.batch)
        prepared = Prepared(handle, runner, options, fp32)
        with self._lock:
            if prepared.backend in _THREAD_SAFE_BACKENDS:
                self._prepared[key] = prepared
            else:
                own[key] = prepared
                self._per_thread.add(key)
        return prepared


def _one_spelling(device: torch.device) -> torch.device:
    """The device ``device`` names, spelt one way: cpu for cpu:N (one CPU), cuda:N for cuda
    (N: this thread's current CUDA device, where CUDA is available). ``--devices cuda,cuda:0``
    on one GPU would otherwise hold two copies of each model there; and a handle loaded on
    the index, not on "cuda", stays on its GPU whatever device a thread later makes current."""
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


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
    _warn_of_input(info)
    total = frames_total if frames_total is not None else info.frames
    if total is not None and 0 < total < options.batch:
        # a batch is never more than the frames there are: --batch 1000 on a picture built
        # and checked a backend for 1000 copies of it and ran them all (66 s, 9 GB, for 0.3 s)
        options = dataclasses.replace(options, batch=total)
    handle = models.handle(options, device, bit_depth=info.bit_depth,
                           pixels=info.width * info.height)
    if options.tile is None and (tile := cpu_tile(handle, info.width, info.height,
                                                  options.batch, overlap,
                                                  Path(info.path).name)) is not None:
        options = dataclasses.replace(options, tile=tile)
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
        stats = run_pipeline(frames, processor, sink, depth=depth, frames_total=total,
                             progress=progress)
    # a fallback switched the run (not the handle, which other runs share) to fp32
    dtype = torch.float32 if processor.report.fell_back_to_fp32 else handle.dtype
    return EngineRun(stats=stats, prepared=prepared, report=processor.report, width=width,
                     height=height, pix_fmt=sink.pix_fmt, copied_packets=sink.copied_packets,
                     dtype=dtype)


def _warn_of_input(info: StreamInfo) -> None:
    """Warn of what the run does not carry from the input as it is: an alpha plane the
    decoder does not read, video streams besides the one upscaled, interlacing left woven."""
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
