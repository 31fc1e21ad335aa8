"""The ``ecgfast`` command: ``synth``, ``ingest``, ``info`` and ``verify``. Argument parsing only; the library does
the work. Every option is checked before any work; an error is one line naming the option (``--debug``: the
traceback too) and a non-zero exit status."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback


def _number(kind, low=None, high=None, positive=False):
    """An argparse type: ``kind`` (int or float) within bounds, with argparse's one-line error naming the option."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}")
        if (kind is float and not math.isfinite(value)) or (positive and not value > 0):
            raise argparse.ArgumentTypeError(f"{text} is not a positive number")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{text} is not {bounds}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _storage_option(text: str) -> tuple[str, object]:
    """``key=value``; the value as JSON where it parses (``true``, ``3``, ``{"a": 1}``), else the string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value (e.g. endpoint_url=http://localhost:9000)")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--storage-option", action="append", type=_storage_option, default=[], metavar="KEY=VALUE",
                   help="an option of the fsspec filesystem behind an s3:// (or other) URL, e.g. "
                        "endpoint_url=http://localhost:9000, anon=true; repeatable")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error")
    return p


def _codec_args(p: argparse.ArgumentParser) -> None:
    from ecgfast.store import CODECS, DEFAULT_CODEC

    levels = "; ".join(f"{name}: 0-{top}, default {default}" for name, (default, top, _) in CODECS.items())
    p.add_argument("--codec", choices=list(CODECS), default=None,
                   help=f"how a new store compresses each record (default {DEFAULT_CODEC}; the README's codec table "
                        f"compares them); every record also carries a CRC-32C")
    p.add_argument("--compression-level", type=_number(int, low=0), default=None,
                   help=f"the codec's level ({levels})")


def _store_shape_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fs", type=_number(float, positive=True), default=500.0,
                   help="sampling rate of the store in Hz (default 500)")
    p.add_argument("--seconds", type=_number(float, positive=True), default=10.0,
                   help="duration of each record in the store (default 10)")
    p.add_argument("--leads", type=int, choices=(8, 12), default=12,
                   help="12 keeps the standard leads; 8 keeps I, II, V1-V6 and derives the rest on read")


def _parser() -> argparse.ArgumentParser:
    from ecgfast.ingest.formats import ALIASES, CHOICES, format_options

    parser = argparse.ArgumentParser(prog="ecgfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    common = _common()

    p = sub.add_parser("synth", parents=[common], help="write the synthetic cohort to a store")
    p.add_argument("dest", help="store path or fsspec URL")
    p.add_argument("--patients", type=_number(int, low=1), required=True, help="number of patients")
    p.add_argument("--ecgs-per-patient", type=_number(float, low=1, high=5), default=3.0,
                   help="mean ECGs per patient, 1 to 5 (default 3)")
    p.add_argument("--seed", type=_number(int, low=0), default=0, help="the cohort's seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace a store at DEST")
    _codec_args(p)
    _store_shape_args(p)

    p = sub.add_parser("ingest", parents=[common],
                       help="ingest ECG files into a store (run it again to finish an interrupted one)")
    p.add_argument("src", help="folder (or file) of source records")
    p.add_argument("dest", help="store path or fsspec URL")
    aliases = ", ".join(f"{a} = {f}" for a, f in ALIASES.items())
    p.add_argument("--format", default="auto", choices=CHOICES,
                   help=f"source format (default auto: by the files' suffixes; {aliases})")
    p.add_argument("--gain-uv", type=_number(float, positive=True), default=1.0,
                   help="microvolts per stored integer unit (default 1)")
    p.add_argument("--source-name", help="prefix of the record ids (default: the source folder's name)")
    p.add_argument("--labels", help="CSV with a record_id column and one column per label")
    p.add_argument("--patients", help="CSV with record_id and patient_key columns")
    for opt, formats in format_options().values():  # the formats' own options, from the registry
        help = f"{'/'.join(formats)}: {opt.help}"
        if opt.type is bool:
            p.add_argument(opt.flag, action="store_true", help=help)
        else:
            p.add_argument(opt.flag, type=_names if opt.type is list else _number(opt.type, positive=True),
                           help=help)
    p.add_argument("--split", action="store_true",
                   help="cut records longer than --seconds into consecutive windows instead of cropping them")
    p.add_argument("--strict", action="store_true", help="stop with an error at the first record that is skipped")
    p.add_argument("--workers", type=_number(int, low=1), default=os.cpu_count() or 1,
                   help="processes that read, convert and compress (default: the CPU count); one process writes")
    p.add_argument("--chunk-records", type=_number(int, low=1), default=256,
                   help="records per shard of a new store (default 256)")
    _codec_args(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _store_shape_args(p)

    p = sub.add_parser("info", parents=[common], help="print a store's summary")
    p.add_argument("store", help="store path or fsspec URL")

    p = sub.add_parser("verify", parents=[common],
                       help="check every shard (index, CRC-32C, decoding), the arrays' lengths and unfinished ingests; "
                            "exit status 0 only when all is well")
    p.add_argument("store", help="store path or fsspec URL")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _synth(args, storage_options) -> int:
    from ecgfast.store import ECGStore
    from ecgfast.synth import write_cohort

    if not args.overwrite:
        try:
            ECGStore.open(args.dest, storage_options=storage_options)
        except ValueError:
            pass
        else:
            raise ValueError(f"{args.dest} already holds a store; pass --overwrite to replace it")
    store = write_cohort(args.dest, args.patients, ecgs_per_patient=args.ecgs_per_patient, fs=args.fs,
                         seconds=args.seconds, leads=args.leads, seed=args.seed, overwrite=args.overwrite,
                         codec=args.codec, compression_level=args.compression_level, storage_options=storage_options)
    print(store.summary())
    return 0


def _ingest(args, storage_options) -> int:
    from ecgfast.ingest import ingest
    from ecgfast.ingest.formats import format_options

    reader_options = {name: getattr(args, name) for name in format_options()}
    report = ingest(args.src, args.dest, format=args.format, fs=args.fs, seconds=args.seconds, leads=args.leads,
                    gain_uv=args.gain_uv, source_name=args.source_name, labels=args.labels, patients=args.patients,
                    split=args.split, strict=args.strict, workers=args.workers, chunk_records=args.chunk_records,
                    codec=args.codec, compression_level=args.compression_level, storage_options=storage_options,
                    progress=not args.no_progress, **reader_options)
    print(report)
    return 0


def _verify(args, storage_options) -> int:
    from ecgfast.store import ECGStore

    store = ECGStore.open(args.store, storage_options=storage_options)
    problems = store.verify(progress=not args.no_progress)
    shards = -(-len(store) // store.chunk_records)
    if problems:
        print(f"{args.store}: {len(problems)} problems", *(f"  {p}" for p in problems), sep="\n")
        return 1
    codec = store.record_codec()
    checks = "CRC-32C and decoding" if codec and codec.checksum else "decoding"
    print(f"{args.store}: ok ({len(store):,} records in {shards:,} shard{'s' * (shards != 1)}; indexes, {checks} of "
          f"every record checked)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "compression_level", None) is not None:  # its range depends on --codec
        from ecgfast.store import DEFAULT_CODEC, check_codec

        try:
            check_codec(args.codec or DEFAULT_CODEC, args.compression_level)
        except ValueError as err:
            parser.error(str(err))
    storage_options = dict(args.storage_option) or None
    try:
        if args.command == "synth":
            return _synth(args, storage_options)
        if args.command == "ingest":
            return _ingest(args, storage_options)
        if args.command == "verify":
            return _verify(args, storage_options)
        from ecgfast.store import ECGStore

        print(ECGStore.open(args.store, storage_options=storage_options).summary())
        return 0
    except BrokenPipeError:  # the output went to a pipe that closed early (`| head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        again = "; run the same command again to finish it" if args.command == "ingest" else ""
        print(f"ecgfast {args.command}: interrupted{again}", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error ends in one line; --debug shows where it came from
        if args.debug:
            traceback.print_exc()
        what = str(err).replace("\n", "; ")
        if isinstance(err, ValueError):
            print(f"ecgfast {args.command}: error: {what}", file=sys.stderr)
            return 2
        hint = "" if args.debug else " (--debug shows the traceback)"
        print(f"ecgfast {args.command}: error: {type(err).__name__}: {what}{hint}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
