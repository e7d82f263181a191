"""`in_streams`: a batch's parts run side by side, each on its own thread with its share of the
intra-op threads, and the result is what encoding the parts one after the other gives."""

import copy
import threading
import time

import pytest
import torch

import mmcl
from bf16_error import assert_as_close_as_pytorch_bf16
from mmcl.nn import accelerate
from mmcl.nn.streams import in_streams, threads_per_stream


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["tiny-vit", "tiny-rn"])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16 accelerated"])
def test_equals_the_parts_encoded_in_turn_at_each_streams_thread_count(
    name, precision, two_threads
):
    torch.manual_seed(0)
    exact_model = mmcl.create_model(name).requires_grad_(False)
    model = plain = exact_model
    if precision != "fp32":
        model = plain = copy.deepcopy(exact_model).to(torch.bfloat16)
    if precision.endswith("accelerated"):
        model = accelerate(copy.deepcopy(plain))
    images = torch.randn(7, 3, model.image_size, model.image_size)
    with torch.inference_mode():
        streamed = in_streams(model.encode_image, images, streams=2)
        torch.set_num_threads(threads_per_stream(2))  # 1: what each worker runs with
        expected = torch.cat([model.encode_image(part) for part in images.tensor_split(2)])
    assert torch.equal(streamed, expected)
    # And the same function as the one-call encoding (to the precision's rounding).
    with torch.inference_mode():
        whole, exact = model.encode_image(images), exact_model.encode_image(images)
        pytorch_bf16 = plain.encode_image(images)
    if precision == "fp32":
        torch.testing.assert_close(streamed, whole, rtol=1e-5, atol=1e-5)
    else:
        assert_as_close_as_pytorch_bf16(streamed, exact, pytorch_bf16)
        assert_as_close_as_pytorch_bf16(whole, exact, pytorch_bf16)


def test_parts_run_on_their_own_threads_with_their_share_of_threads(two_threads):
    seen, barrier = [], threading.Barrier(2, timeout=10)

    def record(part):
        barrier.wait()  # both parts are running at the same time, or this times out
        seen.append((threading.get_ident(), torch.get_num_threads(), len(part)))
        return part + 1

    with torch.no_grad():
        result = in_streams(record, torch.zeros(5, 3), streams=2)
    assert torch.equal(result, torch.ones(5, 3))
    assert len({ident for ident, _, _ in seen}) == 2
    assert threading.get_ident() not in {ident for ident, _, _ in seen}
    assert sorted(threads for _, threads, _ in seen) == [1, 1]
    assert sorted(size for _, _, size in seen) == [2, 3]
    assert torch.get_num_threads() == 2  # the caller's own setting is untouched
    started_later = []
    thread = threading.Thread(target=lambda: started_later.append(torch.get_num_threads()))
    thread.start(), thread.join()
    assert started_later == [2]  # and so is the count threads started afterwards begin with


def test_a_stream_inside_a_stream_runs_plainly(two_threads):
    inner_threads = []

    def inner(part):
        inner_threads.append(threading.get_ident())
        return part + 1

    def outer(part):
        return in_streams(inner, part, streams=2)  # would wait on the busy workers

    with torch.no_grad():
        for _ in range(2):
            assert torch.equal(in_streams(outer, torch.zeros(4), streams=2), torch.ones(4))
    assert threading.get_ident() not in inner_threads and len(inner_threads) == 4


def test_grad_and_inference_modes_reach_the_workers(two_threads):
    modes = []

    def record(part):
        modes.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        return part

    with torch.inference_mode():
        in_streams(record, torch.zeros(4), streams=2)
    with torch.no_grad():
        in_streams(record, torch.zeros(4), streams=2)
    assert modes == [(False, True)] * 2 + [(False, False)] * 2


@pytest.mark.parametrize("why", ["gradients", "autocast", "one item", "one stream", "one thread"])
def test_the_plain_call_where_splitting_would_change_the_meaning(why, two_threads):
    calls = []

    def record(part):
        calls.append((threading.get_ident(), part.shape[0]))
        return part * 2

    batch, streams = torch.ones(4, requires_grad=True), 2
    if why == "gradients":
        result = in_streams(record, batch, streams)
        result.sum().backward()  # the graph is the caller's
        assert torch.equal(batch.grad, torch.full((4,), 2.0))
    elif why == "autocast":
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            in_streams(record, batch, streams)
    elif why == "one item":
        with torch.no_grad():
            in_streams(record, batch[:1], streams)
    elif why == "one thread":  # the caller's thread budget: two streams would use two
        torch.set_num_threads(1)
        with torch.no_grad():
            in_streams(record, batch, streams)
    else:
        with torch.no_grad():
            in_streams(record, batch, 1)
    assert calls == [(threading.get_ident(), 1 if why == "one item" else 4)]


def test_errors_reach_the_caller_once_every_part_has_finished(two_threads):
    finished = []

    def broken(part):
        if part[0] == 0:
            raise RuntimeError("part failed")
        time.sleep(0.2)  # the other part is still running when the first one fails
        finished.append(True)
        return part

    with torch.no_grad(), pytest.raises(RuntimeError, match="part failed"):
        in_streams(broken, torch.arange(4.0), streams=2)
    assert finished == [True]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="streams must be an integer >= 1"):
            in_streams(lambda x: x, torch.zeros(4), streams=bad)
