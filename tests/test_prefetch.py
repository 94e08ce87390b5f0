"""The input pipeline's overlap: batches built ahead in a thread, and the sync-free label gather."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from raptr_cli.models.common import gather_labelled, labelled_index
from raptr_cli.train.prefetch import Prefetcher


def test_prefetcher_yields_every_step_in_order_from_start():
    with Prefetcher(lambda s: {"x": torch.full((2,), s)}, 5, 12) as p:
        got = [int(p.get(s)["x"][0]) for s in range(5, 12)]
    assert got == list(range(5, 12))


def test_prefetcher_builds_ahead_while_the_consumer_works():
    built: list[int] = []

    def make(step: int) -> int:
        built.append(step)
        return step

    with Prefetcher(make, 0, 100, depth=3) as p:
        assert p.get(0) == 0
        deadline = time.monotonic() + 5
        # 1 handed out, 3 queued, 1 built and waiting for a free slot
        while len(built) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert built == [0, 1, 2, 3, 4]  # bounded: never more than depth + 1 ahead


def test_prefetcher_reraises_the_workers_error_in_the_caller():
    def make(step: int) -> int:
        if step == 2:
            raise ValueError("corrupt block 2")
        return step

    with Prefetcher(make, 0, 10) as p:
        assert p.get(0) == 0 and p.get(1) == 1
        with pytest.raises(ValueError, match="corrupt block 2"):
            p.get(2)


def test_prefetcher_rejects_out_of_order_requests():
    with Prefetcher(lambda s: s, 0, 10) as p:
        with pytest.raises(RuntimeError, match="out of order"):
            p.get(3)


def test_prefetcher_close_stops_a_blocked_worker_early():
    p = Prefetcher(lambda s: s, 0, 10**9, depth=1)
    assert p.get(0) == 0
    p.close()
    assert not any(t.name == "raptr-prefetch" and t.is_alive() for t in threading.enumerate())


def test_prefetcher_pins_tensors_when_asked():
    if not torch.cuda.is_available():
        pytest.skip("pinned memory needs CUDA")
    with Prefetcher(lambda s: ({"x": torch.zeros(3)}, 7), 0, 1, pin=True) as p:
        batch, n = p.get(0)
    assert batch["x"].is_pinned() and n == 7


def test_gather_labelled_with_a_host_index_equals_boolean_indexing():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, generator=g, requires_grad=True)
    labels = torch.randint(0, 9, (3, 5), generator=g)
    labels[torch.rand(3, 5, generator=g) < 0.6] = -100
    sel = labels != -100
    h, y = gather_labelled(x, labels, labelled_index(labels))
    h2, y2 = gather_labelled(x, labels)
    assert torch.equal(h, x[sel]) and torch.equal(y, labels[sel])
    assert torch.equal(h2, h) and torch.equal(y2, y)
    h.sum().backward()
    assert torch.equal(x.grad, sel[..., None].expand_as(x).float())  # gradient only where labelled


def test_gather_labelled_with_no_labels_is_empty():
    x = torch.randn(2, 3, 4)
    labels = torch.full((2, 3), -100)
    h, y = gather_labelled(x, labels, labelled_index(labels))
    assert h.shape == (0, 4) and y.shape == (0,)


def test_inline_prefetcher_builds_on_demand_with_the_same_contract():
    built: list[int] = []

    def make(step: int) -> int:
        built.append(step)
        return step * 10

    with Prefetcher(make, 3, 6, background=False) as p:
        assert built == []  # nothing ahead of time
        assert [p.get(s) for s in (3, 4)] == [30, 40] and built == [3, 4]
        with pytest.raises(RuntimeError, match="out of order"):
            p.get(9)
