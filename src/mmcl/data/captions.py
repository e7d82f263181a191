"""Image-caption pairs on disk for image-text training: caption tables and class folders.

Items are ``(image, tokens)``: the transformed image and ``tokenizer([caption])[0]``, or the
caption string itself when no tokenizer is given. An image that cannot be read (missing,
empty, truncated, not an image) makes its item ``None`` with a warning naming the file;
`collate_pairs` drops those items and reports how many, so one bad JPEG does not end a run:

    loader = DataLoader(dataset, batch_size=256, collate_fn=collate_pairs)
    for images, tokens, dropped in loader:
        ...
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from mmcl.data.datasets import LabelledImages
from mmcl.data.images import class_folders, collate_skipping_none, load_image_or_skip
from mmcl.data.zeroshot import format_prompts
from mmcl.io.text_files import read_text

__all__ = [
    "CaptionedImages",
    "ClassCaptions",
    "ImageTextPairs",
    "class_caption",
    "collate_pairs",
    "read_caption_table",
]

Tokenizer = Callable[[list[str]], torch.Tensor]

# Delimiters the sniffer may pick for tables whose extension says nothing.
_SNIFFED_DELIMITERS = ",\t;|"
_SNIFF_CHARACTERS = 64 * 1024


def collate_pairs(batch: list) -> tuple[torch.Tensor, Any, int]:
    """Collate `(image, tokens)` items into `(images, tokens, dropped)`, dropping `None` items.

    `tokens` is a `(N, context_length)` tensor for tokenized items, or a tuple of N strings for
    raw captions. When every item of the batch was bad, `images` and `tokens` are empty tensors
    and `dropped` is the batch size.
    """
    return collate_skipping_none(batch, empty=(torch.empty(0), torch.empty(0, dtype=torch.long)))


def class_caption(classname: str, templates: Sequence[str], index: int) -> str:
    """The caption of item `index` of a class: template ``index % len(templates)``, filled in.

    Cycling through the templates by index (rather than drawing one at random) gives every
    class an even mix of templates and the same caption for an item in every epoch and worker.

    >>> class_caption("dog", ["a photo of a {}.", "a drawing of a {}."], index=3)
    'a drawing of a dog.'
    """
    if not templates:
        raise ValueError("need at least one caption template, e.g. 'a photo of a {}.'")
    return format_prompts(classname, [templates[index % len(templates)]])[0]


class ImageTextPairs(Dataset):
    """Image files with one caption each; items are ``(image, tokens)``, ``None`` if unreadable.

    The base of `CaptionedImages` and `ClassCaptions`; use it directly for pairs held in memory.

    >>> from torchvision.transforms import ToTensor
    >>> pairs = ImageTextPairs(["cat.jpg"], ["a cat"], ToTensor())
    >>> len(pairs), pairs.captions[0]
    (1, 'a cat')
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        captions: Sequence[str],
        transform: Callable[[Image.Image], Any],
        tokenizer: Tokenizer | None = None,
        skip_bad: bool = True,
    ):
        if len(paths) != len(captions):
            raise ValueError(f"{len(paths)} image paths but {len(captions)} captions")
        self.paths = [Path(p) for p in paths]
        self.captions = list(captions)
        self.transform = transform
        self.tokenizer = tokenizer
        self.skip_bad = skip_bad

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, Any] | None:
        image = load_image_or_skip(self.paths[index], self.skip_bad)
        if image is None:
            return None
        caption = self.captions[index]
        tokens = self.tokenizer([caption])[0] if self.tokenizer is not None else caption
        return self.transform(image), tokens


def read_caption_table(
    table: str | Path,
    image_column: str = "image",
    caption_column: str = "caption",
    image_root: str | Path | None = None,
    delimiter: str | None = None,
) -> tuple[list[Path], list[str]]:
    """Read (image path, caption) rows of a CSV/TSV file with a header row; no image is opened.

    The delimiter is `delimiter` if given, else a tab for ``.tsv``, a comma for ``.csv``, and
    sniffed otherwise. The file is UTF-8, with or without a byte-order mark. Relative image
    paths are resolved against `image_root`, or the table's folder when it is None. Raises
    FileNotFoundError for a missing table, and ValueError naming the file (and the line) for
    text that is not UTF-8, a missing column, an empty file, a row without an image path or
    without a caption field, or a row with more fields than the header (an unquoted delimiter
    inside a caption would otherwise cut the caption short without a word).
    """
    table = Path(table)
    root = Path(image_root) if image_root is not None else table.parent
    text = read_text(table, "caption table")
    if not text.strip():
        raise ValueError(f"{table}: the caption table is empty (expected a header row)")
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=_dialect(table, text, delimiter))
    columns = reader.fieldnames or []
    missing = [name for name in (image_column, caption_column) if name not in columns]
    if missing:
        raise ValueError(
            f"{table}: missing column(s) {missing}; the header has columns {columns} "
            f"(choose them with image_column= and caption_column=)"
        )
    paths, captions = [], []
    for row in reader:
        if None in row:  # DictReader's key for the fields beyond the header's
            raise ValueError(
                f"{table}, line {reader.line_num}: {len(row[None])} more field(s) than the "
                f"header's {len(columns)}; quote fields that contain the delimiter"
            )
        image = (row[image_column] or "").strip()
        if not image:
            raise ValueError(f"{table}, line {reader.line_num}: no image path")
        if row[caption_column] is None:  # DictReader's value for a field the row lacks
            raise ValueError(f"{table}, line {reader.line_num}: no caption field")
        paths.append(root / image)  # an absolute `image` replaces the root
        captions.append(row[caption_column])
    if not paths:
        raise ValueError(f"{table}: the caption table has a header but no rows")
    return paths, captions


