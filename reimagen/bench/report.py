"""``report.html``: one bench or ablate run on one self-contained page (issue 17, item 4).

The page holds the run's markdown (headings, paragraphs and tables, rendered to HTML), the
plots, and for every row of results one card per prompt: the prompt, the generated image, the
K references it was conditioned on with their captions, and the evaluator's verdict where the
scores have one (faithful, top-1 name and probability, text aligned); ``bench --kb`` adds the
held-out target to each card (:class:`CardRow` is a row's neutral shape). Every image is a PNG
(Pillow) embedded as a base64 data URI: no external file, no network, no script. Every piece
of text is escaped with :func:`html.escape`.

Images are shown at a fixed size with ``image-rendering: pixelated`` (outputs 96 px,
references 64 px), so 8, 32 and 64 px networks read alike. References are drawn at the row's
output size, composited on white: what the network sees, and small (a 96-prompt bench row
with K=3 embeds 288 outputs and 864 references of 32×32).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs
import numpy as np

from reimagen.core.images import to_uint8

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { image-rendering: pixelated; }
.plots img { max-width: 100%; border: 1px solid #ddd; }
.cards { display: flex; flex-wrap: wrap; gap: 8px; }
.card { border: 2px solid #bbb; border-radius: 4px; padding: 4px; min-width: 180px; }
.card.yes { border-color: #2a9d3a; }
.card.no { border-color: #d04040; }
.card p { margin: 2px 0; width: 0; min-width: 100%; overflow-wrap: anywhere; }
.pics { display: flex; gap: 6px; align-items: flex-start; }
.out { width: 96px; height: 96px; border: 1px solid #888; }
.ref { margin: 0; width: 64px; font-size: 10px; color: #555; overflow-wrap: anywhere; }
.ref img { width: 64px; height: 64px; border: 1px solid #ccc; display: block; }
.ref.target img { border: 2px solid #2a6fb0; }
.verdict { font-size: 12px; }
"""


