"""Trainers in the Hugging Face way: one config + one thin Trainer subclass per method."""

from qsft.training.bc import BCTrainer
from qsft.training.config import BCConfig, FilteredBCConfig, OfflineRLConfig, QSFTConfig
from qsft.training.qsft_trainer import QSFTTrainer

__all__ = ["BCConfig", "BCTrainer", "FilteredBCConfig", "OfflineRLConfig", "QSFTConfig", "QSFTTrainer"]
