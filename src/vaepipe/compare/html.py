"""The HTML page of `make compare`: one self-contained file that opens offline (inline CSS, the figures
as data: URIs, nothing fetched), each run's name linked to its page in the MLflow UI."""

from __future__ import annotations

import base64
from html import escape

from vaepipe import tracking
from vaepipe.compare.rows import Row


def page(header: list[str], cells: list[list[str]], rows: list[Row], figures: dict[str, bytes],
         ui_base: str, summary: str) -> str:
    """The table (`header`, `cells`, one line per row of `rows`), then the figures (name: PNG bytes)."""

    def cell(index: int, row_index: int, text: str) -> str:
        if index == 0:
            run = rows[row_index].run
            return f'<td><a href="{escape(tracking.run_url(ui_base, run.experiment_id, run.run_id))}">' \
                   f"{escape(text)}</a></td>"
        return f"<td>{escape(text)}</td>"

    body = "\n".join("<tr>" + "".join(cell(i, r, text) for i, text in enumerate(row)) + "</tr>"
                     for r, row in enumerate(cells))
    images = "\n".join(
        f'<figure><img alt="{escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{escape(name)}</figcaption></figure>" for name, png in figures.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vaepipe: compare runs</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} td:first-child,th:first-child{{text-align:left}}
img{{max-width:100%}} figure{{margin:1em 0}}</style></head>
<body><h1>vaepipe: {len(rows)} finished run(s)</h1><p>{escape(summary)}</p>
<table><thead><tr>{"".join(f"<th>{escape(name)}</th>" for name in header)}</tr></thead>
<tbody>
{body}
</tbody></table>
{images}
</body></html>
"""
