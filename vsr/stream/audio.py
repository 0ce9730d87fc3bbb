"""Audio of a live source, copied packet for packet (not re-encoded) to the live output.

A live source cannot be opened a second time the way the file engine's
:class:`~vsr.io.passthrough.Passthrough` reopens its input, so the reader thread demuxes the
audio next to the video and hands its packets over in an :class:`AudioFeed`, already moved
onto the output's clock (the same shift as the video of that connection). The writer muxes
them with :class:`LivePassthrough`, which is Passthrough fed from that queue: the same stream
setup and the same rule (copied packets go out before the first video packet later than
them). Audio is never dropped because video frames were.
"""

from __future__ import annotations

import collections
import io
import logging
import threading
from collections.abc import Callable
from fractions import Fraction

import av

from vsr.io.passthrough import Passthrough, copy_disposition
from vsr.io.passthrough import _seconds as packet_seconds
from vsr.io.paths import open_media

log = logging.getLogger(__name__)

MAX_QUEUED = 20000  # packets (AAC at 48 kHz: about 7 minutes) held while no video goes out
# (queued here for the writer, and, with those, waiting in the reader for a frame)


class AudioFeed:
    """Audio packets from the reader thread to the writer, on the output clock.

    The first connection's audio streams become the output's (kept as templates in a
    container of their own, so they outlive that connection); a later connection's audio
    stream is carried when its codec matches the template at the same position.
    """

    def __init__(self) -> None:
        self._templates: av.container.OutputContainer | None = None
        self.templates: list[av.stream.Stream] = []
        self.packets: collections.deque[av.Packet] = collections.deque()
        self._last_dts: dict[int, int] = {}
        self.end = float("-inf")  # output time (s) where the audio put so far ends
        self.received = 0
        self.skipped = 0  # not monotonic on the output clock, or over MAX_QUEUED
        self._warned = False  # of audio dropped for want of video (once a run)
        self._new_said = False  # of audio streams a later connection brought (once a run)
        self._lock = threading.Lock()

    def session(self, streams: list[av.stream.Stream]) -> dict[int, av.stream.Stream]:
        """Called by the reader for each connection: input stream index -> template, for
        the audio streams that are carried."""
        with self._lock:
            if self._templates is None:
                self._templates = open_media(io.BytesIO(), "w", format="mpegts")
                first = {}
                for s in streams:
                    try:
                        t = self._templates.add_stream_from_template(s)
                    except (av.error.FFmpegError, ValueError, TypeError) as exc:
                        log.warning("audio stream %d not carried: %s", s.index, exc)
                        continue
                    t.metadata.update(s.metadata)
                    copy_disposition(s, t)
                    self.templates.append(t)
                    first[s.index] = t
                return first
        carried = {}
        for s, t in zip(streams, self.templates, strict=False):
            if s.codec_context.name == t.codec_context.name:
                carried[s.index] = t
            else:
                log.warning("audio stream %d is %s now, was %s: not carried", s.index,
                            s.codec_context.name, t.codec_context.name)
        if len(streams) > len(self.templates) and not self._new_said:
            self._new_said = True  # the output's streams were set by the first connection
            log.warning("audio stream %s appeared on a later connection: not carried (the "
                        "output has the first connection's %d); its packets are counted as "
                        "'audio_skipped'", streams[len(self.templates)].index,
                        len(self.templates))
        return carried

    def refuse(self) -> None:
        """One packet of an audio stream that is not carried (reader thread): counted in
        ``received`` and ``skipped``."""
        self.received += 1
        self.skipped += 1

    def hold(self, pkt: av.Packet, *waiting: list[av.Packet]) -> None:
        """Append ``pkt`` to the last of ``waiting`` (reader thread): the reader's lists of
        audio that waits, oldest first, for a video frame to place it on the output clock.
        Past MAX_QUEUED packets, waiting there and queued here together, the oldest waiting
        one goes (counted in ``received`` and ``skipped``, warned of once): a source whose
        video stalls, or never comes, while its audio goes on must not fill the memory."""
        waiting[-1].append(pkt)
        if sum(map(len, waiting)) + len(self.packets) > MAX_QUEUED:
            next(w for w in waiting if w).pop(0)
            self.drop()

    def drop(self, count: int = 1) -> None:
        """``count`` packets read that will not go out, for want of video to place them by
        (reader thread): counted in ``received`` and ``skipped``."""
        self.received += count
        self._overflow(count)

    def fits(self, pkt: av.Packet, template: av.stream.Stream, shift_s: float) -> bool:
        """Whether :meth:`put` would take ``pkt`` moved by ``shift_s``: it has no time, or
        comes after the last packet put on its stream."""
        dts = pkt.dts if pkt.dts is not None else pkt.pts
        last = self._last_dts.get(template.index)
        return dts is None or last is None or dts + _ticks(shift_s, pkt) > last

    def put(self, pkt: av.Packet, template: av.stream.Stream, shift_s: float) -> None:
        """Queue ``pkt`` moved by ``shift_s`` seconds onto the output clock (reader thread)."""
        self.received += 1
        tb = Fraction(pkt.time_base)
        shift = _ticks(shift_s, pkt)
        if pkt.pts is not None:
            pkt.pts += shift
        if pkt.dts is not None:
            pkt.dts += shift
        dts = pkt.dts if pkt.dts is not None else pkt.pts
        last = self._last_dts.get(template.index)
        if dts is not None and last is not None and dts <= last:
            self.skipped += 1
            return
        if len(self.packets) > MAX_QUEUED:
            self._overflow(1)
            return
        if dts is not None:
            self._last_dts[template.index] = dts
            self.end = max(self.end, float((dts + (pkt.duration or 0)) * tb))
        pkt.stream = template  # the input stream dies with its connection; the template lives
        self.packets.append(pkt)

    def _overflow(self, count: int) -> None:
        self.skipped += count
        if not self._warned:
            self._warned = True
            log.warning("audio dropped for want of video to place it by (does the source's "
                        "video stall?); counted as 'audio_skipped' in the stats")


