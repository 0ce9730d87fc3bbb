"""Y'CbCr <-> R'G'B' by the standard equations where swscale is not exact.

swscale's matrix is exact for 8-bit limited-range Y'CbCr with the flags in vsr.io.info, but not
for deeper video nor for full-range output: it reads 10-bit Y'CbCr into 16-bit RGB with a 255/256
scale (limited-range white, Y 940, came out 65283, not 65535: every pixel 0.4% dark), writes
16-bit RGB 0.4% bright (65535 -> Y 943, above the legal 940), and truncates the chroma of
full-range 8-bit output (half a level low on average); no flag mends these. What it does exactly
is the rest: chroma resampling and bit-depth changes between Y'CbCr formats (a shift, rounded),
measured. So here swscale changes only the layout (4:2:0 <-> 4:4:4 at 16 bits, or at 8 for 8-bit
output, which it would dither from 16) and the matrix and range are applied in numpy (float32,
rounded once): ITU-R BT.601 / 709 / 2020 ncl (and FCC, SMPTE 240M), limited range
(Y 16..235, C 16..240, times 2^(n-8) for n bits) or full (0..2^n - 1, C centred on 2^(n-1)).
The transfer is untouched: R'G'B' stays coded (an HDR input's PQ or HLG signal).

Grey (luma-only) formats are full range whatever they say, as swscale treats them.

Cost per 1080p frame, one core of a 2-core CPU (float32 strips of 64 rows): reading 10-bit
4:2:0 12-16 ms (swscale's inexact rgb48 path took 17-18), writing it 12-14 ms (swscale 9-13),
12-bit 17 / 20 ms, full-range 8-bit output 12 ms: small beside a model's 1-2 s a frame there.
"""

from __future__ import annotations

import functools
import re

import av
import numpy as np

from vsr.io.info import EXACT_YUV, ColorInfo

# (Kr, Kb) by swscale matrix (ColorInfo.sws_matrix); swscale's default, BT.601, for the rest
_KR_KB = {1: (0.2126, 0.0722), 4: (0.30, 0.11), 5: (0.299, 0.114), 7: (0.212, 0.087),
          9: (0.2627, 0.0593)}
_ROWS = 64  # rows converted at a time: float copies of a strip (cache-sized), not of a frame


def bits_of(fmt: av.VideoFormat) -> int:
    """Bits per component of a pixel format (its widest)."""
    return max(c.bits for c in fmt.components)


@functools.cache  # asked per frame, of a few names
def is_grey(name: str) -> bool:
    """Whether the pixel format ``name`` is integer luma alone (with or without alpha)."""
    return re.fullmatch(r"(gray(9|10|12|14|16)?|ya(8|16))(le|be)?", name) is not None


@functools.cache  # asked per frame, of a few names
def is_ycbcr(name: str) -> bool:
    """Whether the pixel format ``name`` is integer Y'CbCr (planar, semi-planar or packed)."""
    try:
        f = av.VideoFormat(name)
    except ValueError:
        return False
    colour = [c for c in f.components if not c.is_alpha]
    return not (f.is_rgb or f.has_palette or f.is_bayer or name.startswith("xyz")) \
        and len(colour) == 3


def full_range(name: str, color: ColorInfo) -> bool:
    """Whether frames of pixel format ``name`` described by ``color`` are full range: tagged
    so, JPEG Y'CbCr (yuvj), or grey not tagged limited (untagged grey, a PGM's or FFV1's, is
    full range by swscale's rule; monochrome HEVC and AV1 are limited, and tagged so)."""
    if is_grey(name):
        return color.range != 1
    return color.range == 2 or name.startswith("yuvj")


def limited_grey(name: str, color: ColorInfo) -> bool:
    """Whether ``name`` is grey tagged limited range by ``color``: swscale reads and writes
    grey at full range whatever it is told (monochrome HEVC came out with black at 30, not 16,
    and white at 218, in H.264), so such frames are converted here at any depth."""
    return is_grey(name) and not full_range(name, color)


