"""Batch sampling: patient-aware over a store's blocks, or a uniform global shuffle.

A store keeps its records in contiguous blocks (shards) with the records of one patient next to each other.
:class:`PatientBatchSampler` plans each epoch in one of two modes.

``mode="patient"`` plans over those blocks so that the loader reads whole blocks, never single records, and still
sees shuffled batches in which a patient's ECGs sit together:

1. the blocks are shuffled, and taken ``buffer_blocks`` at a time into a shuffle buffer;
2. inside a buffer, each patient's eligible records are cut into groups of ``ecgs_per_patient`` K (a last lone record
   joins the patient's previous group, so every patient with two or more ECGs in the buffer gets groups of >= 2);
3. the groups are shuffled inside the buffer, the buffers concatenated: this is the epoch's global order.

``mode="uniform"`` (what the paper's authors did) makes the epoch's global order a permutation of every eligible
record of the whole store, patients ignored; the loader then reads each batch's records on their own (merged per
shard), so memory never depends on the store's size.

Either way, the order is split into ``world_size`` contiguous, equal parts (one per rank), and each part packed into
batches of ``batch_size`` keeping groups whole (a group that does not fit the current batch waits for the next one,
while smaller groups fill the gap).

Every batch carries the records' ``positions`` (their slots in the epoch's global layout, unique within the epoch):
the augmentation draws each sample's randomness from ``SeedSequence((seed, epoch, position))``. The plan depends on
``(seed, epoch)`` only, so ``batches(epoch, start_step=s)`` resumes an epoch exactly and every rank agrees on it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ecgfast.leads import LEADS8, needed_leads

__all__ = ["Batch", "SamplerReport", "PatientBatchSampler"]

_log = logging.getLogger(__name__)

# Mixed into the epoch plan's SeedSequence so that it never coincides with a sample's (seed, epoch, position) stream.
_PLAN_STREAM = 0x5A3D1E


@dataclass(frozen=True)
class Batch:
    """One step of one rank: which records, their positions in the epoch's order, and the blocks they lie in."""

    epoch: int
    step: int
    indices: np.ndarray  # int64 (B,) record indices in the store
    positions: np.ndarray  # int64 (B,) slots in the epoch's global layout, unique within the epoch
    blocks: np.ndarray  # int64 sorted ids of the blocks the records lie in (read whole in mode "patient")

    def __len__(self) -> int:
        return len(self.indices)


@dataclass(frozen=True)
class SamplerReport:
    """What one epoch of one rank used and left out. Its ``str`` is the line logged at the end of the epoch."""

    epoch: int
    rank: int
    records: int  # in the store
    eligible: int
    short: int  # shorter than min_length
    missing_leads: int  # long enough but a required lead is not valid
    excluded: int  # held out on purpose (``exclude``)
    dropped: int  # eligible but left out by drop_last (all ranks together)
    padded: int  # repeated to fill the last steps when drop_last is False (all ranks together)
    steps: int
    paired: int  # this rank's records that share their batch with another record of the same patient

    def log(self) -> None:
        """Logs the report's line (at INFO, logger ``ecgfast.sampling``): done at the end of each epoch."""
        _log.info("%s", self)

    def __str__(self) -> str:
        return (f"epoch {self.epoch} rank {self.rank}: {self.steps} steps, {self.eligible}/{self.records} records "
                f"eligible ({self.excluded} excluded, {self.short} shorter than the window, "
                f"{self.missing_leads} missing a needed lead), "
                f"{self.dropped} dropped, {self.padded} padded, {self.paired} sharing a batch with their patient")


