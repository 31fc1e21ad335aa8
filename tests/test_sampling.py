import logging
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest

from ecgfast.leads import LEADS8, LEADS12, needed_leads
from ecgfast.augment import Augment
from ecgfast.sampling import PatientBatchSampler
from ecgfast.views import ViewSpec

BLOCK = 50


def cohort(n_patients=400, seed=0):
    """Patients of 1-5 records stored contiguously; some records short, some with an invalid lead."""
    rng = np.random.default_rng(seed)
    per = rng.integers(1, 6, n_patients)
    patient_ids = np.repeat(np.arange(n_patients) * 7 + 3, per)  # sparse ids: nothing may assume 0..P-1
    n = len(patient_ids)
    lengths = np.where(rng.random(n) < 0.05, rng.integers(100, 2500, n), 5000)
    lead_valid = np.ones((n, 12), dtype=bool)
    lead_valid[rng.random(n) < 0.04, LEADS12.index("V3")] = False
    lead_valid[rng.random(n) < 0.04, LEADS12.index("aVR")] = False  # not needed by an 8-lead spec: must not matter
    return patient_ids, lengths, lead_valid


def make(data=None, **kw):
    patient_ids, lengths, lead_valid = cohort() if data is None else data
    args = dict(block_size=BLOCK, batch_size=32, min_length=2500, required_leads=LEADS8, seed=1)
    args.update(kw)
    return PatientBatchSampler(patient_ids, lengths, lead_valid, LEADS12, **args)


def eligible_mask(data):
    patient_ids, lengths, lead_valid = data
    need = [LEADS12.index(lead) for lead in LEADS8]
    return (lengths >= 2500) & lead_valid[:, need].all(axis=1)


@pytest.mark.parametrize("world_size,drop_last,mode", [
    (1, True, "patient"), (1, False, "uniform"), (2, True, "uniform"),
    (2, False, "patient"), (3, True, "patient"), (3, False, "uniform"),
])
def test_shards_disjoint_complete_equal_steps(world_size, drop_last, mode):
    data = cohort()
    ok = eligible_mask(data)
    samplers = [make(data, rank=r, world_size=world_size, drop_last=drop_last, mode=mode) for r in range(world_size)]
    steps = {len(s) for s in samplers}
    assert len(steps) == 1
    per_rank = [list(s.batches(epoch=2)) for s in samplers]
    assert all(len(b) == len(samplers[0]) for b in per_rank)
    used = np.concatenate([b.indices for batches in per_rank for b in batches])
    positions = np.concatenate([b.positions for batches in per_rank for b in batches])
    assert all(len(b) == 32 for batches in per_rank for b in batches)
    assert np.array_equal(np.sort(positions), np.arange(len(samplers[0]) * 32 * world_size))
    counts = Counter(used.tolist())
    assert set(counts) <= set(np.flatnonzero(ok).tolist())
    report = samplers[0].report(2)
    if drop_last:
        assert max(counts.values()) == 1
        assert report.dropped == ok.sum() - len(used) < 32 * world_size
    else:
        assert set(counts) == set(np.flatnonzero(ok).tolist())
        assert report.padded == len(used) - ok.sum() == sum(c - 1 for c in counts.values()) < 32 * world_size


