"""A tiny search index for the service tests: a few generated images embedded by a tiny
random model (saved as a checkpoint, so the index records it), and numpy's brute-force
ranking to check the service's answers against."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import mmcl
from mmcl.eval.embed_folder import embed_image_folder
from mmcl.eval.index import build_index
from mmcl.io.checkpoints import save_safetensors

COLOURS = [(220, 30, 30), (30, 200, 40), (20, 40, 230), (240, 230, 20), (250, 250, 250), (0, 0, 0)]


@dataclass
class ServedIndex:
    folder: Path  # the index folder
    model: torch.nn.Module
    checkpoint: Path
    images: list[Path]  # in the order of the features' rows
    features: np.ndarray  # (images, dim): what embed wrote

    def text_ranking(self, text: str) -> tuple[list[str], np.ndarray]:
        """Paths and scores best first, by numpy over the embedded features."""
        return self.text_rankings([text])[0]

    def text_rankings(self, texts: list[str]) -> list[tuple[list[str], np.ndarray]]:
        with torch.inference_mode():
            tokens = mmcl.get_tokenizer(self.model)(texts)
            queries = self.model.encode_text(tokens, normalize=True).numpy()
        return [self._ranking(query) for query in queries]

    def image_ranking(self, row: int) -> tuple[list[str], np.ndarray]:
        return self._ranking(self.features[row])

    def _ranking(self, query: np.ndarray):
        scores = self.features @ query
        order = np.argsort(-scores, kind="stable")
        return [str(self.images[i]) for i in order], scores[order]


_BUILT: dict[str, ServedIndex] = {}


def shared_served_index(tmp_path_factory) -> ServedIndex:
    """One `build_served_index` a test session, for the modules that only read it."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _BUILT:
        _BUILT[key] = build_served_index(tmp_path_factory.mktemp("served"))
    return _BUILT[key]


def build_served_index(folder: Path) -> ServedIndex:
    """Images (32 px, one colour each with a stripe) in folder/photos, embedded and indexed."""
    torch.manual_seed(0)
    model = mmcl.create_model("tiny-vit").eval()
    checkpoint = folder / "tiny.safetensors"
    save_safetensors(model, checkpoint)
    photos = folder / "photos"
    photos.mkdir(parents=True)
    for i, colour in enumerate(COLOURS):
        image = Image.new("RGB", (32, 32), colour)
        image.paste((255 - colour[0], 128, 255 - colour[2]), (0, 4 * i, 32, 4 * i + 4))
        image.save(photos / f"{i}.png")
    images = sorted(photos.glob("*.png"))
    source = {"model": "tiny-vit", "pretrained": str(checkpoint)}
    embed_image_folder(model, images, folder / "photos.npy", source=source, progress=False)
    build_index(folder / "photos.npy", folder / "photos.index")
    features = np.load(folder / "photos.npy")
    return ServedIndex(folder / "photos.index", model, checkpoint, images, features)
