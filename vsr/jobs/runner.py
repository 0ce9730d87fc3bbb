"""`run_batch`: plan every input, run its tasks on the workers, join, and report.

Videos are cut into keyframe-aligned segments; every finished segment is a file in
``<output>/.vsr-batch/segments/<file id>/`` recorded in ``<output>/.vsr-batch/jobs.sqlite``.
When a file's last segment is done the segments are joined into its output and removed. A
failure in one file never stops the others. Workers: one thread per entry of ``devices``
sharing one queue, or Ray tasks (``ray``), imported only then.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vsr.errors import ConfigError, InputError, Interrupted, OutputError, VsrError
from vsr.io.output import discard
from vsr.io.passthrough import check_carry
from vsr.io.source import PyAVSource, link_note
from vsr.jobs.join import check_output_codec, join_segments
from vsr.jobs.plan import (
    DEFAULT_TEMPLATE,
    STATE_DIR,
    Job,
    JobOptions,
    check_input_folder,
    expand_inputs,
    make_jobs,
)
from vsr.jobs.segments import (
    Segment,
    Task,
    TaskResult,
    check_unchanged,
    clean_partials,
    input_identity,
    is_segmentable,
    plan_segments,
    segment_problem,
    segment_suffix,
)
from vsr.jobs.store import JobStore, SegmentRow, StoreError
from vsr.options import (
    Config,
    as_path,
    as_paths,
    check_at_least,
    check_callable,
    check_type,
    plural,
)
from vsr.pipeline.run import eta_seconds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchConfig(Config):
    """A batch run; validated on construction (ConfigError)."""

    inputs: tuple[str, ...]
    output_dir: Path
    manifests: tuple[Path, ...] = ()
    template: str = DEFAULT_TEMPLATE
    options: JobOptions = field(default_factory=JobOptions)
    devices: tuple[str, ...] = ("auto",)
    resume: bool = False
    overwrite: bool = False
    segment_frames: int = 300
    ray: str | None = None  # a Ray address or "auto"; None: local worker threads
    wait: bool = False  # another batch holds the output folder: wait for it (else refuse)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "output_dir", as_path("output_dir", self.output_dir))
        # files, folders or glob patterns, as given
        object.__setattr__(self, "inputs", tuple(map(str, as_paths("inputs", self.inputs))))
        object.__setattr__(self, "manifests", as_paths("manifests", self.manifests))
        if isinstance(self.devices, str):  # "cpu" is one device, not three letters
            object.__setattr__(self, "devices", (self.devices,))
        check_type("devices", self.devices, tuple | list)
        object.__setattr__(self, "devices", tuple(self.devices))
        check_type("options", self.options, JobOptions)
        check_type("template", self.template, str)
        check_type("ray", self.ray, str, optional=True)
        if not self.inputs and not self.manifests:
            raise ConfigError("no inputs: give files, folders, globs or --manifest")
        if not self.devices:
            raise ConfigError("devices must name at least one device")
        from vsr.device import resolve_device

        for d in self.devices:
            dev = resolve_device(d)
            if dev.type == "cuda" and self.ray is None:
                import torch

                count = torch.cuda.device_count() if torch.cuda.is_available() else 0
                if (dev.index or 0) >= count:
                    raise ConfigError(f"device {d} is not available ({count} CUDA devices)")
        check_at_least("segment_frames", self.segment_frames, 1)
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ConfigError(f"output folder is a file: {self.output_dir}")
        for text in self.inputs:  # before anything is written into the output folder
            if Path(text).is_dir():
                check_input_folder(Path(text), self.output_dir)

    @property
    def state_dir(self) -> Path:
        return self.output_dir / STATE_DIR


@dataclass(frozen=True)
class BatchProgress:
    """Progress over the whole batch (reported from the thread that called run_batch)."""

    files_total: int
    files_done: int
    files_failed: int
    files_skipped: int
    frames_done: int
    frames_total: int
    elapsed: float
    frames_computed: int  # frames computed in this run (not reused segments): the speed

    @property
    def fps(self) -> float:
        return self.frames_computed / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        if not self.frames_computed:  # frames skipped as done say nothing of the rate
            return None
        return eta_seconds(self.frames_done, self.frames_total, self.fps)


@dataclass(frozen=True)
class BatchResult:
    done: tuple[dict, ...]
    skipped: tuple[dict, ...]
    failed: tuple[dict, ...]
    segments_computed: int
    segments_reused: int
    frames_computed: int
    seconds: float
    # finished segments of an interrupted run that this run, without --resume, started over
    segments_discarded: int = 0

    def to_json(self) -> dict:
        """The `--json` contract: exactly done, skipped and failed."""
        return {"done": list(self.done), "skipped": list(self.skipped),
                "failed": list(self.failed)}


class _File:
    """A planned file: its tasks still to run and whether it has failed (guarded by Tracker)."""

    def __init__(self, job: Job, file_id: int, seg_dir: Path | None, tasks: list[Task],
                 segments: list[Segment], frames: int,
                 identity: tuple[int, ...] | None = None) -> None:
        self.job, self.file_id, self.seg_dir = job, file_id, seg_dir
        self.identity = identity  # the input's when planned: the join checks it again
        self.tasks, self.segments, self.frames = tasks, segments, frames
        self.remaining = len(tasks)
        self.error: str | None = None
        self.done = False  # joined (or written) and recorded
        self.backends: set[str] = set()  # the backends its computed tasks ran on


class Tracker:
    """Shared bookkeeping: the executors call it from their threads; it writes the store,
    joins a file when its last task is done, and keeps the counts for progress."""

    def __init__(self, store: JobStore, overwrite: bool) -> None:
        self.store = store
        self.overwrite = overwrite
        self.lock = threading.Lock()
        self.files: dict[int, _File] = {}
        self.done: list[dict] = []
        self.skipped: list[dict] = []
        self.failed: list[dict] = []
        self.frames_total = 0
        self.frames_reused = 0
        self.frames_finished = 0
        self.segments_computed = 0
        self.segments_reused = 0
        self.segments_discarded = 0  # finished before, started over without --resume
        self._running: dict[tuple[int, int], int] = {}
        self._said: set[tuple[int, str, str]] = set()  # (file, logger, warning)

    def claim(self, task: Task) -> bool:
        """Called before computing ``task``; False when its file has failed already."""
        with self.lock:
            if self.files[task.file_id].error is not None:
                return False
            self._running[_key(task)] = 0
        if task.segment is not None:
            self.store.segment_started(task.file_id, task.segment.index)
        return True

    def progress(self, task: Task, frames: int) -> None:
        with self.lock:
            if _key(task) in self._running:
                self._running[_key(task)] = frames

    def finished(self, task: Task, result: TaskResult) -> None:
        """``task`` wrote its result; the last one of a file triggers the join."""
        frames = result.frames
        if task.segment is not None:
            self.store.segment_done(task.file_id, task.segment.index, _durable_size(task.path))
        self._say(task, result.warnings)
        with self.lock:
            self._running.pop(_key(task), None)
            self.frames_finished += frames
            self.segments_computed += task.segment is not None
            f = self.files[task.file_id]
            f.remaining -= 1
            f.backends.add(result.backend)
            last = f.remaining == 0 and f.error is None
        if last:
            self.complete(f)

    def _say(self, task: Task, warnings: tuple[logging.LogRecord, ...]) -> None:
        """Log the warnings ``task`` collected (see segments.TASK_LOGGERS), each once per
        file however many of its segments said it, under the logger that said it."""
        for record in warnings:
            key = (task.file_id, record.name, record.getMessage())
            with self.lock:
                new = key not in self._said
                self._said.add(key)
            if new:
                logging.getLogger(record.name).handle(record)

    def cancelled(self, task: Task) -> None:
        """``task`` stopped for an interrupt: its file stays unfinished, for --resume."""
        with self.lock:
            self._running.pop(_key(task), None)

    def task_failed(self, task: Task, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else _reason(error)
        log.warning("%s failed: %s", task.label, text)
        with self.lock:
            self._running.pop(_key(task), None)
            f = self.files[task.file_id]
            first = f.error is None
            if first:
                f.error = text
        if first:
            self._fail_file(f, text)

    def complete(self, f: _File) -> None:
        def record() -> None:
            try:
                self.store.file_done(f.file_id, f.frames, _size(f.job.output))
            except StoreError:
                # an output the record does not know would stop the rerun ("exists"): it goes,
                # and the segments stay for --resume to join again
                discard(f.job.output)
                raise
            if f.seg_dir is not None:
                shutil.rmtree(f.seg_dir, ignore_errors=True)
            with self.lock:
                f.done = True
                # the backend that computed it (None: every segment was reused from a past run)
                self.done.append({"input": str(f.job.input), "output": str(f.job.output),
                                  "backend": ",".join(sorted(f.backends)) or None})

        if f.seg_dir is None:
            record()
            return

        def unchanged() -> None:
            check_unchanged(f.job.input, f.identity)

        try:
            unchanged()  # the join copies the input's other streams: from the file planned
            # a stop signal from the move into place to the end of record() is held until
            # after it: the output, its record and its segments' removal go together
            join_segments(f.job.input, segment_paths(f), f.job.output, overwrite=self.overwrite,
                          frames=[s.frames for s in f.segments], recorded=record,
                          audio=f.job.options.audio,
                          unchanged=unchanged,
                          moving=lambda size: self.store.file_joining(f.file_id, size))
        except StoreError:  # the batch's record: the batch stops
            raise
        except Exception as exc:  # the file fails, not the task that happened to end last
            # an input deleted or replaced meanwhile: that is the reason to say
            self._fail_file(f, _reason(_change_of(f) or exc))

    def _fail_file(self, f: _File, text: str) -> None:
        self.store.file_failed(f.file_id, text)
        with self.lock:
            f.error = f.error or text
            self.failed.append({"input": str(f.job.input),
                                "error": f.job.said(_said_once(f.job, text))})

    def fail_unplanned(self, job: Job, text: str) -> None:
        with self.lock:
            self.failed.append({"input": str(job.input), "error": job.said(_said_once(job, text))})

    def left_after_stop(self, files_total: int) -> str:
        """The message of a stop, true to what it leaves: the files of ``files_total`` not
        ended (done, skipped or failed), and the finished segments of those a --resume
        reuses; or that nothing is left. Call once every worker has stopped."""
        with self.lock:
            ended = len(self.done) + len(self.skipped) + len(self.failed)
            kept = sum(len(f.segments) - f.remaining for f in self.files.values()
                       if f.seg_dir is not None and not f.done and f.error is None)
            failed = len(self.failed)
        note = f"; {failed} failed (a rerun tries {'it' if failed == 1 else 'them'} again)" \
            if failed else ""
        left = files_total - ended
        if left <= 0:
            return f"interrupted after every file had ended: nothing left to resume{note}"
        files = f"{left} of {plural(files_total, 'file')} unfinished"
        if not kept:
            return f"interrupted; {files}, no finished segment to keep (rerun to do them){note}"
        return (f"interrupted; {files}, {plural(kept, 'finished segment')} "
                f"kept (rerun with --resume to reuse them){note}")

    def snapshot(self, elapsed: float, files_total: int) -> BatchProgress:
        with self.lock:
            running = sum(self._running.values())
            computed = self.frames_finished + running
            return BatchProgress(
                files_total=files_total, files_done=len(self.done),
                files_failed=len(self.failed), files_skipped=len(self.skipped),
                frames_done=self.frames_reused + computed, frames_total=self.frames_total,
                elapsed=elapsed, frames_computed=computed)


def _change_of(f: _File) -> InputError | None:
    """The error of an input deleted or replaced since ``f`` was planned; None if it was not."""
    try:
        check_unchanged(f.job.input, f.identity)
    except InputError as exc:
        return exc
    return None


def _durable_size(path: Path) -> int:
    """The size of the finished file ``path``, once its data is on disk: a segment is recorded
    as done only then, so a crash cannot leave a "done" segment that was never written."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _key(task: Task) -> tuple[int, int]:
    return (task.file_id, task.segment.index if task.segment is not None else -1)


