"""figures/index.html: every sweep analysed so far, browsable without a server.

`index.html` lists each sweep (from figures/sweeps.json, the manifest REPORT.md is rendered from:
analysis/report.py) with its question, its result and links to its page; `<sweep>_report.html`
shows that sweep's tables, rendered from their Markdown files (`markdown_to_html`), and its
figures (each PNG links to itself and to its PDF), with links to its CSV data. Every link is
relative to figures/, so the folder can be copied or opened as files (`file://`).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from analysis.report import read_manifest

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; font-size: 0.8em; margin: 0.8em 0; display: block;
        overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; white-space: nowrap; }
th { background: #f0f0f0; position: sticky; top: 0; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f3f3f3; padding: 0 3px; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
nav a { margin-right: 1em; }
.sweep { border-top: 2px solid #ddd; padding-top: 0.5em; }
"""


def page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


_CODE = re.compile(r"`([^`]*)`")
_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CELL = re.compile(r"(?<!\\)\|")


def inline(text: str) -> str:
    """Escaped text with Markdown's inline code, images, links and bold as HTML (no markup
    inside code)."""
    parts = _CODE.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(f"<code>{html.escape(part)}</code>")
            continue
        part = html.escape(part, quote=False)
        part = _IMAGE.sub(lambda m: f'<img src="{html.escape(m[2])}" alt="{m[1]}">', part)
        part = _LINK.sub(lambda m: f'<a href="{html.escape(m[2])}">{m[1]}</a>', part)
        out.append(_BOLD.sub(r"<strong>\1</strong>", part))
    return "".join(out)


def _cells(line: str) -> list[str]:
    inner = line.strip()
    inner = inner[1:] if inner.startswith("|") else inner
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [c.strip().replace("\\|", "|") for c in _CELL.split(inner)]


def _table(lines: list[str]) -> str:
    header, body = _cells(lines[0]), lines[2:] if len(lines) > 1 else []
    head = "".join(f"<th>{inline(c)}</th>" for c in header)
    rows = "\n".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in _cells(line)) + "</tr>"
                     for line in body)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"


def markdown_to_html(text: str) -> str:
    """The Markdown analysis writes (headings, paragraphs, `- ` lists, pipe tables as
    analysis.markdown.markdown_table writes them, inline code, links, images, bold) as HTML;
    every other character is escaped, so a cell or a config value cannot inject markup."""
    out, block = [], []
    lines = text.splitlines()
    i = 0

    def flush():
        if block:
            out.append(f"<p>{inline(' '.join(block))}</p>")
            block.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        heading = re.match(r"^(#{1,6})\s+(.*)$", stripped)
        if not stripped:
            flush()
        elif heading:
            flush()
            level = len(heading[1])
            out.append(f"<h{level}>{inline(heading[2])}</h{level}>")
        elif stripped.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(lines[i])
                i += 1
            out.append(_table(rows))
            continue
        elif stripped.startswith("- "):
            flush()
            items = []
            while i < len(lines) and lines[i].strip().startswith("- "):
                items.append(f"<li>{inline(lines[i].strip()[2:])}</li>")
                i += 1
            out.append("<ul>\n" + "\n".join(items) + "\n</ul>")
            continue
        else:
            block.append(stripped)
        i += 1
    flush()
    return "\n".join(out)


def sweep_page(figures: Path, sweep: str, entry: dict) -> str:
    """The page of one sweep: question, result, each table rendered, each figure, the data."""
    files = [figures / name for name in entry["files"] if (figures / name).is_file()]
    body = ['<nav><a href="index.html">all sweeps</a><a href="REPORT.md">REPORT.md</a></nav>',
            f"<h1>{html.escape(sweep)}</h1>",
            f"<p><strong>Question.</strong> {inline(entry['question'])}</p>",
            f"<p><strong>Result.</strong> {inline(entry['finding'])}</p>"]
    tables = [p for p in files if p.suffix == ".md"]
    pngs = [p for p in files if p.suffix == ".png"]
    csvs = [p for p in files if p.suffix == ".csv"]
    if tables or pngs:
        body.append("<nav>" + "".join(f'<a href="#{html.escape(p.stem)}">{html.escape(p.stem)}</a>'
                                      for p in tables + pngs) + "</nav>")
    for path in tables:
        text = path.read_text()
        lines = text.splitlines()
        if lines and lines[0].startswith("# "):
            text = "\n".join(lines[1:])
        body += [f'<section class="sweep" id="{html.escape(path.stem)}">',
                 f'<h2><a href="{html.escape(path.name)}">{html.escape(path.name)}</a></h2>',
                 markdown_to_html(text), "</section>"]
    for path in pngs:
        pdf = path.with_suffix(".pdf")
        link = f' (<a href="{html.escape(pdf.name)}">pdf</a>)' if pdf.is_file() else ""
        name = html.escape(path.name)
        body += [f'<figure class="sweep" id="{html.escape(path.stem)}">',
                 f'<a href="{name}"><img src="{name}" alt="{html.escape(path.stem)}" '
                 'loading="lazy"></a>',
                 f"<figcaption>{html.escape(path.stem)}{link}</figcaption></figure>"]
    if csvs:
        body.append("<p>Data: " + ", ".join(f'<a href="{html.escape(p.name)}">'
                                             f"{html.escape(p.name)}</a>" for p in csvs) + "</p>")
    return page(f"{sweep}: lowrank-bench", body)


def page_name(sweep: str) -> str:
    return f"{sweep}_report.html"


def write_html(figures: str | Path) -> list[Path]:
    """``figures/index.html`` and one ``<sweep>_report.html`` per sweep of the manifest."""
    figures = Path(figures)
    manifest = read_manifest(figures)
    written = []
    rows = []
    for sweep, entry in sorted(manifest.items()):
        path = figures / page_name(sweep)
        path.write_text(sweep_page(figures, sweep, entry))
        written.append(path)
        present = [n for n in entry["files"] if (figures / n).is_file()]
        tables = [n for n in present if n.endswith(".md")]
        pngs = [n for n in present if n.endswith(".png")]
        rows += [f'<section class="sweep"><h2><a href="{html.escape(path.name)}">'
                 f"{html.escape(sweep)}</a></h2>",
                 f"<p><strong>Question.</strong> {inline(entry['question'])}</p>",
                 f"<p><strong>Result.</strong> {inline(entry['finding'])}</p>",
                 "<p>Tables: " + ", ".join(
                     f'<a href="{html.escape(page_name(sweep))}#{html.escape(Path(n).stem)}">'
                     f"{html.escape(Path(n).stem)}</a>" for n in tables) + "<br>Figures: "
                 + ", ".join(f'<a href="{html.escape(n)}">{html.escape(Path(n).stem)}</a>'
                             for n in pngs) + "</p></section>"]
    exports = [n for n in ("runs.parquet", "steps.parquet", "REPORT.md")
               if (figures / n).is_file()]
    body = ["<h1>lowrank-bench: every sweep analysed</h1>",
            "<p>Generated by <code>python -m analysis</code> from the run records. Every run: "
            + ", ".join(f'<a href="{n}">{n}</a>' for n in exports)
            + " (<code>pandas.read_parquet(\"figures/runs.parquet\")</code>).</p>", *rows]
    index = figures / "index.html"
    index.write_text(page("lowrank-bench: sweeps", body))
    return [*written, index]
