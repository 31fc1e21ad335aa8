"""Tests of the synthetic cohort: determinism, layout, physiology measured from the signals, and label difficulty."""

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.signal import butter, find_peaks, sosfiltfilt
from scipy.stats import mannwhitneyu

from ecgfast.leads import INVERSE_DOWER, LEADS8, LEADS12, expand_8_to_12, select_leads
from ecgfast.synth import make_cohort, write_cohort

FEATURES = ("qrs_ms", "t_r_ratio", "t_width_ms", "heart_rate", "p_r_ratio", "qrs_t_angle")


def measure(signals, lead_names, fs):
    """Hand-measured features per ECG, from the VCG (inverse Dower) of its averaged beat, as a cardiologist's
    calipers would: QRS width, T/R and P/R amplitude ratios, T half-height width, rate and the QRS-T angle."""
    ecg8 = select_leads(signals, lead_names, LEADS8).astype(np.float64)
    ecg8 = sosfiltfilt(butter(2, (0.5, min(40.0, 0.45 * fs)), "bandpass", fs=fs, output="sos"), ecg8, axis=-1)
    vcg = np.einsum("al,nlt->nat", INVERSE_DOWER, ecg8)
    pre, post = int(0.3 * fs), int(0.6 * fs)
    out = {k: np.empty(len(vcg)) for k in FEATURES}
    for n, v in enumerate(vcg):
        # QRS complexes are where the loop moves fastest: T waves are as tall as R at times, never as steep.
        speed = np.linalg.norm(np.gradient(v, axis=1), axis=0)
        # Tented hyperkalaemic T waves reach half the QRS's speed: a lower threshold counts them as beats.
        peaks, _ = find_peaks(speed, distance=int(0.25 * fs), height=0.6 * np.percentile(speed, 99.5))
        peaks = peaks[(peaks >= pre) & (peaks + post < v.shape[1])]
        beat = np.mean([v[:, p - pre:p + post] for p in peaks], axis=0)
        m, sp = np.linalg.norm(beat, axis=0), np.linalg.norm(np.gradient(beat, axis=1), axis=0)
        r = pre - int(0.05 * fs) + np.argmax(m[pre - int(0.05 * fs):pre + int(0.05 * fs)])
        fast = sp > 0.1 * sp.max()
        on = r - np.argmin(fast[r::-1])
        off = r + np.argmin(fast[r:])
        t_zone = slice(off + int(0.04 * fs), pre + int(0.55 * fs))
        t_peak = t_zone.start + np.argmax(m[t_zone])
        p_zone = slice(0, max(on - int(0.03 * fs), 1))
        cos = beat[:, r] @ beat[:, t_peak] / (m[r] * m[t_peak])
        out["qrs_ms"][n] = (off - on) / fs * 1000
        out["t_r_ratio"][n] = m[t_peak] / m[r]
        out["t_width_ms"][n] = (m[t_zone] > 0.5 * m[t_peak]).sum() / fs * 1000
        out["heart_rate"][n] = 60 * fs / np.median(np.diff(peaks))
        out["p_r_ratio"][n] = m[p_zone].max() / m[r]
        out["qrs_t_angle"][n] = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    return out


def auroc(score, label):
    """Area under the ROC curve as the Mann-Whitney U statistic over (positives, negatives)."""
    pos, neg = score[label == 1], score[label == 0]
    return mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg))


def logistic_auroc(features, label, train):
    """Test AUROC of an L2-regularized logistic regression fit on the ``train`` rows, scored on the others."""
    x = np.column_stack([features[k] for k in FEATURES])
    mu, sd = x[train].mean(0), x[train].std(0)
    x = np.column_stack([(x - mu) / sd, np.ones(len(x))])

    def loss(w):
        s = x[train] @ w
        y = label[train]
        return np.mean(np.logaddexp(0, s) - y * s) + 1e-3 * w[:-1] @ w[:-1]

    w = minimize(loss, np.zeros(x.shape[1]), method="L-BFGS-B").x
    return auroc(x[~train] @ w, label[~train])


