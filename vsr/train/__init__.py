"""Dual regression training (PAPER.md sections 2-3): `vsr train`."""

from vsr.train.config import TrainConfig
from vsr.train.launch import train
from vsr.train.trainer import StepReport, Trainer, TrainResult

__all__ = ["StepReport", "TrainConfig", "TrainResult", "Trainer", "train"]
