"""report.html (reimagen.bench.report): one self-contained page per bench / ablate run.

Built from a tiny fake result set over the toy knowledge base: every image is a PNG data URI,
every text escaped, nothing external. Then loaded in a real headless Chromium (skipped where
none is installed): no console message, every <img> decoded by the browser, and a screenshot
that is not blank and shows each generated image's colour and each reference's colour. Last, a
tiny `reimagen bench` and `ablate` write the page, and `--no-report` leaves none behind.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_entitybench import _common, tiny  # noqa: F401 (the tiny emoji KB + network fixture)
from toys import toy_kb

from reimagen.bench.entitybench import Row, RowResult
from reimagen.bench.report import markdown_html, render, write_report
from reimagen.cli.main import main
from reimagen.diffusion.sampling_config import SamplingConfig

CHROMIUM = next(
    (
        path
        for name in ("chromium", "chromium-browser", "google-chrome")
        if (path := shutil.which(name))
    ),
    None,
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no headless Chromium on PATH (Debian: apt-get install chromium; "
    "scripts/install_artists.sh installs it when run as root)",
)
PROMPTS = ["a <script>alert(1)</script> robot & co", "an apple", "a rocket"]
COLOURS = {  # row -> one solid colour per prompt, all distinct
    "Imagen (no retrieval)": [(255, 0, 255), (0, 255, 255), (255, 128, 0)],
    "Re-Imagen K=2": [(0, 0, 255), (0, 160, 0), (128, 0, 0)],
}
NEIGHBOURS = np.array([[1, 2], [0, 3], [4, 5]])  # KB rows, per prompt
MARKDOWN = """# EntityBench <test> & co

Faithful = entity and text.

## same-style

| row | faithful all | entity top-1 |
|---|---:|---:|
| Re-Imagen K=2 | 0.67 | 1.00 |
"""


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    return toy_kb(tmp_path_factory.mktemp("report") / "kb")


def fake_results() -> list[RowResult]:
    results = []
    for label, colours in COLOURS.items():
        k = 0 if "no retrieval" in label else 2
        images = np.zeros((3, 32, 32, 3), np.uint8)
        images[:] = np.array(colours, np.uint8)[:, None, None]
        scores = {
            "faithful": np.array([True, False, True]),
            "aligned": np.array([True, True, False]),
            "predicted": ["robot", "pear", "rocket"],
            "confidence": np.array([0.9, 0.2, 0.5]),
        }
        row = Row(
            label=label,
            network="base",
            k=k,
            setting="same-style" if k else "none",
            sampling=SamplingConfig(),
        )
        results.append(
            RowResult(
                row=row,
                summary={"all": {"faithful": 2 / 3}},
                scores=scores,
                images=images,
                neighbor_rows=NEIGHBOURS[:, :k],
                recall=1.0,
                seconds=1.0,
                nfe=2,
            )
        )
    return results


@pytest.fixture(scope="module")
def page(kb, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("page") / "report.html"
    write_report(path, render(MARKDOWN, [("Images", fake_results())], PROMPTS, kb=kb))
    return path


class Parsed(HTMLParser):
    """Every tag's attributes and all the text of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def decode_png(uri: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix), uri[:40]
    data = base64.b64decode(uri[len(prefix) :], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def reference_colours(kb) -> list[tuple[int, int, int]]:
    """Each referenced KB drawing's centre colour as the page shows it (32 px, on white)."""
    images = np.rint((kb.rgb(NEIGHBOURS.reshape(-1), 32) + 1.0) * 127.5).astype(np.uint8)
    return [tuple(int(v) for v in image[16, 16]) for image in images]


def test_page_embeds_every_image_as_a_png_and_escapes_every_text(page, kb):
    text = page.read_text(encoding="utf-8")
    parsed = Parsed(text)
    images = [attrs["src"] for tag, attrs in parsed.tags if tag == "img"]
    assert len(images) == 3 + 3 + 3 * 2  # two rows' outputs, K=2 references for one row
    decoded = [decode_png(uri) for uri in images]
    outputs = [
        image
        for image in decoded
        if image.shape == (32, 32, 3)
        and (image == image[0, 0]).all()
        and tuple(image[0, 0]) in {c for cs in COLOURS.values() for c in cs}
    ]
    assert len(outputs) == 6
    references = [image[16, 16] for image in decoded[3:][1:3]]  # the first card's two refs
    assert [tuple(int(v) for v in r) for r in references] == reference_colours(kb)[:2]
    # nothing leaves the page: no script, no external source or link
    external = [
        (tag, a)
        for tag, attrs in parsed.tags
        for a, v in attrs.items()
        if a in ("src", "href") and not v.startswith("data:")
    ]
    assert external == [] and "<script" not in text
    words = "".join(parsed.text)
    assert PROMPTS[0] in words and "EntityBench <test> & co" in words  # shown as written
    assert "a drawing of a robot" in words and "top-1 robot (0.90)" in words
    assert "faithful ✗" in words and "aligned ✗" in words
    assert [a.get("class") for tag, a in parsed.tags if tag == "div"].count("card yes") == 4


def test_markdown_tables_and_headings_become_html():
    out = markdown_html(MARKDOWN)
    assert "<h1>EntityBench &lt;test&gt; &amp; co</h1>" in out and "<h2>same-style</h2>" in out
    assert "<th>faithful all</th>" in out
    assert '<td>Re-Imagen K=2</td><td class="num">0.67</td><td class="num">1.00</td>' in out
    assert "<p>Faithful = entity and text.</p>" in out


# ---- in a real browser ------------------------------------------------------------------------


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        CHROMIUM,
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=True)


