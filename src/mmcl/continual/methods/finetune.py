"""Sequential fine-tuning: train on each task in turn with nothing against forgetting.

The lower bound every method is measured against.
"""

from mmcl.continual.methods.base import Method


class Finetune(Method):
    name = "finetune"
    takes_captions = True
    takes_instructions = True
