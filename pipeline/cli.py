"""The `twoview` command line: one subcommand per job, each a thin call into `pipeline`.

Every error twoview raises on purpose is printed as one line naming what went wrong and the
command exits with status 2; a traceback reaches the user only for a bug (`--debug` shows it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

from models.errors import ModelError
from pipeline.errors import TwoviewError

__all__ = ["build_parser", "main"]

log = logging.getLogger("twoview")


def _version() -> str:
    try:
        return version("twoview")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _sample_data(args: argparse.Namespace) -> int:
    from sample_data.generate import write_dataset

    summary = write_dataset(args.out, n_studies=args.studies, seed=args.seed, size=args.size)
    print(summary)
    return 0


def _add_sample_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sample-data",
        help="write synthetic two-view phantom studies as DICOM, with labels.csv and truth.csv",
        description="Write N synthetic chest phantom studies (frontal and/or lateral DICOM files) with known findings.",
    )
    p.add_argument("--out", required=True, help="folder to write the studies into")
    p.add_argument("--studies", type=int, default=24, help="number of studies (default: 24)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same bytes")
    p.add_argument("--size", type=int, default=1024, help="longest image side in pixels (default: 1024)")
    p.set_defaults(handler=_sample_data)


#: Subcommands, each added by one function; later jobs add theirs here.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_sample_data]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twoview",
        description="Chest X-ray prediction and fine-tuning with frontal and lateral views.",
    )
    parser.add_argument("--version", action="version", version=f"twoview {_version()}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except (TwoviewError, ModelError) as err:
        if args.debug:
            raise
        print(f"twoview {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"twoview {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
