"""``report``: finished runs (and a sweep) -> figures, tables and claim verdicts."""

from __future__ import annotations

import argparse
from typing import Any

from ..report import write_report
from ..tasks.optimizers import resolve_optimizer_names
from ..tasks.protocol import Claim

HELP = "turn finished runs into figures, a results table and claim verdicts"


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("report", help=HELP, description=HELP, allow_abbrev=False)
    p.add_argument("--logdir", default="runs", help="the runs' root (default: runs)")
    p.add_argument("--runs", default=None, metavar="FILE",
                   help="start from a report's runs.json (every run's raw per-epoch data) "
                   "instead of --logdir, e.g. to regenerate committed results")
    p.add_argument("--out", default=None, help="report output folder (default: LOGDIR/report)")
    p.add_argument("--claim", action="append", default=[], metavar="WINNERS>LOSERS",
                   help="your own comparison, e.g. 'adam,nadam>sgd' (does every optimizer on "
                   "the left beat every one on the right? Welch's t-test over seeds, on each "
                   "reported metric); repeatable")
    p.add_argument("--quiet", action="store_true", help="do not list the files written")
    p.set_defaults(handler=main)


def parse_claim(text: str) -> Claim:
    """``a,b>c,d`` -> the claim that a and b beat c and d (optimizer names checked)."""
    left, sep, right = text.partition(">")
    winners = tuple(w.strip().lower() for w in left.split(",") if w.strip())
    losers = tuple(w.strip().lower() for w in right.split(",") if w.strip())
    if not sep or not winners or not losers:
        raise ValueError(f"--claim: expected WINNERS>LOSERS (e.g. adam,nadam>sgd), got {text!r}")
    resolve_optimizer_names([*winners, *losers])
    return Claim(f"{'/'.join(winners)} beat {'/'.join(losers)}", winners, losers, metrics=())


def main(args: argparse.Namespace) -> int:
    if args.runs is not None and args.out is None:
        raise ValueError("report --runs: give --out (the folder to write the report into)")
    out = args.out or f"{args.logdir}/report"
    paths = write_report(None if args.runs else args.logdir, out,
                         [parse_claim(text) for text in args.claim], runs=args.runs)
    if not args.quiet:
        for p in paths:
            print(p)
    return 0
