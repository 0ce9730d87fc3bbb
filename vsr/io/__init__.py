"""Video I/O: sources (PyAV, decord, images), sinks (PyAV, system ffmpeg, images), stream copy.

The names below load on first use, as ``vsr``'s own do: importing a submodule that needs no
PyAV (``vsr.io.output``, which training's state files use) must not import PyAV, which the
GPU training machine does not have (benchmarks/gpu_train_slot.sh).
"""

from __future__ import annotations

from vsr import lazy_exports

_PROVIDERS: dict[str, tuple[str, ...]] = {
    "vsr.io.image": ("ImageSink", "is_image_path"),
    "vsr.io.info": ("ColorInfo", "OtherStream", "StreamInfo"),
    "vsr.io.sink": ("EncodeConfig", "PyAVSink", "choose_pix_fmt"),
    "vsr.io.source": ("Frame", "PyAVSource", "Source", "open_source"),
}
__getattr__, __dir__ = lazy_exports(__name__, _PROVIDERS, globals())
__all__ = sorted(name for names in _PROVIDERS.values() for name in names)