def _said_once(job: Job, text: str) -> str:
    """``text`` without a last ': INPUT' naming the input that its failed line names first:
    'failed: a.mp4: input not found', not '...: input not found: a.mp4' (and where the input
    is a link to no file, the note on that after it)."""
    note = link_note(job.input)
    tail = f": {job.input}{note}"
    if text.endswith(tail) and text != tail:
        return text[: -len(tail)] + note
    return text


def _absent(job: Job) -> str | None:
    """Why there is nothing of ``job``'s input to upscale: a file not there, a folder without
    media files, a pattern that matches nothing; None where there is (a bad manifest line is
    that line's failure, said as the others are)."""
    if job.error is not None:
        return None if job.where is not None or job.input.is_file() else job.error
    if job.input.is_file():
        return None
    if job.input.exists():
        return "input is not a file"
    return "input not found" + link_note(job.input)


def _nothing_there(jobs: list[Job]) -> str:
    """The one error of a batch none of whose inputs exists (see :func:`_absent`)."""
    said = [j.said(f"{j.input}: {_absent(j)}") for j in jobs]  # as its failed line would
    if len(said) == 1:
        return said[0]
    more = f"; and {len(said) - 3} more" if len(said) > 3 else ""
    return f"no input of the batch exists: {'; '.join(said[:3])}{more}"


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, VsrError):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def segment_path(seg_dir: Path, index: int, job: Job) -> Path:
    return seg_dir / f"seg-{index:05d}{segment_suffix(job.options.codec, job.output)}"


