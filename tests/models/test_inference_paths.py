"""Plain and accelerated models (`mmcl.nn.accelerate`) against the reference computations:
open_clip in float32 on the same weights, and open_clip's own bf16 error for bf16 models
(tolerances from bf16 rounding: tests/bf16_error.py)."""

import copy
import json
import subprocess
import sys
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from torch.nn import functional as F

import mmcl
from bf16_error import assert_as_close_as_pytorch_bf16
from conftest import max_abs_diff
from mmcl.io.checkpoints.openai import from_openai_layout
from mmcl.models import CLIP, CLIPConfig, factory, get_model_config
from mmcl.nn import accelerate, cpu_support, fast_linear
from mmcl.nn.transformer import ResidualAttentionBlock

REPO = Path(__file__).resolve().parents[2]
CAPTIONS = [
    "a photo of a cat",
    "",
    "a much longer caption about a red circle above two blue squares on a grey background",
    " ".join(["word"] * 100),  # truncated to the full context: the longest possible text
]


def randomise_batchnorms(model: torch.nn.Module) -> None:
    # CLIP's init zeroes bn3 and leaves the statistics at 0/1: nothing to fold. Make them real.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                count = module.num_features
                module.running_mean.copy_(0.1 * torch.randn(count, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(count, generator=generator))
                module.weight.copy_(0.2 + 0.3 * torch.rand(count, generator=generator))
                module.bias.copy_(0.05 * torch.randn(count, generator=generator))


def twins(name: str, **overrides):
    """open_clip's float32 model and mmcl's copy of it (float32), same weights."""
    config = {**get_model_config(name), **overrides}
    torch.manual_seed(0)
    reference = open_clip.model.CLIP(**config).eval()
    randomise_batchnorms(reference)
    model = CLIP(CLIPConfig.from_dict(config)).eval()
    model.load_state_dict(from_openai_layout(reference.state_dict()))
    return reference, model


def inputs(size: int, count: int = 3):
    images = torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(2))
    return images, mmcl.tokenize(CAPTIONS[:count] if count <= len(CAPTIONS) else CAPTIONS)


def min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float(), b.float()).min())


# --- float32: exactly open_clip's numbers --------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_fp32_matches_open_clip_with_real_batchnorm_statistics_and_long_texts(name):
    reference, model = twins(name)
    images, tokens = inputs(model.image_size, 4)
    with torch.no_grad():
        assert max_abs_diff(model.encode_image(images), reference.encode_image(images)) < 1e-5
        assert max_abs_diff(model.encode_text(tokens), reference.encode_text(tokens)) < 1e-5


def test_fp32_padding_free_text_equals_padded_text_caption_by_caption():
    # Each caption alone is computed up to its own end token; in a batch, up to the longest.
    _, model = twins("tiny-vit")
    tokens = mmcl.tokenize(CAPTIONS)
    with torch.no_grad():
        batched = model.encode_text(tokens)
        for row, caption in enumerate(tokens):
            alone = model.encode_text(caption[None])
            assert max_abs_diff(alone, batched[row : row + 1]) < 1e-5


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_fp32_gives_identical_bits_with_and_without_gradients(name):
    # float32 takes no shortcut whose rounding would depend on the grad mode (the pooled last
    # block is taken in both).
    _, model = twins(name)
    images, tokens = inputs(model.image_size)
    with torch.no_grad():
        plain = model.encode_image(images), model.encode_text(tokens)
    model.requires_grad_(True)
    tracked = model.encode_image(images), model.encode_text(tokens)
    assert torch.equal(plain[0], tracked[0]) and torch.equal(plain[1], tracked[1])


# --- bf16: accelerated models as close to float32 as open_clip's own bf16 ---------------------


