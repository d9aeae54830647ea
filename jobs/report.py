"""An evaluation table written as Markdown, CSV, a PNG bar chart and one HTML page, each
file atomically.

The HTML page is one file that needs nothing else: the table, the notes, the overview
chart and one chart per metric (each on its own scale), every chart a PNG embedded as a
base64 ``data:`` URI, the style inline; no script and no outside reference.

A table is ``{"title": str, "columns": [metric, ...], "rows": {model: {metric: float}},
"notes": [str, ...]}`` (``notes`` optional). ``columns`` chooses and orders the metrics
shown; a row may hold more metrics than that, but not fewer. The output depends on the
table alone (no timestamps, no software stamp in the PNG), so a re-run writes the same
bytes.
"""

from __future__ import annotations

import io
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NotRequired, TypedDict

from core import lake

DECIMALS = 4
PNG_DPI = 100


class Table(TypedDict):
    title: str
    columns: list[str]
    rows: dict[str, dict[str, float]]
    notes: NotRequired[list[str]]


class ReportError(ValueError):
    """The table is malformed; the message names the model and column at fault."""


def write(table: Table, out_dir: Path, stem: str = "evaluation") -> dict[str, str]:
    """Write ``<stem>.md``, ``<stem>.csv``, ``<stem>.png`` and ``<stem>.html`` under
    ``out_dir``.

    Each file is written to a temporary name beside it and renamed into place, so a
    reader sees the old file or the new one, never half of one. Returns
    ``{"md": path, "csv": path, "png": path, "html": path}``.
    """
    title, columns, rows, notes = _validate(table)
    if not stem or stem in (".", "..") or os.sep in stem or (os.altsep and os.altsep in stem):
        raise ReportError(f"stem={stem!r}: expected a plain file name without a folder")
    out_dir = Path(out_dir)
    paths = {ext: out_dir / f"{stem}.{ext}" for ext in ("md", "csv", "png", "html")}
    md = _markdown(title, columns, rows, notes).encode("utf-8")
    csv = _csv(columns, rows).encode("utf-8")
    png = _png_bytes(title, columns, rows)
    page = html(table, overview=png).encode("utf-8")
    _atomic_write(paths["md"], lambda f: f.write(md))
    _atomic_write(paths["csv"], lambda f: f.write(csv))
    _atomic_write(paths["png"], lambda f: f.write(png))
    _atomic_write(paths["html"], lambda f: f.write(page))
    return {ext: str(path) for ext, path in paths.items()}


def html(table: Table, overview: bytes | None = None) -> str:
    """The table as one self-contained HTML page: title, table (the best value of each
    column in bold), notes, the overview chart and one chart per metric, embedded.
    ``overview``: the overview PNG when already drawn."""
    import base64
    from html import escape

    title, columns, rows, notes = _validate(table)
    if overview is None:
        overview = _png_bytes(title, columns, rows)

    def img(png: bytes, alt: str) -> str:
        data = base64.b64encode(png).decode("ascii")
        return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'

    best = {c: max((r[c] for r in rows.values() if not math.isnan(r[c])), default=math.nan)
            for c in columns}
    head = "".join(f"<th>{escape(c)}</th>" for c in ["model", *columns])
    body = []
    for model, row in rows.items():
        cells = [f'<th scope="row">{escape(model)}</th>']
        for c in columns:
            text = _fmt(row[c])
            cells.append(f"<td><b>{text}</b></td>" if row[c] == best[c] else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>{escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:60em}"
        "table{border-collapse:collapse}th,td{padding:.25em .75em;border-bottom:1px solid #ccc}"
        "td{text-align:right;font-variant-numeric:tabular-nums}th{text-align:left}"
        "img{max-width:100%;display:block;margin:1em 0}</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(title)}</h1>",
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>",
    ]
    if notes:
        out.append("<ul>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>")
    out.append("<h2>All metrics</h2>")
    out.append(img(overview, f"{title}: all metrics"))
    for column in columns:
        out.append(f"<h2>{escape(column)}</h2>")
        out.append(img(_png_bytes(f"{title}: {column}", [column], rows), column))
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def _png_bytes(title: str, columns: list[str], rows: dict) -> bytes:
    buf = io.BytesIO()
    _png(title, columns, rows, buf)
    return buf.getvalue()