def segment_paths(f: _File) -> list[Path]:
    return [segment_path(f.seg_dir, s.index, f.job) for s in f.segments]


def _fingerprint(job: Job, identity: tuple[int, ...], segment_frames: int) -> str:
    size, mtime_ns = identity[:2]
    weights = weights_digest(job.options.model)
    return f"{job.options.fingerprint()}:{size}:{mtime_ns}:{segment_frames}:{weights}"


def _size(path: Path | None) -> int | None:
    try:
        return path.stat().st_size if path is not None else None
    except OSError:
        return None


def weights_digest(model: str | None) -> str:
    """The sha256 of the weights ``model`` (a registry name, a checkpoint path; None: the
    default) loads, '' where it loads none (bicubic, a file not there: loading says why).
    In the fingerprint: a checkpoint retrained in place (or other shipped weights) must not
    have its old segments joined with new ones, two models in one video."""
    from vsr.models import DEFAULT_MODEL, REGISTRY
    from vsr.models.registry import file_sha256

    name = model or DEFAULT_MODEL
    # as vsr.models.load_model: a registry name first, then a file of that name
    path = REGISTRY.get(name).weights_path if name in REGISTRY else Path(name)
    if not path.is_file():
        path = None
    try:
        return file_sha256(path)[:16] if path is not None else ""
    except OSError:
        return ""


