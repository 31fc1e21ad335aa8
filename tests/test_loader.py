import threading

import numpy as np
import pytest
import torch
import wfdb

from ecgfast.augment import Augment, augment_batch
from ecgfast.leads import LEADS8, LEADS12, expand_8_to_12
from ecgfast.loader import ECGLoader
from ecgfast.sampling import PatientBatchSampler
from ecgfast.store import ECGStore
from ecgfast.views import ViewSpec

N, T, BLOCK = 240, 1200, 32
SPEC = ViewSpec(window=300, copies=2)  # small views keep the tests fast
PAPER = Augment.paper()


def random_store(url, leads=LEADS12, seed=0):
    """N records of whole-microvolt random signals (exact in int16), 1-4 records per patient, some short, one lead
    flat in a few. Returns the store and the signals in mV."""
    rng = np.random.default_rng(seed)
    sig = (rng.integers(-3000, 3000, (N, len(leads), T)) / 1000).astype(np.float32)
    lengths = np.where(rng.random(N) < 0.1, 250, T)
    sig *= np.arange(T)[None, None, :] < lengths[:, None, None]
    lead_valid = np.ones((N, len(leads)), dtype=bool)
    lead_valid[rng.random(N) < 0.05, leads.index("V2")] = False
    patients = np.repeat(np.arange(N), rng.integers(1, 5, N))[:N]
    store = ECGStore.create(url, leads, 500.0, T, chunk_records=BLOCK)
    store.append(sig, lengths=lengths, record_ids=[f"r{i}" for i in range(N)],
                 patient_keys=[f"p{p}" for p in patients], lead_valid=lead_valid)
    store.flush()
    return ECGStore.open(url), sig


@pytest.fixture(scope="module")
def store12():
    return random_store("memory://test_loader/s12")


def collect(loader, n=None):
    out = []
    for i, batch in enumerate(loader):
        out.append({k: v.clone() for k, v in batch.items()})
        if n is not None and i + 1 == n:
            break
    return out


def test_batches_match_store_and_reference(store12):
    store, sig = store12
    loader = ECGLoader(store, SPEC, PAPER, batch_size=16, threads=2, seed=5)
    sampler = loader.sampler
    eligible = (store.lengths >= 300) & store.lead_valid[:, LEADS12.index("V2")]
    batches = collect(loader)
    assert len(batches) == len(loader) == len(sampler) == eligible.sum() // 16
    raw = np.round(sig * 1000).astype(np.int16)
    for step, (got, plan) in enumerate(zip(batches, sampler.batches(0))):
        idx = plan.indices
        assert got["x"].dtype == torch.float32 and got["x"].shape == (16, 2, 8, 300)
        assert torch.equal(got["index"], torch.from_numpy(idx))
        assert torch.equal(got["patient_id"], torch.from_numpy(np.asarray(store.patient_ids)[idx]))
        assert got["lead_valid"].all()
        assert eligible[idx].all()
        # The loader's plumbing (rows, positions, epoch, seed) against the fused pass fed directly.
        want = augment_batch(raw[idx], store.lengths[idx], gain_uv=1.0, store_leads=LEADS12, spec=SPEC,
                             augment=PAPER, seed=5, epoch=0, positions=plan.positions)
        assert np.array_equal(got["x"].numpy(), want)
    assert loader.state_dict() == {"epoch": 1, "step": 0}


def test_identity_views_are_the_stored_signals(store12):
    """No augmentation, fixed segments: the views are the signals' windows, checked against the signals in float64."""
    store, sig = store12
    spec = ViewSpec(leads=("V1", "I", "aVF"), window=500, copies=2, mode="segments")
    loader = ECGLoader(store, spec, Augment(), batch_size=24, prefetch=1)
    cols = [LEADS12.index(lead) for lead in spec.leads]
    seen = []
    for batch in loader:
        idx = batch["index"].numpy()
        seen.append(idx)
        want = sig[idx][:, cols, :1000].astype(np.float64).reshape(len(idx), 3, 2, 500).transpose(0, 2, 1, 3)
        np.testing.assert_allclose(batch["x"].numpy(), want, rtol=0, atol=1e-6)
    # No VCG: only the spec's leads are required, so records with a flat V2 are used too.
    used = np.concatenate(seen)
    assert (~np.asarray(store.lead_valid)[used, LEADS12.index("V2")]).any()
    assert (np.asarray(store.lengths)[used] >= 1000).all()


