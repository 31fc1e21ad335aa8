"""ECGStore: writes, reads (fast shard path and zarr's own path), schema, URLs, bad input."""

import numpy as np
import pytest
import zarr

from ecgfast.leads import DERIVED_FROM_I_II, LEADS8, LEADS12
from ecgfast.store import FIELDS, ECGStore, _zarr_store

T = 300


def _signals(n, leads=12, seed=0, scale=3.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, leads, T)) * scale).astype(np.float32)


def _append(store, x, first=0, labels=None, keys=None):
    n = len(x)
    return store.append(
        x,
        lengths=np.full(n, T),
        record_ids=[f"src/r{first + i}" for i in range(n)],
        patient_keys=keys if keys is not None else [f"p{(first + i) // 3}" for i in range(n)],
        age=np.arange(first, first + n) % 90,
        sex=np.arange(first, first + n) % 2,
        labels=labels,
    )


def _expected_mv(x, gain_uv=1.0):
    """Reference quantization in float64: round to the nearest unit of gain_uv, back to millivolts."""
    return np.rint(x.astype(np.float64) * 1000 / gain_uv) * gain_uv / 1000


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    """A 12-lead store of 45 records in shards of 8, appended in uneven batches across a reopen (tests only read it)."""
    x = _signals(45)
    path = tmp_path_factory.mktemp("store") / "s.zarr"
    with ECGStore.create(path, LEADS12, 500, T, gain_uv=2.0, chunk_records=8) as store:
        assert _append(store, x[:5]) == range(0, 5)
        assert _append(store, x[5:21], first=5, labels={"af": np.r_[np.ones(8), np.zeros(8)]}) == range(5, 21)
    with ECGStore.open(path, mode="r+") as store:
        assert _append(store, x[21:45], first=21) == range(21, 45)
    return path, x


def test_read_matches_quantized_reference_in_any_order_with_repeats(filled):
    path, x = filled
    store = ECGStore.open(path)
    expected = _expected_mv(x, gain_uv=2.0)
    idx = np.array([44, 3, 3, 17, 0, 44, 9, 30, 8])
    got = store.read(idx)
    assert got.dtype == np.float32 and got.shape == (len(idx), 12, T)
    np.testing.assert_allclose(got, expected[idx], rtol=2e-7, atol=1e-6)
    np.testing.assert_allclose(store.read_block(0, 45), expected, rtol=2e-7, atol=1e-6)
    raw = store.read_block(6, 19, raw=True)
    assert raw.dtype == np.int16
    np.testing.assert_array_equal(raw, np.rint(x[6:19].astype(np.float64) * 500).astype(np.int16))
    assert store.read([]).shape == (0, 12, T)


def test_zarr_fallback_path_agrees_with_shard_reader(filled):
    path, _ = filled
    store = ECGStore.open(path)
    idx = [40, 2, 2, 11]
    fast_block, fast_idx = store.read_block(5, 29, raw=True), store.read(idx)
    store._reader = None  # as for a store whose layout the shard reader does not know
    np.testing.assert_array_equal(store.read_block(5, 29, raw=True), fast_block)
    np.testing.assert_array_equal(store.read(idx), fast_idx)


def test_a_rechunked_store_is_read_through_zarr(tmp_path):
    """Signals rewritten by other tools with another layout (here unsharded chunks of 4) still read correctly."""
    x = _signals(9)
    path = tmp_path / "re.zarr"
    with ECGStore.create(path, LEADS12, 500, T, chunk_records=4) as store:
        _append(store, x)
    group = zarr.open_group(str(path), mode="r+")
    raw = group["signals"][:]
    del group["signals"]
    group.create_array("signals", data=raw, chunks=(4, 12, T))
    store = ECGStore.open(path)
    assert store._reader is None
    np.testing.assert_allclose(store.read([8, 1, 1]), _expected_mv(x)[[8, 1, 1]], rtol=2e-7, atol=1e-6)
    np.testing.assert_array_equal(store.read_block(2, 7, raw=True), raw[2:7])


