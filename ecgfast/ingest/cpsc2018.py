"""CPSC 2018 reader: ``.mat`` files holding a struct ``ECG`` with ``data`` (12 x T millivolts, 500 Hz), ``sex``
and ``age``; the leads in the standard order I, II, III, aVR, aVL, aVF, V1-V6. Records run 6-60 s: the driver
crops them to the store's duration, or cuts them into windows with ``split``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgfast.ingest.record import Record, SkipRecord, age_years, sex_code, source_files
from ecgfast.leads import LEADS12

FS = 500.0


class CPSC2018Reader:
    """Items: the ``.mat`` files' paths without extension; ``read(item)`` gives one record in millivolts."""

    format = "cpsc2018"
    OPTIONS = ()

    def __init__(self, root):
        self.files = source_files(Path(root), (".mat",))

    def items(self) -> list[str]:
        return list(self.files)

    def read(self, item: str) -> Record:
        import scipy.io

        try:
            mat = scipy.io.loadmat(self.files[item], squeeze_me=True, struct_as_record=False)
        except FileNotFoundError as err:
            raise SkipRecord(item, "missing", str(err)) from err
        except Exception as err:  # noqa: BLE001 - scipy raises several kinds for a broken file
            raise SkipRecord(item, "unreadable", f"{type(err).__name__}: {err}") from err
        ecg = mat.get("ECG")
        data = getattr(ecg, "data", None)
        if data is None:
            raise SkipRecord(item, "bad_header", "no struct ECG with a data field")
        data = np.asarray(data, np.float32)
        if data.ndim != 2 or data.shape[0] != len(LEADS12):
            raise SkipRecord(item, "lead_set", f"data has shape {data.shape}, not 12 x T")
        return Record(item=item, signal=data, lead_names=list(LEADS12), fs=FS,
                      age=age_years(getattr(ecg, "age", "")), sex=sex_code(getattr(ecg, "sex", "")))
