"""Still images (PNG, JPEG, ...) read and written through PyAV, so no Pillow or OpenCV is needed.

Images are handled as RGB ``uint8`` tensors of shape (3, H, W) on the CPU. Grayscale, palette,
alpha and 16-bit files are converted to 8-bit RGB on reading (alpha is dropped here; `vsr upscale`
carries it through vsr.io.source and vsr.pipeline.alpha).
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np
import torch

from vsr.errors import InputError, OutputError
from vsr.io.colour import reads_own, to_rgb
from vsr.io.image import IMAGE_SUFFIXES, jpeg_qscale, limit_stream, open_limited, save_image
from vsr.io.info import EXACT_RGB, ColorInfo
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
        channels; a file of more than 8 bits a sample is rounded to 8 bits, round(v / 257)
        as MATLAB's ``im2uint8``, not dithered as FFmpeg's 8-bit conversion does.

    Raises:
        InputError: the file is missing, is not an image, or holds no picture.
    """
    return read_image_and_gray(path)[0]


def read_image_and_gray(path: str | os.PathLike) -> tuple[torch.Tensor, bool]:
    """:func:`read_image` and :func:`is_grayscale` of one file, from one read (a file
    replaced between two reads would give one file's pixels with the other's format)."""
    frame = _decode(Path(path))
    name, colour = frame.format.name, ColorInfo.of_frame(frame)
    if max(c.bits for c in frame.format.components) > 8:
        # (H, W, 3), 0..65535; Y'CbCr by vsr.io.colour (swscale's 16-bit RGB is 0.4% dark)
        deep = (to_rgb(frame, colour) if reads_own(name, colour, eight_bit=False)
                else frame.to_ndarray(format="rgb48le")).astype(np.uint32)
        rgb = ((2 * deep + 257) // 514).astype(np.uint8)  # floor(v / 257 + 1/2), exactly
    elif reads_own(name, colour, eight_bit=True):  # limited-range grey (a monochrome AVIF)
        rgb = to_rgb(frame, colour, depth=8)
    else:  # (H, W, 3); gray replicated exactly
        rgb = frame.to_ndarray(format="rgb24", interpolation=EXACT_RGB)  # as libjpeg, to a level
    image = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    return image, _is_gray(frame)


def is_grayscale(path: str | os.PathLike) -> bool:
    """Whether the file stores a single-channel (gray, or gray + alpha) picture.

    Raises:
        InputError: as :func:`read_image`.
    """
    return _is_gray(_decode(Path(path)))


def _is_gray(frame: av.VideoFrame) -> bool:
    # monob/monow: 1 bit a pixel (a 1-bit PNG, TIFF or PBM), gray too
    return frame.format.name.startswith(("gray", "ya")) or frame.format.name in ("monob",
                                                                                "monow")


def write_image(path: str | os.PathLike, image: torch.Tensor, *, quality: int = 95,
                overwrite: bool = False) -> None:
    """Encode one image file; the format follows the suffix (vsr.io.image.IMAGE_FORMATS).
    Written by vsr.io.image.save_image: an existing file is kept unless ``overwrite``, and the
    file appears whole or not at all.

    Args:
        image: uint8 tensor (3, H, W), RGB, any device.
        quality: JPEG quality 1..100 (ignored by lossless formats).

    Raises:
        OutputError: wrong tensor contract, unsupported suffix, the file exists, or it cannot
            be written.
    """
    if not isinstance(image, torch.Tensor) or image.dtype != torch.uint8 or image.ndim != 3 \
            or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        dtype = image.dtype if isinstance(image, torch.Tensor) else ""
        raise OutputError(f"write_image needs a uint8 (3, H, W) tensor, got {shape} {dtype}")
    array = np.ascontiguousarray(image.detach().cpu().permute(1, 2, 0).numpy())
    save_image(path, array, overwrite=overwrite, jpeg_scale=jpeg_qscale(quality))


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder`` (by suffix, case-insensitive), sorted by name.
    Hidden files are left out, as `vsr batch` leaves them out: a folder copied from macOS
    holds a ``._NAME.png`` of metadata beside each image, which is no image.

    Raises:
        InputError: the folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"not a folder: {folder}")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))