def test_metadata_patients_and_labels(filled):
    path, _ = filled
    store = ECGStore.open(path)
    assert len(store) == 45 and store.chunk_records == 8 and store.n_samples == T
    assert store.record_ids.tolist() == [f"src/r{i}" for i in range(45)]
    np.testing.assert_array_equal(store.patient_ids, np.arange(45) // 3)  # key p14 spans the reopen
    assert store.patient_keys[44] == "p14"
    np.testing.assert_array_equal(store.age, np.arange(45) % 90)
    np.testing.assert_array_equal(store.sex, np.arange(45) % 2)
    af = store.labels["af"]
    assert np.isnan(af[:5]).all() and np.isnan(af[21:]).all()
    np.testing.assert_array_equal(af[5:21], np.r_[np.ones(8), np.zeros(8)])
    assert store.lead_valid.all() and (store.lengths == T).all()


def test_single_record_appends_across_shards_with_a_label_appearing_late(tmp_path):
    x = _signals(11, leads=8)
    with ECGStore.create(tmp_path / "one.zarr", LEADS8, 500, T, chunk_records=4) as store:
        for i in range(11):
            labels = {"late": [1.0]} if i == 6 else None
            assert _append(store, x[i : i + 1], first=i, labels=labels) == range(i, i + 1)
        np.testing.assert_allclose(store.read([9, 2]), _expected_mv(x)[[9, 2]], rtol=2e-7, atol=1e-6)
    store = ECGStore.open(tmp_path / "one.zarr")
    np.testing.assert_allclose(store.read_block(0, 11), _expected_mv(x), rtol=2e-7, atol=1e-6)
    late = store.labels["late"]
    assert late[6] == 1 and np.isnan(np.delete(late, 6)).all()


def test_patient_key_reused_after_reopen_keeps_ids_dense(tmp_path):
    path = tmp_path / "p.zarr"
    with ECGStore.create(path, LEADS8, 500, T, chunk_records=4) as store:
        _append(store, _signals(3, leads=8), keys=["a", "b", "a"])
    with ECGStore.open(path, mode="r+") as store:
        _append(store, _signals(3, leads=8), first=3, keys=["c", "b", "c"])
    assert ECGStore.open(path).patient_ids.tolist() == [0, 1, 0, 2, 1, 2]


def test_plain_zarr_reads_every_field_of_the_schema(filled):
    path, x = filled
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == 3
    attrs = group.attrs.asdict()
    assert attrs["schema_version"] == 1 and attrs["lead_names"] == list(LEADS12)
    assert attrs["fs"] == 500 and attrs["gain_uv"] == 2.0 and "ecgfast_version" in attrs["provenance"]
    signals = group["signals"]
    assert signals.dtype == np.int16 and signals.shape == (45, 12, T)
    assert signals.shards == (8, 12, T) and signals.chunks == (1, 12, T)
    np.testing.assert_array_equal(signals[:] * 2.0 / 1000, _expected_mv(x, 2.0))
    for name, (dtype, _) in FIELDS.items():
        values = group[name][:]
        assert values.shape[0] == 45, name
        if dtype != "str":
            assert values.dtype == np.dtype(dtype), name
    assert group["lead_valid"].shape == (45, 12)
    assert [str(v) for v in group["record_id"][:3]] == ["src/r0", "src/r1", "src/r2"]
    assert group["labels/af"].dtype == np.float32 and group["labels/af"].shape == (45,)
    assert {"record_id", "level", "reason"} <= set(group["ingest_report"].array_keys())


def test_derived_leads_from_an_8_lead_store(tmp_path):
    x = _signals(10, leads=8)
    with ECGStore.create(tmp_path / "e.zarr", LEADS8, 500, T, chunk_records=4) as store:
        _append(store, x)
    store = ECGStore.open(tmp_path / "e.zarr")
    q = _expected_mv(x)
    wanted = ["aVF", "V3", "III", "aVR", "aVL", "I"]
    got = store.read([7, 1, 7], leads=wanted)
    for j, lead in enumerate(wanted):
        if lead in DERIVED_FROM_I_II:
            a, b = DERIVED_FROM_I_II[lead]
            ref = a * q[:, 0] + b * q[:, 1]  # I and II of the quantized store
        else:
            ref = q[:, LEADS8.index(lead)]
        np.testing.assert_allclose(got[:, j], ref[[7, 1, 7]], rtol=2e-7, atol=2e-6, err_msg=lead)
    assert store.read_block(0, 10, leads=LEADS12).shape == (10, 12, T)
    with pytest.raises(ValueError, match="aVR"):
        store.read_block(0, 2, raw=True, leads=["aVR"])


def test_memory_url_store_round_trip():
    url = "memory://ecgfast-test/store.zarr"
    x = _signals(11)
    with ECGStore.create(url, LEADS12, 250, T, chunk_records=4, overwrite=True) as store:
        _append(store, x)
    store = ECGStore.open(url)
    assert store.fs == 250 and len(store) == 11 and store._reader is not None
    np.testing.assert_allclose(store.read([10, 0, 5]), _expected_mv(x)[[10, 0, 5]], rtol=2e-7, atol=1e-6)
    assert "records   11" in store.summary()


def test_s3_urls_are_routed_to_fsspec(monkeypatch):
    seen = {}

    def from_url(url, read_only):
        seen.update(url=url, read_only=read_only)
        return "fsspec-store"

    monkeypatch.setattr(zarr.storage.FsspecStore, "from_url", staticmethod(from_url))
    assert _zarr_store("s3://bucket/ecgs.zarr", read_only=True) == "fsspec-store"
    assert seen == {"url": "s3://bucket/ecgs.zarr", "read_only": True}
    assert isinstance(_zarr_store("file:///tmp/x.zarr", read_only=True), zarr.storage.LocalStore)


def test_int16_overflow_names_the_record_and_writes_nothing(tmp_path):
    x = _signals(3)
    x[1, 4, 10] = 40.0  # 40 mV = 40000 uV: beyond int16 at 1 uV per unit
    store = ECGStore.create(tmp_path / "o.zarr", LEADS12, 500, T)
    with pytest.raises(ValueError, match="src/r1"):
        _append(store, x)
    assert len(store) == 0
    _append(store, x[:1] / 2)  # a store with twice the gain would take it; this one takes the rest
    store.close()
    assert len(ECGStore.open(tmp_path / "o.zarr")) == 1


def test_flat_leads_and_all_zero_records(tmp_path):
    x = _signals(5)
    x[2] = 0  # an all-zero record: zarr leaves its chunk out of the shard
    x[3, 7] = 0.25  # a constant lead
    with ECGStore.create(tmp_path / "f.zarr", LEADS12, 500, T, chunk_records=4) as store:
        _append(store, x)
    store = ECGStore.open(tmp_path / "f.zarr")
    assert not store.lead_valid[2].any()
    assert store.lead_valid[3].tolist() == [i != 7 for i in range(12)]
    np.testing.assert_allclose(store.read_block(0, 5), _expected_mv(x), rtol=2e-7, atol=1e-6)


def test_bad_arguments_raise_value_errors_naming_them(tmp_path):
    with pytest.raises(ValueError, match="lead_names"):
        ECGStore.create(tmp_path / "a.zarr", ["I", "X1"], 500, T)
    with pytest.raises(ValueError, match="fs"):
        ECGStore.create(tmp_path / "b.zarr", LEADS12, 0, T)
    store = ECGStore.create(tmp_path / "c.zarr", LEADS12, 500, T)
    _append(store, _signals(2))
    with pytest.raises(ValueError, match="src/r1"):
        _append(store, _signals(1), first=1)  # duplicate record id
    with pytest.raises(ValueError, match=r"shape \(B, 12, 300\)"):
        _append(store, _signals(1, leads=8), first=5)
    with pytest.raises(ValueError, match="indices"):
        store.read([2])
    with pytest.raises(ValueError, match="already holds"):
        ECGStore.create(tmp_path / "c.zarr", LEADS12, 500, T)
    store.close()
    with pytest.raises(ValueError, match="read-only"):
        _append(ECGStore.open(tmp_path / "c.zarr"), _signals(1), first=9)
    with pytest.raises(ValueError, match="no store"):
        ECGStore.open(tmp_path / "missing.zarr")


def test_report_and_summary(tmp_path):
    path = tmp_path / "r.zarr"
    with ECGStore.create(path, LEADS12, 500, T, chunk_records=8) as store:
        _append(store, _signals(45), labels={"af": np.r_[np.ones(8), np.zeros(8), np.full(29, np.nan)]})
        store.add_report(["src/x", "src/y", "src/r3"], ["skip", "skip", "warn"],
                         ["truncated 10 of 20", "truncated 1 of 5", "flat_lead V2"])
        with pytest.raises(ValueError, match="levels"):
            store.add_report(["src/z"], ["fatal"], ["nan"])
    store = ECGStore.open(path)
    assert store.report["reason"].tolist()[0] == "truncated 10 of 20"
    text = store.summary()
    for part in ("records   45", "patients 15", "af: 16 known, prevalence 0.500", "skip truncated: 2",
                 "warn flat_lead: 1", "MB"):
        assert part in text, part


def test_storage_options_pass_through_create_open_and_ingest(data_dir, monkeypatch):
    """``storage_options`` reach fsspec's filesystem (an S3-compatible endpoint's URL, keys...) from every entry."""
    from ecgfast.ingest import ingest

    seen = []
    from_url = zarr.storage.FsspecStore.from_url

    def recording(url, **kwargs):
        seen.append((url, kwargs.get("storage_options")))
        return from_url(url, **kwargs)

    monkeypatch.setattr(zarr.storage.FsspecStore, "from_url", staticmethod(recording))
    options = {"endpoint_url": "http://localhost:9000", "anon": False}
    url = "memory://ecgfast-options/store.zarr"
    with ECGStore.create(url, LEADS12, 500, T, chunk_records=4, overwrite=True, storage_options=options) as store:
        _append(store, _signals(5))
    store = ECGStore.open(url, storage_options=options)
    fs = store._group.store.fs  # the filesystem itself was made with them (memory:// is wrapped to be async)
    assert options.items() <= getattr(fs, "sync_fs", fs).storage_options.items()
    np.testing.assert_allclose(store.read([4]), _expected_mv(_signals(5))[[4]], rtol=2e-7, atol=1e-6)
    ingest(data_dir / "ptb_frank", "memory://ecgfast-options/ptb.zarr", storage_options=options, progress=False)
    assert len(ECGStore.open("memory://ecgfast-options/ptb.zarr", storage_options=options)) == 1
    assert seen and all(opts == options for _, opts in seen)
    assert {u for u, _ in seen} == {url, "memory://ecgfast-options/ptb.zarr"}
    with pytest.raises(ValueError, match="apply to fsspec URLs"):
        ECGStore.open("some/local/path.zarr", storage_options=options)


@pytest.mark.parametrize("codec, level", [("pcodec", 4), ("blosc-zstd", 1), ("blosc-lz4", 5), ("blosc-lz4hc", 3)])
def test_every_codec_round_trips_is_recorded_and_zarr_reads_it(tmp_path, codec, level):
    x = _signals(9, leads=8)
    path = tmp_path / "c.zarr"
    with ECGStore.create(path, LEADS8, 500, T, chunk_records=4, codec=codec, compression_level=level) as store:
        _append(store, x)
    store = ECGStore.open(path)
    assert store.attrs["codec"] == {"name": codec, "level": level} and store.codec == (codec, level)
    assert store.record_codec().checksum  # a CRC-32C per record whatever the codec
    assert f"codec     {codec} level {level}, a CRC-32C per record" in store.summary()
    expected = np.rint(x.astype(np.float64) * 1000).astype(np.int16)
    np.testing.assert_array_equal(store.read_block(0, 9, raw=True), expected)
    np.testing.assert_array_equal(store.read([8, 0, 5], raw=True), expected[[8, 0, 5]])
    np.testing.assert_array_equal(zarr.open_group(str(path), mode="r")["signals"][:], expected)
    assert store.verify() == []


def test_the_default_codec_and_levels(tmp_path):
    from ecgfast.store import CODECS, DEFAULT_CODEC

    store = ECGStore.create(tmp_path / "d.zarr", LEADS8, 500, T)
    assert store.codec == (DEFAULT_CODEC, CODECS[DEFAULT_CODEC][0]) == ("blosc-lz4hc", 2)
    with pytest.raises(ValueError, match=r"codec \(--codec\) must be one of blosc-lz4hc, blosc-lz4"):
        ECGStore.create(tmp_path / "e.zarr", LEADS8, 500, T, codec="zstd")
    with pytest.raises(ValueError, match=r"--compression-level\) of blosc-lz4 must be an integer from 0 to 9"):
        ECGStore.create(tmp_path / "f.zarr", LEADS8, 500, T, codec="blosc-lz4", compression_level=10)


def test_reads_decode_into_the_callers_buffer(filled):
    path, x = filled
    store = ECGStore.open(path, threads=3)  # parts of 3 threads across shards of 8
    buffer = np.full((20, 12, T), 7, np.int16)
    got = store.read_block(3, 23, raw=True, out=buffer)
    assert got is buffer
    np.testing.assert_array_equal(buffer, np.rint(x[3:23].astype(np.float64) * 500).astype(np.int16))
    for bad in (np.empty((19, 12, T), np.int16), np.empty((20, 12, T), np.int32),
                np.empty((20, 12, 2 * T), np.int16)[:, :, ::2]):
        with pytest.raises(ValueError, match="out must be a writable C-contiguous int16 array of shape"):
            store.read_block(3, 23, raw=True, out=bad)
    with pytest.raises(ValueError, match="raw=True"):
        store.read_block(3, 23, out=buffer)
    assert np.shares_memory(store.read([40, 2, 40], raw=True, out=buffer[:3]), buffer)
    np.testing.assert_array_equal(buffer[:3], np.rint(x[[40, 2, 40]].astype(np.float64) * 500).astype(np.int16))


@pytest.mark.parametrize("threads", [1, 2, 5])
def test_reads_split_over_any_number_of_threads_agree(filled, threads):
    path, x = filled
    expected = np.rint(x.astype(np.float64) * 500).astype(np.int16)
    store = ECGStore.open(path, threads=threads)
    idx = np.random.default_rng(threads).integers(0, 45, 30)
    np.testing.assert_array_equal(store.read(idx, raw=True), expected[idx])
    np.testing.assert_array_equal(store.read_block(1, 44, raw=True), expected[1:44])


def test_a_default_store_reads_every_field_with_plain_zarr_and_numcodecs(tmp_path):
    """zarr-python with numcodecs opens a store of the default codec without ecgfast."""
    x = _signals(6)
    path = tmp_path / "plain.zarr"
    with ECGStore.create(path, LEADS12, 500, T, chunk_records=4) as store:
        _append(store, x, labels={"af": np.arange(6) % 2})
        store.add_report(["src/gone"], ["skip"], ["unreadable no header"])
    store = ECGStore.open(path)
    group = zarr.open_group(str(path), mode="r")
    inner = group["signals"].metadata.to_dict()["codecs"][0]["configuration"]["codecs"]
    assert [c["name"] for c in inner] == ["bytes", "blosc", "crc32c"]  # Zarr v3 core codecs only
    np.testing.assert_array_equal(group["signals"][:], store.read_block(0, 6, raw=True))
    for name in FIELDS:
        values = group[name][:]
        mine = getattr(store, {"length": "lengths", "record_id": "record_ids", "patient_id": "patient_ids",
                               "patient_key": "patient_keys", "fold": "folds"}.get(name, name))
        np.testing.assert_array_equal(np.asarray(values, dtype=mine.dtype), mine, err_msg=name)
    np.testing.assert_array_equal(group["labels/af"][:], store.labels["af"])
    assert [str(r) for r in group["ingest_report/record_id"][:]] == ["src/gone"]


def test_ingest_keeps_a_stores_codec(data_dir, tmp_path):
    from ecgfast.ingest import ingest

    dest = tmp_path / "k.zarr"
    shape = dict(leads=8, fs=100, seconds=1, progress=False)
    ingest(data_dir / "cpsc2018", dest, codec="blosc-lz4", **shape)
    assert ECGStore.open(dest).codec == ("blosc-lz4", 5)
    with pytest.raises(ValueError, match="compressed with blosc-lz4 level 5; this ingest asks for pcodec level 8"):
        ingest(data_dir / "ptb_frank", dest, codec="pcodec", **shape)
    ingest(data_dir / "ptb_frank", dest, **shape)  # no codec named: the store's own
    store = ECGStore.open(dest)
    assert store.codec == ("blosc-lz4", 5) and len(store) == 11 and store.verify() == []


def test_folds_and_label_groups_and_a_store_from_before_the_fold_field(tmp_path):
    """``fold`` came after schema 1's first stores: one without the array opens, reads -1, verifies clean and gets
    the array (-1 for its earlier records) with its next append. Label groups name labels; bad ones are refused."""
    path = tmp_path / "old.zarr"
    with ECGStore.create(path, LEADS8, 500, T, chunk_records=4) as store:
        _append(store, _signals(3, leads=8), labels={"a": [1.0, 0.0, np.nan]})
    del zarr.open_group(str(path), mode="r+")["fold"]  # as a store written before the field
    store = ECGStore.open(path)
    assert store.folds.tolist() == [-1, -1, -1] and store.verify() == [] and store.label_groups == {}
    with ECGStore.open(path, mode="r+") as store:
        store.append(_signals(2, leads=8), lengths=[T, T], record_ids=["src/r3", "src/r4"], patient_keys=["x", "y"],
                     fold=[9, 10], labels={"b": [1.0, 1.0]})
        store.add_label_groups({"g": ["a", "b"]})
        store.add_label_groups({"g": ["a"], "h": ["b"]})  # merged into what is there
        for groups, match in (({"g": ["a", "zz"]}, "not in the store"), ({"a": ["b"]}, "a label's name"),
                              ({"e": []}, "no labels")):
            with pytest.raises(ValueError, match=match):
                store.add_label_groups(groups)
        for fold, match in (([128, 1], "fold"), ([1.5, 2.0], "fold")):
            with pytest.raises(ValueError, match=match):
                store.append(_signals(2, leads=8), lengths=[T, T], record_ids=["s/5", "s/6"], patient_keys=["z"] * 2,
                             fold=fold)
        with pytest.raises(ValueError, match="without '/'"):
            store.append(_signals(1, leads=8), lengths=[T], record_ids=["s/7"], patient_keys=["z"],
                         labels={"sub_LAFB/LPFB": [1.0]})
    store = ECGStore.open(path)
    assert zarr.open_group(str(path), mode="r")["fold"][:].tolist() == [-1, -1, -1, 9, 10]
    assert store.folds.tolist() == [-1, -1, -1, 9, 10] and store.verify() == []
    assert store.label_groups == {"g": ["a", "b"], "h": ["b"]} and store.label_group("h") == ["b"]
    with pytest.raises(ValueError, match="no label group 'super'.*its groups: g, h"):
        store.label_group("super")
    assert "folds     9: 1  10: 1  (none: 3)" in store.summary() and "group     g: 2 labels" in store.summary()
