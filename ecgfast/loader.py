"""ECGLoader: store blocks -> fused augmentation in threads -> (pinned) batches on the device, prefetched.

One background thread produces batches into a bounded queue while the training loop consumes them:

* the sampler's plan says which contiguous blocks each batch needs; blocks are read whole with
  ``store.read_block(start, stop, raw=True)`` a few batches ahead, four at a time in an I/O thread pool (the store
  decodes its shards in threads), kept while later batches still need them and dropped after their last use;
* each batch's int16 rows are gathered from the cached blocks and turned into float32 views by the fused
  augmentation (``ecgfast.augment.augment_batch``: nogil Numba kernels over ``threads`` threads), written straight
  into the output buffer: pinned host memory when the device is a GPU, copied there on a side stream so that the
  copy overlaps the training step.

The same code runs on a CPU-only machine (no worker processes). It is a ``torch.utils.data.IterableDataset``, so
``DataLoader(loader, batch_size=None, num_workers=0)`` wraps it unchanged (it batches and prefetches itself; worker
processes would each replay the whole epoch).
"""

from __future__ import annotations

import queue
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ecgfast.augment import augment_batch
from ecgfast.leads import needed_leads
from ecgfast.sampling import PatientBatchSampler

__all__ = ["ECGLoader"]

_IO_THREADS = 4  # blocks read at once: hides an object store's request latency behind other blocks' transfers