class PatientBatchSampler:
    """Plans each epoch's batches over a store's contiguous blocks, pairing the ECGs of a patient.

    Args:
        patient_ids: int (N,) patient of each record; a patient's records are expected next to each other.
        lengths: int (N,) valid samples of each record.
        lead_valid: bool (N, L) whether each stored lead carries signal; None means all valid.
        lead_names: the L stored lead names (needed with ``required_leads``).
        block_size: records per block (the store's ``chunk_records``); block b is records [b*size, (b+1)*size).
        batch_size: records per batch on each rank.
        ecgs_per_patient: K, the records of one patient taken together (>= 2; mode="patient").
        mode: "patient" (groups of K ECGs of a patient, shuffled within buffers of whole blocks) or "uniform" (a
            permutation of every eligible record of the store, patients ignored).
        buffer_blocks: mode "patient" only: blocks per shuffle buffer (None: the default, 8). The loader holds
            about one buffer of records (``buffer_blocks x block_size``) in memory, so it bounds how far apart in the
            store the records of one batch can lie. Mode "uniform" has no buffer and refuses one.
        seed: the plan of epoch e derives from (seed, e) only.
        drop_last: True drops the tail that does not fill a step on every rank (fewer than
            world_size * batch_size records, a different tail each epoch); False repeats records from the start of
            the epoch's order to fill it. Either way every rank gets the same number of full batches.
        rank, world_size: this process's shard of each epoch.
        min_length: records with fewer valid samples are skipped (and counted).
        required_leads: records where one of these stored leads is not valid are skipped (and counted).
        exclude: bool (N,) records held out on purpose (e.g. the downstream test patients), counted apart.
    """

    def __init__(self, patient_ids, lengths, lead_valid=None, lead_names=None, *, block_size: int, batch_size: int,
                 ecgs_per_patient: int = 2, mode: str = "patient", buffer_blocks: int | None = None, seed: int = 0,
                 drop_last: bool = True, rank: int = 0, world_size: int = 1, min_length: int = 0,
                 required_leads=(), exclude=None):
        self.patient_ids = np.asarray(patient_ids, dtype=np.int64)
        n = len(self.patient_ids)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if self.patient_ids.ndim != 1 or self.lengths.shape != (n,):
            raise ValueError(f"patient_ids and lengths must both have shape (N,), got {self.patient_ids.shape} "
                             f"and {self.lengths.shape}")
        for name, value, low in (("block_size", block_size, 1), ("batch_size", batch_size, 1),
                                 ("world_size", world_size, 1), ("min_length", min_length, 0)):
            if int(value) != value or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if mode not in ("patient", "uniform"):
            raise ValueError(f"mode must be 'patient' or 'uniform', got {mode!r}")
        if mode == "patient" and (int(ecgs_per_patient) != ecgs_per_patient or not 2 <= ecgs_per_patient <= batch_size):
            raise ValueError(f"ecgs_per_patient must be an integer from 2 to batch_size={batch_size}, "
                             f"got {ecgs_per_patient!r}")
        if mode == "uniform" and buffer_blocks is not None:
            raise ValueError(f"buffer_blocks={buffer_blocks!r} applies to mode='patient' only: mode='uniform' "
                             f"shuffles the whole store, reading records on their own; leave buffer_blocks unset")
        buffer_blocks = 8 if buffer_blocks is None else buffer_blocks
        if int(buffer_blocks) != buffer_blocks or buffer_blocks < 1:
            raise ValueError(f"buffer_blocks must be a positive integer, got {buffer_blocks!r}")
        if not (int(rank) == rank and 0 <= rank < world_size):
            raise ValueError(f"rank must be an integer in [0, world_size={world_size}), got {rank!r}")
        self.block_size, self.batch_size = int(block_size), int(batch_size)
        self.ecgs_per_patient = int(ecgs_per_patient) if mode == "patient" else 1
        self.mode, self.seed, self.drop_last = mode, int(seed), bool(drop_last)
        self.rank, self.world_size = int(rank), int(world_size)
        self.n_blocks = -(-n // self.block_size)
        self.buffer_blocks = min(int(buffer_blocks), max(self.n_blocks, 1)) if mode == "patient" else None
        self.min_length = int(min_length)
        self.required_leads = tuple(required_leads)

        short = self.lengths < self.min_length
        lead_ok = np.ones(n, dtype=bool)
        if self.required_leads:
            if lead_names is None:
                raise ValueError("required_leads needs lead_names, the names of lead_valid's columns")
            if lead_valid is not None:
                lead_valid = np.asarray(lead_valid, dtype=bool)
                if lead_valid.shape != (n, len(lead_names)):
                    raise ValueError(f"lead_valid must have shape (N, L) = ({n}, {len(lead_names)}), "
                                     f"got {lead_valid.shape}")
                cols = [list(lead_names).index(lead) for lead in needed_leads(self.required_leads, lead_names)]
                lead_ok = lead_valid[:, cols].all(axis=1)
            else:
                needed_leads(self.required_leads, lead_names)  # still refuse a lead the store cannot give
        held_out = np.zeros(n, dtype=bool) if exclude is None else np.asarray(exclude, dtype=bool)
        if held_out.shape != (n,):
            raise ValueError(f"exclude must be a bool mask of shape (N,) = ({n},), got {held_out.shape}")
        self.eligible = ~short & lead_ok & ~held_out
        self.n_excluded = int(held_out.sum())
        self.n_short = int((short & ~held_out).sum())
        self.n_missing_leads = int((~short & ~lead_ok & ~held_out).sum())
        n_eligible = int(self.eligible.sum())
        if n == 0:
            raise ValueError("the store holds no record to sample")
        if self.n_excluded == n:
            raise ValueError(f"exclude holds out all {n} records")
        if self.n_short + self.n_excluded == n:
            raise ValueError(f"no record is long enough: the views need min_length={self.min_length} samples and "
                             f"the longest of the {n} records has {self.lengths.max(initial=0)}")
        if n_eligible == 0:
            raise ValueError(f"no record is eligible: of {n} records, {self.n_excluded} are excluded, "
                             f"{self.n_short} are shorter than "
                             f"min_length={self.min_length} samples (the longest has {self.lengths.max(initial=0)}) "
                             f"and {self.n_missing_leads} lack one of the required leads {list(self.required_leads)}")
        step_records = self.batch_size * self.world_size
        if self.drop_last:
            self.steps = n_eligible // step_records
            if self.steps == 0:
                raise ValueError(f"drop_last=True leaves no full step: {n_eligible} eligible records are fewer than "
                                 f"world_size * batch_size = {step_records}; use drop_last=False or a smaller batch")
        else:
            self.steps = -(-n_eligible // step_records)
        self.n_eligible = n_eligible
        self._plan: tuple[int, list[Batch], SamplerReport] | None = None

    @classmethod
    def from_store(cls, store, spec, *, batch_size: int, augment=None, required_leads=None,
                   **kwargs) -> PatientBatchSampler:
        """A sampler over ``store``'s blocks for the view spec ``spec`` (its ``min_length`` and ``leads``).

        ``required_leads`` defaults to the stored leads the views are made of: all of I, II, V1-V6 when ``augment``
        has a VCG step (the VCG mixes them all), else the spec's leads. Other keyword arguments as in the constructor.
        """
        if required_leads is None:
            required_leads = LEADS8 if getattr(augment, "vcg", None) is not None else spec.leads
        return cls(store.patient_ids, store.lengths, store.lead_valid, store.lead_names,
                   block_size=store.chunk_records, batch_size=batch_size, min_length=spec.min_length,
                   required_leads=required_leads, **kwargs)

    def __len__(self) -> int:
        """Steps per epoch, the same on every rank."""
        return self.steps

    @property
    def whole_blocks(self) -> bool:
        """Whether batches come from shuffle buffers of whole blocks (mode "patient"), which the loader reads and keeps
        whole; otherwise (mode "uniform") it reads each batch's records on their own."""
        return self.mode == "patient"

    def block_range(self, block: int) -> tuple[int, int]:
        """The records [start, stop) of block ``block``."""
        start = int(block) * self.block_size
        return start, min(start + self.block_size, len(self.patient_ids))

    def batches(self, epoch: int, start_step: int = 0):
        """Yields this rank's :class:`Batch` es of ``epoch`` from ``start_step`` on; logs the epoch's report at the end."""
        if not 0 <= start_step <= self.steps:
            raise ValueError(f"start_step must be in [0, {self.steps}], got {start_step}")
        batches, report = self.plan(epoch)
        yield from batches[start_step:]
        report.log()

    def report(self, epoch: int) -> SamplerReport:
        """The counts of ``epoch`` on this rank: eligible, skipped (short, missing leads), dropped, padded, paired."""
        return self.plan(epoch)[1]

    def plan(self, epoch: int) -> tuple[list[Batch], SamplerReport]:
        """All of this rank's batches of ``epoch`` and the epoch's report (the last plan is cached)."""
        if self._plan is None or self._plan[0] != epoch:
            self._plan = (epoch, *self._make_plan(int(epoch)))
        return self._plan[1], self._plan[2]

    def _make_plan(self, epoch: int) -> tuple[list[Batch], SamplerReport]:
        rng = np.random.default_rng(np.random.SeedSequence((self.seed, epoch), spawn_key=(_PLAN_STREAM,)))
        order, group = self._epoch_order(rng)
        part = self.steps * self.batch_size
        if self.drop_last:
            dropped, padded = len(order) - part * self.world_size, 0
        else:
            dropped, padded = 0, part * self.world_size - len(order)
            # Repeat the epoch's order (whole groups, renumbered) until every rank's part is full.
            reps = -(-(part * self.world_size) // len(order))
            group = (group[None, :] + np.arange(reps)[:, None] * (group[-1] + 1)).ravel()
            order = np.tile(order, reps)
        lo = self.rank * part
        mine, mine_group = order[lo:lo + part], group[lo:lo + part]
        if self.mode == "patient":  # uniform groups are single records: packing would change nothing
            mine = mine[_pack(mine_group, self.batch_size)]

        b = self.batch_size
        batches = []
        for step in range(self.steps):
            idx = mine[step * b:(step + 1) * b]
            batches.append(Batch(epoch, step, idx, np.arange(lo + step * b, lo + (step + 1) * b, dtype=np.int64),
                                 np.unique(idx // self.block_size)))
        report = SamplerReport(epoch, self.rank, len(self.patient_ids), self.n_eligible, self.n_short,
                               self.n_missing_leads, self.n_excluded, dropped, padded, self.steps,
                               self._count_paired(mine))
        return batches, report

    def _epoch_order(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's global order of eligible records and the group id of each (groups numbered in order)."""
        rec = np.flatnonzero(self.eligible)
        if self.mode == "uniform":
            rec = rng.permutation(rec)
            return rec, np.arange(len(rec))
        blocks = rng.permutation(self.n_blocks)
        buffer_of_block = np.empty(self.n_blocks, dtype=np.int64)
        buffer_of_block[blocks] = np.arange(self.n_blocks) // self.buffer_blocks
        buf = buffer_of_block[rec // self.block_size]
        # Each patient's records in random order, cut into groups of K; a lone last record joins the group before.
        pid = self.patient_ids[rec]
        srt = np.lexsort((rng.random(len(rec)), pid, buf))
        rec, buf, pid = rec[srt], buf[srt], pid[srt]
        new = np.r_[True, (pid[1:] != pid[:-1]) | (buf[1:] != buf[:-1])]
        start = np.flatnonzero(new)
        size = np.diff(np.r_[start, len(rec)])
        first = np.repeat(start, size)
        size = np.repeat(size, size)
        k = self.ecgs_per_patient
        n_groups = np.maximum(size // k + (size % k >= 2), 1)
        within = np.minimum((np.arange(len(rec)) - first) // k, n_groups - 1)
        chunk = np.cumsum(np.r_[True, new[1:] | (within[1:] != within[:-1])]) - 1
        # Shuffle the groups inside each buffer; the buffers follow the shuffled block order.
        key = rng.random(chunk[-1] + 1)[chunk]
        srt = np.lexsort((np.arange(len(rec)), key, buf))
        rec, chunk = rec[srt], chunk[srt]
        group = np.cumsum(np.r_[True, chunk[1:] != chunk[:-1]]) - 1
        return rec, group

    def _count_paired(self, records: np.ndarray) -> int:
        """Records of ``records`` (batches of batch_size in a row) whose batch holds another of their patient's."""
        pid = self.patient_ids[records]
        lo = pid.min(initial=0)
        key = (np.arange(len(records)) // self.batch_size) * (pid.max(initial=0) - lo + 1) + (pid - lo)
        _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
        return int((counts[inverse] >= 2).sum())


def _pack(group: np.ndarray, batch_size: int, max_waiting: int = 4) -> np.ndarray:
    """A reordering of records (group ids ascending in runs) that keeps groups inside batches of batch_size.

    Groups are taken in order; one that does not fit the current batch waits while later, smaller ones fill the
    gap. When more than ``max_waiting`` groups wait, the oldest is split across the boundary, which keeps the
    reordering local (the loader's blocks stay few per batch).
    """
    start = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    stop = np.r_[start[1:], len(group)]
    size = (stop - start).tolist()
    out: list[int] = []
    waiting: list[int] = []
    fill = 0
    for g, s in enumerate(size):
        if not waiting and fill + s <= batch_size:  # the common case, kept cheap
            out.append(g)
            fill = (fill + s) % batch_size
            continue
        waiting.append(g)
        while waiting:
            fit = next((i for i, w in enumerate(waiting) if fill + size[w] <= batch_size), None)
            if fit is None:
                if len(waiting) <= max_waiting:
                    break
                fit = 0
            w = waiting.pop(fit)
            out.append(w)
            fill = (fill + size[w]) % batch_size
    out.extend(waiting)
    chosen = np.asarray(out, dtype=np.int64)
    lens = (stop - start)[chosen]
    return np.repeat(start[chosen] - np.cumsum(np.r_[0, lens[:-1]]), lens) + np.arange(len(group))
