"""Merge the runs of a widened grid into a committed ``sweep_runs.csv``.

    python experiments/merge_sweep_runs.py COMMITTED_CSV NEW_CSV [NEW_CSV ...] [--round-metrics]

The committed sweeps' runs (their log folders are not committed) are extended by sweeps over
new grid points run into other log folders: each NEW_CSV is such a sweep's
``LOGDIR/sweep/sweep_runs.csv``. Each (base, optimizer, seed) block of COMMITTED_CSV gets its
new rows, sorted by learning rate, which is the order a sweep over the union grid writes; the
timings (and with ``--round-metrics`` the validation and test values) are rounded to the 6
significant digits the committed rows have. A new row for a run that is already there, or for a
base the committed sweep does not have, is refused. Then regenerate the tables with
``torchopt_survey.experiments.sweep.tables.rewrite_from_csv`` (see
``experiments/results/sweep/README.md``).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

TIMINGS = ("wall_time_s", "seconds_to_target")
METRICS = ("val", "test")


def _rounded(value: str) -> str:
    return value if value in ("", "nan") else repr(float(f"{float(value):.6g}"))


def _lr(row: dict[str, str]) -> float:
    return float(row["setting"].partition("=")[2])


def merge(committed: Path, new_files: list[Path], round_metrics: bool = False) -> int:
    """Rewrite ``committed`` with the rows of ``new_files`` merged in; returns the row count."""
    with committed.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = list(rows[0])
    new: list[dict[str, str]] = []
    for path in new_files:
        with path.open(newline="") as handle:
            new.extend(csv.DictReader(handle))
    seen = {(r["base"], r["optimizer"], r["seed"], r["setting"]) for r in rows}
    bases = {r["base"] for r in rows}
    for row in new:
        key = (row["base"], row["optimizer"], row["seed"], row["setting"])
        if key in seen:
            raise ValueError(f"{committed}: already has the run {key}")
        if row["base"] not in bases:
            raise ValueError(f"{committed}: has no base {row['base']!r} (new row {key})")
        for column in TIMINGS + (METRICS if round_metrics else ()):
            row[column] = _rounded(row[column])
        seen.add(key)
    blocks: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    for row in rows + new:
        blocks.setdefault((row["base"], row["optimizer"], row["seed"]), []).append(row)
    order = list(dict.fromkeys((r["base"], r["optimizer"], r["seed"]) for r in rows + new))
    merged = [row for block in order for row in sorted(blocks[block], key=_lr)]
    with committed.open("w", newline="") as handle:
        handle.write(",".join(columns) + "\n")
        for row in merged:
            handle.write(",".join(f'"{row[c]}"' if "," in row[c] else row[c] for c in columns)
                         + "\n")
    return len(merged)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("committed", type=Path, help="the committed sweep_runs.csv (rewritten)")
    parser.add_argument("new", type=Path, nargs="+", help="sweep_runs.csv files of new runs")
    parser.add_argument("--round-metrics", action="store_true",
                        help="round val/test to 6 significant digits like the committed rows")
    args = parser.parse_args(argv)
    for path in (args.committed, *args.new):
        if not path.is_file():
            print(f"{path}: no such file", file=sys.stderr)
            return 2
    try:
        count = merge(args.committed, args.new, args.round_metrics)
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    print(f"{args.committed}: {count} rows")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