def test_eight_lead_store_derives_leads_and_their_validity():
    store, sig = random_store("memory://test_loader/s8", leads=LEADS8, seed=1)
    valid = np.asarray(store.lead_valid)
    spec = ViewSpec(leads=LEADS12, window=200, copies=1)
    sampler = PatientBatchSampler.from_store(store, spec, batch_size=20, required_leads=("I",), drop_last=False)
    loader = ECGLoader(store, spec, Augment(), batch_size=20, sampler=sampler)
    for batch in loader:
        idx = batch["index"].numpy()
        want = expand_8_to_12(sig[idx][:, :, :200].astype(np.float64))
        np.testing.assert_allclose(batch["x"][:, 0].numpy(), want, rtol=0, atol=1e-5)
        lv = batch["lead_valid"].numpy()
        assert np.array_equal(lv[:, LEADS12.index("V2")], valid[idx, LEADS8.index("V2")])
        assert np.array_equal(lv[:, LEADS12.index("aVF")], valid[idx, 0] & valid[idx, 1])


@pytest.mark.parametrize("start,prefetch", [(1, 1), (5, 3)])
def test_resume_gives_identical_tensors(store12, start, prefetch):
    store, _ = store12
    full = collect(ECGLoader(store, SPEC, PAPER, batch_size=16, seed=3))
    again = ECGLoader(store, SPEC, PAPER, batch_size=16, seed=3, prefetch=prefetch)
    head = collect(again, n=start)
    state = again.state_dict()
    assert state == {"epoch": 0, "step": start}
    resumed = ECGLoader(store, SPEC, PAPER, batch_size=16, seed=3, prefetch=prefetch)
    resumed.load_state_dict(state)
    rest = collect(resumed)
    assert len(head) + len(rest) == len(full)
    for got, want in zip(head + rest, full):
        for key in want:
            assert torch.equal(got[key], want[key]), key
    # The next epoch is a different plan and different augmentations.
    assert resumed.state_dict() == {"epoch": 1, "step": 0}
    nxt = collect(resumed, n=1)[0]
    assert not torch.equal(nxt["index"], full[0]["index"])


def test_held_batches_are_never_overwritten(store12):
    store, _ = store12
    cloned = collect(ECGLoader(store, SPEC, PAPER, batch_size=16))
    held = [(b["x"], b["x"][:, 1]) for b in ECGLoader(store, SPEC, PAPER, batch_size=16, prefetch=1)]
    for (x, view), want in zip(held, cloned):
        assert torch.equal(x, want["x"]) and torch.equal(view, want["x"][:, 1])
    # Batches the consumer lets go of lend their memory to later ones.
    addresses = {b["x"].data_ptr() for b in ECGLoader(store, SPEC, PAPER, batch_size=16, prefetch=1)}
    assert len(addresses) <= 3 < len(held)


def test_torch_dataloader_and_distributed_ranks(store12):
    store, _ = store12
    direct = collect(ECGLoader(store, SPEC, PAPER, batch_size=16))
    wrapped = collect(torch.utils.data.DataLoader(ECGLoader(store, SPEC, PAPER, batch_size=16), batch_size=None))
    assert len(wrapped) == len(direct)
    assert all(torch.equal(a["x"], b["x"]) for a, b in zip(wrapped, direct))
    ranks = []
    for rank in range(2):
        sampler = PatientBatchSampler.from_store(store, SPEC, batch_size=16, augment=PAPER, rank=rank, world_size=2)
        ranks.append(torch.cat([b["index"] for b in ECGLoader(store, SPEC, PAPER, batch_size=16, sampler=sampler)]))
    assert len(ranks[0]) == len(ranks[1])
    assert not set(ranks[0].tolist()) & set(ranks[1].tolist())


