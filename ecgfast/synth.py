"""The synthetic cohort: physiological 12-lead ECGs of simulated patients, with two labels tied to ECG correlates.

A cardiac dipole model. Each ECG gets one beat template: the P, QRS and T loops are sums of Gaussian waves in
3-D (per-axis timings open the loops), projected to the eight independent leads with the Dower matrix after a
patient rotation (electrical axis) and a small per-recording rotation (electrode placement), plus per-lead
non-dipolar waves so that the eight leads are not exactly rank 3. The template is placed at R times with
beat-to-beat RR jitter and respiratory modulation; baseline wander, powerline and band-limited muscle noise (from a
seeded noise bank, so that noise does not cap the speed) are added per lead; III, aVR, aVL and aVF follow from I
and II through ``ecgfast.leads``.

Labels live in what VCG rotations, scalings and masking keep (durations, shapes, ratios, rate), never in one
voltage or axis alone:

* ``low_lvef`` is a patient trait: a latent severity widens the QRS, raises the rate, lengthens the QTc, opens the
  QRS-T angle, fragments the QRS and lowers the QRS voltage for the patient's build. Prevalence about 17-19%.
* ``high_potassium`` varies between a patient's ECGs around a patient baseline: it peaks and narrows the T wave
  relative to R, widens the QRS, flattens the P wave and lengthens the PR. Prevalence about 14%.

Both labels are thresholds of a latent plus label noise, and every feature also varies for reasons unrelated to
the labels, so neither task is separable from the features (AUROC of a logistic regression on a few measured
features about 0.78-0.87 here).

Patient ``p`` draws all its random numbers from ``numpy.random.SeedSequence((seed, p))`` in fixed-size blocks, so
a cohort's first patients do not change when more are asked for, whatever the batch size.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numba
import numpy as np
from numba import njit

from ecgfast.leads import DERIVED, DERIVED_FROM_I_II, DOWER, LEADS8, LEADS12, lead_index

MAX_ECGS = 5  # ECGs per patient: 1 to MAX_ECGS
LABELS = ("low_lvef", "high_potassium")  # the keys of Cohort.labels, known before any cohort is made
_PRE_S, _POST_S = 0.40, 0.70  # the beat template spans R - 0.40 s to R + 0.70 s
_MIN_RR_S = 0.30  # shortest RR after jitter, which bounds the beats per recording
_BANK_SAMPLES = 1 << 20
_CHUNK_ECGS = 64  # ECGs per task of the rendering threads
_N_PATIENT_NORMALS, _N_PATIENT_UNIFORMS = 80, 8
_N_ECG_NORMALS, _N_ECG_UNIFORMS = 48, 32


@dataclass
class Cohort:
    """A synthetic cohort in memory. Arrays have one row per ECG; the ECGs of one patient are consecutive.

    ``traits`` holds the hidden per-ECG parameters the generator used (for tests and for studying what a model
    learned): ``qrs_ms``, ``heart_rate`` (beats/min), ``pr_ms``, ``qt_ms``, ``t_r_ratio`` (T over R vector
    amplitude), ``t_width_ms`` (the T wave's Gaussian sigma), ``p_r_ratio``, ``qrs_t_angle`` (degrees),
    ``qrs_mv`` (R vector amplitude), ``lvef_severity`` and ``potassium`` (the latents the labels threshold).
    """

    signals: np.ndarray  # float32 millivolts (N, L, T)
    lead_names: tuple[str, ...]
    fs: float
    lengths: np.ndarray  # int32 (N,)
    patient_keys: np.ndarray  # str (N,)
    record_ids: np.ndarray  # str (N,)
    age: np.ndarray  # float32 (N,)
    sex: np.ndarray  # int8 (N,): 0 female, 1 male
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # float32 (N,) of 0/1
    traits: dict[str, np.ndarray] = field(default_factory=dict)  # float32 (N,)

    def __len__(self) -> int:
        return len(self.signals)


def make_cohort(n_patients: int, *, ecgs_per_patient: float = 3.0, fs: float = 500.0, seconds: float = 10.0,
                leads: int = 12, seed: int = 0) -> Cohort:
    """Generate ``n_patients`` simulated patients with 1 to 5 ECGs each (``ecgs_per_patient`` on average).

    Args:
        n_patients: number of patients (>= 1).
        ecgs_per_patient: mean ECGs per patient, in [1, 5].
        fs: sampling rate in Hz (>= 50). Waves and intervals are set in seconds; the muscle noise band stops
            below fs / 2 and powerline noise is left out where it would alias.
        seconds: duration of each ECG.
        leads: 12 (``LEADS12`` order) or 8 (``LEADS8``: I, II, V1-V6).
        seed: the cohort's seed; patient ``p`` draws from ``SeedSequence((seed, p))``.
    """
    shape = _check(n_patients, ecgs_per_patient, fs, seconds, leads, seed)
    return _generate(0, n_patients, _noise_bank(seed, fs, shape[1]), *shape)


def write_cohort(dest, n_patients: int, *, ecgs_per_patient: float = 3.0, fs: float = 500.0, seconds: float = 10.0,
                 leads: int = 12, seed: int = 0, batch_patients: int = 2048, overwrite: bool = False,
                 progress: bool = True, storage_options: dict | None = None, codec: str | None = None,
                 compression_level: int | None = None):
    """Generate the cohort in batches of ``batch_patients`` and append it to a new ``ECGStore`` at ``dest``.

    The store holds exactly what ``make_cohort`` with the same arguments returns (quantized to 1 µV), with labels
    ``low_lvef`` and ``high_potassium``; ``dest`` is a path or fsspec URL (``storage_options`` configure its
    filesystem), ``overwrite`` replaces a store there (``--overwrite``), ``progress`` shows a bar, ``codec`` and
    ``compression_level`` compress it (``ECGStore.create``; ``--codec``, ``--compression-level``). Returns the
    store, open for reading.
    """
    from tqdm.auto import tqdm

    from ecgfast.store import DEFAULT_CODEC, ECGStore

    shape = _check(n_patients, ecgs_per_patient, fs, seconds, leads, seed)
    if batch_patients < 1:
        raise ValueError(f"batch_patients must be >= 1, got {batch_patients}")
    bank = _noise_bank(seed, fs, shape[1])
    provenance = {"source": "ecgfast.synth", "n_patients": n_patients, "ecgs_per_patient": ecgs_per_patient,
                  "seconds": seconds, "seed": seed}
    store = ECGStore.create(dest, shape[0], fs, shape[1], provenance=provenance, overwrite=overwrite,
                            codec=codec or DEFAULT_CODEC, compression_level=compression_level,
                            storage_options=storage_options)
    with store, tqdm(total=n_patients, unit="patient", desc="synth", disable=not progress) as bar:
        for start in range(0, n_patients, batch_patients):
            stop = min(start + batch_patients, n_patients)
            c = _generate(start, stop, bank, *shape)
            store.append(c.signals, lengths=c.lengths, record_ids=c.record_ids, patient_keys=c.patient_keys,
                         age=c.age, sex=c.sex, fs_original=np.full(len(c), fs, np.float32), labels=c.labels)
            bar.update(stop - start)
    return ECGStore.open(dest, storage_options=storage_options)


def _check(n_patients, ecgs_per_patient, fs, seconds, leads, seed):
    if int(n_patients) != n_patients or n_patients < 1:
        raise ValueError(f"n_patients (--patients) must be a positive integer, got {n_patients!r}")
    if not 1.0 <= ecgs_per_patient <= MAX_ECGS:
        raise ValueError(f"ecgs_per_patient (--ecgs-per-patient) must be in [1, {MAX_ECGS}], got {ecgs_per_patient}")
    if not fs >= 50.0:
        raise ValueError(f"fs (--fs) must be at least 50 Hz, got {fs}")
    if not seconds * fs >= 1.0:
        raise ValueError(f"seconds x fs (--seconds, --fs) must give at least one sample, got seconds={seconds}, fs={fs}")
    if leads not in (8, 12):
        raise ValueError(f"leads (--leads) must be 8 or 12, got {leads!r}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed (--seed) must be a non-negative integer, got {seed!r}")
    lead_names = LEADS12 if leads == 12 else LEADS8
    return lead_names, int(round(seconds * fs)), float(fs), float(ecgs_per_patient), int(seed)


def _noise_bank(seed: int, fs: float, n_samples: int) -> np.ndarray:
    """Unit-RMS muscle noise band-limited to 20-150 Hz (or what fs allows), that recordings read at random offsets.

    At least 2**20 samples and twice a recording, so that recordings rarely share a stretch of it.
    """
    from scipy.signal import butter, sosfilt

    # The spawn key keeps the bank's stream apart from every patient's SeedSequence((seed, p)).
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    sos = butter(2, [min(20.0, 0.2 * fs), min(150.0, 0.4 * fs)], btype="band", fs=fs, output="sos")
    bank = sosfilt(sos, rng.standard_normal(max(_BANK_SAMPLES, 2 * n_samples)))
    return (bank / bank.std()).astype(np.float32)


def _softplus(x):
    return np.logaddexp(0.0, x)


def _rotations(angles: np.ndarray) -> np.ndarray:
    """(..., 3) angles in radians about X, Y, Z -> (..., 3, 3) rotation matrices Rz @ Ry @ Rx."""
    c, s = np.cos(angles), np.sin(angles)
    one, zero = np.ones_like(c[..., 0]), np.zeros_like(c[..., 0])
    rx = np.stack([one, zero, zero, zero, c[..., 0], -s[..., 0], zero, s[..., 0], c[..., 0]], -1)
    ry = np.stack([c[..., 1], zero, s[..., 1], zero, one, zero, -s[..., 1], zero, c[..., 1]], -1)
    rz = np.stack([c[..., 2], -s[..., 2], zero, s[..., 2], c[..., 2], zero, zero, zero, one], -1)
    shape = angles.shape[:-1] + (3, 3)
    return rz.reshape(shape) @ ry.reshape(shape) @ rx.reshape(shape)


def _col(a: np.ndarray) -> np.ndarray:
    return a[:, None]


def _f32(a) -> np.ndarray:
    return np.asarray(a, np.float32)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


class _Columns:
    """Hands out the columns of a block of draws one trait at a time, so each trait keeps its own random numbers."""

    def __init__(self, block: np.ndarray):
        self.block, self.next_col = block, 0

    def take(self, n: int | None = None) -> np.ndarray:
        k = 1 if n is None else n
        out = self.block[..., self.next_col:self.next_col + k]
        if out.shape[-1] != k:
            raise RuntimeError("the generator asks for more random numbers than the block holds")
        self.next_col += k
        return out[..., 0] if n is None else out


def _draws(seed: int, start: int, stop: int, n_beats: int):
    """Every random number of patients start..stop-1, each patient's from its own SeedSequence((seed, p))."""
    n = stop - start
    pz, ez = np.empty((n, _N_PATIENT_NORMALS)), np.empty((n, MAX_ECGS, _N_ECG_NORMALS))
    pu, eu = np.empty((n, _N_PATIENT_UNIFORMS)), np.empty((n, MAX_ECGS, _N_ECG_UNIFORMS))
    rr = np.empty((n, MAX_ECGS, n_beats))
    split_z = [_N_PATIENT_NORMALS, _N_PATIENT_NORMALS + MAX_ECGS * _N_ECG_NORMALS]
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence((seed, start + i)))
        # One call per kind keeps the per-patient cost at a few microseconds. The RR jitter comes last, so that a
        # patient's traits and labels are the same at every rate and duration.
        u = rng.random(_N_PATIENT_UNIFORMS + MAX_ECGS * _N_ECG_UNIFORMS)
        z = rng.standard_normal(split_z[1] + MAX_ECGS * n_beats)
        pz[i], ez_i, rr_i = np.split(z, split_z)
        ez[i], rr[i] = ez_i.reshape(MAX_ECGS, -1), rr_i.reshape(MAX_ECGS, -1)
        pu[i], eu[i] = u[:_N_PATIENT_UNIFORMS], u[_N_PATIENT_UNIFORMS:].reshape(MAX_ECGS, -1)
    return pz, pu, ez, eu, rr


