"""What only a CUDA GPU can check: `make test-gpu` (never part of `make test`: CI has no GPU).

Every model, trainer, generator and continual method here runs on the GPU and is compared with
an independent reference on the same GPU (open_clip, Hugging Face transformers) or with the
same computation on the CPU. A machine without CUDA fails at collection with that reason; it
does not skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import mmcl  # noqa: E402
from bf16_error import assert_as_close_as_pytorch_bf16  # noqa: E402
from conftest import open_clip_reference  # noqa: E402
from mmcl.io.checkpoints.openai import from_openai_layout  # noqa: E402
from mmcl.models import CLIP, CLIPConfig, get_model_config  # noqa: E402
from mmcl.nn import accelerate  # noqa: E402
from mmcl.train import TrainConfig, Trainer  # noqa: E402
from tiny_captioners import hf_blip  # noqa: E402
from tiny_llava import llava_folder  # noqa: E402
from training_runs import RandomPairs, Stop, StopAfter  # noqa: E402

# MMCL_TEST_DEVICE=cpu runs the same checks on the CPU: a check of this file itself.
CUDA = torch.device(os.environ.get("MMCL_TEST_DEVICE", "cuda"))
if CUDA.type == "cuda" and not torch.cuda.is_available():
    raise RuntimeError("gpu_tests need a CUDA GPU: torch.cuda.is_available() is False")
MMCL = [sys.executable, "-m", "mmcl.cli"]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
CAPTIONS = ["a photo of a cat", "a red circle above two blue squares", "", "dog " * 30]


@pytest.fixture(autouse=True)
def full_float32_matmuls():
    """TF32 would round every float32 product to 10 bits: the references must be float32."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.double().flatten(1), theirs.double().flatten(1)
    return float(((ours - theirs).norm(dim=1) / theirs.norm(dim=1)).max())


def pair(name: str):
    """open_clip's random model and mmcl's copy of its weights, both on the GPU."""
    reference = open_clip_reference(name)
    model = CLIP(CLIPConfig.from_dict(get_model_config(name))).eval()
    model.load_state_dict(from_openai_layout(reference.state_dict()))
    return reference.to(CUDA), model.to(CUDA)


def inputs(size: int):
    torch.manual_seed(1)
    return torch.randn(4, 3, size, size, device=CUDA), mmcl.tokenize(CAPTIONS).to(CUDA)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn", "ViT-B-32", "RN50"])
def test_float32_towers_equal_open_clip_on_the_gpu(name):
    reference, model = pair(name)
    images, tokens = inputs(model.image_size)
    with torch.no_grad():
        # float32 in a different kernel order: a few units of float32 rounding per layer
        assert relative(model.encode_image(images), reference.encode_image(images)) < 1e-5
        assert relative(model.encode_text(tokens), reference.encode_text(tokens)) < 1e-5


@pytest.mark.parametrize("name", ["ViT-B-32", "RN50"])
@pytest.mark.parametrize("accelerated", [False, True])
def test_bf16_towers_are_as_close_to_float32_as_open_clips_own_bf16(name, accelerated):
    reference, model = pair(name)
    images, tokens = inputs(model.image_size)
    fast = mmcl.create_model(name, precision="bf16", device=CUDA)
    fast.load_state_dict(model.state_dict())
    fast.requires_grad_(False)
    if accelerated:
        before = {k: v.clone() for k, v in fast.state_dict().items()}
        accelerate(fast)
        after = fast.state_dict()
        assert after.keys() == before.keys()
        assert all(torch.equal(after[k], before[k]) for k in before)
    reference_bf16 = open_clip_reference(name).to(CUDA, torch.bfloat16)
    reference_bf16.load_state_dict(reference.state_dict())
    with torch.no_grad():
        assert_as_close_as_pytorch_bf16(
            fast.encode_image(images),
            reference.encode_image(images),
            reference_bf16.encode_image(images.bfloat16()),
        )
        assert_as_close_as_pytorch_bf16(
            fast.encode_text(tokens),
            reference.encode_text(tokens),
            reference_bf16.encode_text(tokens),
        )


@pytest.mark.parametrize("name", ["ViT-B-32", "RN50"])
def test_forward_intermediates_equal_open_clips_on_the_gpu(name):
    reference, model = pair(name)
    images, tokens = inputs(model.image_size)
    with torch.no_grad():
        ours = model.forward_intermediates(images, tokens, image_indices=2, text_indices=2)
        theirs = reference.forward_intermediates(images, tokens, image_indices=2, text_indices=2)
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if isinstance(value, torch.Tensor):
            assert relative(ours[key], value) < 1e-5, key
        else:
            assert len(ours[key]) == len(value), key
            for a, b in zip(ours[key], value, strict=True):
                assert relative(a, b) < 1e-5, key


def test_hooks_fire_on_every_weighted_module_in_bf16_on_the_gpu():
    for name in ("tiny-vit", "tiny-rn"):
        model = mmcl.create_model(name, precision="bf16", device=CUDA)
        weighted = {n for n, m in model.named_modules() if getattr(m, "weight", None) is not None}
        seen = set()
        for n, module in model.named_modules():
            if n in weighted:
                module.register_forward_hook(lambda m, i, o, n=n, seen=seen: seen.add(n))
        images, tokens = inputs(model.image_size)
        with torch.no_grad():
            model(images, tokens)
        assert seen == weighted, sorted(weighted - seen)