def plan_file(job: Job, config: BatchConfig, store: JobStore, tracker: Tracker) -> list[Task]:
    """Skip, or plan one file into tasks: a picture (or a GIF output) is one task, a video
    one per segment (reusing finished segments with --resume)."""
    assert job.output is not None
    identity = input_identity(job.input)  # before it is read: a change after fails its tasks
    fingerprint = _fingerprint(job, identity, config.segment_frames)
    # the record's key: the paths resolved, however typed (`in` and `/abs/in`, a link), so that
    # a rerun skips and a --resume reuses whatever spelling names the files; one recorded as
    # typed (by an older vsr) takes the resolved key
    key = (os.path.realpath(job.input), os.path.realpath(job.output))
    store.rekey(str(job.input), str(job.output), *key)
    if (joined := store.settle_joined(*key, fingerprint)) is not None:
        # killed between its join's move into place and the record of it (kill -9, a power
        # cut): the output there is the one it was moving, by its size; its segments go
        shutil.rmtree(config.state_dir / "segments" / f"{joined:06d}", ignore_errors=True)
    done = None if config.overwrite else store.finished_output(*key, fingerprint)
    if done == "intact":
        with tracker.lock:
            tracker.skipped.append({"input": str(job.input), "output": str(job.output)})
        return []
    if done is not None:
        # a finished output cut short or replaced since: not skipped as done, not replaced
        raise OutputError(f"{job.output} is not the output this batch finished ({done}): "
                          "--overwrite makes it again")
    from vsr.io.output import check_output_path

    check_output_path(job.output, overwrite=config.overwrite, input_path=job.input)
    if not is_segmentable(job.input, job.output):
        file_id, _, _ = store.begin(*key, fingerprint, [(None, None, 1)], resume=False)
        task = Task(job, file_id, None, job.output, overwrite=config.overwrite,
                    identity=identity)
        _register(tracker, _File(job, file_id, None, [task], [], 1, identity))
        return [task]
    return _plan_segmented(job, config, store, tracker, key, fingerprint, identity)


