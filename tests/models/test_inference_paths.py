"""The fast inference path (bf16 models without gradients, `mmcl.nn.inference`) against the
reference computations: open_clip in float32 on the same weights, and mmcl's own plain path."""

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
from conftest import max_abs_diff
from mmcl.io.checkpoints.openai import from_openai_layout
from mmcl.models import CLIP, CLIPConfig, get_model_config
from mmcl.nn import inference
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


def test_patch_embedding_matmul_equals_the_convolution_even_with_leftover_pixels():
    _, model = twins("tiny-vit")
    images = torch.randn(2, 3, 35, 37)  # 4x4 whole 8-pixel patches and a few pixels more
    with torch.no_grad():
        convolved = model.visual.conv1(images).flatten(2).transpose(1, 2)
        assert max_abs_diff(model.visual.embed_patches(images), convolved) < 1e-5


# --- bf16: the fast path stays close to float32 ------------------------------------------------


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
def test_bf16_fast_path_cosine_to_open_clip_fp32(name, overrides):
    reference, model = twins(name, **overrides)
    fast = copy.deepcopy(model).to(torch.bfloat16)
    images, tokens = inputs(model.image_size, 4)
    with torch.inference_mode():
        image_reference = reference.encode_image(images)
        text_reference = reference.encode_text(tokens)
        image_features = fast.encode_image(images)  # float32 images into a bf16 model
        text_features = fast.encode_text(tokens)
        with inference.reference_mode():
            image_plain = fast.encode_image(images)
            text_plain = fast.encode_text(tokens)
    assert image_features.dtype == text_features.dtype == torch.bfloat16
    assert min_cosine(image_features, image_reference) >= 0.999
    assert min_cosine(text_features, text_reference) >= 0.999
    # The shortcuts change only bf16 rounding, not the function.
    assert min_cosine(image_features, image_plain) >= 0.9999
    assert min_cosine(text_features, text_plain) >= 0.9999


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_bf16_model_from_create_model_accepts_float32_and_channels_last_images(name):
    model = mmcl.create_model(name, precision="bf16")
    size = model.image_size
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        plain = model.encode_image(images, normalize=True)
        channels_last = model.encode_image(images.to(memory_format=torch.channels_last))
    assert plain.dtype == torch.bfloat16
    assert torch.allclose(plain.float().norm(dim=-1), torch.ones(2), atol=1e-2)
    assert min_cosine(channels_last, plain) > 0.9999


def test_bf16_prompts_and_prefixes_take_the_fast_path_correctly():
    # L2P's visual prompts and CoOp's text prefix move tokens; the pooled token must follow.
    model = mmcl.create_model("tiny-vit", precision="bf16")
    images, tokens = inputs(model.image_size)
    prompts = torch.randn(2, 128, dtype=torch.bfloat16)
    prefix = torch.randn(3, 128, dtype=torch.bfloat16)
    with torch.no_grad():
        fast = model.visual(images, prompt_embeddings=prompts), model.text(tokens, prefix)
        with inference.reference_mode():
            plain = model.visual(images, prompt_embeddings=prompts), model.text(tokens, prefix)
    assert min_cosine(fast[0], plain[0]) > 0.9999
    assert min_cosine(fast[1], plain[1]) > 0.9999


# --- the caches and the fallbacks ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_cached_packed_and_folded_weights_follow_weight_updates(name):
    model = mmcl.create_model(name, precision="bf16")
    randomise_batchnorms(model)
    images, tokens = inputs(model.image_size)
    other = mmcl.create_model(name, precision="bf16")
    randomise_batchnorms(other)
    with torch.no_grad():
        for module in other.modules():  # other statistics too, so the folds must be redone
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_var.mul_(2.0)
        model.encode_image(images), model.encode_text(tokens)  # fills the caches
        model.load_state_dict(other.state_dict())  # in place: same tensors, new values
        updated = model.encode_image(images), model.encode_text(tokens)
        expected = other.encode_image(images), other.encode_text(tokens)
    assert torch.equal(updated[0], expected[0]) and torch.equal(updated[1], expected[1])


