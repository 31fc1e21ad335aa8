"""ECGLoader: store reads -> fused augmentation in threads -> (pinned) batches on the device, prefetched.

One background thread produces batches into a bounded queue while the training loop consumes them:

* the records of the next few batches are read ahead in an I/O thread pool (the store decodes its shards in its own
  threads). How follows the sampler's plan: in mode "patient" its batches come from shuffle buffers of contiguous
  blocks, which are read whole with ``store.read_block(start, stop, raw=True)``, kept while later batches still
  need them and dropped after their last use; in mode "uniform" (a global shuffle) each batch's records are read on
  their own with ``store.read(indices, raw=True)``, split by shard into parallel reads (the store merges the reads
  of one shard), and nothing outlives its batch;
* each batch's int16 rows are turned into float32 views by the fused augmentation
  (``ecgfast.augment.augment_batch``: nogil Numba kernels over ``threads`` threads), written straight into the
  output buffer: pinned host memory when the device is a GPU, copied there on a side stream so that the copy
  overlaps the training step.

Any error of that thread (a failed read, a failing device) is raised in the training loop at the batch it belongs
to. The same code runs on a CPU-only machine (no worker processes). It is a ``torch.utils.data.IterableDataset``,
so ``DataLoader(loader, batch_size=None, num_workers=0)`` wraps it unchanged (it batches and prefetches itself;
worker processes would each replay the whole epoch).
"""

from __future__ import annotations

import contextlib
import os
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

_IO_THREADS = 4  # reads in flight: hides an object store's request latency behind other reads' transfers


class ECGLoader(torch.utils.data.IterableDataset):
    """Augmented batches of a store, each ``{"x", "patient_id", "index", "lead_valid"}``, all on ``device``.

    ``x`` is float32 (B, C, L, T): C views (``spec.copies``) of each record's ``spec.leads`` x ``spec.window``;
    ``patient_id`` and ``index`` (the record's row in the store) are int64 (B,); ``lead_valid`` bool (B, L) says
    which of the spec's leads carried signal in the store (always True for the leads the sampler requires).

    Args:
        store: an ``ECGStore`` (or any object with its ``lead_names``, ``fs``, ``gain_uv``, ``patient_ids``,
            ``lengths``, ``lead_valid``, ``chunk_records``, ``n_samples`` and ``read_block(start, stop, raw=True,
            out=buffer)`` for mode "patient" or ``read(indices, raw=True)`` for mode "uniform").
        spec: the ``ecgfast.views.ViewSpec`` of the views.
        augment: the ``ecgfast.augment.Augment`` applied to each view.
        batch_size: records per batch (on this rank).
        sampler: a ``PatientBatchSampler``; default ``PatientBatchSampler.from_store(store, spec, augment=augment)``
            with this batch size and seed.
        device: where the batches go. ``"cuda"`` without an index is this process's GPU: ``cuda:$LOCAL_RANK``
            under torchrun (when that GPU is visible), else ``torch.cuda.current_device()``; a CUDA device on a
            machine without CUDA is a ValueError here, not an error of the first batch.
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
        self.device = _resolve_device(device)
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
                item = _next(ready, producer)
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
        """Runs in the background thread: reads ahead, augments, copies, and queues each batch in order.

        Everything it does, from its first CUDA call on, sits inside the ``try``: an error becomes the consumer's
        next item instead of a thread that dies while the consumer waits.
        """

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    pass
            return False

        cuda = self.device.type == "cuda"
        io = ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="ecgfast-read")
        reads = (_BlockReads if self.sampler.whole_blocks else _RecordReads)(self.store, self.sampler, todo, io)
        try:
            # The current CUDA device is per thread and starts at 0: select ours, so that the side stream and the
            # pinned buffers belong to this rank's GPU.
            with torch.cuda.device(self.device) if cuda else contextlib.nullcontext():
                side = torch.cuda.Stream(self.device) if cuda else None
                hosts = _HostBuffers((self.batch_size, *self.spec.shape), self.prefetch + 2, self.pin_memory)
                raw = None  # the batch's int16 rows, reused: a fresh buffer per batch would pay its page faults again
                for i, b in enumerate(todo):
                    for ahead in range(i, min(i + self.prefetch + 2, len(todo))):
                        reads.schedule(ahead)
                    raw = reads.rows(i, raw)
                    host = hosts.take()
                    augment_batch(raw, self.lengths[b.indices], gain_uv=self.store.gain_uv,
                                  store_leads=self.lead_names, spec=self.spec, augment=self.augment, seed=self.seed,
                                  epoch=b.epoch, positions=b.positions, out=host.numpy(), threads=self.threads)
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


def _next(ready: queue.Queue, producer: threading.Thread):
    """The producer's next item; should the thread ever end without one, an error instead of a wait forever."""
    while True:
        try:
            return ready.get(timeout=0.1)
        except queue.Empty:
            if not producer.is_alive():
                try:
                    return ready.get_nowait()
                except queue.Empty:
                    raise RuntimeError("the loader's producer thread ended without a batch or an error") from None


