"""The shape of a continual-learning method: a few optional hooks on the one training loop.

A method subclasses `Method` (one level, no deeper) and overrides only the hooks it needs:

    setup(model, run)                   once per run, fresh or resumed: add adapters/prompts
    before_task(task, model, run)       snapshot a teacher, route a new task, ...
    train_data(task, run) -> Dataset    what the engine trains on (replay mixes a buffer in)
    extra_losses(model, batch, outputs) -> {name: tensor}   EWC penalty, distillation, ...
    after_optimizer_step(trainer)       e.g. weight averaging every N iterations
    after_task(task, model, run)        Fisher information, weight interpolation, memory update
    predict(model, images, space, run) -> logits or None     where inference changes
    image_features(model, images) -> (features, terms) or None   images encoded the method's way
    class_features(model, space) -> (features, terms) or None    classes embedded the method's way
    routes(model, images, ids, mask) -> [(rows, context)] or None   which rows of a bridge's
                                        batch of prompts run under which setting (a task's
                                        LoRA, its prompts)
    state_dict() / load_state_dict()    everything needed to resume exactly

`run` is the `ContinualRun` in progress (`mmcl.continual.runner`): the scenario, the task
index, the training settings, the initial weights, and the label helpers (`run.stream_data`,
`run.training_space`, `run.evaluation_space`). Labels inside a run are *stream labels* (see
`mmcl.continual.classes`); `space` is the `ClassSpace` a prediction chooses from, and logits
have one column per class of it, in its order.

A captioned stream (`mmcl.continual.captioned`) trains image-caption pairs with the
contrastive loss; only methods with `takes_captions = True` run on it, and their batches hold
caption tokens where a classification stream's hold labels. An instruction stream
(`mmcl.continual.instructions`) trains a LLaVA-style bridge with the LM loss; only methods
with `takes_instructions = True` run on it.

Methods that train on past tasks' data too (joint training, replay) set
`mixes_past_data = True`, so task- and multi-dataset streams train over all classes so far.
The runner broadcasts a method's state from rank 0 after every task, so buffers, exemplars and
Fisher estimates are identical on every rank of a `torchrun` job.
"""

from __future__ import annotations

from torch.utils.data import Dataset

from mmcl.train.plugins import TrainingPlugin


class Method(TrainingPlugin):
    name = "finetune"
    trains = True  # False: the model is never updated (e.g. the frozen zero-shot baseline)
    mixes_past_data = False
    needs_text_tower = False  # True: CLIP only, refused for a plain classifier (heads.py)
    # True: also trains on a captioned stream (contrastive loss, retrieval R@1; see
    # mmcl.continual.captioned), where there are no classes and no class prompts.
    takes_captions = False
    # True: also trains a LLaVA-style bridge on an instruction stream (LM loss on answers,
    # answers scored; see mmcl.continual.instructions), where batches hold encoded
    # conversations: ``targets`` is ``(batch, 3, length)`` ids, labels and attention mask.
    takes_instructions = False
    # False: a method for bridge models only (LoRA experts, LM prompts), not class streams.
    takes_classes = True

    def setup(self, model, run) -> None:
        pass

    def before_task(self, task, model, run) -> None:
        pass

    def train_data(self, task, run) -> Dataset:
        return run.stream_data(task.index)

    def after_task(self, task, model, run) -> None:
        pass

    def predict(self, model, images, space, run):
        return None  # the zero-shot classifier built from the space's prompts

    def image_features(self, model, images):
        """``(features, terms)``: normalised image features ``(len(images), embed_dim)``
        computed the method's way (L2P's prompted tower), and the loss terms ``{name: tensor}``
        that computation gives (L2P's key matching), added to the training loss. None: the
        image tower as it is. Asked by the classification objective and by evaluation."""
        return None

    def class_features(self, model, space):
        """``(features, terms)``: normalised text features ``(len(space), embed_dim)`` of the
        classes of `space` (a `ClassSpace`; in training, one template per class and step),
        computed the method's way (CoOp's learned context), with loss terms as in
        `image_features`. None: the text tower on each class's prompts."""
        return None

    def routes(self, model, images, ids=None, mask=None):
        """``[(rows, context), ...]``: for a bridge model's inference (answers, LM scores),
        which rows of the batch (`images`, and the prompts' `ids` with their attention
        `mask`) run under which context manager (e.g. the LoRA of the task a selector sent
        them to); `mmcl.continual.methods.task_keys.run_routes` runs them. None: every row
        under the model as it is."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
