"""CoCa against open_clip's `CoCa` on the same random weights: features, caption logits,
checkpoints both ways, and greedy captions."""

import doctest
import warnings

import open_clip
import pytest
import torch
from safetensors.torch import load_file

import mmcl
from conftest import max_abs_diff, open_clip_coca, tiny_coca_config
from mmcl.cli import main
from mmcl.io.checkpoints import save_open_clip, save_safetensors
from mmcl.io.checkpoints.coca import infer_coca_config
from mmcl.models import CoCa, CoCaConfig, available_models, get_model_config
from mmcl.models import coca as coca_module
from mmcl.models.factory import HeadsAssumedWarning
from mmcl.train import losses as losses_module

SOT, EOT, PAD = 48, 49, 0  # the tiny vocabulary's start and end (largest id), open_clip's pad


def texts():
    """Padded captions: one with a 0 ("!" in CLIP's vocabulary, open_clip's pad id) inside,
    one filling the context, one short."""
    return torch.tensor(
        [
            [SOT, 5, 9, 0, 12, EOT, 0, 0, 0, 0],
            [SOT, 1, 2, 3, 4, 5, 6, 7, 8, EOT],
            [SOT, 7, EOT, 0, 0, 0, 0, 0, 0, 0],
        ]
    )


def ours_from(reference, config):
    model = CoCa(CoCaConfig.from_dict(config)).eval()
    model.load_state_dict(reference.state_dict())  # strict: every name and shape is open_clip's
    return model


def assert_close(ours, theirs):
    # fp32 rounding relative to the magnitude
    assert max_abs_diff(ours, theirs) <= 1e-5 * max(1.0, float(theirs.abs().max()))


@pytest.mark.parametrize("attentional_pool", [True, False])
@torch.no_grad()
def test_features_and_caption_logits_equal_open_clip(attentional_pool):
    config = tiny_coca_config(attentional_pool)
    reference = open_clip_coca(config)
    model = ours_from(reference, config)
    images = torch.randn(3, 3, 32, 32)
    expected = reference(images, texts())
    out = model(images, texts(), output_dict=True)
    assert_close(out["image_features"], expected["image_features"])
    assert_close(out["text_features"], expected["text_features"])
    # open_clip decodes tokens[:, :-1] against labels tokens[:, 1:]: our first length-1 rows.
    assert_close(out["caption_logits"][:, :-1], expected["logits"])
    assert_close(out["logit_scale"], expected["logit_scale"])
    assert_close(model.encode_image(images, normalize=True), reference.encode_image(images))
    assert_close(model.encode_text(texts(), normalize=True), reference.encode_text(texts()))


@torch.no_grad()
def test_forward_intermediates_equal_open_clip():
    config = tiny_coca_config()
    reference = open_clip_coca(config)
    model = ours_from(reference, config)
    images = torch.randn(2, 3, 32, 32)
    kwargs = dict(image_indices=[0], text_indices=[-1], text_output_extra_tokens=True)
    expected = reference.forward_intermediates(images, texts()[:2], **kwargs)
    out = model.forward_intermediates(images, texts()[:2], **kwargs)
    for key in ("image_features", "text_features"):
        assert_close(out[key], expected[key])
    for key in ("image_intermediates", "text_intermediates", "text_intermediates_suffix"):
        assert all(max_abs_diff(a, b) < 1e-5 for a, b in zip(out[key], expected[key], strict=True))


@torch.no_grad()
def test_cached_caption_steps_equal_the_full_forward_even_after_a_pad_token():
    config = tiny_coca_config()
    model = ours_from(open_clip_coca(config), config)
    images = torch.randn(3, 3, 32, 32)
    tokens = texts()
    full = model(images, tokens, output_dict=True)["caption_logits"]
    cache = model.start_captions(images)
    # A prompt of two tokens, then one at a time; row 0 holds a 0 (masked as open_clip does).
    steps = [model.caption_step(tokens[:, :2], cache)]
    steps += [model.caption_step(tokens[:, i : i + 1], cache) for i in range(2, 10)]
    assert_close(torch.stack(steps, 1), full[:, 1:])