def format_text(table: Table) -> str:
    """The table as fixed-width text for a terminal: title, aligned columns, then notes."""
    title, columns, rows, notes = _validate(table)
    header = ["model", *columns]
    body = [[model, *(_fmt(rows[model][c]) for c in columns)] for model in rows]
    widths = [max(len(line[j]) for line in [header, *body]) for j in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(w) for cell, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    out = [title, "", line(header), line(["-" * w for w in widths])]
    out += [line(cells) for cells in body]
    if notes:
        out += ["", *(f"* {note}" for note in notes)]
    return "\n".join(out) + "\n"


def _validate(table: Mapping) -> tuple[str, list[str], dict[str, dict[str, float]], list[str]]:
    if not isinstance(table, Mapping):
        raise ReportError(f"table: expected a mapping, got {type(table).__name__}")
    missing = [key for key in ("title", "columns", "rows") if key not in table]
    if missing:
        raise ReportError(f"table: missing key(s) {missing}")
    title, columns, rows = table["title"], table["columns"], table["rows"]
    notes = table.get("notes") or []
    if not isinstance(title, str):
        raise ReportError(f"table title={title!r}: expected a string")
    if (
        isinstance(columns, str)
        or not isinstance(columns, Sequence)
        or not columns
        or not all(isinstance(c, str) and c for c in columns)
    ):
        raise ReportError(f"table columns={columns!r}: expected a non-empty list of names")
    if len(set(columns)) != len(columns) or "model" in columns:
        raise ReportError(f"table columns={list(columns)!r}: names must be unique, not 'model'")
    if not isinstance(rows, Mapping) or not rows:
        raise ReportError("table rows: expected a non-empty mapping model -> metrics")
    if isinstance(notes, str) or not all(isinstance(n, str) for n in notes):
        raise ReportError(f"table notes={notes!r}: expected a list of strings")
    clean: dict[str, dict[str, float]] = {}
    for model, row in rows.items():
        if not isinstance(model, str) or not model:
            raise ReportError(f"model {model!r}: expected a non-empty string name")
        if not isinstance(row, Mapping):
            raise ReportError(f"model {model!r}: expected a mapping metric -> value")
        clean[model] = {}
        for column in columns:
            if column not in row:
                raise ReportError(f"model {model!r}: missing column {column!r}")
            value = row[column]
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ReportError(f"model {model!r}, column {column!r}: {value!r} is not a number")
            clean[model][column] = float(value)
    return title, list(columns), clean, list(notes)


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.{DECIMALS}f}"


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _markdown(title: str, columns: list[str], rows: dict, notes: list[str]) -> str:
    header = ["model", *columns]
    out = [f"# {title}", ""]
    out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
    out.append("|" + "|".join(["---", *(["---:"] * len(columns))]) + "|")
    for model, row in rows.items():
        cells = [_md_cell(model), *(_fmt(row[c]) for c in columns)]
        out.append("| " + " | ".join(cells) + " |")
    if notes:
        out += ["", *(f"- {_md_cell(note)}" for note in notes)]
    return "\n".join(out) + "\n"


def _csv(columns: list[str], rows: dict) -> str:
    import pandas as pd

    frame = pd.DataFrame(
        [[model, *(row[c] for c in columns)] for model, row in rows.items()],
        columns=["model", *columns],
    )
    return frame.to_csv(index=False, lineterminator="\n")


def _png(title: str, columns: list[str], rows: dict, out: io.BufferedIOBase) -> None:
    """Grouped horizontal bars: one group per model, one bar per column, first model on top."""
    import matplotlib.style
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = list(rows)
    n_cols = len(columns)
    bar = 0.8 / n_cols
    with matplotlib.style.context("default"):  # ignore any matplotlibrc: same input, same bytes
        height = 1.4 + len(models) * (0.28 * n_cols + 0.35)
        fig = Figure(figsize=(8.0, height), dpi=PNG_DPI, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        base = np.arange(len(models), dtype=np.float64)
        for j, column in enumerate(columns):
            values = [rows[m][column] for m in models]
            offset = (j - (n_cols - 1) / 2) * bar
            bars = ax.barh(base + offset, values, height=bar, label=column)
            ax.bar_label(bars, fmt=f"%.{DECIMALS}f", padding=2, fontsize=7)
        ax.set_yticks(base, labels=models)
        ax.invert_yaxis()
        ax.margins(x=0.15)
        ax.set_title(title)
        ax.legend(loc="best", fontsize=8)
        fig.savefig(out, format="png", dpi=PNG_DPI, metadata={"Software": None})


def _atomic_write(path: Path, fill: Callable[[io.BufferedWriter], object]) -> None:
    """``fill`` writes into a temporary file beside ``path``, then one rename publishes it."""
    tmp = lake.atomic_file(path)
    try:
        with open(tmp, "wb") as f:
            fill(f)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