def _dialect(table: Path, text: str, delimiter: str | None) -> type[csv.Dialect] | csv.Dialect:
    if delimiter is not None:
        return type("ExplicitDelimiter", (csv.excel,), {"delimiter": delimiter})
    suffix = table.suffix.lower()
    if suffix == ".tsv":
        return csv.excel_tab
    if suffix == ".csv":
        return csv.excel
    try:
        return csv.Sniffer().sniff(text[:_SNIFF_CHARACTERS], delimiters=_SNIFFED_DELIMITERS)
    except csv.Error:
        raise ValueError(
            f"{table}: cannot tell the delimiter; name the file .csv or .tsv or pass delimiter="
        ) from None


class CaptionedImages(ImageTextPairs):
    """Image-caption pairs listed in a CSV or TSV file with a header row.

    Each row is one sample, so an image with several captions is listed on several rows (one
    per caption) and appears once per caption in an epoch. Image paths may be absolute or
    relative to `image_root` (default: the table's folder). The table is read and checked in
    the constructor, so a wrong column name fails before training starts; images are read
    lazily, so a missing or corrupt image is only found when its item is loaded (then skipped
    with a warning, or raised when ``skip_bad=False``).

    >>> from mmcl.io.tokenizer import tokenize
    >>> from mmcl.io.transforms import image_transform
    >>> data = CaptionedImages("train.tsv", image_transform(224, is_train=True), tokenize)
    ... # doctest: +SKIP
    >>> image, tokens = data[0]  # (3, 224, 224) float tensor, (77,) LongTensor  # doctest: +SKIP
    """

    def __init__(
        self,
        table: str | Path,
        transform: Callable[[Image.Image], Any],
        tokenizer: Tokenizer | None = None,
        image_column: str = "image",
        caption_column: str = "caption",
        image_root: str | Path | None = None,
        delimiter: str | None = None,
        skip_bad: bool = True,
    ):
        paths, captions = read_caption_table(
            table, image_column, caption_column, image_root, delimiter
        )
        super().__init__(paths, captions, transform, tokenizer, skip_bad)
        self.table = Path(table)


class ClassCaptions(ImageTextPairs):
    """A class-folder image set (``root/<class>/<image>``) captioned from templates.

    Item ``i`` of class ``c`` is captioned ``class_caption(classnames[c], templates, i)``:
    templates are used in turn by item index, so captions are deterministic and the same in
    every epoch. `classnames` renames the folders: a list in the folders' sorted order, or a
    mapping from folder name to class name; by default the folder names are the class names.

    >>> from mmcl.data.zeroshot import load_zero_shot_metadata
    >>> meta = load_zero_shot_metadata("cifar10")
    >>> data = ClassCaptions("cifar10/train", transform, templates=meta.templates)
    ... # doctest: +SKIP
    >>> data.captions[0], data.labels[0]  # doctest: +SKIP
    ('a photo of a airplane.', 0)
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], Any],
        tokenizer: Tokenizer | None = None,
        templates: Sequence[str] = ("a photo of a {}.",),
        classnames: Sequence[str] | Mapping[str, str] | None = None,
        skip_bad: bool = True,
    ):
        paths, labels, folders = class_folders(root)
        self.classnames = _rename_classes(folders, classnames)
        self.labels = labels
        self.templates = list(templates)
        captions = [
            class_caption(self.classnames[label], self.templates, index)
            for index, label in enumerate(labels)
        ]
        super().__init__(paths, captions, transform, tokenizer, skip_bad)


def _rename_classes(
    folders: list[str], classnames: Sequence[str] | Mapping[str, str] | None
) -> list[str]:
    if classnames is None:
        return list(folders)
    if isinstance(classnames, Mapping):
        unnamed = [folder for folder in folders if folder not in classnames]
        if unnamed:
            raise ValueError(f"classnames has no entry for the class folder(s) {unnamed}")
        return [classnames[folder] for folder in folders]
    if isinstance(classnames, str) or len(classnames) != len(folders):
        raise ValueError(
            f"{len(folders)} class folders but {len(classnames)} classnames; give one name per "
            f"folder in sorted folder order, or a mapping folder -> name"
        )
    return list(classnames)


class DatasetCaptions(Dataset):
    """A data set by name (`mmcl.data.datasets.find_dataset`: image folders or torchvision's
    files) captioned from templates as `ClassCaptions` captions its folders.

    >>> from mmcl.data.datasets import find_dataset
    >>> data = DatasetCaptions(find_dataset("cifar10", "train"), transform)  # doctest: +SKIP
    """

    def __init__(
        self,
        images: LabelledImages,
        transform: Callable[[Image.Image], Any],
        tokenizer: Tokenizer | None = None,
        templates: Sequence[str] = ("a photo of a {}.",),
    ):
        self.classnames = [name.replace("_", " ") for name in images.classnames]
        self.labels = list(images.labels)
        self.templates = list(templates)
        self.images = images.subset(range(len(self.labels)), transform)
        self.captions = [
            class_caption(self.classnames[label], self.templates, index)
            for index, label in enumerate(self.labels)
        ]
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, _ = self.images[index]
        caption = self.captions[index]
        return image, self.tokenizer([caption])[0] if self.tokenizer is not None else caption
