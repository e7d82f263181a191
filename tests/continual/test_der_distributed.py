"""Two real gloo processes: DER's buffer, filled step by step, is the same on both ranks and
equals one process offered both ranks' items in rank order."""

import os
from pathlib import Path

import torch
import torch.multiprocessing as mp
from continual_helpers import small_config
from test_heads_and_der import linear_classifier, separable_stream

from conftest import free_port, join_cpu_process_group
from mmcl.continual.heads import classification_objective
from mmcl.continual.methods import build_method
from mmcl.continual.runner import ContinualRun
from mmcl.train import distributed

# Each rank trains on different items, and rank 1 on fewer (as when unreadable items drop out).
RANK_ITEMS = [[0, 5, 9, 13], [2, 7, 11]]


def offer(der, run, model, indices):
    data = run.stream_data(0)
    images = torch.stack([data[i][0] for i in indices])
    labels = torch.tensor([data[i][1] for i in indices])
    _, outputs = classification_objective(model, run.training_space(0))(model, images, labels)
    der.extra_losses(model, (images, labels, torch.tensor(indices)), outputs)


def der_after(tmp_path, indices_per_call):
    stream, model = separable_stream(), linear_classifier()
    der = build_method("der", buffer_size=5)
    run = ContinualRun(stream, der, small_config(tmp_path), tmp_path, {}, 0)
    der.setup(model, run)
    der.before_task(stream.tasks[0], model, run)
    for indices in indices_per_call:
        offer(der, run, model, indices)
    return der.state_dict()


def worker(rank: int, port: int, out_dir: str) -> None:
    join_cpu_process_group(rank, 2, port)
    try:
        state = der_after(Path(out_dir), [RANK_ITEMS[rank]] * 2)  # two steps
        torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        distributed.cleanup()


def test_der_buffers_match_across_ranks_and_one_process(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    both = RANK_ITEMS[0] + RANK_ITEMS[1]
    one = der_after(tmp_path, [both, both])
    for state in ranks:
        assert state["buffer"]["seen"] == 2 * len(both)
        assert torch.equal(state["buffer"]["items"], one["buffer"]["items"])
        torch.testing.assert_close(state["logits"], one["logits"])