def frozen_bf16(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).to(torch.bfloat16).requires_grad_(False)


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("tiny-vit", {}),
        ("tiny-vit", {"quick_gelu": True}),  # fused as silu with rescaled weights
        ("tiny-rn", {}),
        pytest.param("ViT-B-32", {}, marks=pytest.mark.slow),
        pytest.param("RN50", {}, marks=pytest.mark.slow),
    ],
)
def test_bf16_accelerated_model_is_as_close_to_open_clip_fp32_as_open_clips_own_bf16(
    name, overrides
):
    reference, model = twins(name, **overrides)
    reference_bf16 = copy.deepcopy(reference).to(torch.bfloat16)
    plain = frozen_bf16(model)
    fast = accelerate(frozen_bf16(model))
    images, tokens = inputs(model.image_size, 4)
    with torch.inference_mode():
        exact = reference.encode_image(images), reference.encode_text(tokens)
        theirs = (
            reference_bf16.encode_image(images.bfloat16()),
            reference_bf16.encode_text(tokens),
        )
        ours = fast.encode_image(images), fast.encode_text(tokens)  # float32 images in
        ours_plain = plain.encode_image(images), plain.encode_text(tokens)
    assert ours[0].dtype == ours[1].dtype == torch.bfloat16
    for tower in range(2):
        assert_as_close_as_pytorch_bf16(ours[tower], exact[tower], theirs[tower])
        assert_as_close_as_pytorch_bf16(ours_plain[tower], exact[tower], theirs[tower])
        # accelerate changes only bf16 rounding, not the function (the figure)
        assert min_cosine(ours[tower], ours_plain[tower]) >= 0.999


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
@pytest.mark.parametrize("accelerated", [False, True])
def test_bf16_model_accepts_float32_and_channels_last_images(name, accelerated):
    model = mmcl.create_model(name, precision="bf16").requires_grad_(False)
    if accelerated:
        model = accelerate(model)
    size = model.image_size
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        plain = model.encode_image(images, normalize=True)
        channels_last = model.encode_image(images.to(memory_format=torch.channels_last))
    assert plain.dtype == torch.bfloat16
    assert torch.allclose(plain.float().norm(dim=-1), torch.ones(2), atol=1e-2)
    assert min_cosine(channels_last, plain) > 0.999


def test_bf16_prompts_and_prefixes_take_the_accelerated_path_correctly():
    # L2P's visual prompts and CoOp's text prefix move tokens; the pooled token must follow.
    model = mmcl.create_model("tiny-vit", precision="bf16").requires_grad_(False)
    fast = accelerate(copy.deepcopy(model))
    images, tokens = inputs(model.image_size)
    prompts = torch.randn(2, 128, dtype=torch.bfloat16)
    prefix = torch.randn(3, 128, dtype=torch.bfloat16)
    with torch.no_grad():
        ours = fast.visual(images, prompt_embeddings=prompts), fast.text(tokens, prefix)
        plain = model.visual(images, prompt_embeddings=prompts), model.text(tokens, prefix)
    assert min_cosine(ours[0], plain[0]) > 0.999
    assert min_cosine(ours[1], plain[1]) > 0.999


def test_model_made_under_inference_mode_can_be_accelerated():
    # Inference tensors have no version counter; the packed weights must not rely on one.
    with torch.inference_mode():
        model = mmcl.create_model("tiny-rn", precision="bf16")
        randomise_batchnorms(model)
        fast = accelerate(copy.deepcopy(model).requires_grad_(False))
        images, tokens = inputs(model.image_size)
        ours = fast.encode_image(images), fast.encode_text(tokens)
        plain = model.encode_image(images), model.encode_text(tokens)
    assert min_cosine(ours[0], plain[0]) > 0.999 and min_cosine(ours[1], plain[1]) > 0.999


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_bf16_without_onednn_fused_ops_uses_plain_ops(name, monkeypatch):
    # e.g. a CPU without bf16 support or a build without these internal ops: the same inputs
    # through the fused ops and through plain PyTorch ops give the same function
    model = mmcl.create_model(name, precision="bf16").requires_grad_(False)
    randomise_batchnorms(model)
    model = accelerate(model)
    images, tokens = inputs(model.image_size)
    with torch.no_grad():
        fused = model.encode_image(images), model.encode_text(tokens)
        monkeypatch.setattr(fast_linear, "onednn_bf16", lambda: False)
        plain = model.encode_image(images), model.encode_text(tokens)
    assert min_cosine(fused[0], plain[0]) > 0.999 and min_cosine(fused[1], plain[1]) > 0.999