def test_model_made_under_inference_mode_runs_the_fast_path():
    # Inference tensors have no version counter; the caches must not rely on one.
    with torch.inference_mode():
        model = mmcl.create_model("tiny-rn", precision="bf16")
        images, tokens = inputs(model.image_size)
        fast = model.encode_image(images), model.encode_text(tokens)
        with inference.reference_mode():
            plain = model.encode_image(images), model.encode_text(tokens)
    assert min_cosine(fast[0], plain[0]) > 0.9999 and min_cosine(fast[1], plain[1]) > 0.9999


def test_caches_leave_state_dict_and_deepcopy_alone():
    model = mmcl.create_model("tiny-rn", precision="bf16")
    keys = list(model.state_dict())
    images, tokens = inputs(model.image_size)
    with torch.no_grad():
        first = model.encode_image(images)
        model.encode_text(tokens)
    assert list(model.state_dict()) == keys
    copied = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(copied.encode_image(images), first)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_bf16_without_onednn_fused_ops_uses_plain_ops(name, monkeypatch):
    # e.g. a CPU without bf16 support or a build without these internal ops
    model = mmcl.create_model(name, precision="bf16")
    randomise_batchnorms(model)
    images, tokens = inputs(model.image_size)
    with torch.no_grad():
        fused = model.encode_image(images), model.encode_text(tokens)
        monkeypatch.setattr(inference, "onednn_bf16", lambda: False)
        plain = model.encode_image(images), model.encode_text(tokens)
    assert min_cosine(fused[0], plain[0]) > 0.9999 and min_cosine(fused[1], plain[1]) > 0.9999


def test_bf16_with_gradients_falls_back_to_autograd_ops():
    model = mmcl.create_model("tiny-vit", precision="bf16").requires_grad_(True)
    images, tokens = inputs(model.image_size)
    image_features, text_features, scale = model(images, tokens)
    (scale * image_features @ text_features.T).float().sum().backward()
    assert model.visual.transformer.resblocks[-1].mlp.c_fc.weight.grad is not None
    assert model.text.transformer.resblocks[0].attn.in_proj_weight.grad is not None


def test_hooks_see_every_token_and_replaced_linears_are_called():
    model = mmcl.create_model("tiny-vit", precision="bf16")
    images, tokens = inputs(model.image_size)
    seen = []
    last = model.visual.transformer.resblocks[-1]
    last.mlp.register_forward_hook(lambda module, args, output: seen.append(args[0].shape))
    calls = []
    linear = model.text.transformer.resblocks[0].mlp.c_proj
    linear.register_forward_hook(lambda module, args, output: calls.append(output.shape))
    with torch.no_grad():
        hooked = model.encode_image(images), model.encode_text(tokens)
        with inference.reference_mode():
            plain = model.encode_image(images), model.encode_text(tokens)
    assert seen[0] == (3, 17, 128)  # class token and 16 patches: the hooked block is not pooled
    assert len(calls) == 2
    assert min_cosine(hooked[0], plain[0]) > 0.9999 and min_cosine(hooked[1], plain[1]) > 0.9999


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
    # reference_mode runs every token through it.
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
        with inference.reference_mode():
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
    monkeypatch.setattr(inference, "native_on_cpu", lambda dtype: dtype == torch.float32)
    for precision in ("bf16", "fp16"):
        with pytest.warns(UserWarning, match=f"precision='{precision}'.*'fp32' is likely faster"):
            model = mmcl.create_model("tiny-vit", precision=precision)
        assert next(model.parameters()).dtype == inference.LOW_PRECISION[precision == "fp16"]
    monkeypatch.undo()
    # The check itself (uncached): oneDNN alone says yes to bf16 on any AVX-512 CPU, where it
    # emulates bf16; the CPU's own bf16 instructions decide.
    check = inference.native_on_cpu.__wrapped__
    assert check(torch.float32)
    onednn = inference._onednn_supports("_is_mkldnn_bf16_supported")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not check(torch.bfloat16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert check(torch.bfloat16) == onednn
