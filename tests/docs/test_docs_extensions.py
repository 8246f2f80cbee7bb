"""The site's own Sphinx extensions (docs/_ext) on a tiny project: the CLI reference walks
subcommands of any depth and renders every flag with its help and default; a benchmark table
says "not recorded" for provenance its JSON lacks."""

from __future__ import annotations

import html as html_text
import json
import sys
import textwrap
from pathlib import Path

import pytest

sphinx_build = pytest.importorskip("sphinx.cmd.build")
EXT = Path(__file__).resolve().parents[2] / "docs" / "_ext"

FAKE_CLI = '''
import argparse

def build():
    parser = argparse.ArgumentParser(prog="fake", description="A fake tool.")
    parser.add_argument("--verbose", action="store_true", help="talk more")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a model")
    train.add_argument("--lr", type=float, default=0.25, help="step size (%(default)s)")
    group = train.add_argument_group("data")
    group.add_argument("--dataset", choices=["a", "b"], default="a", help="which data")
    sweep = commands.add_parser("sweep", help="many runs")
    backends = sweep.add_subparsers(dest="backend")
    ray = backends.add_parser("ray", help="on Ray")
    ray.add_argument("--address", metavar="HOST", help="cluster address")
    return parser
'''


def build_site(tmp_path: Path, page: str, monkeypatch) -> str:
    src = tmp_path / "docs"
    src.mkdir()
    (tmp_path / "fake_cli_module.py").write_text(FAKE_CLI)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(EXT))
    (src / "conf.py").write_text(
        'extensions = ["argparse_cli", "bench_tables"]\nproject = "t"\nsmartquotes = False\n'
    )
    (src / "index.rst").write_text(textwrap.dedent(page))
    out = tmp_path / "html"
    status = sphinx_build.build_main(["-W", "-q", "-b", "html", str(src), str(out)])
    assert status == 0
    return html_text.unescape((out / "index.html").read_text())


def test_cli_reference_walks_subcommands(tmp_path, monkeypatch):
    sys.modules.pop("fake_cli_module", None)
    html = build_site(tmp_path, """
        Title
        =====

        .. argparse-cli:: fake_cli_module:build
        """, monkeypatch)
    for text in ("--verbose", "talk more", "--lr LR", "step size (0.25)", "default: 0.25",
                 "--dataset {a,b}", "choices: a, b", "default: 'a'", "data",
                 "fake train", "train a model", "fake sweep", "fake sweep ray", "--address HOST",
                 "cluster address"):
        assert text in html, text


def test_benchmark_table_renders_rows_and_missing_provenance(tmp_path, monkeypatch):
    (tmp_path / "result.json").write_text(json.dumps({
        "environment": {"torch": "9.9", "time": "2030-01-01"},
        "rows": [{"method": "SGD", "size": "s", "ratio": 0.5},
                 {"method": "SGD", "size": "l", "ratio": 0.75},
                 {"method": "Adam", "size": "s", "ratio": 1.25}],
    }))
    html = build_site(tmp_path, """
        Title
        =====

        .. benchmark-table:: result.json
           :pivot: method; size; ratio
           :digits: 2
        """, monkeypatch)
    for text in ("size s", "size l", "0.50", "0.75", "1.25", "date 2030-01-01", "torch 9.9",
                 "Python not recorded", "machine not recorded"):
        assert text in html, text
