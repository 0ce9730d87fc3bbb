"""Video I/O: sources (PyAV, decord, images), sinks (PyAV, system ffmpeg, images), stream copy."""

from vsr.io.image import ImageSink, is_image_path
from vsr.io.info import ColorInfo, OtherStream, StreamInfo
from vsr.io.sink import EncodeConfig, PyAVSink, choose_pix_fmt
from vsr.io.source import Frame, PyAVSource, Source, open_source

__all__ = ["ColorInfo", "EncodeConfig", "Frame", "ImageSink", "OtherStream", "PyAVSink",
           "PyAVSource", "Source", "StreamInfo", "choose_pix_fmt", "is_image_path", "open_source"]
