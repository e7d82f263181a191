"""CogVLM's visual expert over a tiny Hugging Face LLaMA, against the plain LLaMA (no expert)
holding the same language weights, and against hand-worked attention."""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from greedy_decoding import greedy_by_full_forwards
from mmcl.models.bridges.cogvlm import CogVLM, CogVLMConfig
from mmcl.nn.visual_expert import ExpertLinear

IMAGE = 59  # the placeholder id
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION = {"image_size": 32, "patch_size": 16, "width": 32, "layers": 2, "head_width": 16}


def tiny(layers: int = 2, seed: int = 0) -> CogVLM:
    lm = {
        "model_type": "llama",
        "vocab_size": 60,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "eos_token_id": 2,
    }
    torch.manual_seed(seed)
    config = {"cogvlm_vision": VISION, "language_model": lm, "image_token_id": IMAGE}
    return CogVLM(CogVLMConfig.from_dict(config)).eval()


def plain_lm(model: CogVLM):
    """The LLaMA without the expert, holding the model's language weights (its state dict is
    the routed one less the ``.expert.`` entries)."""
    fields = dict(model.config.language_model)
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields))
    state = {k: v for k, v in model.language_model.state_dict().items() if ".expert." not in k}
    lm.load_state_dict(state, strict=True)
    return lm.eval()


def prompt(rows: int = 1):
    ids = torch.tensor([[1, 5, IMAGE, IMAGE, IMAGE, IMAGE, 7, 8, 9]] * rows)
    ids[1:, 1] = 6  # rows differ
    return ids, torch.randn(rows, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def experts(model: CogVLM, name: str):
    return [m for n, m in model.language_model.named_modules() if n.endswith(name)]


def test_a_fresh_expert_gives_the_plain_models_logits():
    model = tiny()
    ids, images = prompt(2)
    with torch.no_grad():
        routed = model(ids, images).logits
        embeddings = model.embed(ids, model.encode_image(images))
        model.route.set_next(None)  # the plain LM runs next, not the routed one
        plain = plain_lm(model)(inputs_embeds=embeddings).logits
    torch.testing.assert_close(routed, plain, rtol=0, atol=1e-5)


def test_b_text_only_inputs_never_touch_the_expert():
    model = tiny()
    with torch.no_grad():
        for parameter in model.expert_parameters():
            parameter.add_(torch.randn_like(parameter))
    ids, images = prompt()
    text = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        routed = model(text).logits
        plain = plain_lm(model)(input_ids=text).logits
        assert torch.equal(routed, plain)
        # ...while with image tokens the changed expert does change the logits
        with_images = model(ids, images).logits
        embeddings = model.embed(ids, model.encode_image(images))
        model.route.set_next(None)
        assert not torch.allclose(with_images, plain_lm(model)(inputs_embeds=embeddings).logits)


def test_c_zero_expert_queries_change_exactly_the_image_positions_as_hand_worked():
    model = tiny(layers=1)
    ids, images = prompt()
    with torch.no_grad():
        before = model(ids, images).logits
        (q_proj,) = experts(model, "q_proj")
        q_proj.expert.weight.zero_()
        seen = {}
        hooks = [
            m.register_forward_hook(lambda mod, args, out, name=name: seen.update({name: args[0]}))
            for name, m in (("q_in", q_proj), ("o_in", experts(model, "o_proj")[0]))
        ]
        after = model(ids, images).logits
        for hook in hooks:
            hook.remove()
    changed = (before != after).any(-1)[0]
    assert changed.tolist() == (ids[0] == IMAGE).tolist()
    # An image token's query is 0 (rotated 0 is 0): every score is 0, and its attention output
    # is the plain mean of the values of the positions up to it. Its values used the expert's
    # v weights, equal to the language ones here.
    (v_proj,) = experts(model, "v_proj")
    values = torch.nn.functional.linear(seen["q_in"][0], v_proj.weight)  # (length, width)
    for position in (ids[0] == IMAGE).nonzero().flatten().tolist():
        expected = values[: position + 1].mean(0)
        torch.testing.assert_close(seen["o_in"][0, position], expected, rtol=0, atol=1e-6)


def test_d_greedy_generation_with_the_kv_cache_equals_generation_without_it():
    model = tiny(seed=3)
    with torch.no_grad():  # a changed expert: image tokens' cached K/V must be the expert's
        for parameter in model.expert_parameters():
            parameter.mul_(1.5)
    ids, images = prompt()
    cached = model.generate(ids, images, max_new_tokens=8, end_token=2)
    assert cached.shape[1] == 8  # no early end: all 8 steps are compared
    assert cached[0].tolist() == greedy_by_full_forwards(model, ids, images, end=2, steps=8)
    # transformers' own generate over the routed LM, its cache and all: the armed mask is the
    # prompt's (its first forward), every later step runs text only.
    with torch.no_grad():
        embeddings = model.embed(ids, model.encode_image(images))
        hf = model.language_model.generate(
            inputs_embeds=embeddings, max_new_tokens=8, do_sample=False, eos_token_id=2
        )
    assert torch.equal(hf, cached)


def test_gradient_checkpointing_routes_the_recomputed_layers_as_the_forward_did():
    ids, images = prompt()
    grads = []
    for checkpointing in (False, True):
        model = tiny().train()
        model.set_grad_checkpointing(checkpointing)
        model(ids, images).logits.square().mean().backward()
        grads.append([p.grad for p in model.expert_parameters()])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-7)


