"""``python -m torchopt_survey.experiments``: one subcommand per module, each with its own flags.

:mod:`.run` (``mnist``, ``karate``, ``all``), :mod:`.sweep`, :mod:`.report`; :mod:`.options`
holds the flags they share.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..runtime.process import quiet_import_noise
from ..tasks.data import DataError
from . import report, run, sweep
from .options import build_configs

__all__ = ["build_configs", "build_parser", "main"]

EPILOG = """\
examples:
  python -m torchopt_survey.experiments all --seeds 0 1 2 --workers 2
  python -m torchopt_survey.experiments mnist --optimizers adam sgd --epochs 2
  python -m torchopt_survey.experiments karate --config configs/karate_paper.yaml --resume
  python -m torchopt_survey.experiments report --logdir runs --out experiments
  python -m torchopt_survey.experiments sweep --experiment mnist --optimizers all \
      --lr-grid 1e-4:1:7 --seeds 0 1 2 --epochs 10
  python -m torchopt_survey.experiments sweep --experiment karate --optimizers sgd adam \
      --lr-grid 1e-3:1e-1:3 --backend ray --workers 2  # Ray Tune trials (pip install -e ".[ray]")
  tensorboard --logdir runs
  torchrun --nproc-per-node 2 -m torchopt_survey.experiments mnist --optimizers sgd  # DDP
"""




def build_parser() -> argparse.ArgumentParser:
    """The full parser: one subparser per command, each with its own flags.

    The command-line reference is generated from it. Each parsed command carries its
    ``handler`` (``args.handler(args)`` runs it).

    Returns:
        argparse.ArgumentParser: the parser of ``python -m torchopt_survey.experiments``.
    """
    p = argparse.ArgumentParser(
        prog="python -m torchopt_survey.experiments",
        description=(
            "Reproduce the surveys' optimizer comparisons: an MNIST MLP (mnist) and link "
            "prediction on Zachary's Karate Club (karate), for every optimizer; 'all' runs both; "
            "'sweep' tunes learning rates on validation; 'report' turns finished runs into "
            "figures and a results table. 'COMMAND --help' lists a command's flags."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (run, sweep, report):
        module.add_parsers(sub)
    return p


def parse_command_line(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; a flag the command does not take exits 2 naming flag and command."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        flags = [a for a in extra if a.startswith("-")]
        what = f"flag {flags[0]}" if flags else f"argument {extra[0]!r}"
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: the {args.command} command does not take {what} "
              f"(its flags: '{parser.prog} {args.command} --help')", file=sys.stderr)
        raise SystemExit(2)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m torchopt_survey.experiments``: parse ``argv``, run the command.

    Args:
        argv (Sequence[str] or None, optional): the arguments after the program name;
            ``None`` (default): ``sys.argv[1:]``.

    Returns:
        int: the exit status: ``0`` done, ``1`` missing or corrupt data files (or, under
        ``torchrun``, a lost rank), ``2`` an invalid flag or value (after the usage and the
        message on stderr), ``130`` interrupted (finished runs are kept; rerun with
        ``--resume``).

    Raises:
        SystemExit: where argparse exits itself: ``--help`` (status 0), a flag the command
            does not take or a value of the wrong type or choice (status 2).
    """
    quiet_import_noise()
    parser = build_parser()
    args = parse_command_line(parser, list(sys.argv[1:] if argv is None else argv))
    try:
        return args.handler(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished runs are kept, rerun with --resume", file=sys.stderr)
        return 130