def _plan_segmented(job: Job, config: BatchConfig, store: JobStore, tracker: Tracker,
                    key: tuple[str, str], fingerprint: str,
                    identity: tuple[int, ...]) -> list[Task]:
    """Cut a video at keyframes and plan a task for each segment not finished already (with
    --resume); ``key``: the record's (input, output)."""
    check_output_codec(job.output, job.options.codec)  # before any segment, not at the join
    with PyAVSource(job.input) as src:
        info = src.info
    # and the streams the join copies: the same
    check_carry(job.input, job.output, info.index, audio=job.options.audio)
    # the deflicker filter carries each frame into the next: one segment, as `vsr upscale` runs
    min_frames = sys.maxsize if job.options.deflicker else config.segment_frames
    segments = plan_segments(job.input, min_frames, info)
    plan = [(s.start, s.end, s.frames) for s in segments]
    file_id, kept, discarded = store.begin(*key, fingerprint, plan, config.resume)
    if discarded:
        # a rerun without --resume starts the file over: said, as a rerun skips finished files
        log.warning("%s: %s of an interrupted run discarded (--resume reuses them)",
                    job.input.name, plural(discarded, "finished segment"))
        with tracker.lock:
            tracker.segments_discarded += discarded
    seg_dir = config.state_dir / "segments" / f"{file_id:06d}"
    if not kept:
        shutil.rmtree(seg_dir, ignore_errors=True)
    try:
        seg_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # the batch's own folder damaged (a file where a folder goes)
        raise StoreError(f"cannot make the segment folder {seg_dir}: {exc.strerror or exc} "
                         f"(remove {config.state_dir} to start the batch's record anew)") from exc
    clean_partials(seg_dir)
    rows = {r.index: r for r in store.segments(file_id)}
    tasks, reused = [], 0
    for s in segments:
        path = segment_path(seg_dir, s.index, job)
        if rows[s.index].done and _reusable(job, rows[s.index], path):
            reused += s.frames
            with tracker.lock:
                tracker.segments_reused += 1
            continue
        if rows[s.index].done:
            store.segment_undone(file_id, s.index)
        tasks.append(Task(job, file_id, s, path, overwrite=True, identity=identity))
    total = sum(s.frames for s in segments)
    f = _File(job, file_id, seg_dir, tasks, segments, total, identity)
    _register(tracker, f, reused=reused)
    if not tasks:  # every segment was finished before: only the join is left
        tracker.complete(f)
    return tasks


def _reusable(job: Job, row: SegmentRow, path: Path) -> bool:
    """Whether a segment recorded as done can be joined as it is: its file is there with
    every frame (and its recorded size). A damaged one is removed, to be computed again."""
    if not path.exists():  # joined and removed by an earlier run (or deleted): computed again
        log.info("%s segment %d: its file is gone; computing it again", job.input.name,
                 row.index)
        return False
    problem = segment_problem(path, row.frames, row.bytes)
    if problem is None:
        return True
    log.warning("%s segment %d: its finished file %s; computing it again", job.input.name,
                row.index, problem)
    discard(path)
    return False


def _register(tracker: Tracker, f: _File, reused: int = 0) -> None:
    with tracker.lock:
        tracker.files[f.file_id] = f
        tracker.frames_total += f.frames
        tracker.frames_reused += reused


