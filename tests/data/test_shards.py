"""Tar shards: splitting over ranks and workers, deterministic order, exact resume, bad samples."""

from __future__ import annotations

import doctest
import io
import tarfile
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import ToTensor

from mmcl.data import shards as shards_module
from mmcl.data import shards_decode, shards_resume, shards_write
from mmcl.data.shards import (
    ShardStream,
    count_shard_samples,
    image_caption_samples,
    worker_progress,
    write_shards,
)
from mmcl.io.tokenizer import tokenize

# Unequal shard sizes, so that workers and ranks run out at different times and the last
# batch of each worker is partial.
SHARD_SIZES = [5, 3, 4, 2, 6, 3]


def png_bytes(colour: tuple[int, int, int] = (10, 200, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Shards whose samples are captioned "s000", "s001", ... in writing order."""
    folder = tmp_path_factory.mktemp("shards")
    image = png_bytes()
    number = 0
    for index, size in enumerate(SHARD_SIZES):
        samples = [{"png": image, "txt": f"s{number + i:03d}"} for i in range(size)]
        write_shards(samples, folder, samples_per_shard=size, prefix=f"part{index}")
        number += size
    return folder


def shard_urls(folder: Path) -> list[str]:
    return sorted(str(path) for path in folder.glob("*.tar"))


def read_batches(stream: ShardStream, skip_first: int = 0) -> list[tuple[str, ...]]:
    """The captions of every batch of one pass over the stream's loader."""
    return [tuple(captions) for _, captions, _ in stream.loader()][skip_first:]


def make_stream(folder: Path, **options) -> ShardStream:
    options.setdefault("batch_size", 3)
    return ShardStream(shard_urls(folder), ToTensor(), **options)


def test_every_sample_is_read_once_across_two_ranks_and_two_workers(shard_folder: Path) -> None:
    seen: list[str] = []
    for rank in (0, 1):
        stream = make_stream(shard_folder, rank=rank, world_size=2, num_workers=2, seed=3)
        seen += [caption for batch in read_batches(stream) for caption in batch]
    assert sorted(seen) == [f"s{i:03d}" for i in range(sum(SHARD_SIZES))]


def test_the_order_is_fixed_by_the_seed_and_items_are_images_with_tokens(
    shard_folder: Path,
) -> None:
    first = read_batches(make_stream(shard_folder, seed=5, shuffle_buffer=4))
    again = read_batches(make_stream(shard_folder, seed=5, shuffle_buffer=4))
    other = read_batches(make_stream(shard_folder, seed=6, shuffle_buffer=4))
    assert first == again
    assert first != other
    images, tokens, dropped = next(iter(make_stream(shard_folder, tokenizer=tokenize).loader()))
    assert images.shape == (3, 3, 4, 4) and tokens.shape == (3, 77) and dropped == 0


def test_each_epoch_reshuffles_the_shards_deterministically(shard_folder: Path) -> None:
    stream = make_stream(shard_folder, seed=0)
    orders = [stream.epoch_shards(epoch) for epoch in range(4)]
    assert all(sorted(order) == shard_urls(shard_folder) for order in orders)
    assert len({tuple(order) for order in orders}) > 1
    assert make_stream(shard_folder, seed=0).epoch_shards(2) == orders[2]
    assert make_stream(shard_folder, shuffle_shards=False).epoch_shards(2) == shard_urls(
        shard_folder
    )

    stream.set_epoch(1)
    epoch1 = [caption for batch in read_batches(stream) for caption in batch]
    expected = [
        caption
        for url in orders[1]
        for caption in sorted(c for c in all_captions_in(url))  # tar order is writing order
    ]
    assert epoch1 == expected


def all_captions_in(url: str) -> list[str]:
    with tarfile.open(url) as tar:
        return [
            tar.extractfile(member).read().decode()
            for member in tar
            if member.name.endswith(".txt")
        ]


@pytest.mark.parametrize(
    ("num_workers", "shuffle_buffer"), [(0, 0), (2, 0), (2, 5)], ids=["w0", "w2", "w2-buffer"]
)
def test_resuming_continues_at_the_exact_next_sample(
    shard_folder: Path, num_workers: int, shuffle_buffer: int
) -> None:
    options = dict(num_workers=num_workers, shuffle_buffer=shuffle_buffer, seed=1)
    stream = make_stream(shard_folder, **options)
    stream.set_epoch(1)
    full = read_batches(stream)
    sizes = [len(batch) for batch in full]
    if num_workers == 2:  # the epoch has partial batches inside it, not only at the end
        assert any(size < 3 for size in sizes[:-1])
    # Every cut: the start, mid-epoch, after a worker ran out or after a partial batch, the end.
    for cut in range(len(full) + 1):
        resumed = make_stream(shard_folder, **options)
        resumed.resume_from(1, samples_consumed=sum(sizes[:cut]))
        resumed.set_epoch(1)  # keeps the position: a loop may call it unconditionally
        assert full[:cut] + read_batches(resumed) == full, f"cut after {cut} batches"


def test_state_dict_round_trip_and_batch_count_resume(
    shard_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = dict(num_workers=2, seed=2, rank=1, world_size=2)
    stream = make_stream(shard_folder, **options)
    full = read_batches(stream)
    cut = len(full) - 2
    for _, captions, dropped in list(stream.loader())[:cut]:
        stream.advance(len(captions) + dropped)
    state = stream.state_dict()
    assert state["epoch"] == 0 and state["batches_consumed"] == cut

    resumed = make_stream(shard_folder, **options)
    resumed.load_state_dict(state)
    assert full[:cut] + read_batches(resumed) == full
    # One checkpoint for all ranks: the batch count is the same on every rank. Sizes given
    # up front spare counting the tar headers.
    sizes = {f"part{index}-000000.tar": size for index, size in enumerate(SHARD_SIZES)}
    monkeypatch.setattr(shards_module, "count_shard_samples", None)  # workers are forked
    by_batches = make_stream(shard_folder, **options, shard_sizes=sizes)
    by_batches.load_state_dict({**state, "samples_consumed": None, "rank": 0})
    assert full[:cut] + read_batches(by_batches) == full
    with pytest.raises(ValueError, match="rank: saved 1, now 0"):
        make_stream(shard_folder, **{**options, "rank": 0}).load_state_dict(state)

    with pytest.raises(ValueError, match="seed: saved 2, now 9"):
        make_stream(shard_folder, **{**options, "seed": 9}).load_state_dict(state)
    resumed.set_epoch(1)  # a new epoch starts from its beginning
    assert resumed.state_dict()["samples_consumed"] == 0


def test_worker_progress_replays_the_dataloader_round_robin() -> None:
    # Workers with 5, 1 and 4 samples, batches of 2: w0 2, w1 1, w2 2, w0 2, w2 2, w0 1.
    assert worker_progress([5, 1, 4], 2, batches=3) == ([2, 1, 2], 0)
    assert worker_progress([5, 1, 4], 2, samples=9) == ([4, 1, 4], 0)
    assert worker_progress([5, 1, 4], 2, batches=4) == ([4, 1, 2], 1)
    assert worker_progress([5, 1, 4], 2, samples=10) == ([5, 1, 4], 1)
    with pytest.raises(ValueError, match="batch boundary"):
        worker_progress([5, 1, 4], 2, samples=4)
    with pytest.raises(ValueError, match="past the end"):
        worker_progress([5, 1, 4], 2, batches=7)


def test_bad_samples_are_skipped_with_a_warning_naming_shard_and_key(tmp_path: Path) -> None:
    truncated = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated, format="JPEG")
    samples = [
        {"__key__": "good0", "png": png_bytes(), "txt": "fine"},
        {"__key__": "broken", "jpg": truncated.getvalue()[:200], "txt": "cut short"},
        {"__key__": "silent", "png": png_bytes()},
        {"__key__": "blind", "txt": "no picture"},
        {"__key__": "good1", "webp": png_bytes(), "txt": "png bytes named webp decode too"},
    ]
    [shard] = write_shards(samples, tmp_path, samples_per_shard=10)
    stream = ShardStream([shard], ToTensor(), batch_size=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        [(images, captions, dropped)] = list(stream.loader())
    assert dropped == 3 and images.shape == (2, 3, 4, 4)
    assert list(captions) == ["fine", "png bytes named webp decode too"]
    messages = [str(w.message) for w in caught]
    for key in ("broken", "silent", "blind"):
        assert any(str(shard) in m and repr(key) in m for m in messages), key


def test_class_index_samples_are_captioned_from_templates(tmp_path: Path) -> None:
    samples = [{"png": png_bytes(), "cls": label} for label in (0, 1, 1)]
    shards = write_shards(samples, tmp_path, samples_per_shard=2)
    assert [count_shard_samples(str(path)) for path in shards] == [2, 1]
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".tar"]  # no temporary files left

    labels = ShardStream(shards, ToTensor(), shuffle_shards=False)
    assert [label for _, label in labels] == [0, 1, 1]
    captioned = ShardStream(
        shards, ToTensor(), tokenize, shuffle_shards=False, classnames=["cat", "dog"]
    )
    _, tokens = next(iter(captioned))
    assert torch.equal(tokens, tokenize(["a photo of a cat."])[0])


def test_image_caption_samples_convert_files_to_shards(tmp_path: Path) -> None:
    image = tmp_path / "photo.JPEG"
    Image.new("RGB", (4, 4)).save(image, format="JPEG")
    shards = write_shards(image_caption_samples([image], ["a dark photo"]), tmp_path / "out", 10)
    [(decoded, caption)] = list(ShardStream(shards, ToTensor()))
    assert caption == "a dark photo" and decoded.shape == (3, 4, 4)
    with pytest.raises(ValueError, match="must not contain a dot"):
        write_shards([{"__key__": "a.b", "txt": "x"}], tmp_path, 1)


def test_too_few_shards_or_mismatched_workers_are_errors(shard_folder: Path) -> None:
    urls = shard_urls(shard_folder)
    with pytest.raises(ValueError, match="cannot feed 8 ranks"):
        ShardStream(urls, ToTensor(), rank=0, world_size=8)
    with pytest.raises(ValueError, match="each needs at least one shard"):
        ShardStream(urls[:3], ToTensor(), rank=1, world_size=2, num_workers=2)
    mismatched = ShardStream(urls, ToTensor(), batch_size=2, num_workers=2)
    with pytest.raises(ValueError, match="built for num_workers=2"):
        list(iter(mismatched))
    with pytest.raises(ValueError, match="drop_last"):
        mismatched.loader(drop_last=True)


@pytest.mark.parametrize("module", [shards_module, shards_decode, shards_resume, shards_write])
def test_docstring_examples(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