def png_uri(image: np.ndarray) -> str:
    """A uint8 [H, W, 3] image as a ``data:image/png;base64,...`` URI."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return png_bytes_uri(buffer.getvalue())


def png_bytes_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


# ---- markdown (the subset bench and ablate write) -----------------------------------------------


def markdown_html(text: str) -> str:
    """Headings (#), tables (| lines) and paragraphs, each line escaped."""
    out, table = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table:
            out.append(table_html(table))
            table = []
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")), 6)
            out.append(f"<h{level}>{html.escape(line.lstrip('#').strip())}</h{level}>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    return "\n".join(out)


def table_html(lines: Sequence[str]) -> str:
    """A markdown table (header, alignment line, rows) -> <table>; ``---:`` columns align right."""
    rows = [[cell.strip() for cell in line.strip()[1:-1].split("|")] for line in lines]
    head, align, body = rows[0], rows[1], rows[2:]
    right = [a.endswith(":") for a in align]
    parts = ["<table>", "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"]
    for row in body:
        cells = "".join(
            f'<td class="num">{html.escape(c)}</td>'
            if i < len(right) and right[i]
            else f"<td>{html.escape(c)}</td>"
            for i, c in enumerate(row)
        )
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    return "\n".join(parts)


# ---- the page ---------------------------------------------------------------------------------


def render(
    markdown: str,
    sections: Sequence[tuple[str, Sequence]],
    prompts: Sequence,
    kb=None,
    plots: Mapping[str, bytes | Path] | None = None,
    targets: np.ndarray | None = None,
) -> str:
    """The whole page. ``sections``: (heading, rows) pairs, each row a :class:`CardRow` or a
    bench RowResult (images [N, H, W, 3] uint8, neighbor_rows [N, K] rows of ``kb``, scores);
    ``prompts``: N BenchPrompts (or strings); ``plots``: file name -> PNG bytes or a PNG
    path; ``targets``: uint8 [N, H, W, 3], each prompt's held-out target, drawn in every card
    after the references (``bench --kb``)."""
    title = next(
        (line.lstrip("#").strip() for line in markdown.splitlines() if line.startswith("# ")),
        "reimagen report",
    )
    references = ReferenceCache(kb)
    target_uris = None if targets is None else [png_uri(image) for image in targets]
    body = [markdown_html(markdown)]
    if plots:
        body.append("<h2>Plots</h2>")
        body.append(plots_html(plots))
    for heading, results in sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        body += [
            row_html(index, card_row(result), prompts, references, target_uris)
            for index, result in enumerate(results)
        ]
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_report(path: str | Path, page: str) -> None:
    """``page`` (see :func:`render`) written atomically."""
    from reimagen.core.io import atomic_write_text

    atomic_write_text(path, page)


def plots_html(plots: Mapping[str, bytes | Path]) -> str:
    parts = ['<div class="plots">']
    for name, data in plots.items():
        data = Path(data).read_bytes() if isinstance(data, (str, Path)) else data
        parts.append(
            f'<figure><img src="{png_bytes_uri(data)}" alt="{html.escape(name)}">'
            f"<figcaption>{html.escape(name)}</figcaption></figure>"
        )
    parts.append("</div>")
    return "\n".join(parts)


@attrs.frozen
class CardRow:
    """One row of cards as :func:`row_html` draws it: ``heading`` (after the row's index),
    ``images`` uint8 [N, H, W, 3], ``neighbor_rows`` [N, K] (the KB rows each image was
    conditioned on) and ``scores`` (per-card arrays :func:`verdict_text` reads; may be empty)."""

    heading: str
    images: np.ndarray = attrs.field(repr=False)
    neighbor_rows: np.ndarray = attrs.field(repr=False)
    scores: Mapping = attrs.field(factory=dict)


def card_row(result) -> CardRow:
    """A bench / ablate RowResult's cards, headed "label [setting] · K=k · faithful 0.67"
    (a CardRow is returned as it is)."""
    if isinstance(result, CardRow):
        return result
    row = result.row
    faithful = result.summary.get("all", {}).get("faithful")
    numbers = f" · faithful {faithful:.2f}" if faithful is not None else ""
    k = "" if f"K={row.k}" in row.label else f" · K={row.k}"
    heading = f"{row.label} [{row.setting}]{k}{numbers}"
    return CardRow(heading, result.images, result.neighbor_rows, result.scores)


def row_html(
    index: int,
    row: CardRow,
    prompts: Sequence,
    references: ReferenceCache,
    targets: Sequence[str] | None = None,
) -> str:
    """A row's heading and one card per prompt; ``targets``: a PNG data URI per prompt."""
    head = f"<h3>{index}. {html.escape(row.heading)}</h3>"
    size = row.images.shape[1]
    references.load(row.neighbor_rows, size)  # the row's references in one KB read
    cards = [
        card_html(
            i,
            prompt,
            row,
            references.get(row.neighbor_rows[i], size),
            None if targets is None else targets[i],
        )
        for i, prompt in enumerate(prompts)
    ]
    return (
        f'<section class="row">\n{head}\n<div class="cards">\n'
        + "\n".join(cards)
        + "\n</div>\n</section>"
    )


def card_html(
    i: int,
    prompt,
    row: CardRow,
    references: Sequence[tuple[str, str]],
    target: str | None = None,
) -> str:
    """The prompt, the generated image, its references (data URI, caption) and, when given,
    the held-out ``target`` (a data URI), then the verdict."""
    text = getattr(prompt, "prompt", prompt)
    scores = row.scores
    verdict = scores.get("faithful")
    kind = "" if verdict is None else (" yes" if verdict[i] else " no")
    figures = [
        f'<figure class="ref"><img src="{uri}" alt="reference: {html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for uri, caption in references
    ]
    if target is not None:
        figures.append(
            f'<figure class="ref target"><img src="{target}" alt="held-out target: '
            f'{html.escape(text)}"><figcaption>held-out target</figcaption></figure>'
        )
    return (
        f'<div class="card{kind}"><p class="prompt">{html.escape(text)}</p>'
        f'<div class="pics"><img class="out" src="{png_uri(row.images[i])}" '
        f'alt="generated: {html.escape(text)}">{"".join(figures)}</div>'
        f'<p class="verdict">{html.escape(verdict_text(scores, i))}</p></div>'
    )


def verdict_text(scores: Mapping, i: int) -> str:
    """ "faithful ✓ · top-1 dragon (0.31) · aligned ✗": the parts the scores have."""
    parts = []
    if "faithful" in scores:
        parts.append("faithful " + ("✓" if scores["faithful"][i] else "✗"))
    if "predicted" in scores:
        confidence = scores.get("confidence")
        probability = "" if confidence is None else f" ({float(confidence[i]):.2f})"
        parts.append(f"top-1 {scores['predicted'][i]}{probability}")
    if "aligned" in scores:
        parts.append("aligned " + ("✓" if scores["aligned"][i] else "✗"))
    return " · ".join(parts)


class ReferenceCache:
    """KB rows -> (PNG data URI at a size, caption), each row and size encoded once."""

    def __init__(self, kb):
        self.kb = kb
        self._uris: dict[tuple[int, int], str] = {}

    def load(self, rows: np.ndarray, size: int) -> None:
        """Encode the rows (any shape) not encoded yet at ``size``."""
        if self.kb is None:
            return
        missing = sorted(
            {int(r) for r in np.asarray(rows).reshape(-1) if (int(r), size) not in self._uris}
        )
        if missing:
            images = np.asarray(self.kb.rgb(missing, size))  # [n, size, size, 3] in [-1, 1]
            pixels = to_uint8(images)
            for row, image in zip(missing, pixels):
                self._uris[row, size] = png_uri(image)

    def get(self, rows: np.ndarray, size: int) -> list[tuple[str, str]]:
        if self.kb is None:
            return []
        self.load(rows, size)
        return [
            (self._uris[int(r), size], self.kb.records[int(r)].text)
            for r in np.asarray(rows).reshape(-1)
        ]
