"""The cogvlm-scenes recipe from the CLI: what trains, what is frozen and only referenced, exact
resume, and `mmcl ask` answering from the trained folder."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import mmcl
from greedy_decoding import greedy_by_full_forwards
from mmcl.cli import main
from mmcl.data.chat_template import ChatTemplate, ConversationEncoder
from mmcl.data.images import load_image
from mmcl.io.checkpoints import save_safetensors
from mmcl.models.bridges.cogvlm import CogVLM
from mmcl.recipe_cogvlm import build_cogvlm
from tiny_llava import image_file, llava_folder

TINY = [
    "model.init=null",  # a new tiny model, not the trained LLaVA the recipe starts from
    "model.lm={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 2}",
    "model.vocab_size=200",
    "model.tokenizer_text_size=40",
    "data.size=4",
    "data.max_length=200",
    "data.system=''",
    "eval.vqa_size=2",
    "train.batch_size=2",
    "train.warmup_steps=0",
    "train.tensorboard=false",
    "train.checkpoint_every=1",
]


def train(folder, steps: int, *extra: str) -> int:
    options = [a for o in TINY for a in ("--set", o)]
    return main(
        ["train", "--config", "cogvlm-scenes", *options, "--quiet", "--output-dir", str(folder)]
        + ["--steps", str(steps), *extra]
    )


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_cli_trains_adapter_and_expert_only_refers_to_frozen_weights_and_resumes_exactly(
    tmp_path, capsys
):
    assert train(tmp_path / "run", 2) == 0
    capsys.readouterr()
    folder = tmp_path / "run" / "model"
    trained = mmcl.load(folder)[0]
    assert isinstance(trained, CogVLM)
    # The frozen parts are the run's first frozen.safetensors, referred to, not copied.
    config = json.loads((folder / "config.json").read_text())
    assert config["frozen"]["file"] == "../frozen.safetensors"
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        saved = set(handle.keys())
    with safe_open(str(tmp_path / "run" / "frozen.safetensors"), "pt") as handle:
        frozen = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    assert not saved & set(frozen)
    assert all(".expert." in k or k.startswith("projector.") for k in saved if "weight" in k)
    state = trained.state_dict()
    assert "language_model.model.layers.0.self_attn.q_proj.weight" in frozen
    assert all(torch.equal(state[k], v) for k, v in frozen.items())
    # ...and the expert trained away from the frozen language weights it started as (its v:
    # in one layer, the image tokens' queries reach no answer token)
    v = "language_model.model.layers.0.self_attn.v_proj"
    assert not torch.equal(state[f"{v}.expert.weight"], state[f"{v}.weight"])

    # Exact resume: from the step-1 checkpoint to step 2 again gives the same model.
    step_one = tmp_path / "run" / "checkpoints" / "step_00000001.pt"
    assert train(tmp_path / "run", 2, "--resume", str(step_one)) == 0
    resumed = weights(mmcl.load(folder)[0])
    assert all(torch.equal(resumed[k], v) for k, v in weights(trained).items())


def test_ask_answers_from_the_trained_folder(tmp_path, capsys):
    assert train(tmp_path / "run", 1) == 0
    image = image_file(tmp_path / "x.png")
    capsys.readouterr()
    question = "how many circles are there?"
    code = main(
        ["ask", "--model", str(tmp_path / "run" / "model"), "--image", str(image), "--system", ""]
        + [question]
    )
    assert code == 0
    answer = capsys.readouterr().out.strip()
    # The reference: greedy decoding by full forwards (no cache) of the loaded model.
    from transformers import AutoTokenizer

    model, preprocess = mmcl.load(tmp_path / "run" / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "model")
    encoder = ConversationEncoder(
        tokenizer, model.image_token_id, model.tokens_per_image, ChatTemplate(system="")
    )
    ids = torch.tensor([encoder.encode_prompt([], f"<image>\n{question}")])
    pixels = preprocess(load_image(image)).unsqueeze(0)
    expected = greedy_by_full_forwards(model.eval(), ids, pixels, tokenizer.eos_token_id)
    assert answer == tokenizer.decode(expected, skip_special_tokens=True).strip()


def test_init_from_a_llava_folder_takes_its_tower_lm_and_tokenizer_and_copies_the_expert(
    tmp_path,
):
    folder, _, words = llava_folder(tmp_path / "hf")
    llava = mmcl.load(folder)[0]
    model, tokenizer = build_cogvlm({"init": str(folder)}, "test")
    assert len(tokenizer) == len(words)
    assert model.image_token_id == llava.image_token_id
    for part in ("visual", "language_model"):
        theirs = getattr(llava, part).state_dict()
        ours = getattr(model, part).state_dict()
        assert set(ours) - set(theirs) == {k for k in ours if ".expert." in k}
        assert all(torch.equal(ours[k], v) for k, v in theirs.items())
    for key, value in model.language_model.state_dict().items():
        if ".expert." in key:
            assert torch.equal(value, model.language_model.state_dict()[key.replace(".expert", "")])


def test_a_new_cogvlm_takes_a_pretrained_towers_shape_and_weights(tmp_path):
    # As LLaVA's: a 3-layer CLIP is not the 2-layer default; the weights decide the tower.
    clip = mmcl.create_model("tiny-vit", vision_cfg={"layers": 3, "width": 64})
    path = save_safetensors(clip, tmp_path / "clip.safetensors")
    spec = {"tower_pretrained": str(path), "vocab_size": 200, "tokenizer_text_size": 40}
    lm = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    model, _ = build_cogvlm({**spec, "lm": {**lm, "num_attention_heads": 2}}, "test")
    assert len(model.visual.transformer.resblocks) == 3
    assert torch.equal(model.visual.conv1.weight, clip.visual.conv1.weight)
    with pytest.raises(ValueError, match=r"not model.tower tiny-vit's .*drop model.tower"):
        build_cogvlm({**spec, "tower": "tiny-vit"}, "test")