class ECGLoader(torch.utils.data.IterableDataset):
    """Augmented batches of a store, each ``{"x", "patient_id", "index", "lead_valid"}``, all on ``device``.

    ``x`` is float32 (B, C, L, T): C views (``spec.copies``) of each record's ``spec.leads`` x ``spec.window``;
    ``patient_id`` and ``index`` (the record's row in the store) are int64 (B,); ``lead_valid`` bool (B, L) says
    which of the spec's leads carried signal in the store (always True for the leads the sampler requires).

    Args:
        store: an ``ECGStore`` (or any object with its ``read_block(start, stop, raw=True)``, ``lead_names``, ``fs``,
            ``gain_uv``, ``patient_ids``, ``lengths``, ``lead_valid`` and ``chunk_records``).
        spec: the ``ecgfast.views.ViewSpec`` of the views.
        augment: the ``ecgfast.augment.Augment`` applied to each view.
        batch_size: records per batch (on this rank).
        sampler: a ``PatientBatchSampler``; default ``PatientBatchSampler.from_store(store, spec, augment=augment)``
            with this batch size and seed.
        device: where the batches go.
        threads: threads of the fused augmentation (default: the cores available); results do not depend on it.
        prefetch: batches produced ahead of the consumer.
        seed: the augmentation's seed (and the default sampler's): sample randomness is
            ``SeedSequence((seed, epoch, position))``.
        pin_memory: fill pinned host buffers before the copy to the GPU; default: when ``device`` is CUDA.
    """

    def __init__(self, store, spec, augment, *, batch_size: int, sampler: PatientBatchSampler | None = None,
                 device="cpu", threads: int | None = None, prefetch: int = 2, seed: int = 0,
                 pin_memory: bool | None = None):
        if int(prefetch) != prefetch or prefetch < 1:
            raise ValueError(f"prefetch must be a positive integer, got {prefetch!r}")
        if threads is not None and (int(threads) != threads or threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
        if float(store.fs) != float(spec.fs):
            raise ValueError(f"the view spec is for {spec.fs} Hz but the store holds {store.fs} Hz records")
        self.store, self.spec, self.augment = store, spec, augment
        self.device = torch.device(device)
        self.threads, self.prefetch, self.seed = threads, int(prefetch), int(seed)
        if pin_memory and self.device.type != "cuda":
            raise ValueError(f"pin_memory=True needs a CUDA device, got device={str(self.device)!r}")
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else bool(pin_memory)
        self.lead_names = tuple(store.lead_names)
        if sampler is None:
            sampler = PatientBatchSampler.from_store(store, spec, batch_size=batch_size, augment=augment, seed=seed)
        elif sampler.batch_size != batch_size:
            raise ValueError(f"batch_size={batch_size} differs from the sampler's batch_size={sampler.batch_size}")
        self.sampler = sampler
        self.batch_size = int(batch_size)
        self.patient_ids = np.asarray(store.patient_ids, dtype=np.int64)
        self.lengths = np.asarray(store.lengths, dtype=np.int64)
        stored_valid = np.asarray(store.lead_valid, dtype=bool)
        # A lead of the spec is valid where every stored lead it is made of is.
        sources = [[self.lead_names.index(s) for s in needed_leads([lead], self.lead_names)] for lead in spec.leads]
        self.lead_valid = np.stack([stored_valid[:, cols].all(axis=1) for cols in sources], axis=1)
        self._epoch, self._step = 0, 0

    def __len__(self) -> int:
        """Batches per epoch."""
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        """Start the next iteration at the beginning of ``epoch`` (iterating also moves on by itself)."""
        self._epoch, self._step = int(epoch), 0

    def state_dict(self) -> dict:
        """Where the next batch comes from: ``{"epoch", "step"}``; batches already yielded count as consumed."""
        if self._step >= len(self):
            return {"epoch": self._epoch + 1, "step": 0}
        return {"epoch": self._epoch, "step": self._step}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``'s (epoch, step): the batches that follow are identical to the uninterrupted run's."""
        epoch, step = int(state["epoch"]), int(state["step"])
        if not 0 <= step <= len(self):
            raise ValueError(f"state step {step} is outside the epoch's {len(self)} steps")
        self._epoch, self._step = epoch, step

    def __iter__(self):
        """The rest of the current epoch, from the saved step; at its end the loader moves to the next epoch."""
        epoch, start = self._epoch, self._step
        batches, report = self.sampler.plan(epoch)
        todo = batches[start:]
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        producer = threading.Thread(target=self._produce, args=(todo, ready, stop), daemon=True,
                                    name="ecgfast-loader")
        producer.start()
        try:
            for _ in todo:
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                out, copied = item
                if copied is not None:  # the side stream's copy must land before the consumer's stream reads it
                    stream = torch.cuda.current_stream(self.device)
                    stream.wait_event(copied)
                    for t in out.values():
                        t.record_stream(stream)
                self._step += 1
                yield out
            report.log()
            self._epoch, self._step = epoch + 1, 0
        finally:
            stop.set()
            producer.join()

    def _produce(self, todo, ready: queue.Queue, stop: threading.Event) -> None:
        """Runs in the background thread: reads blocks ahead, augments, copies, and queues each batch in order."""

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        last_use = {int(blk): i for i, b in enumerate(todo) for blk in b.blocks}
        cache: dict = {}
        cuda = self.device.type == "cuda"
        side = torch.cuda.Stream(self.device) if cuda else None
        hosts = _HostBuffers((self.batch_size, *self.spec.shape), self.prefetch + 2, self.pin_memory)
        raw = None  # the gathered int16 rows, reused: a fresh buffer per batch would pay its page faults again
        io = ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="ecgfast-read")
        try:
            for i, b in enumerate(todo):
                for ahead in todo[i:i + self.prefetch + 2]:
                    for blk in ahead.blocks:
                        if int(blk) not in cache:
                            cache[int(blk)] = io.submit(self._read_block, int(blk))
                raw = self._gather(b, cache, raw)
                for blk in b.blocks:
                    if last_use[int(blk)] == i:
                        del cache[int(blk)]
                host = hosts.take()
                augment_batch(raw, self.lengths[b.indices], gain_uv=self.store.gain_uv, store_leads=self.lead_names,
                              spec=self.spec, augment=self.augment, seed=self.seed, epoch=b.epoch,
                              positions=b.positions, out=host.numpy(), threads=self.threads)
                out = {"x": host, "patient_id": torch.from_numpy(self.patient_ids[b.indices]),
                       "index": torch.from_numpy(b.indices.astype(np.int64)),
                       "lead_valid": torch.from_numpy(self.lead_valid[b.indices])}
                copied = None
                if cuda:
                    with torch.cuda.stream(side):
                        out = {k: v.to(self.device, non_blocking=True) for k, v in out.items()}
                        copied = torch.cuda.Event()
                        copied.record(side)
                    hosts.copying(host, copied)
                elif self.device.type != "cpu":
                    out = {k: v.to(self.device) for k, v in out.items()}
                del host  # the consumer's references alone decide when the buffer is reused
                if not put((out, copied)):
                    return
                del out
        except BaseException as err:  # handed to the consumer, which raises it in the training loop
            put(err)
        finally:
            io.shutdown(wait=True, cancel_futures=True)

    def _read_block(self, block: int) -> np.ndarray:
        start, stop = self.sampler.block_range(block)
        return self.store.read_block(start, stop, raw=True)

    def _gather(self, batch, cache, raw) -> np.ndarray:
        """The batch's int16 rows (B, L, T), copied out of its cached blocks into ``raw`` (allocated if None).

        Row by row: fancy indexing would copy each block's rows twice, through a fresh temporary.
        """
        blocks = {int(blk): cache[int(blk)].result() for blk in batch.blocks}
        for row, index in enumerate(batch.indices.tolist()):
            block, local = divmod(index, self.sampler.block_size)
            if raw is None:
                raw = np.empty((len(batch), *blocks[block].shape[1:]), dtype=blocks[block].dtype)
            raw[row] = blocks[block][local]
        return raw


class _HostBuffers:
    """The batches' host memory, reused instead of allocated (a fresh 40 MB buffer costs its page faults each time).

    A buffer goes back to work once the consumer holds no tensor (nor view) of it, or, pinned for a GPU, once its
    copy to the device is done: the consumer only ever sees the device tensor then.
    """

    def __init__(self, shape, count: int, pinned: bool):
        self.shape, self.pinned = shape, pinned
        self.slots: list = [None] * count  # (buffer, a weak reference to the tensor lent out | the copy's event)

    def take(self) -> torch.Tensor:
        for i, slot in enumerate(self.slots):
            if slot is None:
                buffer = torch.empty(self.shape, dtype=torch.float32, pin_memory=self.pinned)
            elif self.pinned:
                buffer, event = slot
                if event is not None and not event.query():
                    continue
            else:
                buffer, lent = slot
                if lent() is not None:
                    continue
            if self.pinned:
                self.slots[i] = (buffer, None)
                return buffer
            # Each loan is a new array over the buffer's memory; the tensor lent out (and any view of it) keeps that
            # array alive through its storage, which is what the weak reference follows.
            loan = buffer.numpy()[...]
            self.slots[i] = (buffer, weakref.ref(loan))
            return torch.from_numpy(loan)
        return torch.empty(self.shape, dtype=torch.float32, pin_memory=self.pinned)  # all in use: one more

    def copying(self, tensor: torch.Tensor, event) -> None:
        """Marks a pinned buffer busy until ``event`` (its copy to the device) has happened."""
        for i, slot in enumerate(self.slots):
            if slot is not None and slot[0] is tensor:
                self.slots[i] = (tensor, event)
