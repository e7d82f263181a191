"""Evaluation: zero-shot classification accuracy, image-text retrieval recall
(and BLIP's ITM re-ranking), caption metrics
(BLEU, CIDEr-D, attribute accuracy on the built-in scenes) and VQA accuracy."""

from mmcl.eval.captioning import bleu, cider_d
from mmcl.eval.rerank import rerank_scores
from mmcl.eval.retrieval import retrieval_recall
from mmcl.eval.scene_captions import attribute_accuracy
from mmcl.eval.vqa import vqa_accuracy
from mmcl.eval.zero_shot import accuracy, build_zero_shot_classifier, evaluate_zero_shot

__all__ = [
    "accuracy",
    "attribute_accuracy",
    "bleu",
    "build_zero_shot_classifier",
    "cider_d",
    "evaluate_zero_shot",
    "rerank_scores",
    "retrieval_recall",
    "vqa_accuracy",
]
