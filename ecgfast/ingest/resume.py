"""Ingest's resume protocol: every good record stored exactly once, whenever the run dies.

The parent process alone writes. It records the run in the store's ``ingest_state`` group (what the run is, where
the store stood, the pending items' digest), fills shards in the planned order, writes each full shard as one
atomic object beyond the store's visible end and then a done marker ``ingest_state/done_<n>`` (the shard's new
records' fields and the report rows up to it). The final write-out appends the fields, writes the report and
provenance, grows ``signals`` (the commit: the records become visible) and removes ``ingest_state``. The same
command run again finds the state, goes on after the last marker (anything after it is redone), and finishes a run
that died during the final write-out. The store offers the primitives (:meth:`ECGStore.write_encoded_shard`, the
state group methods); this module alone knows what the state means.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

STATE = "ingest_state"
HINT = "run the same ingest command again to finish it"


class Run:
    """An ingest run recorded in a store: its attributes (``key``, ``base``, ``report_base``, ``run``, ``pending``,
    ``digest``) and its done markers so far."""

    def __init__(self, store, attrs: Mapping, markers: list[dict]):
        self.store, self.attrs, self.markers = store, dict(attrs), markers

    @staticmethod
    def unfinished(store) -> dict | None:
        """The attributes of the store's unfinished ingest run, None when there is none."""
        return store.state(STATE)

    @classmethod
    def begin(cls, store, key: Mapping, base: int, report_base: int, pending: int, digest: str) -> Run:
        attrs = {"key": dict(key), "base": base, "report_base": report_base, "run": uuid.uuid4().hex,
                 "pending": pending, "digest": digest,
                 "note": f"run of {key['source']} ({key['format']})", "hint": HINT}
        store.begin_state(STATE, attrs)
        return cls(store, attrs, [])

    @classmethod
    def resume(cls, store) -> Run:
        entries = store.state_entries(STATE)
        names = sorted(entries, key=lambda name: int(name.removeprefix("done_")))
        return cls(store, store.state(STATE), [entries[name] for name in names])

    @property
    def resumed(self) -> int:
        """Records that earlier tries of this run wrote."""
        return sum(len(m["records"]) for m in self.markers)

    @property
    def position(self) -> tuple[int, int]:
        """Where the run goes on: (position of the next pending item, records of it already written)."""
        return (self.markers[-1]["next"], self.markers[-1]["partial"]) if self.markers else (0, 0)

    def mark(self, marker: Mapping) -> None:
        """Write the next done marker (after the shard it marks)."""
        self.store.put_state_entry(STATE, f"done_{len(self.markers)}", marker)
        self.markers.append(dict(marker))

    def end(self) -> None:
        """Remove the run's state and markers: the last step."""
        self.store.end_state(STATE)
