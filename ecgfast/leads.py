"""Lead names, lead order, the 8 <-> 12 lead conversion, the VCG matrices and where a wanted lead comes from.

The one home of every lead list and matrix in ecgfast: ingest, augmentation and the synthetic cohort all read
them from here.

The eight independent leads I, II, V1-V6 carry all the information of a standard 12-lead ECG: the four limb
leads III, aVR, aVL and aVF are linear in I and II (Einthoven's and Goldberger's relations).
"""

from __future__ import annotations

import re

import numpy as np

LEADS12: tuple[str, ...] = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
LEADS8: tuple[str, ...] = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")
DERIVED: tuple[str, ...] = ("III", "aVR", "aVL", "aVF")

# Each derived lead as (coefficient of I, coefficient of II).
DERIVED_FROM_I_II: dict[str, tuple[float, float]] = {
    "III": (-1.0, 1.0),
    "aVR": (-0.5, -0.5),
    "aVL": (1.0, -0.5),
    "aVF": (-0.5, 1.0),
}

# Rows X, Y, Z; columns I, II, V1-V6 (LEADS8). VCG = M @ ECG8.
INVERSE_DOWER = np.array(
    [
        [0.156, -0.010, -0.172, -0.074, 0.122, 0.231, 0.239, 0.194],
        [-0.227, 0.887, 0.057, -0.019, -0.106, -0.022, 0.041, 0.048],
        [0.022, 0.102, -0.229, -0.310, -0.246, -0.063, 0.055, 0.108],
    ]
)  # Edenbrandt & Pahlm 1988
KORS = np.array(
    [
        [0.38, -0.07, -0.13, 0.05, -0.01, 0.14, 0.06, 0.54],
        [-0.07, 0.93, 0.06, -0.02, -0.05, 0.06, -0.17, 0.13],
        [0.11, -0.23, -0.43, -0.06, -0.14, -0.20, -0.11, 0.31],
    ]
)  # Kors et al. 1990, regression method
# Rows I, II, V1-V6; columns X, Y, Z. ECG8 = D @ VCG.
DOWER = np.array(
    [
        [0.632, -0.235, 0.059],
        [0.235, 1.066, -0.132],
        [-0.515, 0.157, -0.917],
        [0.044, 0.164, -1.387],
        [0.882, 0.098, -1.277],
        [1.213, 0.127, -0.601],
        [1.125, 0.127, -0.086],
        [0.831, 0.076, 0.230],
    ]
)  # Dower et al. 1980
for _m in (INVERSE_DOWER, KORS, DOWER):
    _m.setflags(write=False)

# 12 x 8 map from LEADS8 to LEADS12.
EXPAND_8_TO_12 = np.zeros((12, 8))
for _row, _name in enumerate(LEADS12):
    if _name in DERIVED_FROM_I_II:
        EXPAND_8_TO_12[_row, :2] = DERIVED_FROM_I_II[_name]
    else:
        EXPAND_8_TO_12[_row, LEADS8.index(_name)] = 1.0
EXPAND_8_TO_12.setflags(write=False)

_ALIASES = {
    "i": "I", "di": "I", "leadi": "I",
    "ii": "II", "dii": "II", "leadii": "II",
    "iii": "III", "diii": "III", "leadiii": "III",
    "avr": "aVR", "avl": "aVL", "avf": "aVF",
    "-avr": None,  # a Cabrera display lead is not aVR; refuse it rather than flip its sign silently
}
for _k in range(1, 7):
    _ALIASES[f"v{_k}"] = f"V{_k}"


def canonical_lead(name: str) -> str | None:
    """The standard name of a lead (``'i'``, ``'DI'``, ``'Lead I (Einthoven)'`` -> ``'I'``), None if not a standard lead.

    Frank leads (vx, vy, vz), rhythm strips and anything unknown give None so that callers can ignore them.
    """
    key = re.sub(r"\(.*?\)", "", str(name)).strip().lower()
    key = re.sub(r"[\s_]+", "", key)
    if key.startswith("lead") and key not in _ALIASES:
        key = key[4:]
    return _ALIASES.get(key)


def lead_index(names, wanted) -> list[int]:
    """Positions of the ``wanted`` leads in ``names``; raises ValueError naming a lead that is not there."""
    names = list(names)
    missing = [w for w in wanted if w not in names]
    if missing:
        raise ValueError(f"leads {missing} are not among {names}")
    return [names.index(w) for w in wanted]


def expand_8_to_12(x8: np.ndarray) -> np.ndarray:
    """(..., 8, T) in LEADS8 order -> (..., 12, T) in LEADS12 order, the limb leads derived from I and II."""
    x8 = np.asarray(x8)
    if x8.shape[-2] != 8:
        raise ValueError(f"expected 8 leads (I, II, V1-V6) on axis -2, got shape {x8.shape}")
    return np.einsum("lk,...kt->...lt", EXPAND_8_TO_12.astype(x8.dtype, copy=False), x8)


def lead_source(lead: str, names) -> dict[str, float] | None:
    """Where the lead ``lead`` comes from among the leads ``names``: ``{lead: 1.0}`` when it is one of them, the
    coefficients of I and II when it is III, aVR, aVL or aVF and both are there, else None.

    The one rule for every caller (reads, the loader's lead plan, ingest's lead matching).
    """
    names = list(names)
    if lead in names:
        return {lead: 1.0}
    if lead in DERIVED_FROM_I_II and "I" in names and "II" in names:
        return dict(zip(("I", "II"), DERIVED_FROM_I_II[lead]))
    return None


def lead_sources(wanted, names) -> list[dict[str, float]]:
    """:func:`lead_source` of each lead of ``wanted``; a ValueError naming a lead that is neither among ``names``
    nor derivable from I and II."""
    names = list(names)
    out = []
    for lead in wanted:
        source = lead_source(lead, names)
        if source is None:
            raise ValueError(f"lead {lead!r} is neither stored ({names}) nor derivable from I and II")
        out.append(source)
    return out


def select_leads(x: np.ndarray, names, wanted) -> np.ndarray:
    """Leads ``wanted`` of x (..., len(names), T), deriving III, aVR, aVL and aVF from I and II when absent."""
    names = list(names)
    out = np.empty(x.shape[:-2] + (len(wanted), x.shape[-1]), dtype=np.result_type(x.dtype, np.float32))
    for j, source in enumerate(lead_sources(wanted, names)):
        if len(source) == 1:
            out[..., j, :] = x[..., names.index(next(iter(source))), :]
        else:
            a, b = source["I"], source["II"]
            out[..., j, :] = a * x[..., names.index("I"), :] + b * x[..., names.index("II"), :]
    return out


def needed_leads(wanted, lead_names) -> list[str]:
    """The stored leads that producing the leads ``wanted`` reads: a lead itself, or I and II for one derived from them.

    Raises ValueError naming a lead that is neither stored nor derivable.
    """
    need: list[str] = []
    for source in lead_sources(wanted, lead_names):
        need += [s for s in source if s not in need]
    return need
