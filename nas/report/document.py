"""The report as a list of typed blocks, rendered twice from the same list: Markdown with PNG files beside
it, and one self-contained HTML page with every image embedded (nothing fetched, so it can be mailed)."""

from __future__ import annotations

import base64
import html
import io
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Para:
    """A paragraph; inline `code` and **bold** are the only markup."""

    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Figure:
    name: str  # file name of the PNG beside the Markdown
    png: bytes
    alt: str


@dataclass(frozen=True)
class Tile:
    """One frame of a gallery: its thumbnail (the frame and its evidence maps) and a caption."""

    name: str
    png: bytes
    caption: str


@dataclass(frozen=True)
class Gallery:
    kind: str  # fp, fn, above, below: the browser test counts tiles per kind
    tiles: list[Tile] = field(default_factory=list)


Block = Heading | Para | Table | Figure | Gallery

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1120px; margin: 2em auto;
       padding: 0 1em; color: #1d2329; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #d7dde3; } h3 { margin-top: 1.4em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.88em; }
th, td { border: 1px solid #c9d1d9; padding: 0.25em 0.55em; text-align: left; }
th { background: #eef2f6; }
code { background: #eef2f6; padding: 0 0.25em; border-radius: 3px; }
img.figure { max-width: 100%; display: block; margin: 0.6em 0; }
section.gallery { display: flex; flex-wrap: wrap; gap: 10px; margin: 0.6em 0 1.2em; }
figure.tile { margin: 0; padding: 4px; border: 1px solid #c9d1d9; border-radius: 4px; background: #f7f9fb; }
figure.tile img { display: block; width: 336px; image-rendering: pixelated; }
figure.tile figcaption { font-size: 0.78em; max-width: 336px; overflow-wrap: anywhere; }
div.wide { overflow-x: auto; }
"""


def figure_png(fig, dpi: int = 100) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _inline_html(text: str) -> str:
    out = html.escape(text, quote=False)
    out = _CODE.sub(lambda m: f"<code>{m.group(1)}</code>", out)
    return _BOLD.sub(lambda m: f"<strong>{m.group(1)}</strong>", out)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, blocks: list[Block], gallery_dir: str = "gallery") -> tuple[str, dict[str, bytes]]:
    """The Markdown page and the files it links to (relative name -> bytes)."""
    lines, files = [f"# {title}", ""], {}
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Para):
            lines += [block.text, ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(map(_md_cell, block.header)) + " |")
            lines.append("|" + "---|" * len(block.header))
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in block.rows]
            lines.append("")
        elif isinstance(block, Figure):
            files[block.name] = block.png
            lines += [f"![{block.alt}]({block.name})", ""]
        elif isinstance(block, Gallery):
            lines += _md_gallery(block, gallery_dir, files)
    return "\n".join(lines), files


def _md_gallery(block: Gallery, gallery_dir: str, files: dict[str, bytes]) -> list[str]:
    """Tiles three to a row: a Markdown table of images, captions in the cells under them."""
    if not block.tiles:
        return []
    lines = []
    for start in range(0, len(block.tiles), 3):
        row = block.tiles[start : start + 3]
        for tile in row:
            files[f"{gallery_dir}/{tile.name}"] = tile.png
        lines.append("| " + " | ".join(f"![{_md_cell(t.caption)}]({gallery_dir}/{t.name})" for t in row) + " |")
        if start == 0:
            lines.append("|" + "---|" * len(row))
        lines.append("| " + " | ".join(_md_cell(t.caption) for t in row) + " |")
    return [*lines, ""]


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def to_html(title: str, blocks: list[Block]) -> str:
    """One HTML page with every image inline as a data: URI and no script, font or link to fetch."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{_inline_html(block.text)}</h{block.level}>")
        elif isinstance(block, Para):
            body.append(f"<p>{_inline_html(block.text)}</p>")
        elif isinstance(block, Table):
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in block.header)
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in row) + "</tr>" for row in block.rows)
            body.append(f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
        elif isinstance(block, Figure):
            body.append(f'<img class="figure" alt="{html.escape(block.alt)}" src="{_data_uri(block.png)}">')
        elif isinstance(block, Gallery):
            tiles = "".join(
                f'<figure class="tile"><img alt="{html.escape(t.caption)}" src="{_data_uri(t.png)}">'
                f"<figcaption>{html.escape(t.caption)}</figcaption></figure>"
                for t in block.tiles
            )
            body.append(f'<section class="gallery" data-kind="{html.escape(block.kind)}">{tiles}</section>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