def test_blocks_of_each_batch():
    s = make(buffer_blocks=4)
    for b in s.batches(0):
        assert np.array_equal(b.blocks, np.unique(b.indices // BLOCK))
        for blk in b.blocks:
            lo, hi = s.block_range(blk)
            assert lo == blk * BLOCK and hi <= len(s.patient_ids)
        # A batch is drawn from one shuffle buffer, or from two where it straddles their boundary.
        assert len(b.blocks) <= 2 * 4 + 1
    assert np.median([len(b.blocks) for b in s.batches(0)]) <= 4


@pytest.mark.parametrize("k", [2, 3])
def test_patients_paired(k):
    data = cohort()
    ok = eligible_mask(data)
    patient_ids = data[0]
    s = make(data, ecgs_per_patient=k, drop_last=False)
    # Patients with >= 2 eligible records inside one block are certainly together in one buffer.
    blocks = np.arange(len(patient_ids)) // BLOCK
    pairs = Counter(zip(patient_ids[ok].tolist(), blocks[ok].tolist()))
    want = {p for (p, _), c in pairs.items() if c >= 2}
    together, sizes = set(), Counter()
    for b in s.batches(0):
        for p, c in Counter(patient_ids[b.indices].tolist()).items():
            if c >= 2:
                together.add(p)
            sizes[c] += 1
    assert len(want) > 200
    assert len(want & together) >= 0.98 * len(want)
    # Patients come in groups of K (K + 1 when one record is left over); two groups of one patient rarely meet.
    assert sizes[k] > sizes[k + 1] > sum(c for n, c in sizes.items() if n > k + 1)
    assert s.report(0).paired >= 2 * len(want & together)


def test_uniform_mode_is_a_global_shuffle():
    """Mode "uniform" permutes the whole store: a record's batch mates are drawn from every eligible record, so
    same-patient pairs come as often as a global permutation makes them (computed exactly), far less than within
    buffers of blocks where each patient's records lie together."""
    data = cohort()
    patient_ids = data[0]
    ok = eligible_mask(data)
    n, b = int(ok.sum()), 32
    uni, pat = make(data, mode="uniform"), make(data, mode="patient")
    assert not uni.whole_blocks and pat.whole_blocks and uni.buffer_blocks is None and pat.buffer_blocks == 8
    # A record in a batch shares it with none of its patient's m - 1 other eligible records with probability
    # prod_j (n - b - j) / (n - 1 - j), j < m - 1: the batch's other b - 1 slots are a uniform draw of the rest.
    m = Counter(patient_ids[ok].tolist())
    p_paired = {k: 1 - np.prod([(n - b - j) / (n - 1 - j) for j in range(k - 1)]) for k in set(m.values())}
    used = len(uni) * b
    expected = sum(p_paired[m[p]] for p in patient_ids[ok].tolist()) * used / n
    epochs = range(20)
    measured = np.mean([uni.report(e).paired for e in epochs])
    assert abs(measured - expected) < 0.12 * expected
    assert np.mean([pat.report(e).paired for e in epochs]) > 5 * expected
    # Every batch is drawn from the whole store at once (29 blocks), not from a buffer of 8 of them.
    spans = [len(batch.blocks) for batch in uni.batches(0)]
    assert np.median(spans) > 15
    # Each record's slot in the epoch is uniform: over epochs, the first records of the store land everywhere.
    slots = [np.flatnonzero(np.concatenate([x.indices for x in uni.batches(e)]) == np.flatnonzero(ok)[0])
             for e in range(40)]
    assert np.std(np.concatenate(slots)) > 0.2 * used


def test_resume_reproduces_rest_of_epoch():
    full = list(make(world_size=2, rank=1, drop_last=False).batches(epoch=3))
    for start in (0, 1, len(full) - 1, len(full)):
        rest = list(make(world_size=2, rank=1, drop_last=False).batches(epoch=3, start_step=start))
        assert len(rest) == len(full) - start
        for a, b in zip(rest, full[start:]):
            assert a.step == b.step
            assert np.array_equal(a.indices, b.indices) and np.array_equal(a.positions, b.positions)
            assert np.array_equal(a.blocks, b.blocks)


def test_epochs_and_seeds_differ():
    def first(s, epoch):
        return next(s.batches(epoch)).indices

    a = make(seed=1)
    assert not np.array_equal(first(a, 0), first(a, 1))
    assert np.array_equal(first(a, 1), first(make(seed=1), 1))
    assert not np.array_equal(first(a, 1), first(make(seed=2), 1))


def test_skipped_records_counted(caplog):
    data = cohort()
    patient_ids, lengths, lead_valid = data
    short = lengths < 2500
    bad_lead = ~lead_valid[:, LEADS12.index("V3")]
    s = make(data, drop_last=False)
    with caplog.at_level(logging.INFO, logger="ecgfast.sampling"):
        used = np.concatenate([b.indices for b in s.batches(4)])
    r = s.report(4)
    assert r.short == short.sum() > 0
    assert r.missing_leads == (bad_lead & ~short).sum() > 0
    assert r.eligible == len(lengths) - r.short - r.missing_leads
    assert not (short[used] | bad_lead[used]).any()
    assert "epoch 4 rank 0" in caplog.text and f"{r.short} shorter than the window" in caplog.text
    # Without required leads, only the short records are skipped.
    assert make(data, required_leads=()).report(0).eligible == len(lengths) - short.sum()


def test_from_store_requires_the_leads_the_views_are_made_of():
    patient_ids, lengths, lead_valid = cohort()
    store = SimpleNamespace(patient_ids=patient_ids, lengths=lengths, lead_valid=lead_valid, lead_names=LEADS12,
                            chunk_records=BLOCK)
    spec = ViewSpec(leads=("I", "aVF"), window=2500)
    plain = PatientBatchSampler.from_store(store, spec, batch_size=8, augment=Augment())
    vcg = PatientBatchSampler.from_store(store, spec, batch_size=8, augment=Augment.paper())
    assert plain.required_leads == ("I", "aVF") and vcg.required_leads == LEADS8
    assert plain.block_size == BLOCK and plain.min_length == 2500
    # The VCG reads V3, so records with a flat V3 are skipped; without it they are not.
    flat_v3 = ~lead_valid[:, LEADS12.index("V3")] & (lengths >= 2500)
    assert vcg.report(0).missing_leads == flat_v3.sum() > 0
    assert plain.report(0).missing_leads == (~lead_valid[:, LEADS12.index("aVF")] & (lengths >= 2500)).sum() == 0


def test_needed_leads_derives_limb_leads():
    assert needed_leads(["III", "V1"], LEADS8) == ["I", "II", "V1"]
    assert needed_leads(["III", "V1"], LEADS12) == ["III", "V1"]
    with pytest.raises(ValueError, match="'aVL' is neither stored"):
        needed_leads(["aVL"], ["V1", "V2"])


@pytest.mark.parametrize("kw,match", [
    (dict(batch_size=0), "batch_size must be an integer >= 1"),
    (dict(block_size=2.5), "block_size must be an integer"),
    (dict(mode="random"), "mode must be 'patient' or 'uniform'"),
    (dict(ecgs_per_patient=1), "ecgs_per_patient must be an integer from 2"),
    (dict(ecgs_per_patient=40), "ecgs_per_patient must be an integer from 2 to batch_size=32"),
    (dict(rank=2, world_size=2), r"rank must be an integer in \[0, world_size=2\)"),
    (dict(buffer_blocks=0), "buffer_blocks must be a positive integer, got 0"),
    (dict(mode="uniform", buffer_blocks=8), "buffer_blocks=8 applies to mode='patient' only"),
    (dict(min_length=6000), "no record is long enough: .*min_length=6000.* has 5000"),
    (dict(required_leads=["X"]), "'X' is neither stored"),
    (dict(batch_size=2000, drop_last=True), "drop_last=True leaves no full step"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)


def test_bad_arrays_and_start_step():
    patient_ids, lengths, lead_valid = cohort()
    with pytest.raises(ValueError, match="lead_valid must have shape"):
        PatientBatchSampler(patient_ids, lengths, lead_valid[:, :8], LEADS12, block_size=BLOCK, batch_size=8,
                            required_leads=LEADS8)
    with pytest.raises(ValueError, match="the store holds no record"):
        PatientBatchSampler([], [], block_size=BLOCK, batch_size=8)
    with pytest.raises(ValueError, match="patient_ids and lengths must both have shape"):
        PatientBatchSampler(patient_ids, lengths[:-1], block_size=BLOCK, batch_size=8)
    lead_valid[:, LEADS12.index("V3")] = False
    with pytest.raises(ValueError, match=rf"no record is eligible: .* {(lengths >= 2500).sum()} lack one of"):
        PatientBatchSampler(patient_ids, lengths, lead_valid, LEADS12, block_size=BLOCK, batch_size=8,
                            min_length=2500, required_leads=LEADS8)
    s = make()
    with pytest.raises(ValueError, match="start_step must be in"):
        next(s.batches(0, start_step=len(s) + 1))


def test_excluded_records_never_sampled_and_counted():
    data = cohort()
    patient_ids = data[0]
    held_out = np.isin(patient_ids, np.unique(patient_ids)[::5])  # every fifth patient, e.g. a test split
    s = make(data, drop_last=False, exclude=held_out)
    used = np.concatenate([b.indices for b in s.batches(0)])
    r = s.report(0)
    assert not held_out[used].any()
    assert set(used) == set(np.flatnonzero(eligible_mask(data) & ~held_out))
    assert r.excluded == held_out.sum() > 0
    assert r.eligible + r.excluded + r.short + r.missing_leads == len(patient_ids)
    with pytest.raises(ValueError, match="exclude"):
        make(data, exclude=held_out[:-1])
