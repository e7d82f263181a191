"""Checkpoint formats: mmcl matches open_clip / transformers on the same random weights."""

import json
import os
import shutil
import stat

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPModel

import mmcl
from conftest import max_abs_diff, open_clip_reference
from mmcl.io.checkpoints import (
    CheckpointError,
    load_checkpoint,
    save_huggingface,
    save_open_clip,
    save_safetensors,
)
from mmcl.models.factory import ActivationAssumedWarning

OPENAI_MODELS = [
    "RN50",
    "RN101",
    "RN50x4",
    "RN50x16",
    "RN50x64",
    "ViT-B/32",
    "ViT-B/16",
    "ViT-L/14",
    "ViT-L/14@336px",
]
CAPTIONS = ["a diagram", "a dog playing with a ball in the park", ""]


def assert_same_encoders(ours, reference, image_size, batch=1, tolerance=1e-5):
    images = torch.randn(batch, 3, image_size, image_size)
    tokens = mmcl.tokenize(CAPTIONS)
    with torch.no_grad():
        assert max_abs_diff(ours.encode_image(images), reference.encode_image(images)) <= tolerance
        assert max_abs_diff(ours.encode_text(tokens), reference.encode_text(tokens)) <= tolerance


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def save_torchscript(reference, path):
    # OpenAI's releases are TorchScript archives; tracing the text path keeps every parameter.
    traced = torch.jit.trace_module(
        reference, {"encode_text": open_clip.tokenize(["a"])}, check_trace=False
    )
    traced.save(str(path))


@pytest.mark.slow
@pytest.mark.parametrize("openai_name", OPENAI_MODELS)
def test_openai_torchscript_archives_match_open_clip(openai_name, tmp_path):
    config_name = mmcl.models.resolve_name(openai_name)
    if not config_name.endswith("-quickgelu"):
        config_name += "-quickgelu"  # OpenAI's RN models are QuickGELU too
    reference = open_clip_reference(config_name)
    save_torchscript(reference, tmp_path / "model.pt")
    model, preprocess = mmcl.load(tmp_path / "model.pt")
    assert load_checkpoint(tmp_path / "model.pt").format == "openai"
    assert model.config.quick_gelu
    assert_same_encoders(model, reference, model.image_size)


def test_openai_fp16_state_dict_loads_into_fp32(tmp_path):
    # OpenAI's plain state dicts are half precision; loading casts them to the model's dtype.
    reference = open_clip_reference("tiny-vit")
    reference.load_state_dict({k: v.half().float() for k, v in reference.state_dict().items()})
    torch.save({k: v.half() for k, v in reference.state_dict().items()}, tmp_path / "fp16.pt")
    model = mmcl.create_model("tiny-vit", pretrained=tmp_path / "fp16.pt")
    assert next(model.parameters()).dtype == torch.float32
    assert_same_encoders(model, reference, 32)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336-quickgelu"])
def test_open_clip_state_dicts_match_open_clip(name, tmp_path):
    reference = open_clip_reference(name)
    torch.save(reference.state_dict(), tmp_path / "open_clip.pt")
    model = mmcl.create_model(name, pretrained=tmp_path / "open_clip.pt")
    assert_same_encoders(model, reference, model.image_size)


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".safetensors"])
@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_open_clip_file_kinds(name, suffix, tmp_path):
    reference = open_clip_reference(name)
    path = tmp_path / f"weights{suffix}"
    state = reference.state_dict()
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif suffix == ".bin":  # training checkpoints wrap the weights and DDP adds "module."
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        torch.save(state, path)
    model = mmcl.create_model(name, pretrained=path)
    assert_same_encoders(model, reference, model.image_size, batch=2)


def random_hf_clip(tmp_path, hidden_act="quick_gelu", **vision):
    from transformers import CLIPConfig

    vision = {
        "hidden_size": 128,
        "intermediate_size": 512,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "image_size": 32,
        "patch_size": 8,
        "hidden_act": hidden_act,
        **vision,
    }
    text = {
        "hidden_size": 96,
        "intermediate_size": 384,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "hidden_act": hidden_act,
    }
    torch.manual_seed(0)
    hf = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=48)).eval()
    hf.save_pretrained(tmp_path / "hf")
    return hf, tmp_path / "hf"


