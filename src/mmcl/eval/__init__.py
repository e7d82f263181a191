"""Evaluation: zero-shot classification accuracy and image-text retrieval recall."""

from mmcl.eval.retrieval import retrieval_recall
from mmcl.eval.zero_shot import accuracy, build_zero_shot_classifier, evaluate_zero_shot

__all__ = [
    "accuracy",
    "build_zero_shot_classifier",
    "evaluate_zero_shot",
    "retrieval_recall",
]
