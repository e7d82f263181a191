"""mmcl's native short-sequence attention (`mmcl.nn.kernels`) against PyTorch's attention in
float64, and the kernels' build: only when `build()` is called (by `mmcl.nn.accelerate`), and
where the library cannot be built in time, is blocked by a lock left by a killed build, or a
kernel disagrees, models compute the plain way after one warning and nothing hangs. (The
linear kernel: test_linear_kernel.py.)

The kernel itself needs a CPU with AMX; on such a CPU it must build (a failed build fails
these tests rather than silently falling back), elsewhere those tests are skipped."""

import copy
import os
import subprocess
import sys
import time
import warnings

import pytest
import torch
from torch.nn import functional as F

import mmcl
from bf16_error import assert_as_close_as_pytorch_bf16
from mmcl.nn import accelerate, kernels
from mmcl.nn.kernels import library as builder

needs_amx = pytest.mark.usefixtures("amx")


def random_qkv(batch, tokens, heads, dim, scale=1.0, seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    qkv = scale * torch.randn(batch, tokens, 3 * heads * dim, generator=generator)
    return qkv.to(torch.bfloat16)


def sdpa(qkv: torch.Tensor, heads: int, causal: bool) -> torch.Tensor:
    """PyTorch's attention on the split heads, heads side by side again."""
    batch, tokens, _ = qkv.shape
    query, key, value = qkv.view(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(query, key, value, is_causal=causal)
    return out.transpose(1, 2).reshape(batch, tokens, -1)


@needs_amx
def test_the_kernel_builds_on_a_cpu_with_amx():
    assert kernels.short_attention_op() is not None


@needs_amx
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize(
    "batch, tokens, heads, dim",
    [
        (3, 50, 12, 64),  # ViT-B/32
        (4, 77, 8, 64),  # full-length captions
        (2, 197, 4, 64),  # ViT-B/16
        (2, 1, 2, 64),
        (2, 17, 2, 80),  # ViT-H's head dim: padded to whole tiles
        (1, 33, 1, 96),
        (2, 5, 3, 128),  # more output tiles than one pass holds
        (1, 320, 1, 16),  # the longest sequence it takes
    ],
)
def test_kernel_matches_float64_attention_as_closely_as_pytorchs_bf16_attention(
    batch, tokens, heads, dim, causal
):
    qkv = random_qkv(batch, tokens, heads, dim)
    exact = sdpa(qkv.double(), heads, causal)
    ours = kernels.short_attention(qkv, heads, causal)
    assert ours is not None and ours.dtype == torch.bfloat16
    assert ours.shape == (batch, tokens, heads * dim)
    pytorch_error = (sdpa(qkv, heads, causal).double() - exact).abs().max()
    our_error = (ours.double() - exact).abs().max()
    assert our_error <= 1.5 * pytorch_error + 1e-3, (our_error, pytorch_error)


@needs_amx
def test_kernel_is_stable_for_large_scores_and_independent_of_thread_count():
    # Scores in the hundreds: exp must not overflow, and near-one-hot rows stay exact.
    qkv = random_qkv(2, 50, 4, 64, scale=8.0, seed=1)
    exact = sdpa(qkv.double(), 4, causal=False)
    ours = kernels.short_attention(qkv, 4, False)
    assert torch.isfinite(ours).all()
    assert (ours.double() - exact).abs().max() <= 0.02 * exact.abs().max()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = kernels.short_attention(qkv, 4, False)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single, ours)  # each (item, head) is computed alone, whatever the split


@needs_amx
def test_empty_batch_gives_an_empty_result():
    out = kernels.short_attention(random_qkv(0, 50, 2, 64), 2, False)
    assert out.shape == (0, 50, 128)


@needs_amx
def test_the_op_called_directly_names_what_is_wrong_with_its_input():
    op = kernels.short_attention_op()
    qkv = random_qkv(2, 10, 2, 64)
    with pytest.raises(RuntimeError, match="contiguous CPU bf16"):
        op(qkv.float(), 2, False)
    with pytest.raises(RuntimeError, match="3 \\* heads must divide"):
        op(qkv, 5, False)
    with pytest.raises(RuntimeError, match="head dim must be a multiple of 16"):
        op(random_qkv(2, 10, 2, 8), 2, False)


@needs_amx
@pytest.mark.parametrize("tower", ["image", "text"])
def test_accelerated_towers_use_the_kernel_and_compute_the_plain_models_function(
    tower, monkeypatch
):
    plain = mmcl.create_model("tiny-vit", precision="bf16").requires_grad_(False)
    model = accelerate(mmcl.create_model("tiny-vit", precision="bf16").requires_grad_(False))
    model.load_state_dict(plain.state_dict())
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = mmcl.tokenize(["a photo of a cat", "", "two blue squares above a red circle"])

    def encode(model):
        if tower == "image":
            return model.encode_image(images, normalize=True).float()
        return model.encode_text(texts, normalize=True).float()

    calls = []
    op = kernels.short_attention_op()
    monkeypatch.setitem(kernels._ops, "short_attention", lambda *a: calls.append(a) or op(*a))
    with torch.no_grad():
        fast = encode(model)
        assert len(calls) == 1  # two blocks: the last computes only the read token (SDPA)
        reference = encode(plain)
        assert len(calls) == 1
    assert F.cosine_similarity(fast, reference).min() > 0.999
    model.requires_grad_(True)
    encode(model).sum()  # with gradients recorded: autograd's path, not the kernel
    assert len(calls) == 1


def test_inputs_the_kernel_does_not_take_are_left_to_the_caller(fresh_kernels, monkeypatch):
    monkeypatch.setattr(kernels, "_compiled", lambda *a: pytest.fail("must not build"))
    qkv = random_qkv(2, 10, 2, 64)
    assert kernels.short_attention(qkv.float(), 2) is None  # float32
    assert kernels.short_attention(qkv.transpose(0, 1), 2) is None  # not contiguous
    assert kernels.short_attention(random_qkv(1, 321, 1, 64), 1) is None  # too long
    assert kernels.short_attention(random_qkv(1, 10, 2, 8), 2) is None  # head dim 8
    assert kernels.short_attention(qkv, 5) is None  # 5 heads do not divide the width


def test_nothing_is_built_inside_a_forward_pass(fresh_kernels, monkeypatch):
    # Only build() compiles: a model that was not accelerated, or a kernel call before any
    # build, computes the plain way and never starts the compiler.
    monkeypatch.setattr(kernels, "amx_available", lambda: True)
    monkeypatch.setattr(kernels, "_compiled", lambda *a: pytest.fail("must not build"))
    assert kernels.short_attention(random_qkv(2, 10, 2, 64), 2) is None
    assert kernels.linear_op() is None
    model = mmcl.create_model("tiny-vit", precision="bf16").requires_grad_(False)
    with torch.no_grad():
        model.encode_image(torch.randn(2, 3, 32, 32))


def test_a_failed_build_warns_once_and_models_compute_the_plain_way(fresh_kernels, monkeypatch):
    def no_compiler(timeout):
        raise RuntimeError("error: no compiler found\n(the build's last line)")

    monkeypatch.setattr(kernels, "amx_available", lambda: True)
    monkeypatch.setattr(kernels, "_compiled", no_compiler)
    plain = {name: bf16_model(name) for name in ("tiny-vit", "tiny-rn")}
    accelerated = {name: copy.deepcopy(model) for name, model in plain.items()}
    with pytest.warns(
        RuntimeWarning, match=r"short_attention_amx\.cpp, linear_amx\.cpp.*last line"
    ) as caught:
        accelerate(accelerated["tiny-vit"])
    assert len(caught) == 1
    with warnings.catch_warnings():
        # the failure is remembered: no second attempt or warning, for any kernel
        warnings.simplefilter("error")
        assert not kernels.build()
        assert kernels.short_attention(random_qkv(2, 10, 2, 64), 2) is None
        assert kernels.linear_op() is None
        accelerate(accelerated["tiny-rn"])
    texts = mmcl.tokenize(["a red circle", "two small blue squares on the left", "x"])
    for name, model in accelerated.items():
        size = model.visual.image_size
        images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(5))
        # The same inputs through the accelerated model, PyTorch's plain bf16 model and the
        # float32 model with the same (bf16-valued) weights: the accelerated model may be a
        # small factor further from float32 than plain bf16 is (tests/bf16_error.py).
        reference = mmcl.create_model(name)
        reference.load_state_dict({k: v.float() for k, v in plain[name].state_dict().items()})
        with torch.no_grad():
            for encode, inputs in (("encode_image", images), ("encode_text", texts)):
                assert_as_close_as_pytorch_bf16(
                    getattr(model, encode)(inputs).float(),
                    getattr(reference, encode)(inputs),
                    getattr(plain[name], encode)(inputs).float(),
                )


