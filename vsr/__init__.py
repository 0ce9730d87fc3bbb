"""vsr: video super-resolution with dual regression networks (DRN) and compression (DRC).

The Python entry points (imported on first use, so ``import vsr`` stays light; torch loads
when one of them is used):

    import vsr
    vsr.configure_runtime()  # optional: process-wide CPU tuning, before torch is imported
    result = vsr.upscale_file(vsr.UpscaleConfig(input="in.mp4", output="out.mkv",
                                                model="drn-t-x2"))
    frames, backend = result.frames_out, result.backend

upscale_file(UpscaleConfig) -> UpscaleResult
    One video (or image) file upscaled into another; every other stream is copied. Its
    ``encode`` is an EncodeConfig (codec, crf, preset, pix_fmt), as StreamConfig's is.
load_model(model=None, *, scale=None, device="auto", precision="auto", bit_depth=8, pixels=None,
           backend="auto")
    A model handle: ``handle.infer(x)`` maps (N, 3, H, W) float RGB in [0, 1] to
    (N, 3, sH, sW), in ``handle.dtype`` (auto: vsr.loading.auto_dtype).
run_batch(BatchConfig) -> BatchResult
    Many files (options in JobOptions), resumable, on several devices or a Ray cluster.
run_stream(StreamConfig) -> StreamStats
    A live source upscaled to a live destination with bounded latency.
run_evaluation(EvalConfig) -> list of DatasetResult (module vsr.evaluate)
    PSNR/SSIM on benchmark image folders with the standard protocol.
configure_runtime(*, threads=None, omp_wait_policy="PASSIVE", keep_freed_memory=True)
    Process-wide CPU tuning (OpenMP waits, glibc allocator, threads); the CLI calls it.

Every deliberate error derives from VsrError: ConfigError (bad options, raised when a config
is constructed), InputError, OutputError, ModelError (CheckpointError), PipelineError,
TrainingDiverged, Interrupted.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_ERRORS = ("VsrError", "ConfigError", "InputError", "OutputError", "ModelError",
           "CheckpointError", "PipelineError", "TrainingDiverged", "Interrupted")

# module -> the public names it provides, each imported on first access
_PROVIDERS: dict[str, tuple[str, ...]] = {
    "vsr.upscale": ("upscale_file", "UpscaleConfig", "UpscaleResult"),
    "vsr.io.sink": ("EncodeConfig",),
    "vsr.loading": ("load_model",),
    "vsr.jobs": ("run_batch", "BatchConfig", "JobOptions"),
    "vsr.stream": ("run_stream", "StreamConfig"),
    "vsr.evaluate": ("EvalConfig", "run_evaluation"),
    "vsr.runtime": ("configure_runtime",),
    "vsr.errors": _ERRORS,
}


def lazy_exports(module: str, providers: dict[str, tuple[str, ...]], namespace: dict):
    """A package's ``__getattr__`` and ``__dir__`` that import each public name of
    ``providers`` (module -> names) from its module on first access, into ``namespace``."""
    lazy = {name: source for source, names in providers.items() for name in names}

    def getattr_(name: str):
        source = lazy.get(name)
        if source is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(source), name)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(lazy))

    return getattr_, dir_


__getattr__, __dir__ = lazy_exports(__name__, _PROVIDERS, globals())
__all__ = [name for names in _PROVIDERS.values() for name in names] + ["__version__"]
