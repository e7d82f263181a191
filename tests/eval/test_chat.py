"""`mmcl ask` and `ImageChat`: the answers are the greedy answers of `Llava.generate` and of
Hugging Face's `generate` for the chat template's prompt; a conversation's later answers equal
one-shot answers given the earlier turns as history, while the LM runs only the new tokens."""

from __future__ import annotations

import io

import pytest
import torch
from transformers import AutoTokenizer

import mmcl
from mmcl.cli import main as cli_main
from mmcl.data.chat_template import ChatTemplate, ConversationEncoder
from mmcl.data.images import load_image
from mmcl.eval.chat import ImageChat
from tiny_llava import image_file, llava_folder

FIRST, SECOND = "how many circles?", "what colour is the star?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ask")
    folder, reference, tokenizer = llava_folder(root / "hf")
    model, preprocess = mmcl.load(folder)
    pixels = preprocess(load_image(image_file(root / "x.png"))).unsqueeze(0)
    return folder, root / "x.png", reference, model, tokenizer, pixels


def one_shot(tiny, history, question, max_new_tokens):
    """The answer ids and text of `Llava.generate` for the whole prompt, run from scratch."""
    _, _, _, model, tokenizer, pixels = tiny
    encoder = ConversationEncoder(tokenizer, model.image_token_id, model.tokens_per_image)
    ids = torch.tensor([encoder.encode_prompt(history, question)])
    new = model.generate(ids, pixels, max_new_tokens=max_new_tokens)
    return ids, new, tokenizer.decode(new[0], skip_special_tokens=True).strip()


