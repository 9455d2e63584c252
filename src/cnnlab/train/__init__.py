"""Training: the engine (one epoch, evaluate), checkpoints, and a whole run into a folder."""

from cnnlab.train.checkpoint import load_model, save_model
from cnnlab.train.engine import evaluate, predict_logits, to_input, train_one_epoch
from cnnlab.train.run import TrainConfig, TrainResult, balanced_class_weights, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "balanced_class_weights",
    "evaluate",
    "load_model",
    "predict_logits",
    "save_model",
    "to_input",
    "train",
    "train_one_epoch",
]