def reads_own(name: str, color: ColorInfo, *, eight_bit: bool) -> bool:
    """Whether a frame of pixel format ``name`` described by ``color`` goes to RGB here
    (:func:`to_rgb`) rather than through swscale: into 16-bit RGB, Y'CbCr or grey (any depth);
    into 8-bit RGB (``eight_bit``), grey tagged limited range only (:func:`limited_grey`).
    8-bit RGB from 8-bit Y'CbCr stays with swscale: exact there (vsr.io.info.EXACT_RGB, full
    range too), and RGB formats are only copied."""
    if eight_bit:
        return limited_grey(name, color)
    return is_ycbcr(name) or is_grey(name)


def writes_own(name: str, eight_bit_input: bool, color: ColorInfo) -> bool:
    """Whether RGB (uint8 where ``eight_bit_input``, else uint16) is written in pixel format
    ``name`` here rather than through swscale: Y'CbCr or grey from 16-bit RGB or into more than
    8 bits, full-range Y'CbCr and limited-range grey. 8-bit RGB into 8-bit limited-range
    Y'CbCr or 8-bit full-range grey stays with swscale (exact with vsr.io.info.EXACT_YUV, and
    faster)."""
    ycbcr = is_ycbcr(name)
    if not (ycbcr or is_grey(name)):
        return False
    return (not eight_bit_input or bits_of(av.VideoFormat(name)) > 8
            or (ycbcr and full_range(name, color)) or limited_grey(name, color))


def _levels(bits: int, full: bool) -> tuple[float, float, float, float]:
    """(Y offset, Y scale, C offset, C scale) in ``bits``-bit codes."""
    if full:
        top = float(2 ** bits - 1)
        return 0.0, top, float(2 ** (bits - 1)), top
    k = float(2 ** (bits - 8))
    return 16 * k, 219 * k, 128 * k, 224 * k


def _rgb_of_ycbcr(color: ColorInfo) -> np.ndarray:
    """3x3 matrix: normalised (Y', Cb, Cr) columns -> (R', G', B') rows."""
    kr, kb = _KR_KB.get(color.sws_matrix, _KR_KB[5])
    kg = 1 - kr - kb
    return np.array([[1, 0, 2 * (1 - kr)],
                     [1, -2 * kb * (1 - kb) / kg, -2 * kr * (1 - kr) / kg],
                     [1, 2 * (1 - kb), 0]], np.float64)


def _planes(frame: av.VideoFrame, dtype: np.dtype) -> list[np.ndarray]:
    """Views of ``frame``'s planes, (H, W * samples per pixel) each, in ``dtype`` (writable)."""
    out = []
    for plane in frame.planes:
        row = plane.line_size // dtype.itemsize
        a = np.frombuffer(plane, dtype, count=plane.height * row).reshape(plane.height, row)
        out.append(a[:, : plane.width * (2 if frame.format.name.startswith("ya") else 1)])
    return out


def _code_dtype(fmt: av.VideoFormat) -> np.dtype:
    """The dtype of one sample of an integer planar format ``fmt``."""
    if bits_of(fmt) <= 8:
        return np.dtype(np.uint8)
    return np.dtype(">u2" if fmt.is_big_endian else "<u2")


def _grey_planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """A grey frame's luma and alpha codes, (H, W) each (alpha None where it has none)."""
    plane = _planes(frame, _code_dtype(frame.format))[0]
    if frame.format.name.startswith("ya"):
        return plane[:, 0::2], plane[:, 1::2]
    return plane, None


def _unjpeg(frame: av.VideoFrame) -> av.VideoFrame:
    """A yuvj frame's planes in the same layout without the j (swscale takes yuvj as full
    range whatever it is told, and would convert its range to any other format's)."""
    out = av.VideoFrame(frame.width, frame.height, frame.format.name.replace("yuvj", "yuv"))
    for src, dst in zip(_planes(frame, np.dtype(np.uint8)), _planes(out, np.dtype(np.uint8)),
                        strict=True):
        dst[:] = src
    return out


