"""Still images (PNG, JPEG, ...) read and written through PyAV, so no Pillow or OpenCV is needed.

Images are handled as RGB ``uint8`` tensors of shape (3, H, W) on the CPU. Grayscale, palette,
alpha and 16-bit files are converted to 8-bit RGB on reading (alpha is dropped).
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import torch

from vsr.errors import InputError, OutputError
from vsr.io.image import IMAGE_FORMATS, IMAGE_SUFFIXES, limit_stream, open_limited
from vsr.io.paths import file_url


def _decode(path: Path) -> av.VideoFrame:
    """The first picture of an image file, in its own pixel format."""
    if not path.is_file():
        raise InputError(f"image not found: {path}")
    try:
        with open_limited(path, file_url(path)) as container:  # the pixel limit, then open
            if not container.streams.video:
                raise InputError(f"not an image: {path}")
            limit_stream(container.streams.video[0], path.name)
            frame = next(container.decode(video=0), None)
    except av.FFmpegError as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"not an image: {path} ({reason})") from exc
    if frame is None:
        raise InputError(f"not an image (no picture decoded): {path}")
    return frame


def read_image(path: str | os.PathLike) -> torch.Tensor:
    """Decode one image file.

    Returns:
        uint8 tensor (3, H, W), RGB, 0..255, on the CPU. A grayscale file gives three equal
        channels.

    Raises:
        InputError: the file is missing, is not an image, or holds no picture.
    """
    rgb = _decode(Path(path)).to_ndarray(format="rgb24")  # (H, W, 3); gray replicated exactly
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def is_grayscale(path: str | os.PathLike) -> bool:
    """Whether the file stores a single-channel (gray, or gray + alpha) picture.

    Raises:
        InputError: as :func:`read_image`.
    """
    return _decode(Path(path)).format.name.startswith(("gray", "ya"))


def write_image(path: str | os.PathLike, image: torch.Tensor, *, quality: int = 95) -> None:
    """Encode one image file; the format follows the suffix (vsr.io.image.IMAGE_FORMATS).

    Args:
        image: uint8 tensor (3, H, W), RGB, any device.
        quality: JPEG quality 1..100 (ignored by lossless formats).

    Raises:
        OutputError: wrong tensor contract, unsupported suffix, or the file cannot be written.
    """
    path = Path(path)
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3 \
            or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        dtype = image.dtype if isinstance(image, torch.Tensor) else ""
        raise OutputError(f"write_image needs a uint8 (3, H, W) tensor, got {shape} {dtype}")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_FORMATS:
        raise OutputError(f"unsupported image format {suffix!r} for {path}; "
                          f"use one of {', '.join(sorted(IMAGE_FORMATS))}")
    if not path.parent.is_dir():
        raise OutputError(f"output folder does not exist: {path.parent}")
    out = IMAGE_FORMATS[suffix]
    codec, pix_fmt = out.codec, out.pix_fmt
    array = np.ascontiguousarray(image.detach().cpu().permute(1, 2, 0).numpy())
    height, width = array.shape[:2]
    try:
        # update=1: the name is the file, not a numbered pattern (a "%d" in it stays as it is)
        with av.open(file_url(path), mode="w", format="image2",
                     container_options={"update": "1"}) as container:
            stream = container.add_stream(codec, rate=1)
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            stream.codec_context.options = dict(out.options)
            if codec == "mjpeg":
                # mjpeg's qscale 2..31; map quality 100 -> 2, 1 -> 31
                q = int(round(2 + (100 - max(1, min(100, quality))) * 29 / 99))
                stream.codec_context.qmin = stream.codec_context.qmax = q
                stream.codec_context.color_range = 2  # full-range (JPEG) YUV
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            if pix_fmt != "rgb24":
                frame = frame.reformat(format=pix_fmt)
            for packet in stream.encode(frame):
                container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
    except (av.FFmpegError, OSError) as exc:
        raise OutputError(f"cannot write image {path}: {exc}") from exc


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (by suffix, case-insensitive), sorted by name.

    Raises:
        InputError: the folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"not a folder: {folder}")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
