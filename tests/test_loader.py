import threading
from collections import Counter

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


@pytest.mark.parametrize("mode", ["patient", "uniform"])
def test_batches_match_store_and_reference(store12, mode):
    store, sig = store12
    sampler = PatientBatchSampler.from_store(store, SPEC, batch_size=16, augment=PAPER, seed=5, mode=mode)
    loader = ECGLoader(store, SPEC, PAPER, batch_size=16, threads=2, seed=5, sampler=sampler)
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


@pytest.mark.parametrize("start,prefetch,mode", [(1, 1, "patient"), (5, 3, "uniform")])
def test_resume_gives_identical_tensors(store12, start, prefetch, mode):
    store, _ = store12

    def loader(**kw):
        sampler = PatientBatchSampler.from_store(store, SPEC, batch_size=16, augment=PAPER, seed=3, mode=mode)
        return ECGLoader(store, SPEC, PAPER, batch_size=16, seed=3, sampler=sampler, **kw)

    full = collect(loader())
    again = loader(prefetch=prefetch)
    head = collect(again, n=start)
    state = again.state_dict()
    assert state == {"epoch": 0, "step": start}
    resumed = loader(prefetch=prefetch)
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


class CountingStore:
    """A store that counts the records each kind of read fetched (reads run in several threads at once)."""

    def __init__(self, store):
        self.inner, self.lock = store, threading.Lock()
        self.records = Counter()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def read_block(self, start, stop, raw=False, out=None):
        with self.lock:
            self.records["block"] += stop - start
        return self.inner.read_block(start, stop, raw=raw, out=out)

    def read(self, indices, raw=False):
        with self.lock:
            self.records["record"] += len(indices)
        return self.inner.read(indices, raw=raw)


@pytest.mark.parametrize("prefetch", [1, 3])
def test_uniform_mode_streams_records_prefetch_bounded(store12, prefetch):
    """A global shuffle reads each batch's records on their own, never whole blocks, and never more than the
    prefetch ahead of the consumer: what it holds does not grow with the store."""
    store, _ = store12
    counting = CountingStore(store)
    sampler = PatientBatchSampler.from_store(store, SPEC, batch_size=16, augment=PAPER, mode="uniform")
    loader = ECGLoader(counting, SPEC, PAPER, batch_size=16, sampler=sampler, prefetch=prefetch)
    for step, batch in enumerate(loader):
        # Consumed: step + 1 batches; in the queue: prefetch; being made: 1, reading prefetch + 1 batches past it.
        assert counting.records["record"] <= (step + 1 + 2 * prefetch + 2) * 16
    assert counting.records["block"] == 0
    assert counting.records["record"] == len(loader) * 16


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


def bounded(fn, seconds=60):
    """``fn()`` in a thread: its result, or its exception re-raised; a failure (not a hung test) if it does not return
    within ``seconds``."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as err:
            box["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"no batch and no error within {seconds} s: the loader hangs"
    if "error" in box:
        raise box["error"]
    return box["value"]


def loader_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith(("ecgfast-loader", "ecgfast-read"))]


class FailingStore:
    """A store whose reads of one record fail, to see the error reach the training loop at that record's batch."""

    def __init__(self, store, bad):
        self.inner, self.bad = store, bad

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _check(self, records):
        if self.bad in set(np.asarray(records).tolist()):
            raise ValueError(f"record {self.bad} could not be read")

    def read_block(self, start, stop, raw=False, out=None):
        self._check(range(start, stop))
        return self.inner.read_block(start, stop, raw=raw, out=out)

    def read(self, indices, raw=False):
        self._check(indices)
        return self.inner.read(indices, raw=raw)


