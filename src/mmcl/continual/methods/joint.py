"""Joint training: at task t, train on the union of tasks 0..t (the usual upper bound).

Needs all past data, which is exactly what continual learning may not keep; reported for
reference only.
"""

from torch.utils.data import ConcatDataset

from mmcl.continual.methods.base import Method


class Joint(Method):
    name = "joint"
    mixes_past_data = True
    takes_instructions = True

    def train_data(self, task, run):
        return ConcatDataset([run.stream_data(i) for i in range(task.index + 1)])
