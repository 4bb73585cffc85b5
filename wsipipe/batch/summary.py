"""``summary.csv`` and ``summary.html``: one row per slide with whatever figures its job returned."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsipipe.batch.state import SlideRecord
from wsipipe.files import write_atomic

# Figures shown first when a job returns them; any others follow in name order.
PREFERRED_FIGURES = ("tumour_fraction", "nuclei_count", "nuclei_per_mm2", "cellularity")
BASE_COLUMNS = ("name", "key", "state", "seconds")


def figure_columns(records: Sequence[Any]) -> list[str]:
    """The figure columns of ``records`` (anything with a ``figures`` dict), the preferred ones first."""
    names = {k for r in records for k in r.figures}
    return [f for f in PREFERRED_FIGURES if f in names] + sorted(names - set(PREFERRED_FIGURES))


def summary_rows(records: list[SlideRecord]) -> tuple[list[str], list[list[str]]]:
    """Header and text rows; a figure a slide lacks is blank."""
    figures = figure_columns(records)
    header = [*BASE_COLUMNS, *figures, "error"]
    rows = []
    for r in records:
        seconds = "" if r.seconds is None else f"{r.seconds:.2f}"
        values = [_text(r.figures.get(f)) for f in figures]
        rows.append([r.name, r.key, r.state, seconds, *values, r.error])
    return header, rows


def write_summary(outdir: Path, records: list[SlideRecord]) -> None:
    header, rows = summary_rows(records)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    write_atomic(outdir / "summary.csv", buffer.getvalue())
    write_atomic(outdir / "summary.html", _html(header, rows))
    from wsipipe.qc.cohort import write_cohort_page

    write_cohort_page(outdir, records)


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _html(header: list[str], rows: list[list[str]]) -> str:
    counts: dict[str, int] = {}
    state_col = header.index("state")
    for row in rows:
        counts[row[state_col]] = counts.get(row[state_col], 0) + 1
    totals = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join(
        f'<tr class="{html.escape(row[state_col])}">' + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>wsipipe batch summary</title>\n'
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
        "tr.failed{background:#fdd}tr.skipped{background:#eee}</style></head><body>\n"
        f"<h1>wsipipe batch summary</h1><p>{len(rows)} slides: {html.escape(totals)}</p>\n"
        f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table></body></html>\n"
    )
