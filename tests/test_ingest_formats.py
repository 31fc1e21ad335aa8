"""Every source format, each from fixtures written here from the format's description, against float64 references;
format detection; the PTB-XL and MIMIC-IV-ECG layouts; Dx labels; windows."""

import base64
import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest
import scipy.io
import wfdb
from scipy.signal import resample_poly

from ecgfast.ingest import ingest
from ecgfast.ingest import detect_format
from ecgfast.leads import LEADS8, LEADS12
from ecgfast.store import ECGStore

UV = 1e-3  # one microvolt in millivolts: the store's quantization step at the default gain


def wave(n_leads, n, fs, seed=0):
    """ECG-like float64 millivolts (n_leads, n): a few harmonics per lead, peaks of about 1 mV."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / fs
    f0 = rng.uniform(0.9, 1.6, (n_leads, 1))
    return sum(rng.uniform(0.1, 0.4, (n_leads, 1)) * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6, (n_leads, 1)))
               for k in range(1, 6))


def ingested(src, tmp_path, **kw):
    dest = tmp_path / "store.zarr"
    report = ingest(src, dest, progress=False, **kw)
    return ECGStore.open(dest), report


def report_rows(store):
    return {rid: (level, reason.split()[0]) for rid, level, reason in zip(*store.report.values())}


# ---- MUSE XML -----------------------------------------------------------------------------------------------
def write_muse(path, adc, names, per_bit=4.88, fs=500, patient="P1", age="61", gender="MALE", truncate=0):
    """A GE MUSE RestingECG document: a median-beat waveform (to be ignored) and the rhythm waveform."""
    root = ET.Element("RestingECG")
    demo = ET.SubElement(root, "PatientDemographics")
    for tag, value in (("PatientID", patient), ("PatientAge", age), ("AgeUnits", "YEARS"), ("Gender", gender)):
        ET.SubElement(demo, tag).text = value
    for kind, data in (("Median", adc[:, :300] // 2), ("Rhythm", adc)):
        w = ET.SubElement(root, "Waveform")
        ET.SubElement(w, "WaveformType").text = kind
        ET.SubElement(w, "SampleBase").text = str(fs)
        ET.SubElement(w, "SampleExponent").text = "0"
        for name, lead in zip(names, data):
            raw = np.asarray(lead, "<i2").tobytes()
            ld = ET.SubElement(w, "LeadData")
            for tag, value in (("LeadByteCountTotal", len(raw)), ("LeadSampleCountTotal", len(lead)),
                               ("LeadAmplitudeUnitsPerBit", per_bit), ("LeadAmplitudeUnits", "MICROVOLTS"),
                               ("LeadID", name),
                               ("WaveFormData", base64.b64encode(raw[: len(raw) - truncate]).decode())):
                ET.SubElement(ld, tag).text = str(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path)


def test_muse_rhythm_leads_scaled_and_limb_leads_derived(tmp_path):
    adc = np.rint(wave(8, 5000, 500) / (4.88 * UV)).astype(np.int16)
    src = tmp_path / "muse"
    write_muse(src / "a.xml", adc, LEADS8)
    write_muse(src / "b.xml", adc[[0, 1, 2, 3, 5, 6, 7]], [n for n in LEADS8 if n != "V4"], patient="P2",
               gender="FEMALE", age="45")
    write_muse(src / "short.xml", adc, LEADS8, truncate=10)
    (src / "broken.xml").write_text("<RestingECG><Waveform>")
    store, report = ingested(src, tmp_path)
    assert report.format == "muse"
    assert store.record_ids.tolist() == ["muse/a", "muse/b"]
    assert store.patient_keys.tolist() == ["muse/P1", "muse/P2"] and store.sex.tolist() == [1, 0]
    assert store.age.tolist() == [61, 45]
    mv = adc.astype(np.float64) * 4.88 * UV  # float64 reference
    limb = [mv[1] - mv[0], -(mv[0] + mv[1]) / 2, mv[0] - mv[1] / 2, mv[1] - mv[0] / 2]  # III, aVR, aVL, aVF
    expected = np.stack([mv[0], mv[1], *limb, *mv[2:]])
    np.testing.assert_allclose(store.read([0])[0], expected, rtol=0, atol=UV / 2 + 1e-6)
    assert store.lead_valid[1].tolist() == [lead != "V4" for lead in LEADS12]
    assert report_rows(store) == {"muse/b": ("warn", "lead_set"), "muse/short": ("skip", "truncated"),
                                  "muse/broken": ("skip", "unreadable")}
    # The same files appended as a second source: new record ids, and patient P1 there is not P1 here.
    ingest(src, tmp_path / "store.zarr", source_name="site2", progress=False)
    store = ECGStore.open(tmp_path / "store.zarr")
    assert store.record_ids.tolist()[2:] == ["site2/a", "site2/b"] and store.patient_ids.tolist() == [0, 1, 2, 3]


# ---- DICOM --------------------------------------------------------------------------------------------------
DICOM_LEADS = ["Lead I (Einthoven)", "Lead II", "Lead III", "Lead aVR", "Lead aVL", "Lead aVF",
               "Lead V1", "Lead V2", "Lead V3", "Lead V4", "Lead V5", "Lead V6"]


def write_dicom(path, adc, names, fs=500.0, sensitivity=2.5, baseline=0.0, correction=1.0):
    """A 12-lead ECG Waveform Storage object: a median-beat group first, then the rhythm group."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.9.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientAge, ds.PatientSex, ds.Modality = "D7", "058Y", "F", "ECG"
    groups = []
    for label, data in (("MEDIAN BEAT", adc[:, :400]), ("RHYTHM", adc)):
        g = Dataset()
        g.MultiplexGroupLabel = label
        g.SamplingFrequency = fs
        g.NumberOfWaveformChannels, g.NumberOfWaveformSamples = data.shape
        g.WaveformBitsAllocated, g.WaveformSampleInterpretation = 16, "SS"
        channels = []
        for c, name in enumerate(names):
            ch, src, unit = Dataset(), Dataset(), Dataset()
            src.CodeMeaning, src.CodeValue, src.CodingSchemeDesignator = name, f"5.6.3-9-{c + 1}", "SCPECG"
            unit.CodeValue, unit.CodeMeaning, unit.CodingSchemeDesignator = "uV", "microvolt", "UCUM"
            ch.ChannelSourceSequence, ch.ChannelSensitivityUnitsSequence = [src], [unit]
            ch.ChannelSensitivity, ch.ChannelSensitivityCorrectionFactor = sensitivity, correction
            ch.ChannelBaseline, ch.WaveformBitsStored = baseline, 16
            channels.append(ch)
        g.ChannelDefinitionSequence = channels
        g.WaveformData = np.ascontiguousarray(data.T, "<i2").tobytes()
        groups.append(g)
    ds.WaveformSequence = groups
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_dicom_rhythm_group_matches_pydicom(tmp_path):
    import pydicom

    adc = np.rint(wave(12, 5000, 500, seed=1) / (2.5 * UV)).astype(np.int16)
    src = tmp_path / "dcm"
    write_dicom(src / "x.dcm", adc, DICOM_LEADS, baseline=12.0)
    write_dicom(src / "y.dcm", adc[:, ::2], DICOM_LEADS, fs=250.0, sensitivity=2.0, correction=1.25)
    (src / "junk.dcm").write_bytes(b"not a dicom file at all")
    store, report = ingested(src, tmp_path)
    assert report.format == "dicom" and store.record_ids.tolist() == ["dcm/x", "dcm/y"]
    assert store.patient_keys.tolist() == ["dcm/D7", "dcm/D7"] and store.patient_ids.tolist() == [0, 0]
    assert store.age.tolist() == [58, 58] and store.sex.tolist() == [0, 0]
    ref = pydicom.dcmread(src / "x.dcm").waveform_array(1).T * UV  # pydicom: uV with sensitivity and baseline
    np.testing.assert_allclose(store.read([0])[0], ref, rtol=0, atol=UV / 2 + 1e-6)
    ref_y = pydicom.dcmread(src / "y.dcm").waveform_array(1).T * UV
    np.testing.assert_allclose(store.read([1])[0], resample_poly(ref_y, 2, 1, axis=1), rtol=0, atol=UV / 2 + 1e-6)
    assert store.fs_original.tolist() == [500, 250]
    assert report_rows(store) == {"dcm/junk": ("skip", "unreadable")}


