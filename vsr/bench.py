"""Throughput of each pipeline stage alone, of the whole pipeline, and of a serial loop.

All five measurements use the same input, the same first ``frames`` frames, the same model
and the same encoder settings; the stream copy is left out so only the engine is timed.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from vsr.device import resolve_device
from vsr.engine import ModelCache, run_source
from vsr.errors import ConfigError
from vsr.io.image import is_image_path
from vsr.io.output import check_output_path
from vsr.io.sink import EncodeConfig, PyAVSink
from vsr.io.source import check_input_path, open_source
from vsr.loading import dtype_name
from vsr.options import DECODERS, RunOptions, as_path, check_at_least, check_choice, check_type

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BenchConfig(RunOptions):
    """One measurement: ``input``, the model options of :class:`vsr.options.RunOptions`
    (keyword-only), ``frames`` per measurement and the encoding. ``output``: also keep the
    first pipeline run's encoded video there (to compare with other runs; no stream copy).
    Validated on construction (ConfigError)."""

    input: Path
    frames: int = 30
    decoder: str = "pyav"
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    repeats: int = 1  # pipeline and serial runs, alternated; the medians are reported
    output: Path | None = None
    overwrite: bool = False  # replace an existing ``output``

    def __post_init__(self) -> None:
        object.__setattr__(self, "input", as_path("input", self.input))
        if self.output is not None:
            object.__setattr__(self, "output", as_path("output", self.output))
        super().__post_init__()
        check_type("encode", self.encode, EncodeConfig)
        check_at_least("frames", self.frames, 2)
        check_choice("decoder", self.decoder, DECODERS)
        check_at_least("repeats", self.repeats, 1)
        if self.output is not None and is_image_path(self.output):  # before minutes of work
            raise ConfigError(f"bench keeps the pipeline's video: {self.output.name} is an "
                              "image name; use .mp4, .mkv or another video container")


@dataclass(frozen=True)
class BenchResult:
    """Frames per second of each stage alone, of the pipeline and of the serial loop, and what
    ran (``vsr bench --json``)."""

    decode_fps: float
    model_fps: float
    encode_fps: float
    pipeline_fps: float
    serial_fps: float
    frames: int
    input: str
    model: str
    scale: int
    device: str
    precision: str
    size_in: tuple[int, int]
    size_out: tuple[int, int]
    backend: str = "eager"  # the backend measured (after any fallback)
    batch: int = 1
    prepare_seconds: float = 0.0  # backend build (or cache load) and check against eager
    max_error: float | None = None  # |backend - eager| on the first frame
    notes: tuple[str, ...] = ()
    pipeline_runs: tuple[float, ...] = ()  # every pipeline / serial fps, in the order run
    serial_runs: tuple[float, ...] = ()
    # median CPU time of the whole process (all threads, the encoder's included) per frame:
    # tells a loop that wastes work from one that is waiting
    pipeline_cpu_ms: float = 0.0
    serial_cpu_ms: float = 0.0

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["size_in"], d["size_out"] = list(self.size_in), list(self.size_out)
        d["notes"] = list(self.notes)
        d["pipeline_runs"], d["serial_runs"] = list(self.pipeline_runs), list(self.serial_runs)
        return d


# Decoded frames and their model outputs held for the model and encode stages: at most this,
# and a quarter of the memory available; at least 4 frames.
HOLD_BYTES = 2 << 30


def frames_held(pixels_in: int, pixels_out: int, sample_bytes: int, frames: int) -> int:
    """How many of ``frames`` decoded RGB frames of ``pixels_in`` pixels, with their upscaled
    ones of ``pixels_out``, the bench holds in memory (see HOLD_BYTES)."""
    budget = min(HOLD_BYTES, _available_memory() // 4)
    per_frame = 3 * sample_bytes * (pixels_in + pixels_out)
    return max(1, min(frames, max(4, budget // per_frame)))


def _available_memory() -> int:
    """Bytes of memory available to new allocations (Linux: MemAvailable), else HOLD_BYTES * 4."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 4 * HOLD_BYTES


