"""``.. benchmark-table:: benchmarks/results/NAME.json`` -- a table built from a committed result
file at build time, with where and when it was measured, so no measured number is typed by hand.

Options:

``:columns:`` comma-separated row keys, each optionally ``key=Header`` (a plain table);
``:pivot:`` ``ROW; COL1+COL2; VALUE`` -- one line per value of ``ROW``, one column per
combination of the ``COL`` keys, cells from ``VALUE`` (e.g. method x (threads, size) -> ratio);
``:row-columns:`` with ``:pivot:``, further per-line columns (``key=Header``, comma-separated),
taken from the line's first row (e.g. which torch path a ratio is against);
``:digits:`` decimals for every float (default: three significant digits);
``:caption:`` a caption.

The provenance line reads the result's own ``environment`` / ``meta`` / top-level fields
(torch, Python, machine, device, threads, time) and a ``provenance`` entry where one was added
afterwards from the repository's history; any of them missing is shown as "not recorded".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

NOT_RECORDED = "not recorded"


def format_value(value: Any, digits: int | None = None) -> str:
    if isinstance(value, float) and digits is not None and value == value:
        return f"{value:,.{digits}f}"
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.2f}"
    if isinstance(value, list):
        return ", ".join(format_value(v) for v in value)
    return str(value)


def provenance(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs describing where and when a result file was measured."""
    sources = [result.get("provenance") or {}, result.get("environment") or {},
               result.get("meta") or {}, result]

    def first(*keys: str) -> Any:
        for source in sources:
            for key in keys:
                if source.get(key) not in (None, ""):
                    return source[key]
        return None

    device = first("device_name", "device")
    machine = first("machine_description", "machine", "cpu")
    cpus = first("cpu_count")
    if machine is not None and cpus is not None:
        machine = f"{machine}, {cpus} CPUs"
    fields = [
        ("date", first("time", "date")),
        ("machine", machine),
        ("device", device),
        ("threads", first("threads")),
        ("torch", first("torch")),
        ("Python", first("python")),
        ("note", first("note")),
    ]
    out = []
    for label, value in fields:
        if value is None and label == "note":
            continue
        out.append((label, NOT_RECORDED if value is None else format_value(value)))
    source = (result.get("provenance") or {}).get("source")
    if source:
        out.append(("added later", str(source)))
    return out


def _parse_columns(spec: str) -> list[tuple[str, str]]:
    columns = []
    for part in spec.split(","):
        key, _, header = part.strip().partition("=")
        columns.append((key.strip(), header.strip() or key.strip()))
    return columns


def _table(headers: list[str], rows: list[list[str]], caption: str | None) -> nodes.table:
    table = nodes.table()
    if caption:
        table += nodes.title(text=caption)
    group = nodes.tgroup(cols=len(headers))
    table += group
    for _ in headers:
        group += nodes.colspec(colwidth=1)
    head = nodes.thead()
    group += head
    body = nodes.tbody()
    group += body
    for container, lines in ((head, [headers]), (body, rows)):
        for line in lines:
            row = nodes.row()
            for cell_text in line:
                entry = nodes.entry()
                entry += nodes.paragraph(text=cell_text)
                row += entry
            container += row
    return table


class BenchmarkTable(SphinxDirective):
    required_arguments = 1
    option_spec = {
        "columns": directives.unchanged,
        "pivot": directives.unchanged,
        "caption": directives.unchanged,
        "row-columns": directives.unchanged,
        "digits": directives.nonnegative_int,
    }

    def run(self) -> list[nodes.Node]:
        root = Path(self.env.srcdir).parent
        path = root / self.arguments[0]
        self.env.note_dependency(str(path))
        result = json.loads(path.read_text())
        if isinstance(result, list):  # a bare list of rows, with nothing recorded around it
            result = {"rows": result}
        rows = result["rows"]
        if not rows:
            raise self.error(f"{self.arguments[0]}: no rows")
        if "pivot" in self.options:
            headers, lines = self._pivot(rows, self.options["pivot"])
        else:
            columns = _parse_columns(self.options.get("columns") or ",".join(rows[0]))
            headers = [header for _, header in columns]
            lines = [[self._format(r.get(key)) for key, _ in columns] for r in rows]
        out: list[nodes.Node] = [_table(headers, lines, self.options.get("caption"))]
        prov = nodes.paragraph()
        prov += nodes.emphasis(text="Measured: ")
        prov += nodes.Text("; ".join(f"{label} {value}" for label, value in provenance(result)))
        prov += nodes.Text(" — source: ")
        prov += nodes.literal(text=self.arguments[0])
        out.append(prov)
        return out

    def _format(self, value: Any) -> str:
        return format_value(value, self.options.get("digits"))

    def _pivot(self, rows: list[dict[str, Any]], spec: str) -> tuple[list[str], list[list[str]]]:
        row_key, col_spec, value_key = (part.strip() for part in spec.split(";"))
        extra = _parse_columns(self.options["row-columns"]) if "row-columns" in self.options else []
        first_row: dict[Any, dict[str, Any]] = {}
        col_keys = [k.strip() for k in col_spec.split("+")]
        row_values: list[Any] = []
        col_values: list[tuple[Any, ...]] = []
        cells: dict[tuple[Any, tuple[Any, ...]], Any] = {}
        for r in rows:
            rv, cv = r.get(row_key), tuple(r.get(k) for k in col_keys)
            if rv not in row_values:
                row_values.append(rv)
                first_row[rv] = r
            if cv not in col_values:
                col_values.append(cv)
            cells[(rv, cv)] = r.get(value_key)
        headers = [row_key] + [header for _, header in extra] + [
            ", ".join(f"{k} {format_value(v)}" for k, v in zip(col_keys, cv)) for cv in col_values
        ]
        lines = [
            [format_value(rv)]
            + [format_value(first_row[rv].get(key)) for key, _ in extra]
            + [self._format(cells.get((rv, cv))) for cv in col_values]
            for rv in row_values
        ]
        return headers, lines


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("benchmark-table", BenchmarkTable)
    return {"version": "1", "parallel_read_safe": True}
