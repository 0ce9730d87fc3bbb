"""Cutting a video into keyframe-aligned segments, and computing one segment or one file.

A segment is the frames whose pts lies in ``[start, end)``; cuts are made only at keyframe
pts, so each segment decodes on its own (:meth:`PyAVSource.frames_between`). Its upscaled
video is encoded into a NUT file (exact timestamps in any time base, no other streams), or a
Matroska one where only that keeps the frames' alpha (:func:`segment_suffix`); the joiner
later puts the segments and the input's other streams into the output.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import av

from vsr.device import resolve_device
from vsr.engine import ModelCache, run_source
from vsr.errors import InputError, PipelineError
from vsr.io.image import is_image_path
from vsr.io.info import StreamInfo, clock_reset, clock_reset_error
from vsr.io.output import discard, is_stale_partial
from vsr.io.paths import file_url, open_media
from vsr.io.sink import EncodeConfig, PyAVSink
from vsr.io.source import (
    PyAVSource,
    check_input_path,
    packet_pts,
    pts_step,
    truncation_problem,
)
from vsr.jobs.join import segment_offset
from vsr.jobs.plan import Job
from vsr.upscale import UpscaleConfig, upscale_file

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".nut"
# libvpx's alpha plane travels beside each frame as Matroska BlockAdditional, which NUT drops
_BESIDE_IN_MATROSKA = frozenset({"libvpx", "libvpx-vp9"})


def segment_suffix(codec: str, output: Path) -> str:
    """The container of a segment encoded by ``codec`` for ``output``: NUT (exact timestamps
    in any time base), or Matroska for VP8/VP9 into a Matroska/WebM output, which keeps their
    alpha plane only if the segments do (and has Matroska's millisecond clock anyway)."""
    if codec in _BESIDE_IN_MATROSKA and output.suffix.lower() in (".mkv", ".webm"):
        return ".mkv"
    return SEGMENT_SUFFIX


# The loggers of the modules a task runs. What they warn of in a task is about its input as a
# whole (an alpha channel or HDR10 metadata the output drops, --tile overriding --backend):
# every segment of a video would say it again, and a Ray worker's log never reaches the user.
# So run_task collects those warnings into its result, and the batch says each once per input
# (Tracker.finished). tests/test_batch_hardening.py checks the list against the modules.
TASK_LOGGERS = (
    "vsr.backends", "vsr.backends.tensorrt", "vsr.engine", "vsr.export", "vsr.io.decord_source",
    "vsr.io.ffmpeg_sink", "vsr.io.image", "vsr.io.output", "vsr.io.passthrough", "vsr.io.sink",
    "vsr.io.source",
    "vsr.pipeline.compute", "vsr.pipeline.cuda", "vsr.pipeline.run", "vsr.runtime",
    "vsr.threads", "vsr.tiling", "vsr.upscale",
)
_TASK_LOG: ContextVar[list[logging.LogRecord] | None] = ContextVar("vsr_task_log", default=None)


class _Collect(logging.Filter):
    """Inside :func:`run_task` (its thread, or a :class:`vsr.threads.Worker` it started), takes
    a warning out of the log and into the task's list; elsewhere lets every record pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        collected = _TASK_LOG.get()
        if collected is None or record.levelno < logging.WARNING:
            return True
        said = logging.makeLogRecord(record.__dict__)
        said.msg, said.args, said.exc_info = record.getMessage(), None, None  # picklable
        collected.append(said)
        return False


_COLLECT = _Collect()
for _name in TASK_LOGGERS:
    logging.getLogger(_name).addFilter(_COLLECT)


@dataclass(frozen=True)
class Segment:
    index: int
    start: int | None  # pts in the input video stream's time base; None: open
    end: int | None
    frames: int  # the video packets whose pts lies in [start, end), less those an edit list
    # discards: the frames decoding yields


@dataclass(frozen=True)
class Task:
    """One unit of work: a segment of a video, or a whole file (images) when ``segment`` is
    None. ``path`` is where the result goes (the segment file, or the output itself)."""

    job: Job
    file_id: int
    segment: Segment | None
    path: Path
    overwrite: bool = False
    identity: tuple[int, ...] | None = None  # the input's when planned (input_identity)

    @property
    def frames(self) -> int:
        return self.segment.frames if self.segment is not None else 1

    @property
    def label(self) -> str:
        seg = f" segment {self.segment.index}" if self.segment is not None else ""
        return f"{self.job.input.name}{seg}"


def plan_segments(path: Path, min_frames: int, info: StreamInfo | None = None) -> list[Segment]:
    """Keyframe-aligned segments of at least ``min_frames`` frames (the last may be shorter).

    Reads packets only (no decoding); packets an MP4 edit list discards are not counted, so
    the plan holds the frames decoding yields. Raises InputError for unreadable, video-less or
    truncated input (:func:`vsr.io.source.truncation_problem`). ``info``: the input's, where
    the caller has opened it already as a :class:`PyAVSource` (which made those checks).
    """
    if info is None:
        with PyAVSource(path) as source:  # same checks and messages as a normal run
            info = source.info
    index, step = info.index, pts_step(info)
    try:
        with open_media(file_url(path)) as c:
            stream = c.streams[index]
            pts, keys, end = [], [], None
            decoded_at: Fraction | None = None  # the last packet's decode time, in s
            for pkt in c.demux(stream):
                if pkt.size == 0 or pkt.is_discard:  # pre-roll an MP4 edit list cuts away
                    continue
                if pkt.dts is not None:  # a clock that restarts, found before any work
                    t = pkt.dts * stream.time_base
                    if decoded_at is not None and clock_reset(decoded_at, t, info.frame_rate):
                        raise clock_reset_error(path.name, len(pts), decoded_at, t)
                    decoded_at = t
                at = packet_pts(c, pkt)  # AVI: the frame slot (see packet_pts)
                if at is None:
                    return [Segment(0, None, None, _count(c, stream))]
                pts.append(at)
                end = max(end or at, at + max(pkt.duration or 0, step))
                if pkt.is_keyframe:
                    keys.append(at)
            # the same judgement `vsr upscale` makes after decoding (a cut-off file)
            problem = truncation_problem(c, stream, len(pts), end, step) if pts else None
            if _uncuttable(c, stream):
                keys = []
    except av.error.FFmpegError as exc:
        raise InputError(f"cannot read {path} as media: {exc.strerror or exc}") from exc
    if not pts:
        raise InputError(f"no video frames in {path}")
    if problem:
        raise InputError(f"{path.name} is truncated or damaged: {problem}")
    ordered = sorted(pts)
    cuts: list[int] = []
    last = ordered[0]
    for k in keys:  # decode order; a cut must leave min_frames behind it
        if k <= last:
            continue
        if bisect.bisect_left(ordered, k) - bisect.bisect_left(ordered, last) >= min_frames:
            cuts.append(k)
            last = k
    if cuts and bisect.bisect_left(ordered, ordered[-1] + 1) - bisect.bisect_left(
            ordered, cuts[-1]) < min_frames // 2:
        cuts.pop()  # fold a short tail into the segment before it
    bounds = [None, *cuts, None]
    segments = []
    for i in range(len(bounds) - 1):
        lo = 0 if bounds[i] is None else bisect.bisect_left(ordered, bounds[i])
        hi = len(ordered) if bounds[i + 1] is None else bisect.bisect_left(ordered, bounds[i + 1])
        segments.append(Segment(i, bounds[i], bounds[i + 1], hi - lo))
    return segments


def _uncuttable(c: av.container.InputContainer, stream: av.stream.Stream) -> bool:
    """Whether no keyframe of ``stream`` is a place to start a segment: MPEG-4 Part 2 with
    B-frames (Xvid, DivX) in AVI. Its GOPs are open: the B-frames after a keyframe, shown
    before it, are lost when decoding starts there, and AVI, which stores frame slots and no
    pts, gives each frame out the next slot, so every later frame took a slot too early and
    the segment came out frames short. Such a file is one task."""
    cc = stream.codec_context
    return c.format.name == "avi" and cc.name == "mpeg4" and bool(cc.has_b_frames)


def _count(c: av.container.InputContainer, stream: av.stream.Stream) -> int:
    c.seek(0)
    return sum(1 for pkt in c.demux(stream) if pkt.size and not pkt.is_discard)


def segment_problem(path: Path, frames: int, size: int | None) -> str | None:
    """Why the finished segment file ``path`` cannot be reused, or None when it holds
    ``frames`` frames (and, when ``size`` was recorded, exactly ``size`` bytes).

    Frames are counted as the video packets the NUT demuxer reads, without decoding: that is
    exact for segment files, whose encoder puts each frame in a packet of its own (x264, x265,
    VP8 and VP9, AV1, MPEG-2/4, FFV1 alike; a hidden VP9/AV1 frame travels inside the packet of
    a shown one). A file cut inside its last packet still has every packet, the last one
    short: the recorded size catches that.
    """
    try:
        actual = path.stat().st_size
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if actual == 0:
        return "is empty"
    try:
        with open_media(file_url(path)) as c:
            if not c.streams.video:
                return "holds no video"
            # counted from where the file opens: _count's seek fails on a torn file
            count = sum(1 for pkt in c.demux(c.streams.video[0]) if pkt.size)
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        return f"cannot be read: {getattr(exc, 'strerror', None) or exc}"
    if count != frames:
        return f"holds {count} of its {frames} frames"
    if size is not None and actual != size:
        return f"holds {actual} bytes where {size} were written"
    return None


def input_identity(path: Path) -> tuple[int, int, int, int]:
    """(size, modification time in ns, inode, change time in ns) of the input ``path``: a
    file replaced or rewritten has another, even one copied in with the same size and
    modification time (`cp -p`, `rsync -t`): its inode or change time differ. The batch's
    fingerprint holds the first two (a resume must survive a move or a chmod). Raises
    InputError when it is gone."""
    try:
        st = os.stat(check_input_path(path))
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns


def check_unchanged(path: Path, identity: tuple[int, ...] | None) -> None:
    """Raise InputError when the input ``path`` is not the file planned (``identity``; None:
    not checked): segments of two different files must not be joined into one output."""
    if identity is not None and input_identity(path) != identity:
        raise InputError(f"{path} changed while the batch ran (replaced or rewritten after "
                         "it was planned); rerun the batch to upscale it as it is now")


def is_segmentable(path: Path, output: Path | None = None) -> bool:
    """Whether a job is cut into segments: not for a picture, nor for a GIF output (its
    frames join as GIF pictures, not as the segments' codec)."""
    return not is_image_path(path) and (output is None or output.suffix.lower() != ".gif")


@dataclass(frozen=True)
class TaskResult:
    """What one task did: the frames it wrote, the backend that computed them and the warnings
    it logged (said by the batch, once per input)."""

    frames: int
    backend: str
    warnings: tuple[logging.LogRecord, ...] = ()


class HandleCache:
    """One worker's device and the loaded models and prepared backends it uses: each model
    loads, and each backend is prepared for a frame size, once (:class:`vsr.engine.ModelCache`;
    ``models``: one that the workers of a batch share, so that two on one device compute
    with one copy of a model)."""

    def __init__(self, device: str, models: ModelCache | None = None) -> None:
        self.device = resolve_device(device, require_available=True)
        self.models = models if models is not None else ModelCache()


def run_task(task: Task, handles: HandleCache,
             progress: Callable[[int], None] | None = None) -> TaskResult:
    """Compute ``task`` into ``task.path``; returns the frames written and the backend used.

    Raises VsrError subclasses (InputError, OutputError, ModelError, PipelineError ...);
    on failure nothing is left at ``task.path``.
    """
    collected: list[logging.LogRecord] = []
    token = _TASK_LOG.set(collected)  # see TASK_LOGGERS
    try:
        result = _run_task(task, handles, progress)
    except BaseException:
        _TASK_LOG.reset(token)
        for record in collected:  # said as they came: the task's failure follows them
            logging.getLogger(record.name).handle(record)
        raise
    _TASK_LOG.reset(token)
    return replace(result, warnings=tuple(collected))


def _run_task(task: Task, handles: HandleCache,
              progress: Callable[[int], None] | None) -> TaskResult:
    check_unchanged(task.job.input, task.identity)
    try:
        if task.segment is None:
            return _run_whole(task, handles, progress)
        return _run_segment(task, handles, progress)
    except Exception:
        # an input deleted or replaced while it was read fails in many ways (a raw
        # FileNotFoundError of a second open): say that, the failure its context
        check_unchanged(task.job.input, task.identity)
        raise


def _run_segment(task: Task, handles: HandleCache,
                 progress: Callable[[int], None] | None) -> TaskResult:
    seg = task.segment
    opts = task.job.options
    report = (lambda p: progress(p.frames_done)) if progress is not None else None
    with PyAVSource(task.job.input, deinterlace=opts.deinterlace) as source:
        frames = source.frames_between(seg.start, seg.end)
        offset = segment_offset(source.info)  # NUT takes no pts below zero; the join undoes it
        if offset:
            frames = (replace(f, pts=f.pts + offset) for f in frames)
        run = run_source(
            source, opts, handles.device,
            lambda info, w, h: PyAVSink(task.path, info, w, h, opts.encode, overwrite=True,
                                        copy_streams=False),
            models=handles.models, frames=frames,
            frames_total=seg.frames, progress=report)
    # the input rewritten while it was read: frames of either file (said first: it would
    # also explain a wrong frame count)
    try:
        check_unchanged(task.job.input, task.identity)
    except InputError:
        discard(task.path)
        raise
    if run.stats.frames_out != seg.frames:
        discard(task.path)
        raise PipelineError(f"{task.label}: decoded {run.stats.frames_out} frames where "
                            f"the file has {seg.frames}")
    return TaskResult(run.stats.frames_out, run.prepared.backend)


def _run_whole(task: Task, handles: HandleCache,
               progress: Callable[[int], None] | None) -> TaskResult:
    o = task.job.options
    config = UpscaleConfig(input=task.job.input, output=task.path, model=o.model, scale=o.scale,
                           device=str(handles.device), precision=o.precision, tile=o.tile,
                           backend=o.backend, batch=o.batch, deflicker=o.deflicker,
                           # the batch's encoding is its videos': a picture's output has none
                           encode=EncodeConfig() if is_image_path(task.path) else o.encode,
                           deinterlace=o.deinterlace, overwrite=task.overwrite, audio=o.audio)
    result = upscale_file(config, progress=(lambda p: progress(p.frames_done))
                          if progress is not None else None, models=handles.models)
    return TaskResult(result.frames_out, result.backend)


def clean_partials(folder: Path) -> None:
    """Remove temporary files that killed runs left in a segment folder (only those whose
    writing process is gone, as for any output: vsr.io.output.is_stale_partial)."""
    for p in folder.glob(".*.partial*"):
        if is_stale_partial(p):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