def open_clip_greedy(reference, images, max_new, min_new):
    """open_clip's `generate` with generation_type="top_k", top_k=1 (greedy), written out:
    its own `generate` needs `transformers.BeamSearchScorer`, which transformers 5 removed, so
    it refuses to run here. Every step recomputes the whole text through open_clip's forward;
    a row ends at the end token or at open_clip's pad id, and gets pads after."""
    image_latent, image_embs = reference._encode_image(images)
    out = torch.full((len(images), 1), SOT)
    for _ in range(max_new):
        logits = reference(
            images, out, image_latent=image_latent, image_embs=image_embs, output_labels=False
        )["logits"][:, -1]
        if out.shape[1] < 1 + min_new:  # open_clip's MinLengthLogitsProcessor
            logits[:, EOT] = float("-inf")
        finished = (out[:, -1] == EOT) | (out[:, -1] == PAD)
        chosen = torch.where(finished, PAD, logits.argmax(-1))
        out = torch.cat([out, chosen[:, None]], 1)
        if ((out[:, -1] == EOT) | (out[:, -1] == PAD)).all():
            break
    return out


def captioning_reference(config, seed=2):
    """open_clip_coca with LayerNorm gains near 1 and a sharper vocabulary projection, so that
    greedy captions depend on the image and end at different steps (lengths 8, 4, 4, 3)."""
    reference = open_clip_coca(config, seed=seed)
    with torch.no_grad():
        for name, parameter in reference.named_parameters():
            if name.endswith("weight") and parameter.dim() == 1:  # the LayerNorms' gains
                parameter.add_(1.0)
        reference.text_decoder.text_projection.mul_(5)
    torch.manual_seed(100 + seed)
    return reference, torch.randn(4, 3, 32, 32)


@torch.no_grad()
def test_greedy_captions_equal_open_clip_greedy_by_full_recompute():
    config = tiny_coca_config()
    reference, images = captioning_reference(config)
    model = ours_from(reference, config)
    expected = open_clip_greedy(reference, images, max_new=9, min_new=2)
    out = model.generate(
        images, max_new_tokens=9, min_new_tokens=2, start_token=SOT, end_token=(EOT, PAD)
    )
    width = out.tokens.shape[1]
    assert torch.equal(out.tokens, expected[:, :width])
    assert (expected[:, width:] == PAD).all()
    assert len(set(out.lengths.tolist())) > 1  # captions of different lengths
    # Beam search with one beam and no length penalty is greedy too.
    beam = model.generate(
        images,
        max_new_tokens=9,
        min_new_tokens=2,
        beams=1,
        length_penalty=0.0,
        start_token=SOT,
        end_token=(EOT, PAD),
    )
    assert torch.equal(beam.tokens, out.tokens)


@torch.no_grad()
def test_beam_captions_score_their_own_log_probability_under_open_clip():
    config = tiny_coca_config()
    reference = open_clip_coca(config, seed=2)
    model = ours_from(reference, config)
    images = torch.randn(2, 3, 32, 32)
    out = model.generate(images, max_new_tokens=6, beams=3, start_token=SOT, end_token=EOT)
    for index in range(2):
        length = int(out.lengths[index])
        caption = out.tokens[index : index + 1, : 1 + length]
        logits = reference(images[index : index + 1], caption, output_labels=False)["logits"]
        log_probs = logits[0, :-1].log_softmax(-1)
        total = log_probs.gather(1, caption[0, 1:, None]).sum()
        assert float(out.scores[index]) == pytest.approx(float(total) / length, abs=1e-4)