def _matrix_rows(rows: np.ndarray, planes: list[np.ndarray], bias: np.ndarray,
                 outs: list[np.ndarray], ceiling: float) -> None:
    """outs[i] = floor(clip(sum_k rows[i, k] * planes[k] + bias[i], 0, ceiling)), by strips
    (planes: (H, W) codes; outs: (H, W) integer views)."""
    rows, bias = rows.astype(np.float32), bias.astype(np.float32)
    for top in range(0, planes[0].shape[0], _ROWS):
        strip = [p[top:top + _ROWS].astype(np.float32) for p in planes]
        for i, out in enumerate(outs):
            acc = strip[0] * rows[i, 0] + bias[i]
            for k in range(1, len(strip)):
                if rows[i, k]:
                    acc += strip[k] * rows[i, k]
            np.clip(acc, 0, ceiling, out=acc)
            out[top:top + _ROWS] = acc  # the cast truncates: the floor of a value >= 0


def to_rgb(frame: av.VideoFrame, color: ColorInfo, *, size: tuple[int, int] | None = None,
           interpolation=EXACT_YUV, depth: int = 16) -> np.ndarray:
    """A Y'CbCr or grey ``frame`` (any depth) as (H, W, 3) uint16 R'G'B', full 16-bit scale,
    each value rounded to the nearest level (``depth`` 8: uint8, full 8-bit scale).

    ``color``: the matrix (ColorInfo.sws_matrix; BT.601 where unknown) and range (see
    :func:`full_range`). ``size``: (width, height) to scale to first (in Y'CbCr, with
    ``interpolation``), else the frame's own; swscale brings the chroma to full size with
    ``interpolation`` too.
    """
    name, bits = frame.format.name, bits_of(frame.format)
    full = full_range(name, color)
    w, h = size or (frame.width, frame.height)
    if is_grey(name):
        if (w, h) != (frame.width, frame.height):
            frame = frame.reformat(width=w, height=h, interpolation=interpolation)
        planes = [_grey_planes(frame)[0]]
        scale = 1.0  # the codes as they are
        rows = np.full((3, 1), 1.0)
    else:
        if name.startswith("yuvj"):
            frame = _unjpeg(frame)
        # limited range both sides: swscale changes no range, and brings n-bit codes to 16 bits
        # by a shift (told full range, its same-size copies replicate the top bits instead)
        yuv = frame.reformat(width=w, height=h, format="yuv444p16le", interpolation=interpolation,
                             src_color_range=1, dst_color_range=1)
        planes = _planes(yuv, np.dtype("<u2"))
        scale = float(2 ** (16 - bits))
        rows = _rgb_of_ycbcr(color)
    yo, ys, co, cs = (v * scale for v in _levels(bits, full))
    top = float(2 ** depth - 1)
    rows = top * rows / np.array([ys, cs, cs][: rows.shape[1]])
    bias = 0.5 - rows @ np.array([yo, co, co][: rows.shape[1]])  # + 0.5: the floor rounds
    out = np.empty((h, w, 3), np.uint8 if depth == 8 else np.uint16)
    _matrix_rows(rows, planes, bias, [out[..., i] for i in range(3)], top + 0.5)
    return out


def alpha_of(frame: av.VideoFrame) -> np.ndarray | None:
    """The alpha plane of a Y'CbCr-with-alpha or grey-with-alpha ``frame`` of more than 8
    bits, (H, W) uint16 on the full 16-bit scale (n-bit opaque is 65535), rounded; None for
    other formats (swscale's RGBA then: exact at 8 bits, and for RGB formats it repeats the top
    bits). swscale shifted deep alpha: 10-bit opaque came out 65472, not the maximum."""
    name = frame.format.name
    bits = bits_of(frame.format)
    if bits <= 8 or not (is_grey(name) or is_ycbcr(name)):
        return None
    if is_grey(name):
        alpha = _grey_planes(frame)[1]
    else:
        comps = frame.format.components
        alpha = (_planes(frame, _code_dtype(frame.format))[3]
                 if frame.format.is_planar and len(comps) == 4 and comps[3].is_alpha else None)
    if alpha is None:
        return None
    out = np.empty(alpha.shape, np.uint16)
    _matrix_rows(np.array([[65535 / (2 ** bits - 1)]]), [alpha], np.array([0.5]), [out],
                 65535.5)
    return out


