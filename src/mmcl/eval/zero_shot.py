"""Zero-shot classification: class embeddings from prompts, then top-k accuracy over a data set.

The classifier follows OpenAI's prompt ensembling: for each class, every template is filled in
with the class name, the prompts are embedded and L2-normalised, averaged, and the average is
normalised again. Images are then classified by the dot product of their normalised embedding
with each class column.

>>> import torch
>>> from mmcl.models.clip import CLIP
>>> from mmcl.models.config import CLIPConfig
>>> from mmcl.models.registry import get_model_config
>>> from mmcl.io.tokenizer import tokenize
>>> model = CLIP(CLIPConfig.from_dict(get_model_config("tiny-vit"))).eval()
>>> classifier = build_zero_shot_classifier(model, tokenize, ["cat", "dog"], ["a photo of a {}."])
>>> classifier.shape
torch.Size([64, 2])
>>> loader = [(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 1, 0]))]
>>> sorted(evaluate_zero_shot(model, classifier, loader, progress=False))
['count', 'top1', 'top5']
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from mmcl.data.zeroshot import format_prompts
from mmcl.io.progress import progress as progress_bar

__all__ = ["accuracy", "build_zero_shot_classifier", "evaluate_zero_shot"]

Tokenizer = Callable[[list[str]], torch.Tensor]
# A class is named by one string, or by several synonyms whose prompts are all ensembled.
ClassName = str | Sequence[str]


def build_zero_shot_classifier(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    classnames: Sequence[ClassName],
    templates: Sequence[str],
    batch_size: int = 10,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Class embeddings as the columns of a float32 ``(embed_dim, num_classes)`` matrix.

    Args:
        model: anything with ``encode_text(tokens, normalize=...)`` (mmcl or open_clip CLIP).
        tokenizer: maps a list of strings to a ``(N, context_length)`` LongTensor.
        classnames: one entry per class: a name, or a sequence of synonyms for that class.
        templates: prompt templates with a ``{}`` (or ``{c}``) placeholder.
        batch_size: classes whose prompts go through the text encoder together.
        device: where to run; the model's own device when None. The result lives there.
        progress: show a tqdm bar over classes.

    >>> import torch
    >>> class Bag(torch.nn.Module):  # toy "text encoder": one-hot of the first token id
    ...     def encode_text(self, tokens, normalize=False):
    ...         return F.one_hot(tokens[:, 0], 3).float()
    >>> ids = {"a cat": 0, "the cat": 0, "a dog": 1, "the dog": 2}
    >>> tokenize = lambda texts: torch.tensor([[ids[t]] for t in texts])
    >>> build_zero_shot_classifier(Bag(), tokenize, ["cat", "dog"], ["a {}", "the {}"])
    tensor([[1.0000, 0.0000],
            [0.0000, 0.7071],
            [0.0000, 0.7071]])
    """
    classes = _validated_classes(classnames)
    if isinstance(templates, str) or not isinstance(templates, Sequence) or not templates:
        raise ValueError(
            "templates must be a non-empty sequence of strings like 'a photo of a {}.'"
        )
    format_prompts("x", templates)  # fail early, naming the template without a placeholder
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = _model_device(model) if device is None else torch.device(device)

    columns = []
    with _eval_mode(model), torch.no_grad():
        bar = progress_bar(
            total=len(classes), unit="class", desc="zero-shot classifier", disable=not progress
        )
        with bar:
            for start in range(0, len(classes), batch_size):
                batch = classes[start : start + batch_size]
                prompts_per_class = [
                    [prompt for name in names for prompt in format_prompts(name, templates)]
                    for names in batch
                ]
                tokens = tokenizer([p for prompts in prompts_per_class for p in prompts])
                embeddings = model.encode_text(tokens.to(device), normalize=True)
                # Average in float32 even for a half-precision model, then re-normalise.
                embeddings = F.normalize(embeddings.float(), dim=-1)
                sizes = [len(prompts) for prompts in prompts_per_class]
                means = torch.stack([part.mean(dim=0) for part in embeddings.split(sizes)])
                columns.append(F.normalize(means, dim=-1))
                bar.update(len(batch))
    return torch.cat(columns).T.contiguous()