def test_bf16_model_trains_with_autograd_ops():
    model = mmcl.create_model("tiny-vit", precision="bf16").requires_grad_(True)
    images, tokens = inputs(model.image_size)
    image_features, text_features, scale = model(images, tokens)
    (scale * image_features @ text_features.T).float().sum().backward()
    assert model.visual.transformer.resblocks[-1].mlp.c_fc.weight.grad is not None
    assert model.text.transformer.resblocks[0].attn.in_proj_weight.grad is not None


def test_a_hook_on_the_last_block_sees_the_read_token_unless_asked_for_every_token():
    model = mmcl.create_model("tiny-vit", precision="bf16").requires_grad_(False)
    images, _ = inputs(model.image_size)
    seen = []
    last = model.visual.transformer.resblocks[-1]
    last.mlp.register_forward_hook(lambda module, args, output: seen.append(args[0].shape))
    with torch.no_grad():
        pooled = model.encode_image(images)
        model.visual.transformer.pooled_last_block = False
        full = model.encode_image(images)
    assert seen == [(3, 1, 128), (3, 17, 128)]  # the class token; then it and 16 patches
    assert min_cosine(pooled, full) > 0.999


# --- torch.compile and the benchmark --------------------------------------------------------------


@pytest.mark.slow
def test_compiled_towers_match_eager():
    eager = mmcl.create_model("tiny-vit")
    compiled = mmcl.create_model("tiny-vit", compile=True)
    compiled.load_state_dict(eager.state_dict())
    assert list(compiled.state_dict()) == list(eager.state_dict())
    images, tokens = inputs(eager.image_size)
    with torch.no_grad():
        assert max_abs_diff(compiled.encode_image(images), eager.encode_image(images)) < 1e-4
        for count in (3, 2):  # two text lengths: the dynamic-shape graph serves both
            batch = tokens[:count]
            assert max_abs_diff(compiled.encode_text(batch), eager.encode_text(batch)) < 1e-4


