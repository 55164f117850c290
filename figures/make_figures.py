"""Redraw every figure from saved result tables, with no model loaded.

Usage: python figures/make_figures.py RESULTS [--out DIR]

RESULTS is an output folder of `depthcurse analyze`, `compare` or `reproduce`
(tables as parquet files, there or in tables/, and any training run folders).
Figures go to DIR (default RESULTS/figures) as PDF and PNG.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from depthcurse.figures import make_figures  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="folder of saved tables (parquet)")
    parser.add_argument("--out", type=Path, help="figure folder (default: RESULTS/figures)")
    args = parser.parse_args(argv)
    out = args.out or args.results / "figures"
    try:
        paths = make_figures(args.results, out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} figure files to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
