"""Frame sources: open in the constructor, describe the input, then iterate frames.

A source yields :class:`Frame` objects in presentation order, each with the pts of the
decoded frame in the stream's time base; images come out as one frame.
"""

from __future__ import annotations

import collections
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Protocol

import av
import numpy as np

from vsr.errors import InputError
from vsr.io.colour import alpha_of, reads_own, to_rgb
from vsr.io.image import (
    IMAGE_SUFFIXES,
    gif_alpha_after_first,
    limit_stream,
    open_picture,
    upright,
)
from vsr.io.info import (
    EXACT_RGB,
    ColorInfo,
    Frame,
    HdrMetadata,
    PixelFormat,
    StreamInfo,
    bit_depth_of,
    declared_end,
    field_order,
    format_has_alpha,
    has_alpha,
    judged_format,
    other_streams,
)
from vsr.io.paths import file_url, open_media
from vsr.options import DECODERS, check_choice

log = logging.getLogger(__name__)

# the demuxers of a still picture: image2 goes by a picture suffix, the pipe demuxers by the
# content, whatever the name (a WebP saved as "photo" is still a picture)
_IMAGE_FORMATS = frozenset({"image2", "png_pipe", "jpeg_pipe", "mjpeg", "webp_pipe", "bmp_pipe",
                            "tiff_pipe", "ppm_pipe", "pgm_pipe", "pbm_pipe"})


