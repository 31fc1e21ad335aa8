"""The ``ecgfast`` command: ``synth``, ``ingest`` and ``info``. Argument parsing only; the library does the work."""

from __future__ import annotations

import argparse
import os
import sys


def _store_shape_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fs", type=float, default=500.0, help="sampling rate of the store in Hz (default 500)")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each record in the store (default 10)")
    p.add_argument("--leads", type=int, choices=(8, 12), default=12,
                   help="12 keeps the standard leads; 8 keeps I, II, V1-V6 and derives the rest on read")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecgfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write the synthetic cohort to a store")
    p.add_argument("dest", help="store path or fsspec URL")
    p.add_argument("--patients", type=int, required=True, help="number of patients")
    p.add_argument("--ecgs-per-patient", type=float, default=3.0, help="mean ECGs per patient, 1 to 5 (default 3)")
    p.add_argument("--seed", type=int, default=0)
    _store_shape_args(p)

    p = sub.add_parser("ingest", help="ingest ECG files into a store (run it again to finish an interrupted one)")
    p.add_argument("src", help="folder (or file) of source records")
    p.add_argument("dest", help="store path or fsspec URL")
    p.add_argument("--format", default="auto",
                   choices=("auto", "wfdb", "code15", "hdf5", "numpy", "muse", "dicom", "cpsc2018"),
                   help="source format (default auto: by the files' suffixes; hdf5 = code15)")
    p.add_argument("--gain-uv", type=float, default=1.0, help="microvolts per stored integer unit (default 1)")
    p.add_argument("--source-name", help="prefix of the record ids (default: the source folder's name)")
    p.add_argument("--labels", help="CSV with a record_id column and one column per label")
    p.add_argument("--patients", help="CSV with record_id and patient_key columns")
    p.add_argument("--labels-from-dx", action="store_true",
                   help="wfdb: one label dx_<code> per SNOMED-CT code of the headers' '# Dx:' lines")
    p.add_argument("--source-unit-uv", type=float, help="code15: microvolts per unit of the samples (default 1000)")
    p.add_argument("--lead-names", help="numpy: the arrays' leads in order, comma-separated (e.g. I,II,V1,...)")
    p.add_argument("--source-fs", type=float, help="numpy: the arrays' sampling rate in Hz")
    p.add_argument("--split", action="store_true",
                   help="cut records longer than --seconds into consecutive windows instead of cropping them")
    p.add_argument("--strict", action="store_true", help="stop with an error at the first record that is skipped")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes that read, convert and compress (default: the CPU count); one process writes")
    p.add_argument("--chunk-records", type=int, default=256, help="records per shard of a new store (default 256)")
    p.add_argument("--compression-level", type=int, default=3,
                   help="Blosc zstd level of a new store (default 3; 1 encodes ~3x faster, compresses ~10%% less)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _store_shape_args(p)

    p = sub.add_parser("info", help="print a store's summary")
    p.add_argument("store", help="store path or fsspec URL")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "synth":
            from ecgfast.synth import write_cohort

            store = write_cohort(args.dest, args.patients, ecgs_per_patient=args.ecgs_per_patient, fs=args.fs,
                                 seconds=args.seconds, leads=args.leads, seed=args.seed)
            print(store.summary())
        elif args.command == "ingest":
            from ecgfast.ingest import ingest

            report = ingest(args.src, args.dest, format=args.format, fs=args.fs, seconds=args.seconds,
                            leads=args.leads, gain_uv=args.gain_uv, source_name=args.source_name,
                            labels=args.labels, patients=args.patients, labels_from_dx=args.labels_from_dx,
                            source_unit_uv=args.source_unit_uv, source_fs=args.source_fs,
                            lead_names=args.lead_names.split(",") if args.lead_names else None, split=args.split,
                            strict=args.strict, workers=args.workers, chunk_records=args.chunk_records,
                            compression_level=args.compression_level,
                            progress=not args.no_progress)
            print(report)
        else:
            from ecgfast.store import ECGStore

            print(ECGStore.open(args.store).summary())
    except ValueError as err:
        print(f"ecgfast {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