def ask(capsys, tiny, *argv) -> list[str]:
    folder, image = tiny[:2]
    code = cli_main(["ask", "--model", str(folder), "--image", str(image), *argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out.splitlines()


def test_ask_prints_the_greedy_answer_of_llava_generate_and_hf_generate(tiny, capsys):
    reference, pixels = tiny[2], tiny[5]
    printed = ask(capsys, tiny, FIRST, "--max-new-tokens", "6")
    ids, new, expected = one_shot(tiny, [], f"<image>\n{FIRST}", 6)
    hf = reference.generate(input_ids=ids, pixel_values=pixels, max_new_tokens=6, do_sample=False)[
        :, ids.shape[1] :
    ]
    assert torch.equal(hf, new)
    assert expected and printed == [expected]


def test_interactive_second_answer_equals_one_shot_with_the_first_turn_as_history(
    tiny, capsys, monkeypatch
):
    # 4 new tokens: the first answer is cut short, so the cache must be cut back to the prompt
    # the second question spells (the answer as text, then the end token).
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{FIRST}\n\n{SECOND}\n"))
    printed = ask(capsys, tiny, "--max-new-tokens", "4")
    first = one_shot(tiny, [], f"<image>\n{FIRST}", 4)[2]
    second = one_shot(tiny, [(f"<image>\n{FIRST}", first)], SECOND, 4)[2]
    assert first and second and printed == [first, second]


def test_a_chat_runs_the_image_once_and_only_the_new_tokens_of_each_turn(tiny):
    _, _, _, model, tokenizer, pixels = tiny
    images, lengths = [], []
    encode_image = model.encode_image
    with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
        patch.setattr(model, "encode_image", lambda p: images.append(p) or encode_image(p))
        hook = model.language_model.register_forward_pre_hook(
            lambda _, args, kwargs: lengths.append(kwargs["inputs_embeds"].shape[1]),
            with_kwargs=True,
        )
        try:
            chat = ImageChat(model, tokenizer, pixels, ChatTemplate(), max_new_tokens=20)
            chat.ask(FIRST)
            after_first, first_calls = list(chat.cached_ids), len(lengths)
            chat.ask(SECOND)
        finally:
            hook.remove()
    assert len(images) == 1
    encoder = ConversationEncoder(tokenizer, model.image_token_id, model.tokens_per_image)
    prompt = encoder.encode_prompt(chat.history[:1], SECOND)
    pairs = zip(after_first, prompt, strict=False)
    common = next((i for i, (a, b) in enumerate(pairs) if a != b), len(after_first))
    assert common >= len(
        encoder.encode_prompt([], f"<image>\n{FIRST}")
    )  # the first prompt, at least
    assert lengths[first_calls] == len(prompt) - common
    assert all(length == 1 for length in lengths[first_calls + 1 :])


def test_an_edited_history_cuts_the_cache_back_and_answers_as_one_shot(tiny):
    # The cache then holds the model's own answer, which the next prompt no longer spells.
    _, _, _, model, tokenizer, pixels = tiny
    chat = ImageChat(model, tokenizer, pixels, max_new_tokens=6)
    chat.ask(FIRST)
    chat.history[0] = (chat.history[0][0], "two red circles")
    answer = chat.ask(SECOND)
    assert answer == one_shot(tiny, [(f"<image>\n{FIRST}", "two red circles")], SECOND, 6)[2]
    assert len(chat.cached_ids) == chat.lm_cache.get_seq_length()


def test_ask_answers_from_the_folder_a_llava_recipe_writes(tmp_path, capsys):
    from mmcl.recipe import load_recipe, run_recipe

    options = [
        "model.lm={hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1}",
        "model.vocab_size=200",
        "model.tokenizer_text_size=40",
        "data.size=2",
        "data.system=''",  # the recipe's system text, which ask must then be given
        "train.steps=1",
        "train.batch_size=2",
        "train.warmup_steps=0",
        "train.progress=false",
        "train.tensorboard=false",
        "train.checkpoint_every=null",
        f"train.output_dir={tmp_path / 'run'}",
    ]
    run_recipe(load_recipe("llava-scenes-stage1", options))
    folder, image = tmp_path / "run" / "hf", image_file(tmp_path / "x.png")
    argv = ["ask", "--model", folder, "--image", image, "--system", "", FIRST]
    assert cli_main([*map(str, argv), "--max-new-tokens", "5"]) == 0
    model, preprocess = mmcl.load(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoder = ConversationEncoder(
        tokenizer, model.image_token_id, model.tokens_per_image, ChatTemplate(system="")
    )
    ids = torch.tensor([encoder.encode_prompt([], f"<image>\n{FIRST}")])
    new = model.generate(ids, preprocess(load_image(image))[None], max_new_tokens=5)
    expected = tokenizer.decode(new[0], skip_special_tokens=True).strip()
    # a random model's answer may hold a newline: compare the whole output
    assert expected and capsys.readouterr().out == f"{expected}\n"


def test_ask_with_beams_prints_the_answer_of_hf_generate_num_beams(tiny, capsys):
    reference, model, tokenizer, pixels = tiny[2], tiny[3], tiny[4], tiny[5]
    printed = ask(capsys, tiny, FIRST, "--max-new-tokens", "6", "--beams", "3")
    encoder = ConversationEncoder(tokenizer, model.image_token_id, model.tokens_per_image)
    ids = torch.tensor([encoder.encode_prompt([], f"<image>\n{FIRST}")])
    with torch.no_grad():
        hf = reference.generate(
            input_ids=ids, pixel_values=pixels, max_new_tokens=6, num_beams=3, do_sample=False
        )[0, ids.shape[1] :]
    greedy = one_shot(tiny, [], f"<image>\n{FIRST}", 6)[1][0]
    assert hf.tolist() != greedy.tolist()  # the beams find another answer than greedy here
    assert printed == [tokenizer.decode(hf, skip_special_tokens=True).strip()]


def test_a_beam_chat_answers_its_second_question_as_one_beam_search_over_the_whole_prompt(tiny):
    # The cache ends holding the beams; it is cut back to the prompt for the next turn.
    _, _, _, model, tokenizer, pixels = tiny
    chat = ImageChat(model, tokenizer, pixels, max_new_tokens=5, beams=3)
    chat.ask(FIRST)
    assert chat.lm_cache.get_seq_length() == len(chat.cached_ids)
    answer = chat.ask(SECOND)
    encoder = ConversationEncoder(tokenizer, model.image_token_id, model.tokens_per_image)
    ids = torch.tensor([encoder.encode_prompt(chat.history[:1], SECOND)])
    new = model.generate(ids, pixels, max_new_tokens=5, beams=3)
    assert answer == tokenizer.decode(new[0], skip_special_tokens=True).strip()