def test_e_gradient_reaches_the_expert_from_image_positions_only():
    model = tiny()
    reference = plain_lm(model).train()
    model.train()
    ids, images = prompt()
    image_rows = (ids == IMAGE).unsqueeze(-1).float()
    targets = torch.randint(0, 60, ids.shape, generator=torch.Generator().manual_seed(2))

    def loss(logits):
        return torch.nn.functional.cross_entropy(logits[0], targets[0])

    loss(model(ids, images).logits).backward()
    embeddings = model.embed(ids, model.encode_image(images)).detach()
    model.route.set_next(None)
    # The reference: the plain LM's per-row weight gradients, dW = sum of g_r x_r^T over the
    # rows r (g: the gradient at the Linear's output, x: its input), summed once over the
    # image rows and once over the text rows.
    inputs, grads = {}, {}

    def capture(module, args, out):
        inputs[module] = args[0]
        out.register_hook(lambda grad: grads.update({module: grad}))

    hooks = [
        m.register_forward_hook(capture)
        for n, m in reference.named_modules()
        if n.rsplit(".", 1)[-1] in LINEARS
    ]
    loss(reference(inputs_embeds=embeddings).logits).backward()
    for hook in hooks:
        hook.remove()
    for n, m in model.language_model.named_modules():
        if isinstance(m, ExpertLinear):
            plain = reference.get_submodule(n)
            x, g = inputs[plain][0], grads[plain][0]
            for routed, rows in (
                (m.expert.weight.grad, image_rows[0]),
                (m.weight.grad, 1 - image_rows[0]),
            ):
                expected = (g * rows).T @ x
                torch.testing.assert_close(routed, expected, rtol=1e-4, atol=1e-6)
    # Text-only inputs leave the expert without any gradient.
    model.zero_grad(set_to_none=True)
    loss(model(torch.tensor([[1, 5, 6, 7, 8, 9, 10, 11, 12]])).logits).backward()
    assert all(p.grad is None for p in model.expert_parameters())


def test_a_deep_copy_routes_through_its_own_experts():
    import copy

    model = tiny(layers=1)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in twin.expert_parameters():
            parameter.zero_()
    ids, images = prompt()
    with torch.no_grad():
        assert not torch.equal(model(ids, images).logits, twin(ids, images).logits)
        assert twin.route is not model.route


def test_saved_as_mmcl_safetensors_or_as_a_folder_it_loads_with_the_same_logits(tmp_path):
    import mmcl
    from mmcl.io.checkpoints import save_safetensors
    from mmcl.io.checkpoints.cogvlm import save_cogvlm_folder

    model = tiny(layers=1)
    with torch.no_grad():
        for parameter in model.expert_parameters():
            parameter.add_(0.1)
    ids, images = prompt()
    save_safetensors(model, tmp_path / "cogvlm.safetensors")
    save_cogvlm_folder(model, tmp_path / "folder")
    with torch.no_grad():
        expected = model(ids, images).logits
        for path in (tmp_path / "cogvlm.safetensors", tmp_path / "folder"):
            loaded = mmcl.load(path)[0].eval()
            assert isinstance(loaded, CogVLM)
            assert torch.equal(loaded(ids, images).logits, expected)
