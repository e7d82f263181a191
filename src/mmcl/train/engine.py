"""The one training loop: data, optimiser, precision, accumulation, checkpoints, logging, DDP.

Continual-learning methods and other extensions plug in as *plugins* (`TrainingPlugin` in
`mmcl.train.plugins`): the loop calls each of their hooks at fixed points, and a plugin never
needs its own loop. The output folder (which checkpoints are the run's, which one to resume) is
`mmcl.train.run_folder`'s job.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, IterableDataset, default_collate

from mmcl.io.checkpoints import save_safetensors
from mmcl.io.progress import progress
from mmcl.models.clip import LOGIT_SCALE_MAX
from mmcl.train import distributed
from mmcl.train.config import TrainConfig
from mmcl.train.freezing import freeze
from mmcl.train.frozen_weights import save_trainable_safetensors, write_frozen_weights
from mmcl.train.grad_cache import grad_cache_step
from mmcl.train.objectives import ContrastiveObjective, default_objective
from mmcl.train.optim import build_optimizer, build_schedule
from mmcl.train.plugins import TrainingPlugin, adds_losses, check_plugins
from mmcl.train.run_folder import MODEL_FILE, checkpoint_path, prune_checkpoints, resume_checkpoint
from mmcl.train.run_log import RunLog
from mmcl.train.sampler import EpochSampler, IndexedItems
from mmcl.train.state import save_training_state
from mmcl.train.trainer_state import capture_trainer_state, restore_trainer_state


@dataclass
class FitResult:
    steps: int
    final_loss: float
    skipped_samples: int
    seconds: float
    checkpoint: Path | None
    metrics: dict[str, float] = field(default_factory=dict)


class Trainer:
    """Contrastive training of a CLIP-family model on (image, tokens) batches.

    >>> import mmcl, torch, tempfile
    >>> from mmcl.train import Trainer, TrainConfig
    >>> pairs = [(torch.randn(3, 32, 32), mmcl.tokenize(f"item {i}")[0]) for i in range(8)]
    >>> config = TrainConfig(steps=2, batch_size=4, progress=False, tensorboard=False,
    ...                      output_dir=tempfile.mkdtemp())
    >>> result = Trainer(mmcl.create_model("tiny-vit"), pairs, config).fit()
    >>> result.steps
    2
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: Dataset,
        config: TrainConfig,
        collate_fn: Callable | None = None,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        plugins: Sequence[TrainingPlugin] = (),
        objective: Callable | None = None,
    ):
        self.streaming = isinstance(train_data, IterableDataset)
        if self.streaming:
            # A stream (webdataset shards) batches itself and knows its own position.
            if config.steps is None:
                raise ValueError("streaming data has no known length: set the run's `steps`")
            if getattr(train_data, "batch_size", None) != config.batch_size:
                raise ValueError(
                    f"the stream's batch_size ({getattr(train_data, 'batch_size', None)}) must "
                    f"equal the run's batch_size ({config.batch_size})"
                )
        elif len(train_data) == 0:
            raise ValueError("the training data set is empty")
        self.objective = objective or default_objective(
            config.loss, config.albef_queue_size, config.albef_momentum
        )
        if config.grad_cache_chunk and not isinstance(self.objective, ContrastiveObjective):
            raise ValueError("gradient caching applies to the contrastive objective only")
        plugins = check_plugins(plugins)
        if config.grad_cache_chunk and any(adds_losses(p) for p in plugins):
            raise ValueError("gradient caching cannot be combined with plugins that add losses")
        if config.grad_cache_chunk and config.accumulation_steps > 1:
            raise ValueError(
                "gradient caching replaces accumulation (it already gives the exact large-batch "
                "gradient): set accumulation_steps=1 with grad_cache_chunk"
            )
        self.config = config
        self.model = model
        self.train_data = train_data
        self.collate_fn = collate_fn or default_collate
        self.evaluate = evaluate
        self.plugins = plugins
        self.info = distributed.init_from_env()
        # Before any work: a fresh run never mixes with another run in its folder.
        self.resume_path = resume_checkpoint(config.resume, config.output_dir)
        self.step = 0
        self.epoch = 0
        self.items_consumed = 0  # of this rank's share of the current epoch
        self.skipped = 0
        self.frozen_reference = None  # where the frozen weights are, when kept out of checkpoints
        if not self.streaming:
            _ = self.steps_per_epoch  # too few items for one step: say so, never loop forever

    # --- set-up --------------------------------------------------------------------------------

    @property
    def steps_per_epoch(self) -> int:
        if self.streaming:
            raise ValueError("a stream's epoch length is unknown")
        per_rank = len(self.train_data) // self.info.world_size
        steps = per_rank // (self.config.batch_size * self.config.accumulation_steps)
        if steps < 1:
            raise ValueError(
                f"{len(self.train_data)} training items are too few for one step of "
                f"{self.config.batch_size} x {self.config.accumulation_steps} accumulation x "
                f"{self.info.world_size} rank(s)"
            )
        return steps

    @property
    def total_steps(self) -> int:
        return self.config.steps or self.config.epochs * self.steps_per_epoch

    @property
    def warmup_steps(self) -> int:
        # A recipe shortened with --steps for a quick look keeps a tenth of the run as warm-up.
        warmup = self.config.warmup_steps
        return warmup if warmup <= self.total_steps else self.total_steps // 10

    def schedule(self) -> dict[str, Any]:
        config = self.config
        return {
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "lr": config.lr,
            "global_batch_size": config.batch_size
            * config.accumulation_steps
            * self.info.world_size,
            "accumulation_steps": config.accumulation_steps,
        }

    def _setup(self) -> None:
        config = self.config
        torch.manual_seed(config.seed)
        model = self.model.to(self.info.device)
        if config.lock_image:
            freeze(model.visual, config.lock_image_unlocked_groups)
        if config.lock_text:
            freeze(model.text, config.lock_text_unlocked_groups)
        if config.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if config.warmup_steps > self.total_steps:
            warnings.warn(
                f"warmup_steps {config.warmup_steps} exceeds the run's {self.total_steps} steps; "
                f"warming up over {self.warmup_steps} steps instead",
                stacklevel=2,
            )
        self.optimizer = build_optimizer(
            model, config.lr, config.weight_decay, kind=config.optimizer, momentum=config.momentum
        )
        self.scheduler = build_schedule(self.optimizer, config, self.total_steps, self.warmup_steps)
        # fp16's narrow range needs loss scaling; bf16 and fp32 do not. (fp16 autocast also runs
        # on CPU, where it is slow unless the CPU has AMX-FP16: prefer bf16 there.)
        self.scaler = torch.amp.GradScaler(
            self.info.device.type, enabled=config.precision == "fp16"
        )
        if hasattr(self.objective, "check"):
            self.objective.check(model)
        if hasattr(self.objective, "set_epoch_steps"):  # ALBEF ramps alpha over epoch 1
            epoch = self.total_steps if self.streaming else self.steps_per_epoch
            self.objective.set_epoch_steps(epoch * config.accumulation_steps)
        self.ddp_model = model
        # Gradient caching calls the towers directly and averages gradients itself.
        if self.info.world_size > 1 and not config.grad_cache_chunk:
            device_ids = [self.info.device] if self.info.device.type == "cuda" else None
            # Plugins whose parameters sit out some steps (e.g. top-k routed experts) say so.
            unused = any(p.ddp_find_unused_parameters for p in self.plugins)
            self.ddp_model = DistributedDataParallel(
                model, device_ids=device_ids, find_unused_parameters=unused
            )
        if not self.streaming:
            self.sampler = EpochSampler(
                len(self.train_data),
                config.seed,
                config.shuffle,
                self.info.rank,
                self.info.world_size,
            )
        if self.resume_path is not None:
            restore_trainer_state(self, self.resume_path)
        elif not config.checkpoint_frozen and self.info.is_main:
            self.frozen_reference = write_frozen_weights(model, config.output_dir)
        self.log = (
            RunLog(config.output_dir, self.step if self.resume_path else None, config.tensorboard)
            if self.info.is_main
            else None
        )

    # --- checkpoints ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return capture_trainer_state(self)

    def save_checkpoint(self) -> Path | None:
        path = None
        if self.info.is_main:
            folder = self.config.checkpoint_dir
            path = save_training_state(checkpoint_path(folder, self.step), self.state_dict())
            prune_checkpoints(folder, self.config.keep_checkpoints)
        if distributed.is_distributed():
            torch.distributed.barrier()
        return path

    # --- the loop ------------------------------------------------------------------------------

    def fit(self) -> FitResult:
        self._setup()
        config = self.config
        start_time, last_loss, checkpoint = time.perf_counter(), float("nan"), None
        bar = progress(
            total=self.total_steps,
            initial=self.step,
            desc="training",
            unit="step",
            disable=not (config.progress and self.info.is_main),
            dynamic_ncols=True,
            mininterval=1.0,
        )
        try:
            while self.step < self.total_steps:
                for batches in self._epoch_steps():
                    step_start = time.perf_counter()
                    loss, terms, samples = self._optimizer_step(batches)
                    last_loss = loss
                    self.step += 1
                    self.items_consumed += config.batch_size * config.accumulation_steps
                    if self.streaming:
                        for batch in batches:
                            self.train_data.advance(len(batch[0]) + batch[2])
                    rate = samples * self.info.world_size / (time.perf_counter() - step_start)
                    bar.set_postfix(loss=f"{loss:.4f}", samples_per_s=f"{rate:.0f}")
                    bar.update(1)
                    if self.log and (self.step % config.log_every == 0 or self.step == 1):
                        self.log.log(
                            self.step,
                            "train",
                            {
                                "loss": loss,
                                **terms,
                                "lr": self.scheduler.get_last_lr()[0],
                                **self._logit_scale(),
                                "samples_per_s": rate,
                                "epoch": self.epoch,
                                "skipped": self.skipped,
                            },
                        )
                    done = self.step >= self.total_steps
                    if config.eval_every and (self.step % config.eval_every == 0) and not done:
                        self._evaluate()
                    if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                        checkpoint = self.save_checkpoint()
                    if done:
                        break
                else:
                    self.epoch, self.items_consumed = self.epoch + 1, 0
            metrics = self._evaluate()
            if not config.checkpoint_every or self.step % config.checkpoint_every:
                checkpoint = self.save_checkpoint()
            if self.info.is_main and self.frozen_reference is not None:
                path = Path(config.output_dir) / MODEL_FILE
                save_trainable_safetensors(self.model, path, self.frozen_reference)
            elif self.info.is_main:
                save_safetensors(self.model, Path(config.output_dir) / MODEL_FILE)
                if getattr(self.model, "tokenizer", None) is not None:  # a self-contained folder
                    self.model.tokenizer.save(config.output_dir)
        finally:
            bar.close()
            if self.log:
                self.log.close()
        return FitResult(
            self.step,
            last_loss,
            self.skipped,
            time.perf_counter() - start_time,
            checkpoint,
            metrics,
        )

    def _epoch_steps(self):
        """Yields lists of `accumulation_steps` micro-batches, resuming mid-epoch."""
        config = self.config
        if self.streaming:
            self.train_data.set_epoch(self.epoch)
            loader = self.train_data.loader()
        else:
            self.sampler.set_epoch(self.epoch, start=self.items_consumed)
            loader = DataLoader(
                IndexedItems(self.train_data, config.seed),
                batch_size=config.batch_size,
                sampler=self.sampler,
                num_workers=config.workers,
                collate_fn=self._collate,
                drop_last=True,
                persistent_workers=False,
            )
        pending, batches = [], iter(loader)
        while True:
            batch = next(batches, None)
            if self.streaming and distributed.is_distributed():
                # Ranks' shards may hold different numbers of samples: the epoch ends for all
                # as soon as one rank runs dry, so no rank waits forever in a collective.
                alive = torch.tensor([batch is not None], dtype=torch.int32)
                torch.distributed.all_reduce(alive, op=torch.distributed.ReduceOp.MIN)
                batch = batch if alive.item() else None
            if batch is None:
                return
            pending.append(batch)
            if len(pending) == config.accumulation_steps:
                yield pending
                pending = []

    def _collate(self, items: list) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor | None]:
        # (images, tokens, number of unreadable items dropped from this batch, the kept items'
        # indices in the data set); items arrive as (index, item) pairs from `IndexedItems`.
        indices = torch.tensor([index for index, item in items if item is not None])
        batch = self.collate_fn([item for _, item in items])
        images, tokens = batch[0], batch[1]
        dropped = batch[2] if len(batch) == 3 else 0
        if len(indices) != len(images):  # a collate that drops items some other way
            indices = None
        return images, tokens, dropped, indices

    def _autocast(self):
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(self.info.device.type, dtype=dtype)

    def _optimizer_step(self, batches: list) -> tuple[float, dict[str, float], int]:
        config = self.config
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        total, term_sums, samples = 0.0, {}, 0
        for index, (images, tokens, dropped, *rest) in enumerate(batches):  # tokens: or labels
            indices = rest[0] if rest else None  # streams know no item indices
            self.skipped += dropped
            samples += len(images)
            images = images.to(self.info.device, non_blocking=True)
            tokens = tokens.to(self.info.device, non_blocking=True)
            if config.grad_cache_chunk:
                with self._autocast():
                    loss = grad_cache_step(
                        self.model, images, tokens, self._feature_loss, config.grad_cache_chunk
                    )
                total += float(loss)
                continue
            last = index == len(batches) - 1
            sync = (
                contextlib.nullcontext()
                if last or self.ddp_model is self.model
                else (self.ddp_model.no_sync())
            )
            with sync:
                with self._autocast():
                    terms = self._loss_terms(images, tokens, (images, tokens, indices))
                    loss = sum(terms.values())
                self.scaler.scale(loss / len(batches)).backward()
            total += loss.item() / len(batches)
            for key, value in terms.items():
                term_sums[key] = term_sums.get(key, 0.0) + value.item() / len(batches)
        if config.grad_cache_chunk:
            distributed.average_gradients(self.model.parameters())
        if distributed.is_distributed():  # log the global batch's loss, not this rank's share
            reduced = torch.tensor([total, *term_sums.values()], device=self.info.device)
            torch.distributed.all_reduce(reduced)  # SUM: gloo has no AVG
            reduced /= self.info.world_size
            total = reduced[0].item()
            term_sums = dict(zip(term_sums, reduced[1:].tolist(), strict=True))
        if config.grad_clip_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if getattr(self.model, "logit_scale", None) is not None:  # plain classifiers have none
            with torch.no_grad():
                self.model.logit_scale.clamp_(0, math.log(LOGIT_SCALE_MAX))  # the stored log
        for plugin in self.plugins:
            plugin.after_optimizer_step(self)
        return total, (term_sums if len(term_sums) > 1 else {}), samples

    def _logit_scale(self) -> dict[str, float]:
        scale = getattr(self.model, "logit_scale", None)
        return {} if scale is None else {"logit_scale": scale.detach().exp().item()}

    def _feature_loss(self, image_features, text_features, logit_scale):
        return self.objective.feature_loss(self.model, image_features, text_features, logit_scale)

    def _loss_terms(self, images, targets, batch) -> dict[str, torch.Tensor]:
        if len(images) == 0:  # every item unreadable: a zero loss keeps DDP ranks in step
            zero = sum(p.sum() * 0 for p in self.model.parameters() if p.requires_grad)
            return {"empty batch": zero}
        terms, outputs = self.objective(self.ddp_model, images, targets)
        for plugin in self.plugins:
            terms.update(plugin.extra_losses(self.model, batch, outputs))
        return terms

    def _evaluate(self) -> dict[str, float]:
        if self.evaluate is None or not self.info.is_main:
            if distributed.is_distributed():
                torch.distributed.barrier()
            return {}
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad(), self._autocast():
            metrics = self.evaluate(self.model)
        self.model.train(was_training)
        if self.log:
            self.log.log(self.step, "eval", metrics)
        if distributed.is_distributed():
            torch.distributed.barrier()
        return metrics