class Source(Protocol):
    info: StreamInfo

    def frames(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


def rgb_format(bit_depth: int) -> str:
    """The packed RGB format frames are handed out in for a given input bit depth."""
    return "rgb24" if bit_depth <= 8 else "rgb48le"


def link_note(path: Path) -> str:
    """What to add to "input not found" for ``path``: why, where it is a symbolic link."""
    if path.is_symlink():
        return " (a symbolic link to no file: its target is missing, or it leads round in a loop)"
    return ""


def check_input_path(path: str | os.PathLike) -> Path:
    """Raise InputError unless ``path`` is an existing regular file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input not found: {p}{link_note(p)}")
    if not p.is_file():
        raise InputError(f"input is not a file: {p}")
    return p


def rgba_format(bit_depth: int) -> str:
    """The packed RGBA format an alpha plane is taken from, for an input bit depth."""
    return "rgba" if bit_depth <= 8 else "rgba64le"


# FFmpeg's own VP8/VP9 decoders ignore the alpha plane that WebM/Matroska store beside each
# frame (BlockAdditional, tagged alpha_mode=1); libvpx's decoders read it.
_ALPHA_DECODERS = {"vp8": "libvpx", "vp9": "libvpx-vp9"}


def _alpha_decoder(stream: av.video.stream.VideoStream) -> av.CodecContext | None:
    """A libvpx decoder for a VP8/VP9 stream that has an alpha plane, else None (the
    stream's own decoder)."""
    name = _ALPHA_DECODERS.get(stream.codec_context.name)
    meta = {k.lower(): v for k, v in (stream.metadata or {}).items()}
    if name is None or meta.get("alpha_mode") != "1" or name not in av.codecs_available:
        return None
    try:
        cc = av.CodecContext.create(name, "r")
    except (av.error.FFmpegError, ValueError):
        return None
    cc.thread_count = stream.codec_context.thread_count
    return cc


def pictures(container: av.container.InputContainer) -> list[av.video.stream.VideoStream]:
    """The video streams that are video: cover art in MP4/Matroska is a one-picture video
    stream, carried, not upscaled."""
    cover = int(av.stream.Disposition.attached_pic)
    return [s for s in container.streams.video if not int(s.disposition) & cover]


def video_stream(container: av.container.InputContainer,
                  name: str) -> av.video.stream.VideoStream:
    """The video stream to upscale, as the ffmpeg program picks one: the largest picture, a
    stream marked default counting 5 megapixels more; the first of equals. (The first one
    was taken: a file with a thumbnail track before its main video upscaled the thumbnail
    and copied the video.) The others are carried (vsr.engine.run_source says so)."""
    found = pictures(container)
    if not found:
        raise InputError(f"no video stream in {name}")
    # a stream of a codec this FFmpeg cannot decode (an unknown fourcc) has no codec context:
    # it can be carried, not upscaled
    candidates = [s for s in found if s.codec_context is not None]
    if not candidates:
        raise InputError(f"cannot decode the video of {name}: stream {found[0].index} is of a "
                         "codec FFmpeg does not know")
    default = int(av.stream.Disposition.default)

    def score(s: av.video.stream.VideoStream) -> int:
        cc = s.codec_context
        return (cc.width or 0) * (cc.height or 0) + 5_000_000 * bool(int(s.disposition) & default)

    return max(candidates, key=score)  # max keeps the first of equal scores


class Deinterlacer:
    """FFmpeg's bwdif filter: each interlaced frame becomes one progressive frame of the same
    size, its missing lines interpolated from its own field and from the fields of the frames
    before and after it; frames flagged progressive pass unchanged. One frame out per frame in,
    in order, with the input frame's pts and duration (the filter runs on a time base of its
    own). Holds one frame back until the next arrives; the end of the input flushes it:
    :meth:`frames` for an iterable of frames, or :meth:`push` each frame and :meth:`flush`
    at the end."""

    def __init__(self, time_base: Fraction) -> None:
        """``time_base``: the frames' (for a stream's frames, :func:`frame_time_base`)."""
        self._time_base = time_base
        self._graph: av.filter.Graph | None = None
        self._shape: tuple[int, int, str] | None = None
        self._times: collections.deque[tuple[int | None, int]] = collections.deque()

    def _start(self, frame: av.VideoFrame) -> None:
        g = av.filter.Graph()
        src = g.add_buffer(width=frame.width, height=frame.height, format=frame.format,
                           time_base=self._time_base)
        bwdif = g.add("bwdif", "mode=send_frame:parity=auto:deint=interlaced")
        src.link_to(bwdif)
        bwdif.link_to(g.add("buffersink"))
        g.configure()
        self._graph, self._shape = g, (frame.width, frame.height, frame.format.name)

    def _pull(self) -> Iterator[av.VideoFrame]:
        while True:
            try:
                out = self._graph.pull()
            except (av.error.BlockingIOError, av.error.EOFError):
                return
            out.pts, out.duration = self._times.popleft()
            out.time_base = self._time_base
            yield out

    def flush(self) -> Iterator[av.VideoFrame]:
        """The frame held back (the input has ended)."""
        if self._graph is not None:
            self._graph.push(None)
            yield from self._pull()
            self._graph, self._shape = None, None

    def push(self, frame: av.VideoFrame) -> Iterator[av.VideoFrame]:
        """The frames ``frame`` completes: the one before it, once there is one."""
        if (frame.width, frame.height, frame.format.name) != self._shape:
            yield from self.flush()  # a new size or format: a graph of its own
            self._start(frame)
        self._times.append((frame.pts, frame.duration))
        self._graph.push(frame)
        yield from self._pull()

    def frames(self, decoded: Iterable[av.VideoFrame]) -> Iterator[av.VideoFrame]:
        for frame in decoded:
            yield from self.push(frame)
        yield from self.flush()


def frame_time_base(stream: av.video.stream.VideoStream) -> Fraction:
    """The time base of the frames decoded from ``stream``: the stream's own; where it has
    none, one frame of the codec's frame rate (else the stream's guessed rate); 1/90000,
    MPEG's clock, where nothing says. The one rule for files and live streams."""
    if stream.time_base:
        return Fraction(stream.time_base)
    for rate in (stream.codec_context.framerate, stream.average_rate, stream.guessed_rate):
        if rate:
            return 1 / Fraction(rate)
    return Fraction(1, 90000)


class PyAVSource:
    """Threaded PyAV decoding of the first real video stream of a file.

    The constructor opens the file and decodes the first frame, so a file that is not media,
    has no video stream or no decodable frame fails here (InputError) before any output exists.

    ``deinterlace``: interlaced video is handed out deinterlaced (:class:`Deinterlacer`),
    one progressive frame per frame; else as decoded, each frame two fields woven together
    (``info.interlaced`` says so).
    """

    def __init__(self, path: str | os.PathLike, *, threads: int = 0,
                 deinterlace: bool = True) -> None:
        p = check_input_path(path)
        try:
            self._name = str(p)
            # a file, whatever its name; a picture over the pixel limit is refused unread
            picture = open_picture(p, file_url(p))
            self._container = picture.container
        except av.error.FFmpegError as exc:
            raise InputError(f"cannot read {p} as media: {exc.strerror or exc}") from exc
        try:
            self._stream = video_stream(self._container, self._name)
            limit_stream(self._stream, p.name)  # the size the container declares
            self._stream.thread_type = "AUTO"
            self._stream.codec_context.thread_count = threads
            self._vpx = _alpha_decoder(self._stream)
            self._deinterlace = False
            self._decoded = self._decode()
            first = next(self._decoded, None)
            if first is None:
                raise InputError(f"no video frames in {p}")
            order = field_order(self._stream, first)
            if order and deinterlace:
                log.info("%s: interlaced video (%s), deinterlaced (bwdif)", p.name, order)
                self._deinterlace = True
                self._decoded = self._deinterlaced(_chain_first(first, self._decoded))
                first = next(self._decoded)
            self._first = first
            self._first_fmt = first.format.name
            self._stored_size = (first.width, first.height)
            self.info = self._describe(p, first, None if self._deinterlace else order,
                                       picture.gif_later, picture.gif_still)
            self._orientation = (self._upright(p, picture.orientation) if self.info.is_image
                                 else 1)
            if self.info.is_image:
                self.info = replace(self.info, icc_profile=picture.icc_profile,
                                    exif=picture.exif)
            if picture.pages > 1:
                log.warning("%s holds %d pages, and FFmpeg reads the first only: the other %d "
                            "are not upscaled", p.name, picture.pages, picture.pages - 1)
        except BaseException:
            self._container.close()
            raise
        self._fmt = rgb_format(self.info.bit_depth)
        self._alpha_fmt = rgba_format(self.info.bit_depth) if self.info.alpha else None
        self._taken = False

    def _decode(self) -> Iterator[av.VideoFrame]:
        avi = self._container.format.name == "avi"
        try:
            if self._vpx is None and not avi:
                yield from self._container.decode(self._stream)
                return
            decoder = self._vpx or self._stream.codec_context
            # AVI stores no pts: a chunk's dts is its frame slot, in decode order. libavformat
            # guesses pts from it (one frame late for H.264 and MPEG-4), so the k-th frame out
            # of the decoder (presentation order) takes the k-th slot (the dts increase).
            slots: collections.deque[int] = collections.deque()
            for pkt in self._container.demux(self._stream):  # the last, empty one: flush
                if avi and pkt.size and pkt.dts is not None:
                    slots.append(pkt.dts)
                for frame in decoder.decode(pkt if pkt.size else None):
                    if avi:
                        frame.pts = slots.popleft() if slots else None
                    yield frame
        except av.error.FFmpegError as exc:
            # FFmpeg's reason, without its errno and the function that returned it
            why = exc.strerror or str(exc)
            raise InputError(f"decoding {self._name} failed: the "
                             f"{self._stream.codec_context.name} decoder says "
                             f"{why[:1].lower() + why[1:]}") from exc

    def _deinterlaced(self, decoded: Iterable[av.VideoFrame]) -> Iterator[av.VideoFrame]:
        try:
            yield from Deinterlacer(frame_time_base(self._stream)).frames(decoded)
        except av.error.FFmpegError as exc:
            raise InputError(f"deinterlacing {self._name} failed: {exc}") from exc

    def _describe(self, p: Path, first: av.VideoFrame, interlaced: str | None,
                  gif_later: bool = False, gif_still: bool = False) -> StreamInfo:
        """``gif_later``: a GIF whose later pictures have a transparent colour;
        ``gif_still``: a GIF of one picture."""
        s, cc = self._stream, self._stream.codec_context
        fmt = judged_format(first, cc.name)  # a palette's transparency too; a GIF's if used
        if gif_later and cc.name == "gif" and not has_alpha(fmt) and gif_alpha_after_first(p):
            fmt = PixelFormat(fmt, alpha=True)  # opaque at first, see-through later
        rate = s.average_rate or s.guessed_rate or s.base_rate
        color = ColorInfo(
            range=int(first.color_range or cc.color_range or 0),
            matrix=int(first.colorspace if first.colorspace not in (None, 2) else cc.colorspace),
            primaries=int(cc.color_primaries),
            transfer=int(cc.color_trc),
        )
        duration = float(s.duration * s.time_base) if s.duration and s.time_base else None
        # an animated PNG is a video, whatever its name says; a GIF is a picture where it
        # holds one (a picture output takes it, a video output still does)
        container = self._container.format.name
        is_image = container != "apng" and (
            container in _IMAGE_FORMATS or p.suffix.lower() in IMAGE_SUFFIXES
            or (container == "gif" and gif_still))
        return StreamInfo(
            path=str(p),
            container=self._container.format.name,
            index=s.index,
            codec=cc.name,
            width=first.width,
            height=first.height,
            frame_rate=Fraction(rate) if rate else None,
            time_base=frame_time_base(s),
            start_pts=s.start_time,
            frames=(s.frames or None) if not is_image else 1,
            duration_s=duration,
            pix_fmt=fmt,
            bit_depth=bit_depth_of(fmt),
            rotation=int(round(first.rotation or 0)),
            sample_aspect_ratio=Fraction(s.sample_aspect_ratio) if s.sample_aspect_ratio else None,
            color=color,
            hdr=HdrMetadata.from_frame(first, cc.name),
            others=other_streams(self._container, s.index),
            is_image=is_image,
            alpha=has_alpha(fmt),
            interlaced=interlaced,
        )

    def _upright(self, p: Path, orientation: int) -> int:
        """A picture's EXIF orientation, which its frames are handed out in (an image output
        holds no display rotation, as a video's does): phones store most photos on their side.
        ``info`` then describes the upright picture."""
        if orientation == 1:  # FFmpeg read one from somewhere this does not look
            orientation = {-90: 6, 270: 6, 90: 8, -270: 8, 180: 3, -180: 3}.get(
                self.info.rotation, 1)
        if orientation != 1:
            w, h = self.info.width, self.info.height
            log.info("%s: EXIF orientation %d, upscaled upright", p.name, orientation)
            self.info = replace(self.info, rotation=0, **(
                {"width": h, "height": w} if orientation >= 5 else {}))
        return orientation

    def _to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        c, eight = self.info.color, self._fmt == "rgb24"
        if reads_own(frame.format.name, c, eight_bit=eight):
            # deep Y'CbCr or grey (swscale's scale is 255/256), limited-range grey
            return to_rgb(frame, c, depth=8 if eight else 16)
        return frame.to_ndarray(format=self._fmt, src_colorspace=c.sws_matrix,
                                src_color_range=c.sws_range if frame.format.name.startswith("yuv")
                                and not frame.format.name.startswith("yuvj") else None,
                                interpolation=EXACT_RGB if self._fmt == "rgb24" else None)

    def _check_same(self, pts: int | None, frame: av.VideoFrame) -> None:
        """Raise InputError where ``frame`` has another size than the first, or a pixel
        format with more bits or an alpha plane the first lacks: the frames are handed out,
        and the output encoded, in the first one's (another chroma layout converts as is)."""
        info, fmt = self.info, frame.format.name
        if (frame.width, frame.height) != self._stored_size:
            change = f"its picture size from {self._stored_size[0]}x{self._stored_size[1]} to " \
                     f"{frame.width}x{frame.height}"
        elif fmt != self._first_fmt and (
                bit_depth_of(fmt) > info.bit_depth
                or (format_has_alpha(fmt) and not format_has_alpha(self._first_fmt))):
            change = f"its pixel format from {self._first_fmt} to {fmt}"
        else:
            return
        at = f"{float(pts * info.time_base):.3f}s" if pts is not None else "a later frame"
        raise InputError(f"{Path(info.path).name} changes {change} at {at}; vsr upscales "
                         "one size and format a file: cut it there and upscale each part")

    def _frame(self, index: int, pts: int | None, frame: av.VideoFrame) -> Frame:
        if frame.format.name != self._first_fmt \
                or (frame.width, frame.height) != self._stored_size:
            self._check_same(pts, frame)
        turn, duration = self._orientation, frame.duration or None
        if self._alpha_fmt is None:
            return Frame(index=index, pts=pts, image=upright(self._to_rgb(frame), turn),
                         duration=duration)
        # the colour exactly as without alpha; the alpha plane from a second conversion
        alpha = alpha_of(frame) if self._alpha_fmt != "rgba" else None
        if alpha is None:
            alpha = frame.to_ndarray(format=self._alpha_fmt)[..., 3]
        return Frame(index=index, pts=pts, image=upright(self._to_rgb(frame), turn),
                     alpha=upright(np.ascontiguousarray(alpha), turn), duration=duration)

    def frames(self) -> Iterator[Frame]:
        """Yield every frame once, in presentation order (a source is iterated once)."""
        if self._taken:
            raise InputError("a source can be iterated only once")
        self._taken = True
        step = pts_step(self.info)
        last: int | None = None
        end: int | None = None  # where the latest decoded frame ends (pts + its duration)
        index = 0
        chain = _chain_first(self._first, self._decoded)
        for frame in chain:
            pts = frame.pts
            if pts is None:  # raw streams without timestamps: continue from the last one
                pts = 0 if last is None else last + step
            yield self._frame(index, pts, frame)
            last = pts
            end = max(end or pts, pts + max(frame.duration or 0, step))
            index += 1
        if not self.info.is_image:
            problem = truncation_problem(self._container, self._stream, index, end, step)
            if problem:
                raise InputError(f"{Path(self.info.path).name} is truncated or damaged: "
                                 f"{problem}")

    def frames_between(self, start: int | None, end: int | None) -> Iterator[Frame]:
        """Yield the frames whose pts lies in ``[start, end)`` (None: unbounded), in
        presentation order, indexed from 0; seeks to the keyframe at or before ``start``.

        Decoding continues past the keyframe at ``end`` until a frame at or after ``end``
        comes out, so open-GOP leading frames still land in the range they belong to.
        Deinterlaced, it starts a keyframe earlier, so that the frames of the range are
        deinterlaced with the same neighbours as in :meth:`frames` (bwdif looks one frame
        back and one ahead).
        A source is iterated once (this or :meth:`frames`); raises InputError.
        """
        if self._taken:
            raise InputError("a source can be iterated only once")
        self._taken = True
        decoded: Iterator[av.VideoFrame] = _chain_first(self._first, self._decoded)
        if start is not None and (self._first.pts is None or start > self._first.pts):
            self._decoded.close()
            decoded = self._seek_before(start - 1 if self._deinterlace else start)
        index = 0
        for frame in decoded:
            if frame.pts is None:
                raise InputError(f"{self._name} has frames without timestamps; "
                                 "it cannot be cut into segments")
            if start is not None and frame.pts < start:
                continue
            if end is not None and frame.pts >= end:
                break
            yield self._frame(index, frame.pts, frame)
            index += 1

    def _seek_before(self, start: int) -> Iterator[av.VideoFrame]:
        """Decoded frames from a keyframe at or before pts ``start``. FFmpeg's seek is exact
        in MP4 and Matroska (an index), but in MPEG-TS it searches by byte position and can
        land a keyframe or more past the target: then seek again, further back each time
        (down to the stream's start), so that no frame of the range is ever skipped."""
        origin = self._first.pts if self._first.pts is not None else 0
        back = max(1, pts_step(self.info))
        target = start
        while True:
            try:
                self._container.seek(target, stream=self._stream, backward=True)
            except av.error.FFmpegError as exc:
                raise InputError(f"cannot seek in {self._name}: {exc}") from exc
            if self._vpx is not None:  # the container's seek flushes only its own decoder
                self._vpx.flush_buffers()
            frames = self._deinterlaced(self._decode()) if self._deinterlace else self._decode()
            first = next(frames, None)
            landed = first is not None and (first.pts is None or first.pts <= start)
            if landed or target <= origin:
                return _chain_first(first, frames) if first is not None else iter(())
            frames.close()  # past the target, or past the end (nothing decoded): further back
            back = max(2 * back, first.pts - target if first is not None else 0)
            target = max(origin, start - back)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> PyAVSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chain_first(first: av.VideoFrame, rest: Iterator[av.VideoFrame]) -> Iterator[av.VideoFrame]:
    yield first
    yield from rest


def packet_pts(container: av.container.InputContainer, pkt: av.Packet) -> int | None:
    """The time of a video packet's frame as the sources hand frames out, for plans made
    from packets alone: its pts; in AVI, which stores none (libavformat's guess runs a frame
    late), its frame slot, the dts: exact without B-frames, and with them the packets' slots
    are still the frames' times, in another order."""
    return pkt.dts if container.format.name == "avi" else pkt.pts


def first_frames_end(info: StreamInfo, frames: int) -> Fraction | None:
    """Where the first ``frames`` frames of ``info``'s video end, in seconds, from its packets
    alone (in presentation order; those an MP4 edit list discards left out): the last one's
    pts plus its duration, else one frame step. Reads those packets and a reorder margin past
    them, not the whole file. None where packets carry no times (raw H.264), there are none,
    or they cannot be read; an estimate for a damaged file, whose packets may not all decode."""
    times: list[tuple[int, int]] = []
    try:
        with open_media(file_url(info.path)) as c:
            stream = c.streams[info.index]
            for pkt in c.demux(stream):
                if not pkt.size or pkt.is_discard:
                    continue
                at = packet_pts(c, pkt)
                if at is None:
                    return None
                times.append((at, pkt.duration or 0))
                if len(times) >= frames + _REORDER_MARGIN:
                    break
            tb = frame_time_base(stream)
    except (av.error.FFmpegError, OSError):  # damaged past its first frames: no estimate
        return None
    if not times:
        return None
    at, shown = sorted(times)[min(frames, len(times)) - 1]
    return (at + (shown or pts_step(info))) * tb


# Packets past the first N read for their presentation order: more than a decoder reorders
_REORDER_MARGIN = 32


def pts_step(info: StreamInfo) -> int:
    if info.frame_rate:
        return max(1, round(1 / (info.frame_rate * info.time_base)))
    return 1


def truncation_problem(container: av.container.InputContainer,
                       stream: av.video.stream.VideoStream, count: int, end: int | None,
                       step: int) -> str | None:
    """Why ``count`` frames ending at pts ``end`` (``step``: one frame's duration, all in the
    stream's time base) are not the whole video stream the container declares, or None.

    Judged by time where the container declares the stream's length: an MP4 edit list drops
    samples (pre-roll) that its sample count still includes, an AVI counts dropped frames'
    empty chunks. By count where only a count is declared; not at all where neither is (a
    growing MPEG-TS)."""
    declared = declared_end(container, stream)
    if declared is not None:
        # two frames and a millisecond of rounding (Matroska stores milliseconds)
        slack = 2 * step + max(1, round(Fraction(1, 1000) / Fraction(stream.time_base)))
        if end is not None and declared - end > slack:
            tb = Fraction(stream.time_base)
            return (f"decoded {count} frames, up to {float(end * tb):.3f}s of "
                    f"{float(declared * tb):.3f}s")
        return None
    expected = stream.frames
    if expected and expected - count > max(2, expected // 50):
        # A header that promises more samples than the file holds: cut-off download/copy.
        return f"decoded {count} of {expected} frames"
    return None


def open_source(path: str | os.PathLike, decoder: str = "pyav", *,
                deinterlace: bool = True) -> Source:
    """Open ``path`` with the named decoder (vsr.options.DECODERS: "pyav" or "decord");
    images always use PyAV. ``deinterlace``: PyAV's frames of interlaced video come out
    deinterlaced (decord's never do). Raises ConfigError for another name."""
    check_choice("decoder", decoder, DECODERS)
    if decoder == "pyav" or Path(path).suffix.lower() in IMAGE_SUFFIXES:
        return PyAVSource(path, deinterlace=deinterlace)
    from vsr.io.decord_source import DecordSource

    # same checks and messages; the stream decord reads, as decord hands it out
    with PyAVSource(path, deinterlace=False) as probe:
        info = probe.info
        several = len(pictures(probe._container)) > 1
    if several:  # decord picks one of its own, which may not be ours
        raise InputError(f"{Path(path).name} has more than one video stream, and decord reads "
                         "the one it picks; use --decoder pyav")
    if info.rotation:  # its frames come turned (and as RGBA), and the output turns them again
        raise InputError(f"{Path(path).name} is shown turned {info.rotation} degrees, which "
                         "decord applies itself; use --decoder pyav")
    return DecordSource(path, info, presented_pts(path, info.index))


def presented_pts(path: str | os.PathLike, index: int) -> list[int] | None:
    """The times of the frames a decoder shows of video stream ``index``, in order, from its
    packets alone (:func:`packet_pts`): those an MP4 edit list cuts away are not shown, nor
    are AVI's empty chunks of dropped frames. None where packets carry no times (raw H.264)."""
    times = []
    with open_media(file_url(path)) as container:
        for pkt in container.demux(container.streams[index]):
            if pkt.size and not pkt.is_discard:
                times.append(packet_pts(container, pkt))
    return None if None in times else sorted(times)