class HFEncoders:
    """Gives a transformers CLIPModel the encode_image/encode_text interface."""

    def __init__(self, hf):
        self.hf = hf

    def encode_image(self, images):
        return self.hf.get_image_features(pixel_values=images).pooler_output

    def encode_text(self, tokens):
        return self.hf.get_text_features(input_ids=tokens).pooler_output


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_huggingface_folder_matches_transformers(hidden_act, tmp_path):
    hf, folder = random_hf_clip(tmp_path, hidden_act)
    model = mmcl.create_model(pretrained=folder)
    assert model.config.quick_gelu == (hidden_act == "quick_gelu")
    assert_same_encoders(model, HFEncoders(hf), 32, batch=2)


def test_huggingface_pickled_weights(tmp_path):
    hf, folder = random_hf_clip(tmp_path)
    (folder / "model.safetensors").unlink()
    torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    model = mmcl.create_model(pretrained=folder)
    assert_same_encoders(model, HFEncoders(hf), 32, batch=2)


@pytest.mark.slow
def test_huggingface_vit_b32_matches_transformers(tmp_path):
    from transformers import CLIPConfig

    torch.manual_seed(0)
    hf = CLIPModel(CLIPConfig()).eval()  # transformers' defaults are OpenAI's ViT-B/32
    hf.save_pretrained(tmp_path / "hf")
    model = mmcl.create_model(pretrained=tmp_path / "hf")
    assert_same_encoders(model, HFEncoders(hf), 224)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
def test_round_trip_through_open_clip_layout_is_exact(name, tmp_path):
    model = mmcl.create_model(name)
    save_open_clip(model, tmp_path / "oc.safetensors")
    reference = open_clip_reference(name, seed=1)
    reference.load_state_dict(load_safetensors(tmp_path / "oc.safetensors"))  # strict
    assert_same_encoders(model, reference, model.image_size)
    assert_same_state(model, mmcl.create_model(name, pretrained=tmp_path / "oc.safetensors"))


def load_safetensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_round_trip_through_huggingface_is_exact(tmp_path):
    model = mmcl.create_model("tiny-vit")
    save_huggingface(model, tmp_path / "hf")
    hf = CLIPModel.from_pretrained(tmp_path / "hf").eval()
    assert_same_encoders(model, HFEncoders(hf), 32)
    back = mmcl.create_model(pretrained=tmp_path / "hf")
    assert back.config == model.config
    assert_same_state(model, back)


def test_round_trip_through_mmcl_safetensors_is_exact(tmp_path):
    model = mmcl.create_model("tiny-rn")
    save_safetensors(model, tmp_path / "model.safetensors")
    back, preprocess = mmcl.load(tmp_path / "model.safetensors")
    assert back.config == model.config
    assert_same_state(model, back)


@pytest.mark.slow
def test_open_clip_vit_b32_state_dict_loads_with_the_activation_named(tmp_path):
    # open_clip's own ViT-B-32 uses GELU, but its state dict does not say so: mmcl used to
    # assume QuickGELU without a word. Named, the output is open_clip's; unnamed, mmcl warns
    # and the output is that of the QuickGELU model it says it assumed.
    torch.manual_seed(0)
    reference = open_clip.create_model("ViT-B-32").eval()
    path = tmp_path / "open_clip_vit_b32.pt"
    torch.save(reference.state_dict(), path)
    named, _ = mmcl.load(path, model_name="ViT-B-32")
    assert not named.config.quick_gelu
    assert_same_encoders(named, reference, 224, batch=2)

    with pytest.warns(
        ActivationAssumedWarning, match="QuickGELU.*'ViT-B-32' or 'ViT-B-32-quickgelu'"
    ):
        unnamed, _ = mmcl.load(path)
    quick_reference = open_clip.create_model("ViT-B-32-quickgelu").eval()
    quick_reference.load_state_dict(reference.state_dict())
    assert_same_encoders(unnamed, quick_reference, 224, batch=2)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():  # the activation matters: the test above could tell them apart
        assert max_abs_diff(unnamed.encode_image(images), reference.encode_image(images)) > 1e-4