# drawn on a canvas, each image's last row must be opaque: Chromium shows a truncated PNG's
# decoded part (complete, naturalWidth > 0, decode() resolves) and leaves the rest transparent
PROBE = """<script>addEventListener("load", () => {
  const canvas = document.createElement("canvas"), context = canvas.getContext("2d");
  const drawn = [...document.images].map(image => {
    if (!image.complete || !image.naturalWidth) return false;
    canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
    context.drawImage(image, 0, 0);
    const pixel = context.getImageData(image.naturalWidth >> 1, image.naturalHeight - 1, 1, 1);
    return pixel.data[3] === 255;
  });
  document.body.setAttribute("data-images", drawn.length);
  document.body.setAttribute("data-broken", drawn.filter(ok => !ok).length);
});</script>"""


@needs_chromium
def test_chromium_loads_the_page_without_console_messages_and_decodes_every_image(page, tmp_path):
    done = chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri())
    assert ":CONSOLE" not in done.stderr, done.stderr  # no error, warning or log line
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', done.stdout)) == 12
    # a copy with a probe script: the browser itself says how many images it decoded whole
    probed = tmp_path / "probed.html"
    probed.write_text(
        page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8"
    )
    dom = chromium(tmp_path, "--dump-dom", probed.as_uri()).stdout
    assert 'data-images="12"' in dom and 'data-broken="0"' in dom, dom[:300]


@needs_chromium
def test_chromium_screenshot_shows_the_outputs_and_the_references(page, kb, tmp_path):
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1000,1400", page.as_uri())
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(np.int16)  # [H, W, 3]
    assert pixels.std() > 20  # not a blank page

    def area(colour) -> int:
        return int((np.abs(pixels - np.array(colour)).max(axis=-1) <= 2).sum())

    for colours in COLOURS.values():
        for colour in colours:  # each output drawn at 96×96
            assert area(colour) >= 90 * 90, colour
    for colour in reference_colours(kb):  # each reference drawn at 64×64, its centre 32×32
        assert area(colour) >= 28 * 28, colour


# ---- the commands -----------------------------------------------------------------------------


def test_bench_writes_report_html_with_the_set_and_no_report_removes_it(
    tiny,  # noqa: F811
    tmp_path,
    capsys,
):
    out = tmp_path / "bench"
    args = [
        "bench",
        "--tiers",
        "unseen",
        "--n",
        "2",
        "--k",
        "1",
        "--settings",
        "same-style",
        "--steps",
        "2",
        *_common(tiny, out),
    ]
    assert main(args) == 0, capsys.readouterr().err
    assert "report.html" in capsys.readouterr().out
    parsed = Parsed((out / "report.html").read_text(encoding="utf-8"))
    images = [attrs["src"] for tag, attrs in parsed.tags if tag == "img"]
    assert len(images) == 3 * 2 + 2  # ceiling, no retrieval, K=1 rows; 2 prompts; 1 ref each
    assert all(decode_png(uri).shape == (32, 32, 3) for uri in images)
    words = "".join(parsed.text)
    assert "Re-Imagen K=1 [same-style]" in words and "faithful unseen" in words
    assert not list(out.glob(".writing-*"))  # the staging folder is gone
    assert main([*args, "--no-report"]) == 0
    assert not (out / "report.html").exists()  # not an earlier run's page beside new results


def test_ablate_writes_report_html_with_its_plots(tiny, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "ablate"
    args = [
        "ablate",
        "--quick",
        "--n",
        "1",
        "--tiers",
        "unseen",
        "--ks",
        "0,1",
        "--etas",
        "1",
        "--guidances",
        "interleaved",
        "--samplers",
        "ddpm@2",
        "--w-neighbors-sweep",
        "1",
        "--k-ref",
        "1",
        *_common(tiny, out),
    ]
    assert main(args) == 0, capsys.readouterr().err
    parsed = Parsed((out / "report.html").read_text(encoding="utf-8"))
    figures = [a["alt"] for tag, a in parsed.tags if tag == "img" and a["alt"].startswith("fig")]
    assert figures == ["fig7_k.png", "fig8_eta.png"]
    assert "Interleave ratio η (paper Fig. 8)" in "".join(parsed.text)
    assert main([*args, "--no-report"]) == 0 and not (out / "report.html").exists()
