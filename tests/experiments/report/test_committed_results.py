"""The committed results tables are what the committed code makes of the committed data."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.processes import ROOT

from torchopt_survey.experiments.report.results import (
    claims_markdown,
    read_table_csv,
    table_csv,
    table_markdown,
)

RESULTS = ROOT / "experiments" / "results"
STUDIES = [RESULTS, RESULTS / "second_order"]


@pytest.mark.parametrize("folder", STUDIES, ids=lambda p: p.name)
def test_tables_regenerate_byte_for_byte(folder: Path) -> None:
    rows = read_table_csv(folder / "results.csv")
    assert table_csv(rows) == (folder / "results.csv").read_text()
    assert table_markdown(rows) == (folder / "results.md").read_text()
    assert claims_markdown(rows) == (folder / "claims.md").read_text()
