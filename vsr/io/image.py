"""Single images (PNG/JPEG) as output: the sink for one-frame image inputs.

Images are read by the PyAV source (one frame); this writes one encoded picture through
PyAV's codecs, via a temporary file renamed into place like the video sinks.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vsr.errors import OutputError
from vsr.io.output import SinkContext, check_output_path, discard, finish, temp_path_for

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


def is_image_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


class ImageSink(SinkContext):
    """Writes exactly one (H, W, 3) RGB uint8/uint16 frame as PNG (16-bit kept) or JPEG."""

    def __init__(self, path: str | os.PathLike, width: int, height: int, *,
                 overwrite: bool = False, input_path: str | None = None,
                 jpeg_quality: int = 2) -> None:
        self.path = check_output_path(path, overwrite=overwrite, input_path=input_path)
        if not is_image_path(self.path):
            raise OutputError(f"an image input needs an image output (.png, .jpg): {self.path}")
        self._size = (height, width)
        self._q = jpeg_quality
        self._data: bytes | None = None
        self._done = False
        self.frames = 0
        self.pix_fmt = "rgb24"

    def write(self, image: np.ndarray, pts: int | None = None) -> None:
        if self._data is not None:
            raise OutputError("an image output takes one frame")
        if image.shape != self._size + (3,) or image.dtype not in (np.uint8, np.uint16):
            raise OutputError(f"frame {image.shape} {image.dtype} != {self._size + (3,)} uint8")
        png = self.path.suffix.lower() == ".png"
        fmt = "rgb24" if image.dtype == np.uint8 else "rgb48le"
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format=fmt)
        if png:
            self.pix_fmt = "rgb24" if image.dtype == np.uint8 else "rgb48be"
            cc = av.CodecContext.create("png", "w")
        else:
            self.pix_fmt = "yuvj444p"
            cc = av.CodecContext.create("mjpeg", "w")
            cc.qscale = True
            cc.global_quality = self._q * 118  # FF_QP2LAMBDA: qscale 2 is near-lossless
        cc.width, cc.height, cc.pix_fmt = image.shape[1], image.shape[0], self.pix_fmt
        cc.time_base = Fraction(1, 25) # required by the encoders, meaningless for one picture
        frame = frame.reformat(format=self.pix_fmt)
        frame.pts = 0
        try:
            self._data = b"".join(bytes(p) for p in cc.encode(frame) + cc.encode(None))
        except av.error.FFmpegError as exc:
            raise OutputError(f"encoding {self.path.name} failed: {exc}") from exc
        self.frames = 1

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        if self._data is None:
            raise OutputError("no frame was written")
        temp = temp_path_for(self.path)
        try:
            temp.write_bytes(self._data)
        except OSError as exc:
            discard(temp)
            raise OutputError(f"cannot write {self.path}: {exc.strerror}") from exc
        finish(temp, self.path)

    def abort(self) -> None:
        self._done = True

    @property
    def copied_packets(self) -> dict[int, int]:
        return {}

