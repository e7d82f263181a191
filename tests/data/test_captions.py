"""Caption tables (CSV/TSV) and class folders as image-caption datasets, with bad-file skipping."""

from __future__ import annotations

import doctest
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor

from mmcl.data import captions as captions_module
from mmcl.data import images as images_module
from mmcl.data.captions import CaptionedImages, ClassCaptions, class_caption, collate_pairs
from mmcl.io.tokenizer import tokenize


def save_image(path: Path, colour: tuple[int, int, int] = (200, 30, 30), size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def write_table(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_rows_become_samples_with_paths_relative_to_the_table(tmp_path: Path) -> None:
    save_image(tmp_path / "a.png", (255, 0, 0))
    save_image(tmp_path / "sub" / "b.jpg", (0, 0, 255), size=10)
    table = write_table(
        tmp_path / "pairs.csv",
        'image,caption\na.png,a red square\nsub/b.jpg,"a blue square, larger"\n',
    )
    data = CaptionedImages(table, ToTensor())
    assert len(data) == 2
    assert data.paths == [tmp_path / "a.png", tmp_path / "sub" / "b.jpg"]
    image, caption = data[1]
    assert caption == "a blue square, larger"
    assert image.shape == (3, 10, 10)
    assert image[2].min() > 0.9 and image[0].max() < 0.1  # blue, read from the right file


def test_tsv_with_custom_columns_image_root_and_tokenizer(tmp_path: Path) -> None:
    images = tmp_path / "images"
    save_image(images / "x.png")
    # The caption holds a comma and a quote: only the tab separates columns.
    (tmp_path / "meta").mkdir()
    table = write_table(
        tmp_path / "meta" / "pairs.tsv", 'id\tfile\ttext\n7\tx.png\ta cat, "sitting"\n'
    )
    data = CaptionedImages(
        table,
        ToTensor(),
        tokenizer=tokenize,
        image_column="file",
        caption_column="text",
        image_root=images,
    )
    image, tokens = data[0]
    assert data.captions == ['a cat, "sitting"']
    assert tokens.dtype == torch.long and tokens.shape == (77,)
    assert torch.equal(tokens, tokenize(['a cat, "sitting"'])[0])
    assert image.shape == (3, 8, 8)


def test_several_captions_for_one_image_are_several_samples(tmp_path: Path) -> None:
    save_image(tmp_path / "dog.png")
    table = write_table(
        tmp_path / "pairs.csv",
        "image,caption\ndog.png,a dog\ndog.png,a small dog\ndog.png,a photo of a pet\n",
    )
    data = CaptionedImages(table, ToTensor())
    items = [data[i] for i in range(len(data))]
    assert [caption for _, caption in items] == ["a dog", "a small dog", "a photo of a pet"]
    assert all(torch.equal(items[0][0], image) for image, _ in items)


def test_delimiter_is_sniffed_for_other_extensions_and_a_bom_is_ignored(tmp_path: Path) -> None:
    save_image(tmp_path / "a.png")
    table = write_table(tmp_path / "pairs.txt", '\ufeffimage;caption\na.png;"semi; colon"\n')
    assert CaptionedImages(table, ToTensor(), delimiter=";").captions == ["semi; colon"]
    sniffed = write_table(tmp_path / "sniffed.txt", "\ufeffimage|caption\na.png|piped\n")
    assert CaptionedImages(sniffed, ToTensor()).captions == ["piped"]


def test_missing_column_fails_in_the_constructor_before_any_image_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_reading(path):
        raise AssertionError(f"read {path} before checking the columns")

    monkeypatch.setattr(images_module, "load_image", no_reading)
    table = write_table(tmp_path / "pairs.csv", "filepath,title\na.png,a cat\n")
    with pytest.raises(ValueError) as error:
        CaptionedImages(table, ToTensor())
    message = str(error.value)
    assert "pairs.csv" in message
    assert "'image'" in message and "'caption'" in message  # the missing columns
    assert "['filepath', 'title']" in message  # the columns found


@pytest.mark.parametrize(
    ("text", "reason"), [("", "empty"), ("\n\n", "empty"), ("image,caption\n", "no rows")]
)
def test_empty_table_is_an_error(tmp_path: Path, text: str, reason: str) -> None:
    table = write_table(tmp_path / "pairs.csv", text)
    with pytest.raises(ValueError, match=reason):
        CaptionedImages(table, ToTensor())


def test_bad_images_are_skipped_with_a_warning_and_counted_by_the_collate(tmp_path: Path) -> None:
    for name in ("good1.png", "good2.png", "good3.png"):
        save_image(tmp_path / name)
    save_image(tmp_path / "whole.jpg", size=64)
    jpeg = (tmp_path / "whole.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.png").write_text("not an image")
    rows = ["good1.png", "truncated.jpg", "good2.png", "empty.png", "notes.png", "missing.png"]
    rows += ["good3.png"]
    table = write_table(
        tmp_path / "pairs.csv", "image,caption\n" + "".join(f"{r},caption of {r}\n" for r in rows)
    )
    data = CaptionedImages(table, ToTensor())  # a missing file is only found when read

    with pytest.warns(UserWarning, match="truncated.jpg"):
        assert data[1] is None
    with pytest.warns(UserWarning, match="missing.png.*no such file"):
        assert data[5] is None

    loader = DataLoader(data, batch_size=4, collate_fn=collate_pairs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(loader)
    warned = " ".join(str(w.message) for w in caught)
    for bad in ("truncated.jpg", "empty.png", "notes.png", "missing.png"):
        assert bad in warned
    assert sum(dropped for _, _, dropped in batches) == 4
    assert [caption for _, captions, _ in batches for caption in captions] == [
        "caption of good1.png",
        "caption of good2.png",
        "caption of good3.png",
    ]
    # The second batch (empty, notes, missing, good3) keeps one item.
    assert batches[1][0].shape == (1, 3, 8, 8)

    strict = CaptionedImages(table, ToTensor(), skip_bad=False)
    with pytest.raises(ValueError, match="empty.png"):
        strict[3]


def test_collate_of_a_batch_with_only_bad_items_is_empty() -> None:
    images, tokens, dropped = collate_pairs([None, None])
    assert images.numel() == 0 and tokens.numel() == 0 and dropped == 2
    images, tokens, dropped = collate_pairs([(torch.zeros(3, 2, 2), tokenize(["a"])[0]), None])
    assert images.shape == (1, 3, 2, 2) and tokens.shape == (1, 77) and dropped == 1


def test_class_folders_become_captions_from_templates(tmp_path: Path) -> None:
    for name in ("cat_0.png", "cat_1.png", "cat_2.png"):
        save_image(tmp_path / "cat" / name)
    save_image(tmp_path / "sea_lion" / "x.png")
    templates = ["a photo of a {}.", "a drawing of a {c}."]
    data = ClassCaptions(tmp_path, ToTensor(), templates=templates)
    assert data.classnames == ["cat", "sea_lion"]
    assert data.labels == [0, 0, 0, 1]
    assert data.captions == [
        "a photo of a cat.",
        "a drawing of a cat.",
        "a photo of a cat.",
        "a drawing of a sea_lion.",
    ]
    renamed = ClassCaptions(
        tmp_path, ToTensor(), tokenize, templates, classnames={"cat": "cat", "sea_lion": "sea lion"}
    )
    image, tokens = renamed[3]
    assert image.shape == (3, 8, 8)
    assert torch.equal(tokens, tokenize(["a drawing of a sea lion."])[0])
    with pytest.raises(ValueError, match="2 class folders but 3 classnames"):
        ClassCaptions(tmp_path, ToTensor(), classnames=["a", "b", "c"])
    assert class_caption("dog", templates, 4) == "a photo of a dog."


def test_docstring_examples() -> None:
    assert doctest.testmod(captions_module).failed == 0
