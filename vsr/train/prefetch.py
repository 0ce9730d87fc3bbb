"""Degraded training batches made on a worker thread, ahead of the training step.

``vsr train --degrade SPEC`` degrades whole HR crops (blur, downscale, noise, JPEG, H.264 ...)
through :class:`vsr.degradations.DegradationChain`, whose codecs run on a thread pool and
release the GIL. This module overlaps that work with the training step: one producer thread
makes the batches of the coming steps, in order, into a bounded queue (``depth`` batches ahead),
its crops coded on one pool of ``workers`` threads that lives as long as the feed (started on
first use, shut down by :meth:`DegradedBatches.close`), not one pool per batch.
Each batch is a pure function of (seed, step, stream), like the bicubic-only batches.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from vsr.threads import Worker, start_all, stop_and_wait
from vsr.train.data import PatchSampler, step_generator


@dataclass
class DegradedBatch:
    """One step's share of the batch: uint8 HR crops (n, 3, P, P), degraded LR (n, 3, P/s,
    P/s), and the clean LR of the chain's own downscale where it is not MATLAB bicubic; with
    ``pairs``, each crop's second observation and its shift
    (:meth:`vsr.degradations.DegradationChain.apply_image_pairs`)."""

    step: int
    hr: torch.Tensor
    lr: torch.Tensor
    clean: torch.Tensor | None
    prev: torch.Tensor | None = None
    shifts: torch.Tensor | None = None


class DegradedBatches:
    """Produce the batches of steps ``first`` .. ``last - 1`` on a thread; :meth:`get` them in
    order. ``rows`` picks this rank's share of each global batch of ``batch`` crops."""

    def __init__(self, sampler: PatchSampler, chain: Any, scale: int, *, seed: int, batch: int,
                 rows: slice, stream: int, first: int, last: int, depth: int = 2,
                 workers: int | None = None, pin: bool = False, pairs: bool = False) -> None:
        from vsr.degradations import default_workers  # here: it imports vsr.train itself

        self.sampler = sampler
        self.chain = chain
        self.clean = None if chain.downscale == "bicubic" else chain.clean()
        self.scale = scale
        self.seed, self.batch, self.rows, self.stream = seed, batch, rows, stream
        n_workers = workers if workers is not None else default_workers()
        # ThreadPoolExecutor starts its threads on the first submit, none for a chain
        # without codec, JPEG or late noise stages
        self._pool = (ThreadPoolExecutor(max_workers=n_workers,
                                         thread_name_prefix="vsr-degrade-crop")
                      if n_workers > 1 else None)
        self.pin = pin
        self.pairs = pairs
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._producer = Worker("vsr-degrade", lambda: self._produce(first, last), self._stop)

    def start(self) -> None:
        """Start making batches; call it inside the ``try`` whose clean-up calls :meth:`close`
        (vsr.threads: a stop signal between the two must not leave the producer running)."""
        start_all([self._producer])

    def make(self, step: int) -> DegradedBatch:
        """The batch of ``step`` (on the calling thread)."""
        hr = self.sampler.crops(self.batch, step_generator(self.seed, step), self.rows)
        gen = step_generator(self.seed, step, self.stream)
        apply = self.chain.apply_image_pairs if self.pairs else self.chain.apply_images
        got = apply(hr, self.scale, generator=gen, workers=1, executor=self._pool)
        lr, prev, shifts = (got.lr, got.prev, got.shifts) if self.pairs else (got, None, None)
        clean = self.clean.apply_images(hr, self.scale) if self.clean is not None else None
        if self.pin:
            hr, lr = hr.pin_memory(), lr.pin_memory()
            clean = clean.pin_memory() if clean is not None else None
            prev = prev.pin_memory() if prev is not None else None
        return DegradedBatch(step, hr, lr, clean, prev, shifts)

    def _produce(self, first: int, last: int) -> None:
        for step in range(first, last):
            try:
                item: DegradedBatch | BaseException = self.make(step)
            except BaseException as exc:  # handed to the consumer, raised there
                item = exc
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._stop.is_set() or isinstance(item, BaseException):
                return

    def get(self, step: int) -> DegradedBatch:
        """The batch of ``step``; raises what the producer raised (RuntimeError if it is not
        running: never started, or closed)."""
        while True:
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._producer.is_alive() and self._queue.empty():
                    raise RuntimeError(f"no producer for the degraded batch of step {step}: "
                                       "start() was not called or the feed was closed") from None
        if isinstance(item, BaseException):
            raise item
        if item.step != step:
            raise RuntimeError(f"degraded batch of step {item.step} arrived for step {step}")
        return item

    def close(self) -> None:
        """Stop the producer and the crops' threads (idempotent). The producer ends within
        its current batch: it puts with a timeout and looks at the stop between tries."""
        try:
            stop_and_wait([self._producer], self._stop, timeout=None)
            if self._producer.ended.is_set():
                self._producer.join()  # past its last line: returns at once
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
