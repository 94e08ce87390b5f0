"""Build the next training batches in a background thread while the current step runs.

A batch is a pure function of (seed, step) (indexing the packed blocks, then masking or UL2
corruption on the host), so it can be built ahead without changing a single number: the thread
makes the batches of steps start, start+1, ... in order, `depth` ahead of the loop. On a GPU the
host work then overlaps the kernels of the step before instead of leaving the GPU idle (measured
on an H100 with BERT-base: 7-9% of step time spent building batches in the loop, see
docs/benchmarks.md), and pinned host memory lets the copy to the device run asynchronously. The
trainer reports the time it still waits for a batch as `data_share`.

Without a GPU there is nothing to overlap with: the host computes the step itself, and a second
thread's OpenMP team (spinning after each masking op) only competes with the step's threads for
the cores (on the 2-core dev box the path benchmarks turned erratic). So `background=False`, the
trainer's choice on CPU, builds each batch when it is asked for, through the same interface.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import torch


def _pinned(item: Any) -> Any:
    if isinstance(item, torch.Tensor):
        return item.pin_memory()
    if isinstance(item, dict):
        return {k: _pinned(v) for k, v in item.items()}
    if isinstance(item, tuple):
        return tuple(_pinned(v) for v in item)
    return item


class Prefetcher:
    """`get(step)` returns `make(step)` for start <= step < stop, built `depth` steps ahead.

    Errors raised by `make` are re-raised by `get` in the training thread. `close()` stops the
    worker (the loop may stop early: a signal, a NaN, an exception); it is idempotent.
    """

    def __init__(
        self,
        make: Callable[[int], Any],
        start: int,
        stop: int,
        *,
        pin: bool = False,
        depth: int = 2,
        background: bool = True,
    ):
        self._make, self._pin = make, pin
        self._next, self._stop_at = start, stop
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = None
        if background:
            self._thread = threading.Thread(target=self._work, args=(start, stop), name="raptr-prefetch", daemon=True)
            self._thread.start()

    def _put(self, entry: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self, start: int, stop: int) -> None:
        try:
            for step in range(start, stop):
                item = self._make(step)
                if self._pin:
                    item = _pinned(item)
                if not self._put((step, item, None)):
                    return
        except BaseException as e:  # handed to the training thread, which re-raises it
            self._put((None, None, e))

    def get(self, step: int) -> Any:
        if self._thread is None:  # inline: the same order contract, built on demand
            if step != self._next or step >= self._stop_at:
                raise RuntimeError(f"prefetcher out of order: asked for step {step}, next is {self._next}")
            self._next += 1
            item = self._make(step)
            return _pinned(item) if self._pin else item
        got, item, err = self._q.get()
        if err is not None:
            raise err
        if got != step:  # the loop and the worker walk the same steps in order; anything else is a bug
            raise RuntimeError(f"prefetcher out of order: asked for step {step}, built {got}")
        return item

    def close(self) -> None:
        self._stop.set()
        if self._thread is None:
            return
        while True:  # unblock a worker waiting on a full queue
            try:
                self._q.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