def test_real_records_from_memory_store(data_dir):
    names = sorted(p.stem for p in (data_dir / "cinc2021").glob("*.hea"))[:20]
    sig = np.stack([wfdb.rdrecord(str(data_dir / "cinc2021" / n)).p_signal.T for n in names]).astype(np.float32)
    store = ECGStore.create("memory://test_loader/cinc", LEADS12, 500.0, 5000, chunk_records=8)
    store.append(sig, lengths=np.full(len(names), 5000), record_ids=names, patient_keys=names)
    store.flush()
    store = ECGStore.open("memory://test_loader/cinc")
    spec = ViewSpec(leads=LEADS8, window=5000, copies=1)
    sampler = PatientBatchSampler.from_store(store, spec, batch_size=5, mode="uniform", required_leads=())
    loader = ECGLoader(store, spec, Augment(), batch_size=5, sampler=sampler)
    cols = [LEADS12.index(lead) for lead in LEADS8]
    seen = 0
    for batch in loader:
        idx = batch["index"].numpy()
        np.testing.assert_allclose(batch["x"][:, 0].numpy(), sig[idx][:, cols].astype(np.float64), rtol=0,
                                   atol=5e-4)  # the store keeps whole microvolts
        seen += len(idx)
    assert seen == 20


class FailingStore:
    """A store whose block reads fail, to see the error reach the training loop."""

    def __init__(self, store):
        self.inner = store

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def read_block(self, start, stop, raw=False):
        raise ValueError(f"records {start}:{stop} could not be read")


def test_errors_reach_the_consumer_and_threads_stop(store12):
    store, _ = store12
    with pytest.raises(ValueError, match=r"records \d+:\d+ could not be read"):
        collect(ECGLoader(FailingStore(store), SPEC, PAPER, batch_size=16))
    # Leaving an epoch early stops the producer.
    loader = ECGLoader(store, SPEC, PAPER, batch_size=16, prefetch=1)
    it = iter(loader)
    next(it)
    it.close()
    assert not [t.name for t in threading.enumerate() if t.name.startswith(("ecgfast-loader", "ecgfast-read"))]
    assert loader.state_dict() == {"epoch": 0, "step": 1}


def test_bad_arguments(store12):
    store, _ = store12
    with pytest.raises(ValueError, match="no record is long enough: the views need min_length=2000"):
        ECGLoader(store, ViewSpec(window=2000), PAPER, batch_size=8)
    sampler = PatientBatchSampler.from_store(store, SPEC, batch_size=8)
    with pytest.raises(ValueError, match="batch_size=16 differs from the sampler's batch_size=8"):
        ECGLoader(store, SPEC, PAPER, batch_size=16, sampler=sampler)
    with pytest.raises(ValueError, match="the view spec is for 250.0 Hz but the store holds 500.0 Hz records"):
        ECGLoader(store, ViewSpec(fs=250.0, window=300), PAPER, batch_size=8)
    with pytest.raises(ValueError, match="prefetch must be a positive integer"):
        ECGLoader(store, SPEC, PAPER, batch_size=8, prefetch=0)
    chest_only, _ = random_store("memory://test_loader/chest", leads=("V1", "V2"))
    with pytest.raises(ValueError, match="lead 'aVL' is neither stored"):
        ECGLoader(chest_only, ViewSpec(leads=("aVL",), window=100), Augment(), batch_size=8)
    with pytest.raises(ValueError, match="pin_memory=True needs a CUDA device, got device='cpu'"):
        ECGLoader(store, SPEC, PAPER, batch_size=8, pin_memory=True)
    loader = ECGLoader(store, SPEC, PAPER, batch_size=8)
    with pytest.raises(ValueError, match="state step 99 is outside the epoch's"):
        loader.load_state_dict({"epoch": 0, "step": 99})
