"""A review round's summary as a small HTML page: what was sent to Label Studio for review, why, and the answers.

The ``review_set`` asset writes one per run to ``LOOPML_HOME/reports/<function>/review-<time>.html``; the serving
API serves it like a drift report (``loopml.report_links``), and the asset links it from Dagster.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

MAX_ROWS = 500  # calls listed; a round sends at most its budget (50 by default)
MAX_TEXT = 300  # characters of a call's text shown

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1f2937; }
table { border-collapse: collapse; margin: 1rem 0; }
th, td { border: 1px solid #d1d5db; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f3f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
"""


def _cell(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _shown(text: Any) -> str:
    text = "" if text is None else str(text)
    if text.startswith("data:image/"):
        return "[image]"
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def write_review_summary(
    path: Path,
    *,
    function: str,
    model_tag: str,
    window: tuple[datetime, datetime],
    candidates: int,
    sent: int,
    budget: int,
    reasons: Mapping[str, int],
    rows: Sequence[Mapping[str, Any]],
    labelstudio_project_url: str | None = None,
) -> Path:
    """Write the summary of one review round to ``path`` (an HTML file; every value escaped) and return it.

    ``rows`` are the selected calls (``reason``, ``label``, ``confidence``, ``input_text``, ``invocation_id``);
    ``reasons`` counts them per reason; ``sent`` is how many Label Studio took (fewer when it already had some).
    """
    start, end = window
    link = (
        f'<p><a href="{html.escape(labelstudio_project_url)}">Review them in Label Studio</a></p>'
        if labelstudio_project_url
        else ""
    )
    reason_rows = "".join(
        f"<tr><td>{_cell(reason)}</td><td class=num>{count}</td></tr>"
        for reason, count in sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    )
    call_rows = "".join(
        "<tr>"
        f"<td>{_cell(row.get('reason'))}</td>"
        f"<td>{_cell(row.get('label'))}</td>"
        f"<td class=num>{float(row.get('confidence') or 0.0):.2f}</td>"
        f"<td>{_cell(_shown(row.get('input_text')))}</td>"
        f"<td><code>{_cell(row.get('invocation_id'))}</code></td>"
        "</tr>"
        for row in list(rows)[:MAX_ROWS]
    )
    more = f"<p>and {len(rows) - MAX_ROWS} more</p>" if len(rows) > MAX_ROWS else ""
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LoopML review: {_cell(function)}</title>
<style>{STYLE}</style></head><body>
<h1>Review round: {_cell(function)}</h1>
<p>Model {_cell(model_tag)}; calls from {_cell(f"{start:%Y-%m-%d %H:%M}")} to {_cell(f"{end:%Y-%m-%d %H:%M}")} UTC:
{candidates} candidates, {len(rows)} selected (budget {budget}), {sent} sent to Label Studio.</p>
{link}
<h2>Why</h2>
<table><tr><th>reason</th><th>calls</th></tr>{reason_rows}</table>
<h2>Calls</h2>
<table><tr><th>reason</th><th>answer</th><th>confidence</th><th>input</th><th>invocation</th></tr>{call_rows}</table>
{more}
</body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