@pytest.fixture(scope="module")
def demo_cohort():
    """The demo's setting: 100 Hz. Big enough for a held-out AUROC, small enough for CI."""
    cohort = make_cohort(300, fs=100.0, seconds=10.0, leads=8, seed=0)
    return cohort, measure(cohort.signals, cohort.lead_names, cohort.fs)


def test_determinism_by_seed():
    a, b, c = make_cohort(3, seed=7), make_cohort(3, seed=7), make_cohort(3, seed=8)
    np.testing.assert_array_equal(a.signals, b.signals)
    np.testing.assert_array_equal(a.record_ids, b.record_ids)
    for name in a.labels:
        np.testing.assert_array_equal(a.labels[name], b.labels[name])
    assert a.signals.shape != c.signals.shape or not np.allclose(a.signals, c.signals)


def test_first_patients_stable_when_adding_patients():
    small, big = make_cohort(2, fs=250.0, seed=3), make_cohort(6, fs=250.0, seed=3)
    n = len(small)
    np.testing.assert_array_equal(big.signals[:n], small.signals)
    np.testing.assert_array_equal(big.record_ids[:n], small.record_ids)
    np.testing.assert_array_equal(big.age[:n], small.age)
    for name in small.traits:
        np.testing.assert_array_equal(big.traits[name][:n], small.traits[name])
    assert big.patient_keys[n] != small.patient_keys[-1]


def test_shapes_dtypes_and_lead_order():
    c12 = make_cohort(4, seconds=4.0, seed=1)
    c8 = make_cohort(4, seconds=4.0, leads=8, seed=1)
    n = len(c12)
    assert c12.signals.shape == (n, 12, 2000) and c12.signals.dtype == np.float32
    assert c12.lead_names == LEADS12 and c8.lead_names == LEADS8 and c12.fs == 500.0
    assert c12.lengths.dtype == np.int32 and np.all(c12.lengths == 2000)
    assert c12.age.dtype == np.float32 and c12.sex.dtype == np.int8 and set(c12.sex) <= {0, 1}
    assert np.all((c12.age >= 18) & (c12.age <= 95))
    for y in c12.labels.values():
        assert y.dtype == np.float32 and set(np.unique(y)) <= {0.0, 1.0}
    # The 8-lead cohort is the same ECGs; the 12-lead one derives III, aVR, aVL, aVF from I and II.
    np.testing.assert_array_equal(select_leads(c12.signals, LEADS12, LEADS8), c8.signals)
    np.testing.assert_allclose(c12.signals, expand_8_to_12(c8.signals.astype(np.float64)), atol=1e-5)
    # Millivolts: R waves of about 0.3-4 mV, no lead a flat line.
    peak = np.abs(c12.signals).max(-1)
    assert 0.3 < np.median(peak) < 4.0 and peak.max() < 10.0 and peak.min() > 0.02


def test_patients_contiguous_with_one_to_five_ecgs():
    c = make_cohort(200, fs=50.0, seconds=1.0, seed=2)
    keys = c.patient_keys
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    assert len(starts) == len(np.unique(keys)) == 200
    counts = np.diff(np.r_[starts, len(keys)])
    assert counts.min() >= 1 and counts.max() <= 5 and abs(counts.mean() - 3.0) < 0.25
    assert len(np.unique(c.record_ids)) == len(c)
    assert c.record_ids[0] == "synth/p000000/e0" and c.patient_keys[0] == "p000000"
    for k, expected in ((1.0, 1), (5.0, 5)):
        assert np.all(np.unique(make_cohort(20, ecgs_per_patient=k, fs=50.0, seconds=1.0).patient_keys,
                                return_counts=True)[1] == expected)