@torch.no_grad()
def test_export_to_open_clip_and_back_gives_identical_outputs(tmp_path):
    config = tiny_coca_config()
    reference = open_clip_coca(config)
    model = ours_from(reference, config)
    images = torch.randn(2, 3, 32, 32)
    expected = reference(images, texts()[:2])
    for name in ("coca.pt", "coca.safetensors"):
        save_open_clip(model, tmp_path / name)
        loaded = open_clip_coca(config, seed=9)  # other weights, all replaced by the file's
        path = tmp_path / name
        state = load_file(path) if name.endswith(".safetensors") else torch.load(path)
        loaded.load_state_dict(state)  # strict
        out = loaded(images, texts()[:2])
        for key in ("image_features", "text_features", "logits"):
            assert torch.equal(out[key], expected[key])
    # mmcl's own file records the architecture: mmcl.load needs nothing else.
    save_safetensors(model, tmp_path / "mmcl.safetensors")
    again, _ = mmcl.load(tmp_path / "mmcl.safetensors")
    assert isinstance(again, CoCa)
    mine = model(images, texts()[:2], output_dict=True)["caption_logits"]
    assert torch.equal(again(images, texts()[:2], output_dict=True)["caption_logits"], mine)


def open_clip_heads_config():
    """64-wide heads and an 8-head pooler: what the shapes cannot tell is open_clip's own."""
    config = tiny_coca_config()
    config["embed_dim"] = config["text_cfg"]["width"] = config["multimodal_cfg"]["width"] = 64
    config["text_cfg"]["heads"] = config["multimodal_cfg"]["heads"] = 1
    config["vision_cfg"] |= {"width": 64, "head_width": 64, "attn_pooler_heads": 8}
    return config


@torch.no_grad()
def test_mmcl_load_reads_an_open_clip_coca_state_dict(tmp_path):
    config = open_clip_heads_config()
    reference = open_clip_coca(config)
    torch.save(reference.state_dict(), tmp_path / "open_clip_coca.pt")
    with pytest.warns(HeadsAssumedWarning):  # a CoCa of no shipped config: it says so
        model, preprocess = mmcl.load(tmp_path / "open_clip_coca.pt")
    images = torch.randn(2, 3, 32, 32)
    expected = reference(images, texts()[:2])
    out = model(images, texts()[:2], output_dict=True)
    assert_close(out["caption_logits"][:, :-1], expected["logits"])
    assert preprocess is not None and model.image_size == 32


def test_convert_command_round_trips_open_clip_coca(tmp_path):
    original = open_clip_coca(open_clip_heads_config()).state_dict()
    torch.save(original, tmp_path / "coca.pt")
    with pytest.warns(HeadsAssumedWarning):
        command = ["convert", tmp_path / "coca.pt", tmp_path / "coca.safetensors", "--to", "mmcl"]
        assert main([str(arg) for arg in command]) == 0
    back = tmp_path / "back.safetensors"
    assert (
        main(["convert", str(tmp_path / "coca.safetensors"), str(back), "--to", "open_clip"]) == 0
    )
    exported = load_file(back)
    assert set(exported) == set(original)
    assert all(torch.equal(exported[key], original[key]) for key in original)


@pytest.mark.parametrize("name", [n for n in available_models() if n.startswith("coca_")])
def test_shipped_coca_configs_match_open_clip_names_shapes_and_inference(name):
    config = get_model_config(name)
    with torch.device("meta"):
        reference = open_clip.coca_model.CoCa(
            **{k: v for k, v in config.items() if k != "custom_text"}
        )
        ours = CoCa(CoCaConfig.from_dict(config))
    shapes = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == shapes
    # The architecture read off the weights is the shipped config: no warning when loading.
    inferred = CoCaConfig.from_dict(infer_coca_config(reference.state_dict(), name))
    assert inferred == CoCaConfig.from_dict(config)


def test_create_model_builds_coca_by_name():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = mmcl.create_model(
            "coca_ViT-B-32",
            vision_cfg={"image_size": 64, "layers": 1},
            text_cfg={"layers": 1},
            multimodal_cfg={"layers": 1},
        )
    assert isinstance(model, CoCa) and model.context_length == 76
    tokens = mmcl.tokenize(["a red circle"], context_length=model.context_length)
    with torch.no_grad():
        assert model.encode_text(tokens).shape == (1, 512)


@pytest.mark.parametrize("module", [coca_module, losses_module])
def test_doctests(module):
    assert doctest.testmod(module).failed == 0