# MPEG-4 audio's sampling frequency indices (ISO/IEC 14496-3, 1.6.3.4)
_AAC_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000,
              7350)


def aac_config(cc: av.codec.context.CodecContext) -> bytes | None:
    """The AudioSpecificConfig of AAC-LC audio described by ``cc``, for a template whose
    source (MPEG-TS, ADTS) has none: Matroska, MP4 and FLV written to a pipe or a socket
    need it in their header, before any packet (the muxers' own ADTS conversion comes at
    the first packet, when a pipe's header is gone: 'Invalid argument' at the start).
    None for other profiles, rates or layouts than it can say."""
    channels = cc.layout.nb_channels if cc.layout else 0
    if cc.profile not in (None, "LC") or cc.sample_rate not in _AAC_RATES \
            or not 1 <= channels <= 7:
        return None
    config = (2 << 11) | (_AAC_RATES.index(cc.sample_rate) << 7) | (channels << 3)  # LC: 2
    return config.to_bytes(2, "big")


def _ticks(shift_s: float, pkt: av.Packet) -> int:
    """``shift_s`` seconds in ticks of ``pkt``'s time base."""
    return round(Fraction(shift_s) / Fraction(pkt.time_base))


class _FeedInput:
    """A :class:`~vsr.io.passthrough.Demuxer` of the feed's templates (packets come from
    the feed, not from ``demux``)."""

    def __init__(self, feed: AudioFeed) -> None:
        self.streams = feed.templates
        self.metadata: dict[str, str] = {}

    def demux(self, streams):
        return iter(())

    def chapters(self) -> list:
        return []

    def close(self) -> None:
        pass


class LivePassthrough(Passthrough):
    """:class:`Passthrough` whose packets come from an :class:`AudioFeed` as they arrive.

    ``floor`` (seconds, None: none): packets timed before it are dropped, counted in ``late``
    and warned of once; for an output that needs one clock across its streams, where the
    video is out up to that time (:class:`~vsr.stream.io.LiveSink`)."""

    def __init__(self, feed: AudioFeed) -> None:
        super().__init__(_FeedInput(feed), exclude=-1)
        self._feed = feed.packets
        self.floor: float | None = None
        self.late = 0
        self._adts: dict[int, av.bitstream.BitStreamFilterContext] = {}  # by template index

    @staticmethod
    def _raw_aac(bsf: av.bitstream.BitStreamFilterContext, pkt: av.Packet) -> av.Packet | None:
        """``pkt`` (ADTS) as raw AAC, on the same stream and clock; None if nothing came."""
        stream, time_base, pts, dts = pkt.stream, pkt.time_base, pkt.pts, pkt.dts
        out = bsf.filter(pkt)
        if not out:
            return None
        raw = out[0]
        raw.stream, raw.time_base, raw.pts, raw.dts = stream, time_base, pts, dts
        return raw

    def add_streams(self, output: av.container.OutputContainer,
                    add_video: Callable[[], None] | None = None) -> None:
        super().add_streams(output, add_video)
        if not output.format.flags & av.format.Flags.global_header.value:
            return  # MPEG-TS: its AAC stays ADTS, as it came
        for template in self._input.streams:
            out = self._map.get(template.index)
            if out is not None and out.codec_context.name == "aac" \
                    and not out.codec_context.extradata \
                    and (config := aac_config(template.codec_context)) is not None:
                # the configuration in the header, and the packets without their ADTS
                # headers (MP4 refuses them once it has one: 'Malformed AAC bitstream')
                out.codec_context.extradata = config
                self._adts[template.index] = av.bitstream.BitStreamFilterContext(
                    "aac_adtstoasc", template)

    def _next(self) -> av.Packet | None:
        while self._pending is None:
            try:
                pkt = self._feed.popleft()
            except IndexError:
                return None
            if self.floor is not None and packet_seconds(pkt) < self.floor:
                self._late()
                continue
            if (bsf := self._adts.get(pkt.stream.index)) is not None:
                pkt = self._raw_aac(bsf, pkt)
                if pkt is None:
                    continue
            self._pending = pkt
        return self._pending

    def _late(self) -> None:
        self.late += 1
        if self.late == 1:
            log.warning("audio came after the video of its time had gone out on an output "
                        "that needs one clock (MPEG-TS in RTP): dropped, counted as "
                        "'audio_skipped' in the stats")
