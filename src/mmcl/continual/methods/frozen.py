"""The frozen zero-shot model: never trained, so it never forgets and never learns.

Its row of the accuracy matrix is the initial model's zero-shot accuracy on every task, the
reference for Transfer.
"""

from mmcl.continual.methods.base import Method


class Frozen(Method):
    name = "frozen"
    trains = False
    takes_captions = True
    takes_instructions = True
