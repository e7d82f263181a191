"""mmcl: vision-language foundation models and continual learning in PyTorch.

The common path, importable from here:

>>> import mmcl, torch
>>> model = mmcl.create_model("tiny-vit")          # or load("ViT-B-32.pt") for real weights
>>> preprocess = mmcl.get_preprocess(model)        # PIL image -> normalised tensor
>>> tokens = mmcl.tokenize(["a photo of a cat", "a photo of a dog"])
>>> with torch.no_grad():
...     text_features = model.encode_text(tokens, normalize=True)
>>> text_features.shape
torch.Size([2, 64])
"""

from mmcl.io.tokenizer import Tokenizer, get_tokenizer, tokenize
from mmcl.io.transforms import get_preprocess, image_transform
from mmcl.models import CLIP, available_models, create_model, load

__version__ = "0.1.0"

__all__ = [
    "CLIP",
    "Tokenizer",
    "available_models",
    "create_model",
    "get_preprocess",
    "get_tokenizer",
    "image_transform",
    "load",
    "tokenize",
]
