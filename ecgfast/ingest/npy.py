"""NumPy reader: ``.npy`` arrays (N, L, T) and ``.npz`` archives of them, in millivolts, with the leads and the
sampling rate given by the user. Items are ``<file>/<row>`` (``.npy``) and ``<file>/<array>/<row>`` (``.npz``);
patient keys come from the ``patients`` CSV (``record_id`` = item, ``patient_key``). Named ``npy`` so that it
does not shadow the ``numpy`` package."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ecgfast.ingest.record import Option, Reader, Record, SkipRecord, source_files
from ecgfast.leads import canonical_lead


class NumpyReader(Reader):
    """Args: root (folder or file); lead_names: the arrays' L leads in order; source_fs: their sampling rate in Hz."""

    format = "numpy"
    ALIASES = ("npy", "npz")
    SUFFIXES = (".npy", ".npz")
    OPTIONS = (Option("lead_names", "the arrays' leads in order, comma-separated (e.g. I,II,V1,V2,V3,V4,V5,V6)", list),
               Option("source_fs", "the arrays' sampling rate in Hz", float))

    def __init__(self, root, lead_names=None, source_fs: float | None = None):
        if not lead_names or source_fs is None:
            raise ValueError("format numpy needs the arrays' lead names and sampling rate (--lead-names, --source-fs)")
        unknown = [n for n in lead_names if canonical_lead(n) is None]
        if unknown:
            raise ValueError(f"lead names {unknown} (--lead-names) are not standard lead names")
        if not source_fs > 0:
            raise ValueError(f"the source's sampling rate (--source-fs) must be positive, got {source_fs}")
        self.lead_names, self.fs = list(lead_names), float(source_fs)
        self.files = source_files(Path(root), self.SUFFIXES)
        self._arrays: dict[str, np.ndarray] = {}  # "<file>" or "<file>/<array>" -> memory-mapped array

    def _load(self, name: str) -> dict[str, np.ndarray]:
        """The (N, L, T) arrays of one file by their item prefix; a ValueError when it holds none."""
        path = self.files[name]
        if path.suffix.lower() == ".npy":
            arrays = {name: np.load(path, mmap_mode="r")}
        else:
            with np.load(path) as z:
                arrays = {f"{name}/{k}": z[k] for k in z.files}
        for key, a in arrays.items():
            if a.ndim != 3:
                raise ValueError(f"array {key} has shape {a.shape}, not (N, L, T)")
        return arrays

    def items(self) -> list[str]:
        """Every row of every array; a file that cannot be loaded is one item, which :meth:`read` reports."""
        items = []
        for name in self.files:
            try:
                arrays = self._load(name)
            except (OSError, ValueError, EOFError) as err:
                self._arrays[name] = err
                items.append(name)
                continue
            self._arrays.update(arrays)
            items += [f"{key}/{row}" for key, a in arrays.items() for row in range(len(a))]
        return items

    def read(self, item: str) -> Record:
        key, _, row = item.rpartition("/")
        if item in self.files:  # listed whole: could not be loaded
            key, row = item, None
        if not self._arrays:
            self.items()
        array = self._arrays.get(key)
        if array is None or isinstance(array, Exception) or row is None:
            raise SkipRecord(item, "unreadable", str(array) if isinstance(array, Exception) else "no such array")
        if not row.isdigit() or int(row) >= len(array):
            raise SkipRecord(item, "missing", f"row {row} of array {key} with {len(array)} rows")
        x = np.asarray(array[int(row)], np.float32)
        if x.shape[0] != len(self.lead_names):
            raise SkipRecord(item, "lead_set", f"{x.shape[0]} leads in the array, {len(self.lead_names)} lead names")
        return Record(item=item, signal=x, lead_names=self.lead_names, fs=self.fs)