def accuracy(
    logits: torch.Tensor, targets: torch.Tensor, topk: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Fraction of rows whose target class is among the k highest logits, for each k.

    Keys are ``"top{k}"`` for the k asked for; a k above the number of classes counts as the
    number of classes. Ties are broken towards the lower class index, as a stable descending
    sort would: the target is within the top k when fewer than k classes score higher, counting
    equal-scoring classes only when their index is lower.

    >>> logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    >>> accuracy(logits, torch.tensor([1, 1, 0]), topk=(1, 2, 5))
    {'top1': 0.3333333333333333, 'top2': 0.6666666666666666, 'top5': 1.0}
    """
    counts = _correct_counts(logits, targets, _validated_topk(topk))
    return {f"top{k}": hit / len(targets) for k, hit in counts.items()}


def evaluate_zero_shot(
    model: torch.nn.Module,
    classifier: torch.Tensor,
    dataloader: Iterable,
    device: str | torch.device | None = None,
    progress: bool = True,
    topk: Sequence[int] = (1, 5),
) -> dict[str, float | int]:
    """Top-k accuracy of ``classifier`` over batches of ``(images, targets)``.

    Streams the loader, keeping only running counts, so any data set size fits in memory.
    Returns ``{"top1": ..., "top5": ..., "count": number_of_images}`` (keys follow ``topk``).
    See :func:`accuracy` for how ties are broken.
    """
    ks = _validated_topk(topk)
    if classifier.ndim != 2:
        raise ValueError(
            f"classifier must be (embed_dim, num_classes), got shape {tuple(classifier.shape)}"
        )
    device = _model_device(model) if device is None else torch.device(device)
    weights = classifier.to(device=device, dtype=torch.float32)

    hits = dict.fromkeys(ks, 0)
    count = 0
    with _eval_mode(model), torch.no_grad():
        for images, targets in progress_bar(
            _image_batches(dataloader), desc="zero-shot eval", unit="batch", disable=not progress
        ):
            features = model.encode_image(images.to(device), normalize=True).float()
            if features.shape[-1] != weights.shape[0]:
                raise ValueError(
                    f"image features have {features.shape[-1]} dims but the classifier expects "
                    f"{weights.shape[0]}: was it built with a different model?"
                )
            batch_hits = _correct_counts(features @ weights, targets.to(device), ks)
            for k in ks:
                hits[k] += batch_hits[k]
            count += len(targets)
    if count == 0:
        raise ValueError("the dataloader yielded no images")
    return {**{f"top{k}": hits[k] / count for k in ks}, "count": count}


def _correct_counts(
    logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...]
) -> dict[int, int]:
    if logits.ndim != 2:
        raise ValueError(f"logits must be (N, num_classes), got shape {tuple(logits.shape)}")
    if targets.ndim != 1 or len(targets) != len(logits):
        raise ValueError(
            f"targets must be ({len(logits)},) to match logits, got shape {tuple(targets.shape)}"
        )
    if len(targets) == 0:
        raise ValueError("accuracy of an empty batch is undefined")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise TypeError(f"targets must be integer class indices, got {targets.dtype}")
    num_classes = logits.shape[1]
    if int(targets.min()) < 0 or int(targets.max()) >= num_classes:
        raise ValueError(
            f"targets must lie in [0, {num_classes}), got values in "
            f"[{int(targets.min())}, {int(targets.max())}]"
        )
    if not torch.isfinite(logits).all():
        raise ValueError("logits contain NaN or infinity")
    targets = targets.long()
    target_score = logits.gather(1, targets[:, None])
    lower_index = torch.arange(num_classes, device=logits.device)[None, :] < targets[:, None]
    rank = (logits > target_score).sum(1) + ((logits == target_score) & lower_index).sum(1)
    return {k: int((rank < k).sum()) for k in ks}


def _validated_topk(topk: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(topk)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"topk must be a non-empty sequence of positive integers, got {topk!r}")
    return ks


def _validated_classes(classnames: Sequence[ClassName]) -> list[tuple[str, ...]]:
    if isinstance(classnames, str) or not isinstance(classnames, Sequence) or not classnames:
        raise ValueError("classnames must be a non-empty sequence of class names")
    classes = []
    for index, entry in enumerate(classnames):
        names = (entry,) if isinstance(entry, str) else tuple(entry)
        if not names or not all(isinstance(name, str) and name.strip() for name in names):
            raise ValueError(
                f"class {index} must be a non-empty name or a non-empty sequence of names, "
                f"got {entry!r}"
            )
        classes.append(names)
    return classes


def _image_batches(dataloader: Iterable) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in dataloader:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError("the dataloader must yield (images, targets) pairs")
        images, targets = batch[0], torch.as_tensor(batch[1])
        yield images, targets


def _model_device(model: torch.nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    # Dropout and similar layers must be off while embedding; give back the caller's mode.
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
