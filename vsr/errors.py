"""The library's errors: one base class, so the CLI can turn any of them into one line."""

from __future__ import annotations


class VsrError(Exception):
    """Base of every error the library raises on purpose."""


class ConfigError(VsrError, ValueError):
    """An option or a combination of options is invalid."""


class ModelError(VsrError):
    """An unknown model name, or a model used outside its contract."""


class CheckpointError(ModelError):
    """A weights file that is missing, malformed, or does not fit its architecture."""


class InputError(VsrError):
    """Input media that cannot be read: missing, not media, truncated, no video, no frames."""


class OutputError(VsrError):
    """Output that cannot be written: bad path, exists without --overwrite, encoder failure."""


class PipelineError(VsrError):
    """A failure inside the decode -> infer -> encode pipeline."""


class TrainingDiverged(VsrError):
    """The training loss or the weights became non-finite (NaN or infinity): the run stopped
    without writing them; its folder keeps the last state saved before."""


class Interrupted(VsrError):
    """The run was stopped by the user (Ctrl-C); partial output has been removed."""