def test_labels_patient_level_and_per_ecg(demo_cohort):
    c, _ = demo_cohort
    _, patient = np.unique(c.patient_keys, return_inverse=True)
    lvef, potassium = c.labels["low_lvef"], c.labels["high_potassium"]
    per_patient = lambda y, f: np.array([f(y[patient == p]) for p in range(patient.max() + 1)])  # noqa: E731
    assert np.all(per_patient(lvef, np.ptp) == 0)
    assert np.sum(per_patient(potassium, np.ptp) > 0) >= 10
    assert 0.12 < lvef.mean() < 0.28 and 0.08 < potassium.mean() < 0.22


def test_measured_features_follow_the_generator(demo_cohort):
    c, f = demo_cohort
    for name, least in (("heart_rate", 0.8), ("t_r_ratio", 0.7), ("qrs_t_angle", 0.7), ("qrs_ms", 0.4)):
        assert np.corrcoef(f[name], c.traits[name])[0, 1] > least, name


@pytest.mark.parametrize("label, feature, direction", [
    ("low_lvef", "qrs_ms", +1), ("low_lvef", "heart_rate", +1), ("low_lvef", "qrs_t_angle", +1),
    ("high_potassium", "t_r_ratio", +1), ("high_potassium", "t_width_ms", -1), ("high_potassium", "qrs_ms", +1),
])
def test_label_effect_direction_measured_from_signals(demo_cohort, label, feature, direction):
    c, f = demo_cohort
    assert auroc(direction * f[feature], c.labels[label]) > 0.55


@pytest.mark.parametrize("label", ["low_lvef", "high_potassium"])
def test_labels_learnable_but_not_separable(demo_cohort, label):
    c, f = demo_cohort
    _, patient = np.unique(c.patient_keys, return_inverse=True)
    assert 0.65 < logistic_auroc(f, c.labels[label], train=patient % 2 == 0) < 0.95


def test_labels_survive_vcg_rotation_and_scaling(demo_cohort):
    """The pretraining's 3KG augmentation (rotations of +-45 degrees, per-axis scales of 1-1.5x or inverse) keeps
    what carries the labels: features measured after it still predict both."""
    from ecgfast.augment import vcg_transform

    c, _ = demo_cohort
    rng = np.random.default_rng(1)
    scales = rng.uniform(1.0, 1.5, (len(c), 3))
    scales = np.where(rng.random((len(c), 3)) < 0.5, 1 / scales, scales)
    augmented = vcg_transform(c.signals, rng.uniform(-45.0, 45.0, (len(c), 3)), scales)
    assert not np.allclose(augmented, c.signals, atol=0.05)
    f = measure(augmented, c.lead_names, c.fs)
    _, patient = np.unique(c.patient_keys, return_inverse=True)
    for label in c.labels.values():
        assert logistic_auroc(f, label, train=patient % 2 == 0) > 0.7


def test_non_dipolar_content_like_real_ecgs(data_dir):
    """The 8 leads are not rank 3: after a 0.5-40 Hz band-pass (no wander, little noise) the residual of the best
    rank-3 fit is about as large a share of the energy as in the real CinC-2021 records."""
    from scipy.io import loadmat

    from ecgfast.leads import canonical_lead

    def residual_share(x8, fs):
        x = sosfiltfilt(butter(2, (0.5, 40.0), "bandpass", fs=fs, output="sos"), x8.astype(np.float64), axis=-1)
        energy = np.linalg.eigvalsh(x @ np.swapaxes(x, -1, -2))  # squared singular values, ascending
        return energy[..., :-3].sum(-1) / energy.sum(-1)

    real = []
    for header in sorted((data_dir / "cinc2021").glob("*.hea"))[:30]:
        # The .mat holds the samples at 1 µV per unit; the lead name ends each signal line of the header.
        lines = header.read_text().splitlines()
        names = [canonical_lead(line.split()[-1]) for line in lines[1:1 + int(lines[0].split()[1])]]
        x8 = select_leads(loadmat(header.with_suffix(".mat"))["val"] / 1000.0, names, LEADS8)
        if np.all(np.abs(x8).sum(-1) > 0):
            real.append(residual_share(x8, float(lines[0].split()[2])))
    synth = residual_share(make_cohort(20, leads=8, seed=4).signals, 500.0)
    assert synth.min() > 5e-4
    assert np.median(real) / 3 < np.median(synth) < 3 * np.median(real)


