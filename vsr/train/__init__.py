"""Dual regression training, `vsr train` (docs/method.md, "Dual networks" and "Dual regression
loss and training")."""

from vsr.errors import TrainingDiverged
from vsr.train.config import TrainConfig
from vsr.train.launch import train
from vsr.train.trainer import StepReport, Trainer, TrainResult

__all__ = ["StepReport", "TrainConfig", "TrainResult", "Trainer", "TrainingDiverged", "train"]