def run_batch(config: BatchConfig,
              progress: Callable[[BatchProgress], None] | None = None) -> BatchResult:
    """Run the batch; failures are collected in the result, never raised per file.

    Raises ConfigError/OutputError for problems of the batch itself (bad template, output
    folder not creatable or not writable), InputError when no input exists at all (nothing
    made: no output folder, no job store), StoreBusy when another batch runs on the same
    output folder (unless ``config.wait``), Interrupted on Ctrl-C (or a KeyboardInterrupt
    raised by a signal handler): every worker has stopped, no partial file is left, and
    finished segments stay for --resume; its message says what is left to do.
    """
    check_type("config", config, BatchConfig)
    check_callable("progress", progress)
    t0 = time.perf_counter()
    try:
        # the model, inputs and outputs first: an unknown model, a manifest that cannot be
        # read, a bad template is said once, before anything is made (the output folder, its
        # job store; an unknown model failed every file, each leaving a segment folder)
        from vsr.models import DEFAULT_MODEL, check_model_name

        if not config.manifests:  # a manifest line may name its own model and scale
            check_model_name(config.options.model or DEFAULT_MODEL, config.options.scale)
        left_out: list[Path] = []
        entries = expand_inputs(list(config.inputs), list(config.manifests),
                                exclude=config.output_dir, left_out=left_out)
        jobs = make_jobs(entries, config.output_dir, config.template, config.options)
        if jobs and all(_absent(j) is not None for j in jobs):  # nothing to do but fail
            raise InputError(_nothing_there(jobs))
        try:
            config.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the output folder {config.output_dir}: "
                              f"{exc.strerror or exc}") from exc
        with JobStore(config.state_dir / "jobs.sqlite", wait=config.wait) as store:
            return _run(config, store, t0, progress, jobs, left_out)
    except KeyboardInterrupt as exc:  # before the inputs are known (or the store is open)
        raise Interrupted("interrupted before any file was started") from exc


def _report_left_out(left_out: list[Path], jobs: list[Job], output_dir: Path) -> None:
    """Warn of the files a search left out for being inside the output folder, except the
    outputs this batch writes (a rerun finds its own outputs there; they are no inputs)."""
    outputs = {j.output.resolve() for j in jobs if j.output is not None}
    others = sorted({p for p in left_out if p.resolve() not in outputs})
    if others:
        names = ", ".join(map(str, others[:5])) + (" ..." if len(others) > 5 else "")
        log.warning("%d file(s) inside the output folder %s were not taken as inputs (a "
                    "search never takes files from there; name another -o to upscale them): "
                    "%s", len(others), output_dir, names)


def _run(config: BatchConfig, store: JobStore, t0: float,
         progress: Callable[[BatchProgress], None] | None, jobs: list[Job],
         left_out: list[Path]) -> BatchResult:
    _report_left_out(left_out, jobs, config.output_dir)
    tracker = Tracker(store, config.overwrite)
    try:
        return _run_jobs(config, store, t0, progress, jobs, tracker)
    except (KeyboardInterrupt, Interrupted) as exc:  # planning, joining here, or the workers'
        raise Interrupted(tracker.left_after_stop(len(jobs))) from exc


def _run_jobs(config: BatchConfig, store: JobStore, t0: float,
              progress: Callable[[BatchProgress], None] | None, jobs: list[Job],
              tracker: Tracker) -> BatchResult:
    tasks: list[Task] = []
    for job in jobs:
        if job.error is not None:
            tracker.fail_unplanned(job, job.error)
            continue
        try:
            job.output.parent.mkdir(parents=True, exist_ok=True)
            tasks.extend(plan_file(job, config, store, tracker))
        except StoreError:  # the batch's own record, not this file: the batch stops
            raise
        except (VsrError, OSError) as exc:
            tracker.fail_unplanned(job, _reason(exc))
    report = None
    if progress is not None:
        def report() -> None:
            progress(tracker.snapshot(time.perf_counter() - t0, len(jobs)))
    if tasks:
        if config.ray is not None:
            from vsr.jobs.ray_executor import run_on_ray

            run_on_ray(tasks, tracker, config.ray, config.devices, report)
        else:
            from vsr.jobs.workers import run_on_threads

            run_on_threads(tasks, tracker, config.devices, report)
    if report is not None:
        report()
    return BatchResult(
        done=tuple(tracker.done), skipped=tuple(tracker.skipped),
        failed=tuple(tracker.failed), segments_computed=tracker.segments_computed,
        segments_reused=tracker.segments_reused, frames_computed=tracker.frames_finished,
        seconds=round(time.perf_counter() - t0, 3),
        segments_discarded=tracker.segments_discarded)
