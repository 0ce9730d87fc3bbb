"""Lossy round trips of LR frames, for the degradation chains of :mod:`vsr.degradations`:
JPEG through Pillow, H.264 and HEVC through PyAV.

Video codecs see a clip as a real encoder would: one encoder session, its default GOP,
lookahead, B- and P-frames, 25 fps time base, one thread (so the frames do not depend on the
machine's core count); frames go RGB -> yuv420p (BT.601, limited range, swscale) and back the
same way, odd sizes padded to even by repeating the last column/row and cropped back after
(and clips too small for x265 padded to ``vsr.io.sink.X265_MIN_SIZE``).
CRF 0 is lossless with x264 only (the yuv420p frames it codes come back exactly; the RGB
conversions around it still round): x265 at CRF 0 is lossy (its lossless mode is another
option, ``lossless=1``, which these stages do not set), measured up to 7 levels off in
Y'CbCr on a 4-frame 64x48 noise clip (preset medium), 1 on a smooth one.
A training crop is coded as a short panning clip of its own (:func:`code_crop`;
:func:`code_crop_pair` also gives the frame before the last, for temporal consistency).
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import torch

from vsr.device import x264_asm_without_avx512
from vsr.errors import PipelineError
from vsr.io.info import EXACT_RGB, EXACT_YUV
from vsr.io.sink import X265_MIN_SIZE

# stage kind -> (PyAV encoder, decoder)
VIDEO_CODECS: dict[str, tuple[str, str]] = {"x264": ("libx264", "h264"),
                                            "x265": ("libx265", "hevc")}
CROP_CLIP_FRAMES = 3
CROP_MAX_SHIFT = 2
_CLIP_RATE = Fraction(25)


def jpeg_round_trip(frame: torch.Tensor, quality: int) -> torch.Tensor:
    """uint8 (3, H, W) -> the same after a JPEG round trip at IJG ``quality`` (Pillow)."""
    from PIL import Image  # installed with matplotlib; only JPEG stages need it

    buf = io.BytesIO()
    Image.fromarray(frame.permute(1, 2, 0).contiguous().numpy()).save(
        buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        out = np.asarray(im.convert("RGB"))
    return torch.from_numpy(out.copy()).permute(2, 0, 1).contiguous()


def code_clip(frames: torch.Tensor, kind: str, crf: int, preset: str) -> torch.Tensor:
    """uint8 (T, 3, h, w) through one encoder session of codec ``kind`` and back.

    Raises:
        PipelineError: the codec failed or lost frames.
    """
    arrays = [f.permute(1, 2, 0).contiguous().numpy() for f in frames]
    out = _encode_decode(arrays, kind, crf, preset)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def code_crop(lr: torch.Tensor, kind: str, crf: int, preset: str,
              gen: torch.Generator) -> torch.Tensor:
    """uint8 (3, h, w): code a short panning clip ending on ``lr`` (``CROP_CLIP_FRAMES``
    frames, a random motion of up to ``CROP_MAX_SHIFT`` pixels per frame drawn from ``gen``);
    its decoded last frame.

    Raises:
        PipelineError: the codec failed or lost frames.
    """
    return code_crop_pair(lr, kind, crf, preset, gen)[0]


def code_crop_pair(lr: torch.Tensor, kind: str, crf: int, preset: str, gen: torch.Generator
                   ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """:func:`code_crop` (the same draw, the same last frame) and the decoded frame before it.

    That frame shows ``lr`` moved by ``(dy, dx)`` LR pixels (edges repeated), coded differently:
    ``prev[:, y + dy, x + dx]`` and ``last[:, y, x]`` are the same pixel of the scene, two
    codings of it, as in two consecutive frames of a stream.

    Returns:
        uint8 (3, h, w) last frame, uint8 (3, h, w) previous frame, and ``(dy, dx)``.

    Raises:
        PipelineError: the codec failed or lost frames.
    """
    dy, dx = (torch.randint(-CROP_MAX_SHIFT, CROP_MAX_SHIFT + 1, (2,), generator=gen)).tolist()
    img = lr.permute(1, 2, 0).contiguous().numpy()
    n = CROP_CLIP_FRAMES
    clip = [_shifted(img, (n - 1 - t) * dy, (n - 1 - t) * dx) for t in range(n)]
    out = _encode_decode(clip, kind, crf, preset)
    last, prev = (torch.from_numpy(f).permute(2, 0, 1).contiguous() for f in out[-1:-3:-1])
    return last, prev, (dy, dx)


def _shifted(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """(h, w, 3) translated by (dy, dx) pixels, edges repeated."""
    if dy == 0 and dx == 0:
        return img
    h, w = img.shape[:2]
    p = max(abs(dy), abs(dx))
    padded = np.pad(img, ((p, p), (p, p), (0, 0)), mode="edge")
    return np.ascontiguousarray(padded[p - dy:p - dy + h, p - dx:p - dx + w])


def _encode_decode(frames: list[np.ndarray], kind: str, crf: int,
                   preset: str) -> list[np.ndarray]:
    """(h, w, 3) uint8 RGB frames -> encoded as one clip at ``crf`` -> decoded RGB frames.

    One encoder thread: x264's frame threads change its bitstream (measured on a 16-frame clip:
    2, 4 and auto threads each differ from 1), so more would tie the LR frames to the core count.
    """
    encoder, decoder = VIDEO_CODECS[kind]
    h, w = frames[0].shape[:2]
    ph, pw = h + h % 2, w + w % 2  # yuv420p needs even sizes: repeat the last row/column
    if kind == "x265":  # coded inside a frame x265 takes safely, its edges repeated
        pw, ph = max(pw, X265_MIN_SIZE[0]), max(ph, X265_MIN_SIZE[1])
    try:
        enc = av.CodecContext.create(encoder, "w")
        enc.width, enc.height, enc.pix_fmt = pw, ph, "yuv420p"
        enc.time_base, enc.framerate = 1 / _CLIP_RATE, _CLIP_RATE
        opts = {"crf": str(int(crf)), "preset": preset}
        if kind == "x265":  # its own stderr banner off; frame threads would follow the cores
            opts["x265-params"] = "log-level=none:frame-threads=1"
        elif (asm := x264_asm_without_avx512()) is not None:
            opts["x264-params"] = f"asm={asm}"
        enc.options = opts
        enc.thread_count = 1
        packets: list[av.Packet] = []
        for i, f in enumerate(frames):
            if (ph, pw) != (h, w):
                f = np.pad(f, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge")
            vf = av.VideoFrame.from_ndarray(f, format="rgb24").reformat(
                format="yuv420p", interpolation=EXACT_YUV)
            vf.pts = i
            packets.extend(enc.encode(vf))
        packets.extend(enc.encode(None))
        dec = av.CodecContext.create(decoder, "r")
        dec.thread_count = 1  # clips are short; parallelism comes from the crops' thread pool
        out: list[np.ndarray] = []
        for pkt in [*packets, None]:
            out.extend(fr.to_ndarray(format="rgb24", interpolation=EXACT_RGB)[:h, :w]
                       for fr in dec.decode(pkt))
    except av.FFmpegError as e:
        raise PipelineError(f"{encoder} round trip failed: {e}") from e
    if len(out) != len(frames):
        raise PipelineError(f"{encoder} round trip returned {len(out)} of {len(frames)} frames")
    return out