def test_exports_honour_the_umask(tmp_path):
    # mkstemp/mkdtemp made every file 0600 and every Hugging Face folder 0700.
    model = mmcl.create_model("tiny-vit")
    for umask in (0o022, 0o077):
        folder = tmp_path / f"umask-{umask:o}"
        previous = os.umask(umask)
        try:
            written = [
                save_safetensors(model, folder / "model.safetensors"),
                save_open_clip(model, folder / "open_clip.pt"),
                save_open_clip(model, folder / "open_clip.safetensors"),
                save_huggingface(model, folder / "hf"),
            ]
        finally:
            os.umask(previous)
        written += [folder / "hf" / "config.json", folder / "hf" / "model.safetensors"]
        for path in written:
            expected = (0o777 if path.is_dir() else 0o666) & ~umask
            assert stat.S_IMODE(path.stat().st_mode) == expected, path
        assert sorted(p.name for p in folder.iterdir()) == [  # no temporary files left
            "hf",
            "model.safetensors",
            "open_clip.pt",
            "open_clip.safetensors",
        ]


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = save_safetensors(mmcl.create_model("tiny-vit"), tmp_path / "model.safetensors")
    path.chmod(0o640)
    save_safetensors(mmcl.create_model("tiny-vit"), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_resnet_cannot_be_exported_to_huggingface(tmp_path):
    with pytest.raises(CheckpointError, match="no ModifiedResNet"):
        save_huggingface(mmcl.create_model("tiny-rn"), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# --- bad input -------------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        mmcl.create_model("tiny-vit", pretrained=tmp_path / "nowhere.pt")


def test_model_name_given_to_load_points_to_its_pretrained_tags():
    with pytest.raises(FileNotFoundError, match=r"create_model\('ViT-B/32', pretrained='openai'\)"):
        mmcl.load("ViT-B/32")


@pytest.mark.parametrize("kind", ["pt", "safetensors", "torchscript"])
def test_truncated_files_are_named(kind, tmp_path):
    reference = open_clip_reference("tiny-vit")
    path = tmp_path / f"model.{kind}"
    if kind == "pt":
        torch.save(reference.state_dict(), path)
    elif kind == "safetensors":
        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    else:
        save_torchscript(reference, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path.name)):
        mmcl.create_model("tiny-vit", pretrained=path)


def test_garbage_and_empty_files_are_named(tmp_path):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all" * 10)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        mmcl.create_model("tiny-vit", pretrained=tmp_path / "garbage.pt")
    with pytest.raises(CheckpointError, match="empty.pt.*empty"):
        mmcl.create_model("tiny-vit", pretrained=tmp_path / "empty.pt")


def test_pickle_with_code_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(2), "callback": json.dumps}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="evil.pt"):
        mmcl.create_model("tiny-vit", pretrained=tmp_path / "evil.pt")


def test_other_architecture_lists_missing_and_unexpected_keys(tmp_path):
    torch.save(open_clip_reference("tiny-rn").state_dict(), tmp_path / "rn.pt")
    with pytest.raises(CheckpointError) as error:
        mmcl.create_model("tiny-vit", pretrained=tmp_path / "rn.pt")
    message = str(error.value)
    assert "rn.pt" in message and "missing keys" in message and "unexpected keys" in message
    assert "visual.class_embedding" in message and "visual.attnpool" in message


def test_shape_mismatch_is_listed_and_nothing_is_loaded(tmp_path):
    state = open_clip_reference("tiny-vit").state_dict()
    state["visual.positional_embedding"] = state["visual.positional_embedding"][:-1]
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatches.*visual.positional_embedding"):
        mmcl.create_model("tiny-vit", pretrained=tmp_path / "bad.pt")


def test_not_a_clip_checkpoint(tmp_path):
    torch.save({"fc.weight": torch.zeros(2, 2)}, tmp_path / "resnet.pt")
    with pytest.raises(CheckpointError, match="not a CLIP checkpoint"):
        load_checkpoint(tmp_path / "resnet.pt")


def test_huggingface_folder_without_config(tmp_path):
    (tmp_path / "hf").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(tmp_path / "hf")


@pytest.fixture(autouse=True)
def _free_disk_after_each_test(tmp_path):
    # Large models' checkpoints are gigabytes: free them as each test ends, so the suite never
    # holds more than one test's files (pytest would keep them all until the session ends).
    yield
    shutil.rmtree(tmp_path, ignore_errors=True)