def _generate(start, stop, bank, lead_names, n_samples, fs, ecgs_per_patient, seed) -> Cohort:
    """Patients start..stop-1 of the cohort, rendered into one Cohort."""
    n_beats = int((n_samples / fs + _PRE_S + 2.0) / _MIN_RR_S) + 1
    pz, pu, ez, eu, rr_z = _draws(seed, start, stop, n_beats)
    z, u = _Columns(pz), _Columns(pu)

    # Patients: demographics, the two latents, and the traits that stay with them.
    n_ecgs = 1 + (u.take(MAX_ECGS - 1) < (ecgs_per_patient - 1) / (MAX_ECGS - 1)).sum(1)
    male = u.take() < 0.52
    mains_60 = u.take() < 0.5
    age = np.clip(62 + 14 * z.take(), 18, 95)
    severity = z.take() + 0.35 * (age - 62) / 14 + 0.3 * male  # LV dysfunction
    low_lvef = severity + 0.45 * z.take() > 1.2
    # The patient's usual potassium, as a z-score: hyperkalaemia clusters in patients with chronic kidney disease,
    # so more than half of its variance lies between patients.
    k_base = 0.75 * z.take()
    build = np.exp(0.2 * z.take() - 0.12 * ~male)  # body habitus scales every voltage
    qrs_p = 88 + 6 * male + 10 * severity + 7 * z.take()
    hr_p = 66 + 6 * severity + 9 * z.take()
    qrs_mv_p = 1.4 * build * np.exp(-0.15 * severity + 0.18 * z.take())
    qrs_t_angle_p = np.radians(np.clip(35 + 14 * severity + 15 * z.take(), 5, 170))
    frag_p = 0.15 * _softplus(3 * (severity - 0.8)) / 3  # QRS fragmentation, relative to R
    qtc_p = 415 + 10 * severity + 15 * z.take()
    t_ratio_p = 0.28 * np.exp(0.25 * z.take())
    t_sigma_p = 0.045 * np.exp(0.12 * z.take())
    pr_p = 0.155 + 0.018 * z.take()
    p_ratio_p = 0.12 * np.exp(0.2 * z.take())
    hrv_p = 0.03 * np.exp(0.3 * z.take())
    axis_p = np.radians([15.0, 15.0, 22.0]) * z.take(3)
    r_dir_p = _unit(np.array([0.75, 0.45, 0.35]) + 0.15 * z.take(3))
    q_dir_p = _unit(np.array([-0.4, 0.1, -0.5]) + 0.15 * z.take(3))
    s_dir_p = _unit(np.array([-0.35, -0.45, 0.55]) + 0.15 * z.take(3))
    p_dir_p = _unit(np.array([0.45, 0.8, 0.1]) + 0.15 * z.take(3))
    frag_dir_p = _unit(z.take(3))
    t_away_p = _unit(np.cross(r_dir_p, z.take(3)))  # the axis about which T turns away from R
    qrs_loop_p = 0.06 * z.take(9).reshape(-1, 3, 3)  # per-axis timing of Q, R, S, in QRS durations
    t_loop_p = 0.12 * z.take(3)  # per-axis timing of T, in T sigmas
    nd_p = z.take(16).reshape(-1, 8, 2)  # non-dipolar QRS and T waves per lead
    nd_shift_p = np.clip(0.25 * z.take(8), -0.45, 0.45)

    # ECGs: patient index pe, rank j within the patient.
    pe = np.repeat(np.arange(stop - start), n_ecgs)
    j = np.arange(len(pe)) - np.repeat(np.cumsum(n_ecgs) - n_ecgs, n_ecgs)
    z, u, rr_z = _Columns(ez[pe, j]), _Columns(eu[pe, j]), rr_z[pe, j]
    potassium = k_base[pe] + 0.65 * z.take()
    high_k = potassium + 0.4 * z.take() > 1.15
    hk = _softplus(2.5 * (potassium - 0.7)) / 2.5  # hyperkalaemia effects start near the threshold
    hr = np.clip(hr_p[pe] * np.exp(0.07 * z.take()), 40, 150)
    rr_s = 60 / hr
    qrs = np.clip(qrs_p[pe] + 14 * hk + 2 * z.take(), 65, 180) / 1000
    pr = pr_p[pe] + 0.010 * hk + 0.006 * z.take()
    qt = (qtc_p[pe] + 6 * z.take()) / 1000 * np.sqrt(rr_s)
    t_ratio = t_ratio_p[pe] * np.exp(0.4 * hk + 0.06 * z.take())
    t_sigma = t_sigma_p[pe] * np.exp(-0.35 * hk)  # peaked, narrow-based (tented) T
    p_ratio = p_ratio_p[pe] * np.exp(-0.5 * hk + 0.05 * z.take())
    qrs_mv = qrs_mv_p[pe] * np.exp(0.05 * z.take())
    angle = qrs_t_angle_p[pe]
    r_dir, k = r_dir_p[pe], t_away_p[pe]
    t_dir = r_dir * np.cos(angle)[:, None] + np.cross(k, r_dir) * np.sin(angle)[:, None]

    # Waves P, Q, R, S, fragment, T ascending, T descending: amplitude vectors, per-axis centres (s from R), sigmas.
    qrs_on = -0.45 * qrs
    t_peak = qrs_on + qt - 2.2 * t_sigma
    amp = np.stack([p_dir_p[pe] * _col(p_ratio), q_dir_p[pe] * 0.15, r_dir, s_dir_p[pe] * 0.35,
                    frag_dir_p[pe] * _col(frag_p[pe]), t_dir * _col(0.75 * t_ratio), t_dir * _col(0.4 * t_ratio)], 1)
    amp *= qrs_mv[:, None, None]
    centre = np.stack([qrs_on - pr + 0.044, -0.30 * qrs, 0 * qrs, 0.26 * qrs, 0.10 * qrs,
                       t_peak - 0.4 * t_sigma, t_peak + 0.35 * t_sigma], 1)[:, :, None].repeat(3, 2)
    centre[:, 1:4] += qrs_loop_p[pe] * qrs[:, None, None]
    centre[:, 5:7] += (t_loop_p[pe] * t_sigma[:, None])[:, None]
    sigma = np.stack([np.full_like(qrs, 0.022), 0.07 * qrs, 0.12 * qrs, 0.09 * qrs, 0.035 * qrs,
                      1.1 * t_sigma, 0.6 * t_sigma], 1)
    nd_amp = nd_p[pe] * np.stack([0.15 * qrs_mv, 0.15 * t_ratio * qrs_mv], 1)[:, None]
    nd_centre = np.stack([nd_shift_p[pe] * _col(qrs), np.broadcast_to(_col(t_peak + 0.3 * t_sigma), (len(pe), 8))], 2)
    nd_sigma = np.stack([0.08 * qrs, 0.6 * t_sigma], 1)[:, None].repeat(8, 1)

    # Leads: Dower after the patient's axis and the recording's electrode placement, with per-lead gains.
    rotation = _rotations(axis_p[pe]) @ _rotations(np.radians(5.0) * z.take(3))
    lead_matrix = np.exp(0.05 * z.take(8))[:, :, None] * (DOWER @ rotation)

    # Beats: RR with jitter and respiratory sinus arrhythmia; the first R falls up to one RR before the start.
    resp_hz, resp_phase = 0.2 + 0.13 * u.take(), 2 * np.pi * u.take()
    beat = np.arange(n_beats)
    resp = np.sin(2 * np.pi * _col(resp_hz) * beat * _col(rr_s) + _col(resp_phase))
    rr_b = _col(rr_s) * np.clip(1 + _col(hrv_p[pe]) * rr_z + 0.03 * resp, 0.75, 1.3)
    r_time = -_col(u.take() * rr_s) + np.cumsum(rr_b, 1) - rr_b[:, :1]
    pre = int(round(_PRE_S * fs))
    beat_start = np.round(r_time * fs).astype(np.int64) - pre
    beat_gain = 1 + 0.04 * np.sin(2 * np.pi * _col(resp_hz) * r_time + _col(resp_phase))
    n_placed = (beat_start < n_samples).sum(1)

    # Noise: baseline wander (respiration and drift), powerline and muscle noise, tens of microvolts.
    mains_hz = np.where(mains_60[pe], 60.0, 50.0)
    drift_hz, drift_phase, mains_phase = 0.03 + 0.05 * u.take(), 2 * np.pi * u.take(), 2 * np.pi * u.take()
    src_hz = np.stack([resp_hz, drift_hz, mains_hz], 1)
    src_phase = np.stack([resp_phase, drift_phase, mains_phase], 1)
    mains_mv = np.where(mains_hz < 0.45 * fs, 0.008 * np.exp(0.5 * z.take()), 0.0)
    src_weight = np.stack([0.05 * z.take(8), 0.07 * z.take(8), _col(mains_mv) * (0.5 + u.take(8))], 2)
    muscle = 0.012 * np.exp(0.5 * z.take())[:, None] * (0.3 + u.take(8))
    bank_off = (u.take(8) * (len(bank) - n_samples)).astype(np.int64)

    signals = np.empty((len(pe), len(lead_names), n_samples), np.float32)
    derived = [(lead_names.index(d), *DERIVED_FROM_I_II[d]) for d in DERIVED if d in lead_names]
    kernel_args = (signals, amp, (centre + _PRE_S) * fs, sigma * fs, int(round((_PRE_S + _POST_S) * fs)),
                   lead_matrix, nd_amp, (nd_centre + _PRE_S) * fs, nd_sigma * fs, beat_start, beat_gain, n_placed,
                   2 * np.pi * src_hz / fs, src_phase, src_weight, bank, bank_off, muscle,
                   np.array(lead_index(lead_names, LEADS8), np.int64), np.array(derived, np.float64).reshape(-1, 3))
    # Threads over chunks of ECGs: the kernel releases the GIL, and compiles much faster than a prange loop.
    chunks = range(0, len(pe), _CHUNK_ECGS)
    with ThreadPoolExecutor(max(1, min(numba.get_num_threads(), len(chunks)))) as pool:
        list(pool.map(lambda lo: _render(*kernel_args, lo, min(lo + _CHUNK_ECGS, len(pe))), chunks))

    patient = start + pe
    keys = np.array([f"p{p:06d}" for p in patient])
    return Cohort(
        signals=signals, lead_names=tuple(lead_names), fs=fs, lengths=np.full(len(pe), n_samples, np.int32),
        patient_keys=keys, record_ids=np.array([f"synth/{k}/e{i}" for k, i in zip(keys, j)]),
        age=_f32(age[pe]), sex=male[pe].astype(np.int8),
        labels=dict(zip(LABELS, (_f32(low_lvef[pe]), _f32(high_k)))),
        traits={"qrs_ms": _f32(qrs * 1000), "heart_rate": _f32(hr), "pr_ms": _f32(pr * 1000), "qt_ms": _f32(qt * 1000),
                "t_r_ratio": _f32(t_ratio), "t_width_ms": _f32(t_sigma * 1000), "p_r_ratio": _f32(p_ratio),
                "qrs_t_angle": _f32(np.degrees(angle)), "qrs_mv": _f32(qrs_mv),
                "lvef_severity": _f32(severity[pe]), "potassium": _f32(potassium)},
    )


