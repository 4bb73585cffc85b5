"""``qc_cohort.html``: a batch's slides ranked by each artefact, with their qc.png, in one file that
opens from disk (images inline)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import cv2

from wsipipe.files import write_atomic
from wsipipe.qc.stage import ARTEFACTS

COHORT_PAGE = "qc_cohort.html"
#: Longest side of each slide's picture on the page.
PICTURE_MAX_SIDE = 480


def write_cohort_page(outdir: Path, records: list) -> bool:
    """Write OUTDIR/qc_cohort.html for the slides whose figures hold QC columns; False when none do."""
    slides = [r for r in records if "qc_usable" in r.figures]
    if not slides:
        return False
    sections = []
    for artefact in ARTEFACTS:
        column = f"qc_{artefact}"
        ranked = sorted(
            (r for r in slides if r.figures.get(column) is not None), key=lambda r: (-r.figures[column], r.name)
        )
        if not ranked:
            continue
        items = "".join(
            f'<li><a href="#{html.escape(r.key)}">{html.escape(r.name)}</a> {r.figures[column]:.1%}</li>'
            for r in ranked
        )
        sections.append(f"<section><h2>{html.escape(artefact.replace('_', ' '))}</h2><ol>{items}</ol></section>")
    cards = "".join(_card(outdir, r) for r in sorted(slides, key=lambda r: r.name))
    usable = sum(bool(r.figures.get("qc_usable")) for r in slides)
    page = (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>wsipipe QC cohort</title>\n'
        "<style>body{font-family:sans-serif}section{display:inline-block;vertical-align:top;margin:0 2em 1em 0}"
        ".card{display:inline-block;vertical-align:top;margin:6px;padding:6px;border:1px solid #ccc}"
        ".bad{background:#fdd}img{display:block;max-width:" + str(PICTURE_MAX_SIDE) + "px}</style></head><body>\n"
        f"<h1>wsipipe QC cohort</h1><p>{len(slides)} slides, {usable} usable. Ranked by the share of tissue each "
        "artefact covers; each slide's picture tints its artefacts.</p>\n"
        + "".join(sections)
        + "\n<h2>Slides</h2>\n"
        + cards
        + "\n</body></html>\n"
    )
    write_atomic(outdir / COHORT_PAGE, page)
    return True


def _card(outdir: Path, record) -> str:
    usable = record.figures.get("qc_usable")
    verdict = "usable" if usable else f"not usable ({record.figures.get('qc_rule')})"
    picture = _picture(outdir / record.name / "qc.png")
    image = f'<img alt="{html.escape(record.name)} QC" src="data:image/png;base64,{picture}">' if picture else ""
    return (
        f'<div class="card{"" if usable else " bad"}" id="{html.escape(record.key)}">'
        f"<b>{html.escape(record.name)}</b>: {html.escape(verdict)}{image}</div>"
    )


def _picture(path: Path) -> str | None:
    """``path`` shrunk to PICTURE_MAX_SIDE, base64 PNG; None when there is no picture."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
    if image is None:
        return None
    scale = PICTURE_MAX_SIDE / max(image.shape[:2])
    if scale < 1:
        image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".png", image)
    return base64.b64encode(encoded.tobytes()).decode("ascii") if ok else None
