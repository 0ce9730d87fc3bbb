"""vsr: video super-resolution with dual regression networks (DRN) and compression (DRC)."""

from vsr.errors import (
    CheckpointError,
    ConfigError,
    InputError,
    Interrupted,
    ModelError,
    OutputError,
    PipelineError,
    VsrError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "InputError",
    "Interrupted",
    "ModelError",
    "OutputError",
    "PipelineError",
    "VsrError",
    "__version__",
]
