"""``report``: finished runs (and a sweep) -> figures, tables and claim verdicts."""

from __future__ import annotations

import argparse
from typing import Any

from ..report import write_report

HELP = "turn finished runs into figures, a results table and claim verdicts"


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("report", help=HELP, description=HELP, allow_abbrev=False)
    p.add_argument("--logdir", default="runs", help="the runs' root (default: runs)")
    p.add_argument("--out", default=None, help="report output folder (default: LOGDIR/report)")
    p.add_argument("--quiet", action="store_true", help="do not list the files written")
    p.set_defaults(handler=main)


def main(args: argparse.Namespace) -> int:
    out = args.out or f"{args.logdir}/report"
    paths = write_report(args.logdir, out)
    if not args.quiet:
        for p in paths:
            print(p)
    return 0
