"""The HTML page of `make compare`: one self-contained file that opens offline (inline CSS, the figures
as data: URIs, nothing fetched), each run's name linked to its page in the MLflow UI's model-training view,
and a line saying which MLflow UI those links need running."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from html import escape

from vaepipe import tracking
from vaepipe.compare.rows import Row


@dataclass
class Table:
    """One table of the page: a heading (None: the first, ranked table), its cells, and links per row
    (column index -> URL)."""

    title: str | None
    header: list[str]
    cells: list[list[str]]
    links: list[dict[int, str]]
    note: str = ""


# MLflow 3's UI opens on its GenAI view unless told the workflow type (DESIGN.md, MLflow notes).
TRAINING_VIEW = "workflowType=machine_learning"


def run_link(ui_base: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI, in the model-training view (metrics charts, not traces)."""
    return f"{tracking.run_url(ui_base, experiment_id, run_id)}?{TRAINING_VIEW}"


def run_links(rows: list[Row], ui_base: str) -> list[dict[int, str]]:
    """Each row's first cell (the run's name) linked to the run's page in the MLflow UI."""
    return [{0: run_link(ui_base, row.run.experiment_id, row.run.run_id)} for row in rows]


def _table(table: Table) -> str:
    def cell(index: int, text: str, links: dict[int, str]) -> str:
        if index in links and text:
            return f'<td><a href="{escape(links[index])}">{escape(text)}</a></td>'
        return f"<td>{escape(text)}</td>"

    body = "\n".join("<tr>" + "".join(cell(i, text, links) for i, text in enumerate(row)) + "</tr>"
                     for row, links in zip(table.cells, table.links, strict=True))
    heading = f"<h2>{escape(table.title)}</h2>" if table.title else ""
    note = f"<p>{escape(table.note)}</p>" if table.note else ""
    return f"""{heading}{note}
<table><thead><tr>{"".join(f"<th>{escape(name)}</th>" for name in table.header)}</tr></thead>
<tbody>
{body}
</tbody></table>"""


def page(runs: int, summary: str, tables: list[Table], figures: dict[str, bytes], links_note: str = "",
         captions: dict[str, str] | None = None) -> str:
    """The tables, then the figures (name: PNG bytes, captioned by `captions` or their name); `links_note`
    says which MLflow UI the run links need."""
    captions = captions or {}
    images = "\n".join(
        f'<figure><img alt="{escape(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{escape(captions.get(name, name))}</figcaption></figure>" for name, png in figures.items())
    note = f'<p class="links">{escape(links_note)}</p>' if links_note else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vaepipe: compare runs</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:right}} td:first-child,th:first-child{{text-align:left}}
img{{max-width:100%}} figure{{margin:1em 0}}</style></head>
<body><h1>vaepipe: {runs} finished run(s)</h1><p>{escape(summary)}</p>{note}
{"".join(_table(table) for table in tables)}
{images}
</body></html>
"""