def train_losses(folder: Path) -> list[float]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "train"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_on_the_gpu_learns_and_resumes_exactly(tmp_path, precision):
    # cuBLAS and the embedding's backward are deterministic only when asked
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)

    def settings(name, **extra):
        return TrainConfig(
            steps=40,
            batch_size=16,
            lr=1e-3,
            warmup_steps=1,
            progress=False,
            tensorboard=False,
            log_every=1,
            precision=precision,
            output_dir=str(tmp_path / name),
            **extra,
        )

    def model(seed):
        torch.manual_seed(seed)
        return mmcl.create_model("tiny-vit")

    try:
        whole = Trainer(model(0), RandomPairs(size=64), settings("whole"))
        whole.fit()
        assert next(whole.model.parameters()).device.type == CUDA.type
        curve = train_losses(tmp_path / "whole")
        assert len(curve) == 40 and sum(curve[-5:]) < 0.7 * sum(curve[:5])
        with pytest.raises(Stop):  # stopped at step 25: its last checkpoint is step 20
            Trainer(
                model(0),
                RandomPairs(size=64),
                settings("cut", checkpoint_every=10),
                plugins=[StopAfter(25)],
            ).fit()
        resumed = settings("cut", checkpoint_every=10, resume="latest")
        Trainer(model(123), RandomPairs(size=64), resumed, plugins=[StopAfter()]).fit()
        assert train_losses(tmp_path / "cut") == curve
    finally:
        torch.use_deterministic_algorithms(False)


RECIPE = """
model:
  name: tiny-vit
data:
  kind: scenes
  size: 512
train:
  steps: 6
  batch_size: 16
  lr: 0.0005
  warmup_steps: 2
  log_every: 1
  tensorboard: false
  progress: false
"""


def test_torchrun_trains_on_the_gpu_with_nccl(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1"]
    for launcher, folder in ((MMCL, "single"), ([*torchrun, "-m", "mmcl.cli"], "torchrun")):
        command = [*launcher, "train", "--config", str(recipe), "--output-dir"]
        result = subprocess.run(
            [*command, str(tmp_path / folder)], env=ENV, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr[-3000:]
    single, ranked = train_losses(tmp_path / "single"), train_losses(tmp_path / "torchrun")
    assert len(single) == len(ranked) == 6
    np.testing.assert_allclose(ranked, single, rtol=1e-3)


def test_embed_on_the_gpu_equals_the_cpu(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        pixels = rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    outputs = {}
    for device in ("cpu", CUDA.type):
        output = tmp_path / f"{device}.npy"
        command = [*MMCL, "embed", "--model", "tiny-vit", "--images", str(folder), "--quiet"]
        result = subprocess.run(
            [*command, "--device", device, "--output", str(output), "--batch-size", "16"],
            env=ENV,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[device] = torch.from_numpy(np.load(output))
    assert outputs[CUDA.type].shape == (40, outputs["cpu"].shape[1])
    assert relative(outputs[CUDA.type], outputs["cpu"]) < 1e-4  # TF32 is the default in embed


@pytest.mark.parametrize("beams", [1, 3])
def test_blip_captions_on_the_gpu_equal_huggingface_generate(tmp_path, beams):
    hf = hf_blip(seed=3)
    hf.save_pretrained(tmp_path / "hf")
    ours = mmcl.load(tmp_path / "hf")[0].to(CUDA)
    hf = hf.to(CUDA)
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32, device=CUDA)
    with torch.no_grad():
        expected = hf.generate(
            pixel_values=images, do_sample=False, num_beams=beams, max_new_tokens=8
        )
    got = ours.generate(images, max_new_tokens=8, beams=beams).tokens
    for row_got, row_expected in zip(got.tolist(), expected.tolist(), strict=True):
        assert [t for t in row_got if t] == [t for t in row_expected if t]


@pytest.mark.parametrize("beams", [1, 3])
def test_llava_tokens_on_the_gpu_equal_huggingface_generate(tmp_path, beams):
    _, hf, words = llava_folder(tmp_path / "llava", tokenizer=False)
    ours, hf = mmcl.load(tmp_path / "llava")[0].to(CUDA), hf.to(CUDA)
    image, pad = words.convert_tokens_to_ids("<image>"), words.pad_token_id
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32, device=CUDA)
    rows = [[pad, pad, 5, *[image] * 4, 6, 7, 8], [9, 10, *[image] * 4, 11, 12, 13, 14]]
    ids = torch.tensor(rows, device=CUDA)
    mask = (ids != pad).long()
    with torch.no_grad():
        expected = hf.generate(
            input_ids=ids,
            pixel_values=pixels,
            attention_mask=mask,
            max_new_tokens=8,
            num_beams=beams,
            do_sample=False,
            eos_token_id=-1,
            pad_token_id=pad,
        )[:, ids.shape[1] :]
        got = ours.generate(ids, pixels, mask, max_new_tokens=8, end_token=-1, beams=beams)
    assert got.tolist() == expected.tolist()


METHODS = "finetune,ewc,lwf,zscl,wise_ft,er,icarl,moe_adapters,coop,l2p,er+lwf"


def test_every_continual_method_runs_on_the_gpu(tmp_path):
    command = [*MMCL, "continual", "--scenario", "scenes-cil", "--model", "tiny-vit"]
    command += ["--train-size", "256", "--test-size", "64", "--steps", "4", "--batch-size", "16"]
    command += ["--quiet", "--output-dir", str(tmp_path), "compare", "--methods", METHODS]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    for method in METHODS.split(","):
        assert method in result.stdout, result.stdout[-3000:]
