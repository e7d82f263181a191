"""Training: losses, the engine, distributed helpers.

>>> from mmcl.train import Trainer, TrainConfig, TrainingPlugin, ClipLoss, SigLipLoss
"""

from mmcl.train.config import TrainConfig
from mmcl.train.engine import FitResult, Trainer
from mmcl.train.losses import ClipLoss, SigLipLoss, siglip_init
from mmcl.train.plugins import TrainingPlugin
from mmcl.train.state import ResumeError

__all__ = [
    "ClipLoss",
    "FitResult",
    "ResumeError",
    "SigLipLoss",
    "TrainConfig",
    "Trainer",
    "TrainingPlugin",
    "siglip_init",
]