# ---- CODE-15 HDF5 -------------------------------------------------------------------------------------------
def write_code15(folder, exams, lengths, unit_mv=1.0):
    """exams_part0.hdf5 (tracings (N, 4096, 12) at 400 Hz, exam_id with a trailing 0 row) and exams.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    tracings = np.zeros((len(exams) + 1, 4096, 12), np.float32)
    signals = []
    for i, n in enumerate(lengths):
        x = wave(12, n, 400, seed=10 + i)
        pad = (4096 - n) // 2
        tracings[i, pad : pad + n] = (x / unit_mv).T
        signals.append(x)
    with h5py.File(folder / "exams_part0.hdf5", "w") as f:
        f["tracings"] = tracings
        f["exam_id"] = np.array([e for e, _ in exams] + [0])
    (folder / "exams.csv").write_text("exam_id,age,is_male,patient_id,trace_file\n" + "".join(
        f"{e},{50 + i},{'True' if i % 2 else 'False'},{p},exams_part0.hdf5\n" for i, (e, p) in enumerate(exams)))
    return signals


def test_code15_exams_trimmed_resampled_and_grouped_by_patient(tmp_path):
    exams = [(101, 7), (102, 9), (103, 7)]
    signals = write_code15(tmp_path / "code15", exams, [4096, 2800, 4000])
    store, report = ingested(tmp_path / "code15", tmp_path, format="hdf5")
    assert report.format == "code15"
    # Patient 7's exams are stored together, in listing order.
    assert store.record_ids.tolist() == ["code15/exams_part0/101", "code15/exams_part0/103", "code15/exams_part0/102"]
    assert store.patient_keys.tolist() == ["code15/7", "code15/7", "code15/9"]
    assert store.patient_ids.tolist() == [0, 0, 1]
    assert store.age.tolist() == [50, 52, 51] and store.sex.tolist() == [0, 0, 1]
    for row, i in enumerate([0, 2, 1]):
        expected = resample_poly(signals[i], 5, 4, axis=1)[:, :5000]
        n = expected.shape[1]
        assert store.lengths[row] == n  # the zero padding at both ends is trimmed
        np.testing.assert_allclose(store.read([row])[0][:, :n], expected, rtol=0, atol=UV / 2 + 1e-5)
    # Exam 101 fills all 4096 samples (10.24 s): the 0.24 s beyond the store's 10 s are reported, not lost silently.
    assert report_rows(store) == {"code15/exams_part0/101": ("warn", "cropped")}
    assert "0.24 s of 10.2 s discarded" in store.report["reason"][0]


def test_code15_unit_override_and_implausible_amplitude_warning(tmp_path):
    write_code15(tmp_path / "c", [(5, 1)], [4096], unit_mv=0.1)  # stored in units of 100 uV
    store, _ = ingested(tmp_path / "c", tmp_path, format="code15", source_unit_uv=100)
    # (the exam fills all 4096 samples, 10.24 s: the only row is the crop to 10 s)
    assert report_rows(store) == {"c/exams_part0/5": ("warn", "cropped")} and 0.3 < np.ptp(store.read([0])).max() < 5
    store2, report = ingested(tmp_path / "c", tmp_path / "again", format="code15")  # read as mV: 10x too large
    assert sorted(zip(store2.report["level"], [r.split()[0] for r in store2.report["reason"]])) == [
        ("warn", "amplitude"), ("warn", "cropped")]


# ---- NumPy --------------------------------------------------------------------------------------------------
def test_numpy_npy_and_npz_rows_with_patients_csv(tmp_path):
    src = tmp_path / "np"
    src.mkdir()
    a = np.stack([wave(8, 2500, 250, seed=s) for s in range(3)]).astype(np.float32)
    b = np.stack([wave(8, 2500, 250, seed=s) for s in range(3, 5)]).astype(np.float32)
    b[1, 4] = np.nan  # V3 all NaN: kept, lead invalid, warned
    c = a[:2].copy()
    c[0, 3, 100], c[1, 0, 7] = np.nan, np.inf  # NaN or inf inside a lead: skipped
    np.save(src / "a.npy", a)
    np.savez(src / "b.npz", x=b)
    np.save(src / "c.npy", c)
    (src / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    patients = tmp_path / "patients.csv"
    patients.write_text("record_id,patient_key\na/0,p\nb/x/1,p\n")
    store, report = ingested(src, tmp_path, lead_names=list(LEADS8), source_fs=250, patients=patients, seconds=10)
    assert report.format == "numpy"
    assert store.record_ids.tolist() == ["np/a/0", "np/b/x/1", "np/a/1", "np/a/2", "np/b/x/0"]
    assert store.patient_ids.tolist() == [0, 0, 1, 2, 3]
    np.testing.assert_allclose(store.read([2], leads=list(LEADS8))[0],
                               resample_poly(a[1].astype(np.float64), 2, 1, axis=1), rtol=0, atol=UV / 2 + 1e-5)
    assert store.lead_valid[1].tolist() == [lead != "V3" for lead in LEADS12]
    assert report_rows(store) == {"np/b/x/1": ("warn", "nan"), "np/bad": ("skip", "unreadable"),
                                  "np/c/0": ("skip", "nan"), "np/c/1": ("skip", "nan")}
    with pytest.raises(ValueError, match="lead names"):
        ingest(src, tmp_path / "x.zarr", format="numpy", progress=False)


# ---- CPSC 2018 ----------------------------------------------------------------------------------------------
def test_cpsc2018_real_records_cropped_or_split_into_windows(data_dir, tmp_path):
    src = data_dir / "cpsc2018"
    cropped, _ = ingested(src, tmp_path / "crop")
    split, _ = ingested(src, tmp_path / "split", split=True)
    items = sorted(p.stem for p in src.glob("*.mat"))
    assert cropped.record_ids.tolist() == [f"cpsc2018/{it}" for it in items]
    expected_ids, expected = [], []
    for it in items:
        ecg = scipy.io.loadmat(src / f"{it}.mat")["ECG"][0, 0]
        data = ecg["data"].astype(np.float64)
        assert cropped.sex[items.index(it)] == {"Male": 1, "Female": 0}[str(ecg["sex"][0])]
        starts = [s for s in range(0, data.shape[1], 5000) if data.shape[1] - s >= 2500]
        split_ids = [f"cpsc2018/{it}/{k}" for k in range(len(starts))]
        expected_ids += split_ids if data.shape[1] > 5000 else [f"cpsc2018/{it}"]
        expected += [data[:, s : s + 5000] for s in starts]
    assert split.record_ids.tolist() == expected_ids and len(split) > len(cropped)
    x = split.read(np.arange(len(split)))
    for i, ref in enumerate(expected):
        n = ref.shape[1]
        assert split.lengths[i] == n
        np.testing.assert_allclose(x[i, :, :n], ref, rtol=0, atol=UV / 2 + 1e-6)
    # Every window of one record belongs to one patient.
    parents = [rid.rsplit("/", 1)[0] if rid.count("/") == 2 else rid for rid in expected_ids]
    assert len(np.unique(split.patient_ids)) == len(set(parents)) == 10


def test_cpsc2018_fixture_written_with_savemat(tmp_path):
    data = wave(12, 6000, 500, seed=3)
    src = tmp_path / "cpsc"
    src.mkdir()
    scipy.io.savemat(src / "A0001.mat", {"ECG": {"sex": "Female", "age": 40, "data": data}})
    scipy.io.savemat(src / "A0002.mat", {"ECG": {"sex": "Male", "age": 70, "data": data[:8]}})
    store, _ = ingested(src, tmp_path, format="cpsc2018", seconds=12)
    assert store.record_ids.tolist() == ["cpsc/A0001"] and store.sex.tolist() == [0] and store.age.tolist() == [40]
    np.testing.assert_allclose(store.read([0])[0, :, :6000], data, rtol=0, atol=UV / 2 + 1e-6)
    assert report_rows(store) == {"cpsc/A0002": ("skip", "lead_set")}


# ---- WFDB layouts and Dx labels -----------------------------------------------------------------------------
def _wfdb(folder, name, fs=500, n=5000, seed=0, comments=()):
    folder.mkdir(parents=True, exist_ok=True)
    adc = np.rint(wave(12, n, fs, seed=seed) * 1000).astype(np.int16).T
    wfdb.wrsamp(name, fs=fs, units=["mV"] * 12, sig_name=list(LEADS12), d_signal=adc, fmt=["16"] * 12,
                adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folder), comments=list(comments))


def test_ptbxl_layout_500_hz_records_and_patients(tmp_path):
    root = tmp_path / "ptbxl"
    rows = []
    for ecg_id, patient in ((1, "15709.0"), (2, "13243.0"), (3, "15709.0")):
        _wfdb(root / "records500/00000", f"{ecg_id:05d}_hr", seed=ecg_id)
        _wfdb(root / "records100/00000", f"{ecg_id:05d}_lr", fs=100, n=1000, seed=ecg_id)
        rows.append(f"{ecg_id},{patient},records100/00000/{ecg_id:05d}_lr,records500/00000/{ecg_id:05d}_hr\n")
    (root / "ptbxl_database.csv").write_text("ecg_id,patient_id,filename_lr,filename_hr\n" + "".join(rows))
    store, _ = ingested(root, tmp_path)
    assert store.record_ids.tolist() == ["ptbxl/records500/00000/00001_hr", "ptbxl/records500/00000/00003_hr",
                                         "ptbxl/records500/00000/00002_hr"]
    assert store.patient_keys.tolist() == ["ptbxl/15709", "ptbxl/15709", "ptbxl/13243"]
    assert (store.fs_original == 500).all()


# The PTB-XL fixture: rows in the real files' column layouts (scp_statements.csv's first column unnamed), with the
# real statements' flags and classes; codes with '/' and '()', likelihood 0, a code the table does not list, a
# record without codes, an age of 300, unknown sex, age and fold.
_STATEMENTS = [
    ["", "description", "diagnostic", "form", "rhythm", "diagnostic_class", "diagnostic_subclass",
     "Statement Category"],
    ["NDT", "non-diagnostic T abnormalities", "1.0", "1.0", "", "STTC", "STTC", "other ST-T descriptive statements"],
    ["NORM", "normal ECG", "1.0", "", "", "NORM", "NORM", "Normal/abnormal"],
    ["IMI", "inferior myocardial infarction", "1.0", "", "", "MI", "IMI", "Myocardial Infarction"],
    ["LAFB", "left anterior fascicular block", "1.0", "", "", "CD", "LAFB/LPFB", "Conduction disturbances"],
    ["LPFB", "left posterior fascicular block", "1.0", "", "", "CD", "LAFB/LPFB", "Conduction disturbances"],
    ["LAO/LAE", "left atrial overload/enlargement", "1.0", "", "", "HYP", "LAO/LAE", "Atrial statements"],
    ["1AVB", "first degree AV block", "1.0", "", "", "CD", "_AVB", "Sinus node dysfunction, atrial and AV-conduction"],
    ["PVC", "ventricular premature complex", "", "1.0", "", "", "", "ectopic rhythm abnormalities"],
    ["PRC(S)", "premature complex(es)", "", "1.0", "", "", "", "ectopic rhythm abnormalities"],
    ["SR", "sinus rhythm", "", "", "1.0", "", "", "impulse formation"],
    ["AFIB", "atrial fibrillation", "", "", "1.0", "", "", "impulse formation"],
]
_DATABASE = [  # ecg_id, patient_id, age, sex (0 male, 1 female), scp_codes, strat_fold
    (1, "15709.0", "56.0", "1", "{'NORM': 100.0, 'SR': 0.0}", "3"),
    (2, "13243.0", "19.0", "0", "{'IMI': 35.0, 'LAFB': 100.0, 'PVC': 100.0, 'SR': 0.0}", "9"),
    (3, "15709.0", "57.0", "1", "{'NDT': 100.0, 'AFIB': 0.0}", "10"),
    (4, "20372.0", "300.0", "0", "{'PRC(S)': 0.0}", "10"),
    (5, "17014.0", "", "", "{'LAO/LAE': 50.0, '1AVB': 100.0, 'SR': 0.0}", "1"),
    (6, "17448.0", "70.0", "1", "{}", ""),
    (7, "19005.0", "45.0", "0", "{'XYZ': 0.0}", "2"),
]


def _ptbxl_tree(root, rows=_DATABASE):
    import csv

    for row in rows:
        _wfdb(root / "records500/00000", f"{row[0]:05d}_hr", n=1000, seed=row[0])
    with open(root / "scp_statements.csv", "w", newline="") as f:
        csv.writer(f).writerows(_STATEMENTS)
    with open(root / "ptbxl_database.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["ecg_id", "patient_id", "age", "sex", "report", "scp_codes", "strat_fold", "filename_lr",
                      "filename_hr"])
        for ecg_id, patient, age, sex, codes, fold in rows:
            out.writerow([ecg_id, patient, age, sex, "sinusrhythmus, normales ekg", codes, fold,
                          f"records100/00000/{ecg_id:05d}_lr", f"records500/00000/{ecg_id:05d}_hr"])
    return root


def _benchmark_tasks(root):
    """Each task's classes and its records' multi-hot rows (filename_hr -> {class: 0/1}), computed from the CSVs
    with pandas as helme/ecg_ptbxl_benchmarking's compute_label_aggregations and select_data (min_samples 0) do:
    a record enters a task with at least one class of it."""
    import ast

    import pandas as pd

    db = pd.read_csv(root / "ptbxl_database.csv", index_col="ecg_id")
    codes = db.scp_codes.apply(ast.literal_eval)
    table = pd.read_csv(root / "scp_statements.csv", index_col=0)
    diag = table[table.diagnostic == 1.0]
    sets = {
        "all": codes.apply(lambda d: set(d)),
        "diag": codes.apply(lambda d: {c for c in d if c in diag.index}),
        "sub": codes.apply(lambda d: {diag.loc[c].diagnostic_subclass for c in d
                                      if c in diag.index and pd.notna(diag.loc[c].diagnostic_subclass)}),
        "super": codes.apply(lambda d: {diag.loc[c].diagnostic_class for c in d
                                        if c in diag.index and pd.notna(diag.loc[c].diagnostic_class)}),
        "form": codes.apply(lambda d: {c for c in d if c in table[table.form == 1.0].index}),
        "rhythm": codes.apply(lambda d: {c for c in d if c in table[table.rhythm == 1.0].index}),
    }
    out = {}
    for task, per_record in sets.items():
        classes = sorted(set().union(*per_record))
        out[task] = (classes, {db.filename_hr[i]: {c: float(c in s) for c in classes}
                               for i, s in per_record.items() if s})
    return db, out


def test_ptbxl_labels_groups_folds_and_demographics_match_the_benchmark(tmp_path):
    import re

    root = _ptbxl_tree(tmp_path / "ptbxl")
    store, report = ingested(root, tmp_path, seconds=2)
    assert report.stored == 7 and len(store.report["level"]) == 0
    db, tasks = _benchmark_tasks(root)
    prefix = {"all": "scp", "diag": "diag", "sub": "sub", "super": "super", "form": "form", "rhythm": "rhythm"}
    items = [rid.removeprefix("ptbxl/") for rid in store.record_ids.tolist()]
    labels, expected_names = store.labels, set()
    for task, (classes, rows) in tasks.items():
        names = {f"{prefix[task]}_{re.sub(r'[^A-Za-z0-9_.-]', '_', c)}": c for c in classes}
        assert sorted(store.label_group(task)) == sorted(names), task
        expected_names |= set(names)
        for i, item in enumerate(items):
            got = {c: float(labels[name][i]) for name, c in names.items()}
            if item in rows:
                assert got == rows[item], (task, item)
            else:  # outside the task: NaN for every label of the group
                assert all(np.isnan(v) for v in got.values()), (task, item)
    assert set(store.label_names) == expected_names
    # A few cells by hand, so that the reference above is checked too.
    row = {item: i for i, item in enumerate(items)}
    assert tasks["super"][0] == ["CD", "HYP", "MI", "NORM", "STTC"]
    assert labels["super_MI"][row["records500/00000/00002_hr"]] == 1 and labels["sub_LAFB_LPFB"][row[
        "records500/00000/00002_hr"]] == 1 and "diag_LPFB" not in labels
    assert labels["rhythm_SR"][row["records500/00000/00001_hr"]] == 1  # likelihood 0 counts as present
    assert labels["scp_XYZ"][row["records500/00000/00007_hr"]] == 1 and np.isnan(
        labels["super_NORM"][row["records500/00000/00007_hr"]])
    assert labels["form_NDT"][row["records500/00000/00003_hr"]] == 1 == labels["diag_NDT"][row[
        "records500/00000/00003_hr"]]
    assert all(np.isnan(labels[n][row["records500/00000/00006_hr"]]) for n in labels)  # scp_codes {}
    # Folds, patients, age and sex from the index (PTB-XL's sex: 0 male, 1 female; the store's: 1 male, 0 female).
    by_item = db.set_index("filename_hr")
    np.testing.assert_array_equal(store.folds, [-1 if np.isnan(by_item.strat_fold[it]) else by_item.strat_fold[it]
                                                for it in items])
    assert store.patient_keys.tolist() == [f"ptbxl/{int(by_item.patient_id[it])}" for it in items]
    assert store.sex.tolist() == [{0.0: 1, 1.0: 0}.get(by_item.sex[it], -1) for it in items]
    ages = [by_item.age[it] if by_item.age[it] < 150 else np.nan for it in items]  # 300: not an age
    np.testing.assert_array_equal(store.age, np.array(ages, np.float32))


def test_ptbxl_bad_index_values_name_the_record_before_anything_is_written(tmp_path):
    bad = [("{'NORM': 100.0", "3", "scp_codes"), ("['NORM']", "3", "scp_codes"), ("{'NORM': 100.0}", "x", "strat_fold")]
    for n, (codes, fold, match) in enumerate(bad):
        root = _ptbxl_tree(tmp_path / f"bad{n}", [(1, "1.0", "50", "0", codes, fold)])
        with pytest.raises(ValueError, match=f"record records500/00000/00001_hr: {match}"):
            ingest(root, tmp_path / f"bad{n}.zarr", progress=False)
        assert not (tmp_path / f"bad{n}.zarr").exists()


def test_mimic_layout_subjects_are_patients(tmp_path):
    root = tmp_path / "mimic"
    rows = []
    for study, subject in ((40689238, 10000032), (44458630, 10000117), (49036311, 10000032)):
        rel = f"files/p1000/p{subject}/s{study}"
        _wfdb(root / rel, str(study), seed=study % 97)
        rows.append(f"{subject},{study},{rel}/{study}\n")
    (root / "record_list.csv").write_text("subject_id,study_id,path\n" + "".join(rows))
    (root / "files/p1000/stray.hea").write_text("not listed in record_list.csv\n")
    store, _ = ingested(root, tmp_path)
    assert store.patient_keys.tolist() == ["mimic/10000032", "mimic/10000032", "mimic/10000117"]
    assert store.record_ids[0] == "mimic/files/p1000/p10000032/s40689238/40689238"
    assert len(store.report["level"]) == 0


def test_labels_from_dx_on_the_cinc_headers(data_dir, tmp_path):
    store, _ = ingested(data_dir / "cinc2021", tmp_path, labels_from_dx=True)
    codes = {}
    for rid in store.record_ids.tolist():
        comments = wfdb.rdheader(str(data_dir / "cinc2021" / rid.split("/")[1])).comments
        dx = next(c for c in comments if c.startswith("Dx:"))
        codes[rid] = {c.strip() for c in dx.split(":")[1].split(",")}
    names = sorted({c for cs in codes.values() for c in cs})
    assert store.label_names == sorted(f"dx_{c}" for c in names)
    for i, rid in enumerate(store.record_ids.tolist()):
        assert {n[3:] for n, v in store.labels.items() if v[i] == 1} == codes[rid]
        assert all(v[i] in (0, 1) for v in store.labels.values())


# ---- auto -----------------------------------------------------------------------------------------------------
def test_auto_detection_and_its_refusals(data_dir, tmp_path):
    assert detect_format(data_dir / "cinc2021") == "wfdb"  # .mat beside .hea: WFDB signal files
    assert detect_format(data_dir / "cpsc2018") == "cpsc2018"
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed/a.xml").write_text("<x/>")
    (tmp_path / "mixed/b.dcm").write_bytes(b"")
    with pytest.raises(ValueError, match="1 muse, 1 dicom|1 dicom, 1 muse"):
        detect_format(tmp_path / "mixed")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no ECG files"):
        ingest(tmp_path / "empty", tmp_path / "s.zarr", progress=False)
    with pytest.raises(ValueError, match="do not apply to format muse"):
        ingest(tmp_path / "mixed", tmp_path / "s.zarr", format="muse", source_unit_uv=100, progress=False)