@pytest.mark.slow
def test_inference_benchmark_quick_run(tmp_path):
    output = tmp_path / "inference.json"
    command = [sys.executable, str(REPO / "benchmarks" / "inference.py"), "--quick"]
    command += ["--threads", "2", "--image-models", "tiny-vit", "--limit", "16"]
    command += ["--tokenizer-captions", "500", "--json", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "vs open_clip fp32" in result.stdout
    payload = json.loads(output.read_text())
    rows = payload["rows"]
    assert {row["task"] for row in rows} >= {"image", "text", "tokenizer"}
    assert {row["library"] for row in rows} == {"open_clip", "hf", "mmcl", "mmcl streams=2"}
    streamed = {(r["task"], r["setting"]) for r in rows if r["library"] == "mmcl streams=2"}
    assert ("image", "tiny-vit batch 8") in streamed  # batched rows only, embed included
    assert ("image", "tiny-vit batch 1") not in streamed
    if (REPO.parent / "shared" / "data" / "cifar10" / "test").is_dir():
        assert any(task == "embed" for task, _ in streamed)
        # the whole job is judged too, not only the model rows
        targets = [t["target"] for t in payload["targets"]]
        assert "mmcl embed fp32 not slower than open_clip's loop" in targets
    else:  # a checkout without the shared data: the embed rows are skipped, and it says so
        assert "skipping `mmcl embed`" in result.stdout
        assert all(row["task"] != "embed" for row in rows)
    fast = [row for row in rows if row["library"].startswith("mmcl") and row["precision"] == "bf16"]
    assert fast and all(row["cos"] >= 0.999 for row in fast)
    assert payload["peak_gflops"]["bf16"] > 0 and payload["targets"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_quick_gelu_towers_trace_into_one_graph(precision):
    # torch.compile must see through the fast path's checks: no graph breaks in any block of
    # what `compile_towers` compiles (the image tower, the text tower's transformer).
    model = mmcl.create_model("tiny-vit", precision=precision, quick_gelu=True)
    images, _ = inputs(model.image_size)
    states = torch.randn(3, 7, model.text.transformer.width).to(next(model.parameters()).dtype)
    end_tokens = torch.tensor([6, 2, 4])
    torch._dynamo.reset()
    with torch.no_grad():
        assert torch._dynamo.explain(model.visual)(images).graph_break_count == 0
        text = torch._dynamo.explain(model.text.transformer)
        assert text(states, causal=True, output_positions=end_tokens).graph_break_count == 0


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_fp32_last_block_for_the_read_token_alone_gives_the_full_blocks_values_and_gradients(
    name,
):
    # The towers compute only the pooled token in their last block, with gradients too;
    # pooled_last_block=False runs every token through it.
    _, model = twins(name)
    model.requires_grad_(True)
    images, tokens = inputs(model.image_size, 4)

    def features_and_gradients():
        model.zero_grad()
        features = torch.cat([model.encode_image(images), model.encode_text(tokens)], dim=1)
        (features * torch.linspace(-1, 1, features.shape[1])).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return features.detach(), grads

    last_blocks = {model.text.transformer.resblocks[-1]}
    if hasattr(model.visual, "transformer"):
        last_blocks.add(model.visual.transformer.resblocks[-1])
    pooled_calls = []
    block_forward = ResidualAttentionBlock.forward

    def recording_forward(block, x, causal=False, positions=None):
        if block in last_blocks:
            pooled_calls.append(positions is not None)
        return block_forward(block, x, causal=causal, positions=positions)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ResidualAttentionBlock, "forward", recording_forward)
        pooled, pooled_grads = features_and_gradients()
        assert pooled_calls == [True] * len(last_blocks)  # the pooled path was taken
        for transformer in (model.visual, model.text):
            if hasattr(transformer, "transformer"):
                transformer.transformer.pooled_last_block = False
        full, full_grads = features_and_gradients()
        assert pooled_calls[len(last_blocks) :] == [False] * len(last_blocks)
    assert max_abs_diff(pooled, full) < 1e-5
    assert pooled_grads.keys() == full_grads.keys()
    for key, grad in full_grads.items():
        assert max_abs_diff(pooled_grads[key], grad) < 1e-5 * max(1.0, grad.abs().max()), key


def test_low_precision_on_a_cpu_without_its_instructions_warns_that_fp32_is_faster(monkeypatch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32 never warns
        mmcl.create_model("tiny-vit", precision="fp32")
    monkeypatch.setattr(factory, "native_on_cpu", lambda dtype: dtype == torch.float32)
    for precision in ("bf16", "fp16"):
        with pytest.warns(UserWarning, match=f"precision='{precision}'.*'fp32' is likely faster"):
            model = mmcl.create_model("tiny-vit", precision=precision)
        assert (
            next(model.parameters()).dtype
            == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        )
    monkeypatch.undo()
    # The check itself (uncached): oneDNN alone says yes to bf16 on any AVX-512 CPU, where it
    # emulates bf16; the CPU's own bf16 instructions decide.
    check = cpu_support.native_on_cpu.__wrapped__
    assert check(torch.float32)
    onednn = cpu_support.onednn_supports("_is_mkldnn_bf16_supported")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not check(torch.bfloat16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert check(torch.bfloat16) == onednn


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_cli_accelerates_bf16_models_for_its_inference_commands(precision):
    import argparse

    from mmcl.commands import options as cli
    from mmcl.nn import is_accelerated

    args = argparse.Namespace(
        command="embed",
        model="tiny-vit",
        pretrained=None,
        precision=precision,
        device="cpu",
        batch_size=4,
        streams=1,
    )
    model = cli.load_model(args)
    assert is_accelerated(model) == (precision == "bf16")
    assert not any(p.requires_grad for p in model.parameters()) or precision == "fp32"