def _fps(n: int, seconds: float) -> float:
    return round(n / seconds, 3) if seconds > 0 else float("inf")


def _median(values: list[float]) -> float:
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else round((v[mid - 1] + v[mid]) / 2, 3)


def run_bench(config: BenchConfig, log_stage: Callable[[str, float], None] | None = None
              ) -> BenchResult:
    """Measure; ``log_stage(name, fps)`` is called after each stage. Raises like upscale."""
    check_input_path(config.input)
    if config.output is not None:
        check_output_path(config.output, overwrite=config.overwrite, input_path=config.input)
    device = resolve_device(config.device, require_available=True)
    report = log_stage or (lambda name, fps: None)
    n = config.frames

    def frames():
        src = open_source(config.input, config.decoder)
        return src, itertools.islice(src.frames(), n)

    src, it = frames()
    try:
        info = src.info
        models = ModelCache()  # the pipeline runs below reuse this handle and backend
        # the model before minutes of decoding: a bad --model fails at once
        handle = models.handle(config, device, bit_depth=info.bit_depth,
                               pixels=info.width * info.height)
        w, h = info.width * handle.scale, info.height * handle.scale
        held = frames_held(info.width * info.height, w * h, 2 if info.bit_depth > 8 else 1, n)
        decoded, pts = [], []
        t = time.perf_counter()
        for f in it:
            pts.append(f.pts)
            if len(decoded) < held:
                decoded.append(f)
        decode_fps = _fps(len(pts), time.perf_counter() - t)
    finally:
        src.close()
    n = len(pts)
    report("decode", decode_fps)
    notes: tuple[str, ...] = ()
    if n < config.frames:  # the figures are of fewer frames than asked: said, not hidden
        notes = (f"the input holds {n} frames, fewer than the {config.frames} asked for: "
                 f"every stage is measured on {n}",)
        log.warning("%s", notes[0])
    if len(decoded) < n:
        notes += (f"model and encode stages cycle over the first {len(decoded)} of the {n} "
                  "frames (all of them do not fit in memory)",)
        log.info("%s", notes[0])

    if n < config.batch:  # as run_source holds it: every stage runs the batch reported
        config = replace(config, batch=n)
    first_image = decoded[0].image
    prepared = asked = models.prepare(handle, config, first_image)
    runner = prepared.runner
    if runner is not None:
        log.info("backend %s prepared in %.1f s", runner.backend, runner.prepare_seconds)

    def fell_back(report, stage: str) -> None:
        """After the first run that falls back to fp32, every later one starts in fp32,
        eagerly: what a run computes after its fallback (vsr.pipeline.compute.Forward),
        without each falling back, and warning, again. The cache's shared handle stays in
        the precision asked for (vsr.engine._RunHandle): the result's precision is the
        runs', not that handle's."""
        nonlocal config, prepared, notes
        if not report.fell_back_to_fp32 or prepared is not asked:  # said once
            return
        config = replace(config, precision="fp32", backend="eager")
        prepared = models.prepare(prepared.fp32(), config, first_image)
        notes += (*report.notes, f"the {stage} stage fell back to fp32: every stage after it "
                  "ran in fp32, eagerly, as a run goes on after its fallback")

    proc = prepared.processor(reuse=False)  # the model on every frame, repeated ones too
    # warm-up: first-call allocations and kernel selection are not throughput. submit, then
    # drain, in that order: a frame left pending would be computed in the timed stage
    list(proc.submit(decoded[0]))
    list(proc.drain())
    outputs = []  # the model's own output of each held frame: what the encode stage encodes
    t = time.perf_counter()
    for i in range(n):
        f = decoded[i % len(decoded)]
        for out in proc.submit(f if i < len(decoded) else replace(f, index=i, pts=pts[i])):
            if len(outputs) < len(decoded):
                outputs.append(out[1])
    for out in proc.drain():
        if len(outputs) < len(decoded):
            outputs.append(out[1])
    model_fps = _fps(n, time.perf_counter() - t)
    report("model", model_fps)
    fell_back(proc.report, "model")
    del decoded

    with tempfile.TemporaryDirectory(prefix="vsr-bench-") as tmp:
        def sink(name: str, path: Path | None = None) -> PyAVSink:
            return PyAVSink(path or Path(tmp) / f"{name}.mkv", info, w, h, config.encode,
                            copy_streams=False, overwrite=True)  # checked above / own tmp

        t = time.perf_counter()
        with sink("encode") as k:
            for i, pt in enumerate(pts):  # each frame's own upscaled image, not a few repeated
                k.write(outputs[i % len(outputs)], pt)
        encode_fps = _fps(n, time.perf_counter() - t)
        report("encode", encode_fps)
        del outputs

        def timed(loop: Callable[[], None]) -> tuple[float, float]:
            """(fps, process CPU ms per frame) of one run of ``loop``."""
            t, c = time.perf_counter(), time.process_time()
            loop()
            cpu_ms = round(1000 * (time.process_time() - c) / n, 1)
            return _fps(n, time.perf_counter() - t), cpu_ms

        def pipeline(run: int) -> tuple[float, float]:
            src, it = frames()

            kept = config.output if run == 0 else None
            runs = []

            def loop() -> None:  # the recipe upscale_file and batch run, on the same models
                runs.append(run_source(src, config, device,
                                       lambda *_: sink(f"pipeline{run}", kept),
                                       models=models, frames=it, frames_total=n))
            result = timed(loop)
            src.close()
            fell_back(runs[0].report, "pipeline")
            return result

        def serial(run: int) -> tuple[float, float]:
            src, it = frames()
            proc = prepared.processor()

            def loop() -> None:
                with sink(f"serial{run}") as k:
                    # decode one, infer, encode, repeat: the popular scripts' loop (a batch:
                    # its frames are decoded, then inferred at once, as the pipeline does)
                    for f in it:
                        for frame, image in proc.submit(f):
                            k.write(image, frame.pts)
                    for frame, image in proc.drain():
                        k.write(image, frame.pts)
            result = timed(loop)
            src.close()
            fell_back(proc.report, "serial")
            return result

        pipeline_runs, serial_runs, pipeline_cpu, serial_cpu = [], [], [], []
        for run in range(config.repeats):  # alternated, so load changes hit both alike
            fps, cpu = pipeline(run)
            pipeline_runs.append(fps)
            pipeline_cpu.append(cpu)
            report("pipeline", fps)
            fps, cpu = serial(run)
            serial_runs.append(fps)
            serial_cpu.append(cpu)
            report("serial", fps)
        pipeline_fps, serial_fps = _median(pipeline_runs), _median(serial_runs)
    runner = prepared.runner  # the backend measured: eager in fp32 after a fallback

    return BenchResult(
        decode_fps=decode_fps, model_fps=model_fps, encode_fps=encode_fps,
        pipeline_fps=pipeline_fps, serial_fps=serial_fps, frames=n, input=str(config.input),
        model=handle.name, scale=handle.scale, device=str(device),
        precision=dtype_name(prepared.handle.dtype), size_in=(info.width, info.height),
        size_out=(w, h), backend=prepared.backend, batch=config.batch,
        prepare_seconds=runner.prepare_seconds if runner else 0.0,
        max_error=runner.max_error if runner else None, notes=asked.notes + notes,
        pipeline_runs=tuple(pipeline_runs), serial_runs=tuple(serial_runs),
        pipeline_cpu_ms=_median(pipeline_cpu), serial_cpu_ms=_median(serial_cpu),
    )