def test_noise_amplitudes_realistic():
    from scipy.signal import butter as bw

    c = make_cohort(10, leads=8, seed=5)
    # Above 45 Hz there is only muscle and powerline noise: tens of microvolts.
    hf = sosfiltfilt(bw(4, 45.0, "highpass", fs=500.0, output="sos"), c.signals.astype(np.float64), axis=-1)
    rms_uv = 1000 * np.sqrt(np.mean(hf ** 2, axis=-1))
    assert 3 < np.median(rms_uv) < 60


@pytest.mark.parametrize("kwargs, word", [
    ({"n_patients": 0}, "n_patients"), ({"n_patients": 2, "ecgs_per_patient": 6}, "ecgs_per_patient"),
    ({"n_patients": 2, "leads": 10}, "leads"), ({"n_patients": 2, "fs": 10.0}, "fs"),
    ({"n_patients": 2, "seed": -1}, "seed"),
])
def test_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        make_cohort(**kwargs)


def test_patients_the_same_at_every_rate_and_duration():
    """The demo's 100 Hz, 2.5 s cohort holds the same patients and labels as the 500 Hz, 10 s one."""
    full, demo = make_cohort(5, seed=6), make_cohort(5, fs=100.0, seconds=2.5, leads=8, seed=6)
    np.testing.assert_array_equal(full.record_ids, demo.record_ids)
    for name in full.labels:
        np.testing.assert_array_equal(full.labels[name], demo.labels[name])
    for name in full.traits:
        np.testing.assert_array_equal(full.traits[name], demo.traits[name])


def test_write_cohort_round_trip(tmp_path, capsys):
    """Written in batches of 3 patients, the store holds make_cohort's cohort to the 1 µV quantum."""
    from ecgfast.cli import main
    from ecgfast.store import ECGStore

    expected = make_cohort(7, fs=100.0, seconds=2.0, seed=9)
    store = write_cohort(tmp_path / "c.zarr", 7, fs=100.0, seconds=2.0, seed=9, batch_patients=3)
    assert len(store) == len(expected) and store.lead_names == LEADS12 and store.fs == 100.0
    np.testing.assert_allclose(store.read_block(0, len(store)), expected.signals, rtol=0, atol=0.0005 + 1e-6)
    np.testing.assert_array_equal(store.record_ids, expected.record_ids)
    np.testing.assert_array_equal(store.patient_keys, expected.patient_keys)
    np.testing.assert_array_equal(store.lengths, expected.lengths)
    np.testing.assert_array_equal(store.age, expected.age)
    np.testing.assert_array_equal(store.sex, expected.sex)
    assert store.labels.keys() == expected.labels.keys()
    for name, y in expected.labels.items():
        np.testing.assert_array_equal(store.labels[name], y)
    # One dense id per patient, the patient's records next to each other.
    ids = store.patient_ids
    assert np.all(np.diff(ids) >= 0) and len(np.unique(ids)) == 7

    # The command writes the same store (8 leads here; reads rebuild the limb leads from I and II).
    assert main(["synth", str(tmp_path / "cli.zarr"), "--patients", "7", "--fs", "100", "--seconds", "2",
                 "--seed", "9", "--leads", "8"]) == 0
    assert "records" in capsys.readouterr().out
    cli = ECGStore.open(tmp_path / "cli.zarr")
    np.testing.assert_allclose(cli.read(np.arange(len(cli)), leads=LEADS12), expected.signals, rtol=0, atol=0.0011)