def _resolve_device(device) -> torch.device:
    """``device`` as a ``torch.device``; an unindexed CUDA device becomes this process's GPU (see ECGLoader)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device={device!r} is not a device: {err}") from None
    if dev.type != "cuda":
        return dev
    if not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} needs CUDA, which this machine (or this build of torch) does not "
                         f"have; pass device='cpu'")
    count = torch.cuda.device_count()
    if dev.index is None:
        local = os.environ.get("LOCAL_RANK", "")
        # A LOCAL_RANK beyond the visible GPUs means each process sees only its own (CUDA_VISIBLE_DEVICES per rank).
        index = int(local) if local.isdigit() and int(local) < count else torch.cuda.current_device()
        dev = torch.device("cuda", index)
    if dev.index >= count:
        raise ValueError(f"device={str(device)!r}: this process sees {count} GPU(s), cuda:0 to cuda:{count - 1}")
    return dev


class _BlockReads:
    """Mode "patient": the batches' blocks read whole a few batches ahead, each kept until its last batch is done
    (about one shuffle buffer of records), the batch's rows copied out of them. A dropped block's buffer takes the
    next block read (``read_block(..., out=)``): a fresh one would pay its page faults again."""

    def __init__(self, store, sampler, todo, io: ThreadPoolExecutor):
        self.store, self.sampler, self.todo, self.io = store, sampler, todo, io
        self.last_use = {int(blk): i for i, b in enumerate(todo) for blk in b.blocks}
        self.cache: dict = {}  # block -> (future of its int16 records, the buffer they are read into)
        self.free: list[np.ndarray] = []  # buffers of dropped blocks
        self.shape = (sampler.block_size, len(store.lead_names), store.n_samples)

    def schedule(self, i: int) -> None:
        for blk in self.todo[i].blocks.tolist():
            if blk not in self.cache:
                start, stop = self.sampler.block_range(blk)
                buffer = self.free.pop() if self.free else np.empty(self.shape, np.int16)
                future = self.io.submit(self.store.read_block, start, stop, raw=True, out=buffer[: stop - start])
                self.cache[blk] = (future, buffer)

    def rows(self, i: int, raw: np.ndarray | None) -> np.ndarray:
        """Batch ``i``'s int16 rows (B, L, T) in ``raw`` (allocated if None).

        Row by row: fancy indexing would copy each block's rows twice, through a fresh temporary.
        """
        batch = self.todo[i]
        blocks = {blk: self.cache[blk][0].result() for blk in batch.blocks.tolist()}
        for row, index in enumerate(batch.indices.tolist()):
            block, local = divmod(index, self.sampler.block_size)
            if raw is None:
                raw = np.empty((len(batch), *blocks[block].shape[1:]), dtype=blocks[block].dtype)
            raw[row] = blocks[block][local]
        for blk in blocks:
            if self.last_use[blk] == i:
                self.free.append(self.cache.pop(blk)[1])
        return raw


class _RecordReads:
    """Mode "uniform": each batch's records read on their own a few batches ahead, in up to ``_IO_THREADS`` parallel
    reads of whole shards' worth of its records (the store merges the reads that fall in one shard)."""

    def __init__(self, store, sampler, todo, io: ThreadPoolExecutor):
        self.store, self.sampler, self.todo, self.io = store, sampler, todo, io
        self.pending: dict[int, list] = {}  # batch -> [(rows of the batch, future of their int16 records)]

    def schedule(self, i: int) -> None:
        if i in self.pending:
            return
        indices = self.todo[i].indices
        shard = indices // self.sampler.block_size
        order = np.argsort(shard, kind="stable")
        shard = shard[order]
        # Part of each record: that of its shard's first record, so that no shard is split between two reads.
        first = np.r_[True, shard[1:] != shard[:-1]]
        part = np.maximum.accumulate(np.where(first, np.arange(len(order)) * _IO_THREADS // len(order), 0))
        cuts = np.flatnonzero(np.diff(part)) + 1
        self.pending[i] = [(rows, self.io.submit(self.store.read, indices[rows], raw=True))
                           for rows in np.split(order, cuts)]

    def rows(self, i: int, raw: np.ndarray | None) -> np.ndarray:
        """Batch ``i``'s int16 rows (B, L, T) in ``raw`` (allocated if None)."""
        for rows, future in self.pending.pop(i):
            part = future.result()
            if raw is None:
                raw = np.empty((len(self.todo[i]), *part.shape[1:]), dtype=part.dtype)
            raw[rows] = part
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
