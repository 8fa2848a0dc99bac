"""``python -m sample_data --out DIR --studies N --seed S [--size PX]``: write a synthetic dataset."""

from __future__ import annotations

import argparse

from sample_data.generate import write_dataset

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse the options of ``twoview sample-data`` and write the dataset."""
    parser = argparse.ArgumentParser(prog="python -m sample_data", description=__doc__)
    parser.add_argument(
        "--out", required=True, help="folder to write the studies, labels.csv and truth.csv into"
    )
    parser.add_argument("--studies", type=int, default=24, help="number of studies")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument(
        "--size", type=int, default=1024, help="rendered image size in pixels before cropping"
    )
    args = parser.parse_args(argv)
    summary = write_dataset(args.out, args.studies, seed=args.seed, size=args.size)
    routes = ", ".join(f"{k} {v}" for k, v in summary.routes.items())
    print(
        f"wrote {summary.studies} studies ({routes}), {summary.files} files in {summary.seconds:.1f} s to {summary.out_dir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