@njit(nogil=True, cache=True)
def _render(out, amp, centre, sigma, n_template, lead_matrix, nd_amp, nd_centre, nd_sigma, beat_start, beat_gain,
            n_beats, src_omega, src_phase, src_weight, bank, bank_off, muscle, rows8, derived, first_ecg, stop_ecg):
    """Fill ECGs first_ecg..stop_ecg-1 of out (E, L, T): per ECG one beat template in 8 leads, placed at its beats, over its noise and wander.

    Times are in samples; centres are relative to the template's start. rows8 are the rows of I, II, V1-V6 in out;
    derived holds (row, coefficient of I, coefficient of II) for each limb lead computed from I and II.
    """
    n_samples = out.shape[2]
    for e in range(first_ecg, stop_ecg):
        axes = np.zeros((3, n_template))
        for w in range(amp.shape[1]):
            for a in range(3):
                _add_gaussian(axes[a], amp[e, w, a], centre[e, w, a], sigma[e, w])
        template = np.zeros((8, n_template))
        for lead in range(8):
            for a in range(3):
                m = lead_matrix[e, lead, a]
                for t in range(n_template):
                    template[lead, t] += m * axes[a, t]
            for k in range(nd_amp.shape[2]):
                _add_gaussian(template[lead], nd_amp[e, lead, k], nd_centre[e, lead, k], nd_sigma[e, lead, k])

        # Sinusoidal sources by rotation, not one sin() per sample.
        sources = np.empty((3, n_samples))
        for k in range(3):
            c, s = np.cos(src_omega[e, k]), np.sin(src_omega[e, k])
            x, y = np.cos(src_phase[e, k]), np.sin(src_phase[e, k])
            for t in range(n_samples):
                sources[k, t] = y
                x, y = x * c - y * s, x * s + y * c

        for lead in range(8):
            row = out[e, rows8[lead]]
            g, off = muscle[e, lead], bank_off[e, lead]
            w0, w1, w2 = src_weight[e, lead, 0], src_weight[e, lead, 1], src_weight[e, lead, 2]
            for t in range(n_samples):
                row[t] = g * bank[off + t] + w0 * sources[0, t] + w1 * sources[1, t] + w2 * sources[2, t]
            for b in range(n_beats[e]):
                first = beat_start[e, b]
                gb = beat_gain[e, b]
                for t in range(max(0, -first), min(n_template, n_samples - first)):
                    row[first + t] += gb * template[lead, t]

        for d in range(derived.shape[0]):
            row = out[e, int(derived[d, 0])]
            lead_i, lead_ii = out[e, rows8[0]], out[e, rows8[1]]
            for t in range(n_samples):
                row[t] = derived[d, 1] * lead_i[t] + derived[d, 2] * lead_ii[t]


@njit(nogil=True, cache=True)
def _add_gaussian(y, amplitude, centre, sigma):
    """y[t] += amplitude * exp(-(t - centre)^2 / (2 sigma^2)) over centre +- 4 sigma."""
    if amplitude == 0.0:
        return
    lo, hi = max(0, int(centre - 4 * sigma)), min(len(y), int(centre + 4 * sigma) + 2)
    inv = 1.0 / sigma
    for t in range(lo, hi):
        d = (t - centre) * inv
        y[t] += amplitude * np.exp(-0.5 * d * d)