@pytest.mark.parametrize("mode", ["patient", "uniform"])
def test_read_errors_reach_the_consumer_at_their_batch(store12, mode):
    store, _ = store12
    sampler = PatientBatchSampler.from_store(store, SPEC, batch_size=16, augment=PAPER, mode=mode)
    plan = list(sampler.batches(0))
    bad = int(plan[3].indices[0])
    # The first batch that needs the bad record's read: its block (read whole) in mode patient, the record itself
    # in mode uniform.
    fails = next(s for s, b in enumerate(plan)
                 if (bad // BLOCK in b.blocks if mode == "patient" else bad in b.indices))
    loader = ECGLoader(FailingStore(store, bad), SPEC, PAPER, batch_size=16, sampler=sampler, prefetch=2)
    got = []
    with pytest.raises(ValueError, match=f"record {bad} could not be read"):
        bounded(lambda: got.extend(b["index"] for b in loader))
    assert len(got) == fails and all(torch.equal(g, torch.from_numpy(b.indices)) for g, b in zip(got, plan))
    assert loader.state_dict() == {"epoch": 0, "step": fails}  # resuming retries the batch that failed
    assert not loader_threads()


def test_leaving_an_epoch_early_stops_the_threads(store12):
    store, _ = store12
    loader = ECGLoader(store, SPEC, PAPER, batch_size=16, prefetch=1)
    it = iter(loader)
    next(it)
    it.close()
    assert not loader_threads()
    assert loader.state_dict() == {"epoch": 0, "step": 1}


def test_a_producer_that_ends_without_a_word_is_an_error(store12, monkeypatch):
    store, _ = store12
    monkeypatch.setattr(ECGLoader, "_produce", lambda self, todo, ready, stop: None)
    with pytest.raises(RuntimeError, match="producer thread ended without a batch or an error"):
        bounded(lambda: next(iter(ECGLoader(store, SPEC, PAPER, batch_size=16))))


def fake_gpus(monkeypatch, count, current=0, local_rank=None):
    """torch.cuda says ``count`` GPUs with ``current`` selected (the machine has none: real CUDA calls fail)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))


@pytest.mark.parametrize("device,count,current,local_rank,want", [
    ("cuda", 4, 0, 3, 3),  # torchrun's fourth process on a 4-GPU node
    ("cuda", 4, 2, None, 2),  # torch.cuda.set_device(2), no torchrun
    ("cuda", 1, 0, 3, 0),  # one visible GPU per process (CUDA_VISIBLE_DEVICES per rank)
    ("cuda:1", 4, 0, 3, 1),  # an explicit index is kept
])
def test_cuda_is_this_process_gpu(store12, monkeypatch, device, count, current, local_rank, want):
    store, _ = store12
    fake_gpus(monkeypatch, count, current, local_rank)
    loader = ECGLoader(store, SPEC, PAPER, batch_size=16, device=device)
    assert loader.device == torch.device("cuda", want) and loader.pin_memory


def test_failing_device_reaches_the_consumer_from_this_process_gpu(store12, monkeypatch):
    """The producer thread selects the rank's GPU before any CUDA work; this machine's torch has no CUDA, so that
    work fails, and the error must reach the training loop instead of leaving it waiting for a batch."""
    store, _ = store12
    fake_gpus(monkeypatch, count=4, local_rank=3)
    selected = []

    class RecordingDevice(torch.cuda.device):
        def __init__(self, device):
            selected.append((threading.current_thread().name, torch.device(device)))
            super().__init__(device)

    monkeypatch.setattr(torch.cuda, "device", RecordingDevice)
    loader = ECGLoader(store, SPEC, PAPER, batch_size=16, device="cuda")
    with pytest.raises(RuntimeError, match="CUDA"):
        bounded(lambda: next(iter(loader)))
    assert selected == [("ecgfast-loader", torch.device("cuda", 3))]
    assert not loader_threads()


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
    with pytest.raises(ValueError, match="device='cuda' needs CUDA, which this machine .* does not have"):
        ECGLoader(store, SPEC, PAPER, batch_size=8, device="cuda")
    with pytest.raises(ValueError, match="device='gpu0' is not a device"):
        ECGLoader(store, SPEC, PAPER, batch_size=8, device="gpu0")
    loader = ECGLoader(store, SPEC, PAPER, batch_size=8)
    with pytest.raises(ValueError, match="state step 99 is outside the epoch's"):
        loader.load_state_dict({"epoch": 0, "step": 99})