def from_rgb(image: np.ndarray, pix_fmt: str, color: ColorInfo, *,
             interpolation=EXACT_YUV) -> av.VideoFrame:
    """(H, W, 3) R'G'B' or (H, W, 4) R'G'B'A, uint8 or uint16 (full scale each), as a frame of
    the Y'CbCr or grey pixel format ``pix_fmt`` by ``color``'s matrix and range, each code
    rounded to the nearest; swscale subsamples the chroma with ``interpolation``. The alpha
    plane, where ``pix_fmt`` has one, is scaled and rounded too (opaque where ``image`` has
    three channels)."""
    h, w = image.shape[:2]
    target = av.VideoFormat(pix_fmt)
    bits, grey = bits_of(target), is_grey(pix_fmt)
    alpha = any(c.is_alpha for c in target.components)
    full = full_range(pix_fmt, color)
    yo, ys, co, cs = _levels(bits, full)
    kr, kb = _KR_KB.get(color.sws_matrix, _KR_KB[5])
    kg = 1 - kr - kb
    if grey:
        frame, shift, mid = av.VideoFrame(w, h, pix_fmt), 1.0, pix_fmt
        luma, alpha_plane = _grey_planes(frame)
        outs = [luma]
    else:
        if target.is_planar and (target.chroma_width(2), target.chroma_height(2)) == (2, 2):
            # 4:4:4: written here (swscale dithers when it only takes bits away)
            mid, shift, dtype = pix_fmt, 1.0, _code_dtype(target)
        else:
            # through 4:4:4 at 16 bits, which swscale subsamples and brings to n bits rounded,
            # or at 8 bits for 8-bit output (from 16 it dithers)
            deep = bits > 8
            mid = ("yuvj444p" if pix_fmt.startswith("yuvj") else "yuva444p" if alpha
                   else "yuv444p") + ("16le" if deep else "")
            shift = float(2 ** (16 - bits)) if deep else 1.0
            dtype = np.dtype("<u2" if deep else np.uint8)
        frame = av.VideoFrame(w, h, mid)
        planes = _planes(frame, dtype)
        outs, alpha_plane = planes[:3], planes[3] if alpha else None
    top_in = 255.0 if image.dtype == np.uint8 else 65535.0
    rows = np.array([[kr, kg, kb],
                     [-kr / (2 - 2 * kb), -kg / (2 - 2 * kb), 0.5],
                     [0.5, -kg / (2 - 2 * kr), -kb / (2 - 2 * kr)]])[: len(outs)]
    rows = rows * np.array([[ys], [cs], [cs]])[: len(outs)] * shift / top_in
    bias = np.array([yo, co, co])[: len(outs)] * shift + 0.5  # + 0.5: the floor rounds
    rgb = [image[..., i] for i in range(3)]
    ceiling = (2 ** bits - 1) * shift + 0.5
    _matrix_rows(rows, rgb, bias, outs, ceiling)
    if alpha_plane is not None:
        if image.shape[2] == 4:
            _matrix_rows(np.array([[(2 ** bits - 1) * shift / top_in]]), [image[..., 3]],
                         np.array([0.5]), [alpha_plane], ceiling)
        else:
            alpha_plane[:] = (2 ** bits - 1) * int(shift)
    if mid == pix_fmt:
        return frame
    rng = 2 if pix_fmt.startswith("yuvj") else 1  # the same both sides: no range change
    return frame.reformat(format=pix_fmt, interpolation=interpolation, src_color_range=rng,
                          dst_color_range=rng)