def bf16_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return mmcl.create_model(name, precision="bf16").requires_grad_(False)


def test_a_kernel_that_disagrees_with_pytorch_is_not_used(fresh_kernels, monkeypatch):
    monkeypatch.setattr(kernels, "amx_available", lambda: True)
    wrong = lambda qkv, heads, causal: torch.zeros_like(qkv[..., : qkv.shape[-1] // 3])  # noqa: E731
    ops = {"short_attention": wrong, "linear": object(), "decode_attention": object()}
    monkeypatch.setattr(kernels, "_agrees_with_linear", lambda op: True)
    monkeypatch.setattr(kernels, "_agrees_with_attend", lambda op: True)
    monkeypatch.setattr(kernels, "_compiled", lambda timeout: ops)
    with pytest.warns(RuntimeWarning, match="disagrees with scaled_dot_product_attention"):
        kernels.build()
    assert kernels.short_attention_op() is None


def test_switched_off_by_the_environment_without_a_warning(fresh_kernels, monkeypatch):
    monkeypatch.setenv("MMCL_NATIVE_KERNELS", "0")
    monkeypatch.setattr(kernels, "_compiled", lambda *a: pytest.fail("must not build"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not kernels.build()
        assert kernels.short_attention(random_qkv(2, 10, 2, 64), 2) is None


@pytest.fixture
def extensions_dir(tmp_path, monkeypatch):
    """An empty extension folder of PyTorch's: the kernels' library has not been built there."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    folder = builder.build_directory(builder.library_name())
    assert not any(folder.iterdir())
    return folder


def test_a_build_blocked_by_a_held_lock_times_out_with_one_warning(
    fresh_kernels, extensions_dir, monkeypatch
):
    # A lock that never goes away: the file a killed build leaves (PyTorch before 2.9 waits for
    # as long as it exists), held by another process (newer PyTorch holds an OS lock).
    lock = extensions_dir / "lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(kernels, "amx_available", lambda: True)
        monkeypatch.setattr(kernels, "_library_loaded", lambda: False)
        start = time.monotonic()
        with pytest.warns(RuntimeWarning, match=r"more than 3 s.*lock file.*delete it") as caught:
            assert not kernels.build(timeout=3)
        assert time.monotonic() - start < 30  # killed, not waited for
        assert len(caught) == 1, [str(w.message) for w in caught]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert not kernels.build(timeout=3)  # remembered: no second wait or warning
    finally:
        holder.kill()
        holder.wait()


HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "a")
fcntl.flock(handle, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(120)
"""


def test_a_stale_lock_file_is_named_without_waiting(fresh_kernels, extensions_dir, monkeypatch):
    # On a PyTorch whose builder waits for as long as the lock file exists, a lock file older
    # than any build is stale: reported at once, without starting the compiler.
    lock = extensions_dir / "lock"
    lock.touch()
    an_hour_ago = time.time() - 3600
    os.utime(lock, (an_hour_ago, an_hour_ago))
    monkeypatch.setattr(builder, "lock_blocks_while_it_exists", lambda: True)
    monkeypatch.setattr(builder, "_build", lambda *a: pytest.fail("must not build"))
    monkeypatch.setattr(kernels, "amx_available", lambda: True)
    monkeypatch.setattr(kernels, "_library_loaded", lambda: False)
    with pytest.warns(RuntimeWarning, match=rf"stale lock file.*delete {lock}"):
        assert not kernels.build(timeout=600)
