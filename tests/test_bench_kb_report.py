"""report.html of ``reimagen bench --kb COLLECTION`` (reimagen.bench.collection.report_page).

On the small shape collection of tests/test_folder_training.py and its 4-step run: the page
holds the tables, every row's label, and per row and held-out record the generated image, the
references it was conditioned on (the copy row: its top-1; K=0: none) and the held-out target,
each a PNG data URI at the network's 16 px; ``--no-report`` removes an earlier run's page.
Loaded in headless Chromium where one is installed (tests/test_report_html.py's checks).
"""

from __future__ import annotations

import json
import re

import pytest
from test_folder_training import kb, trained  # noqa: F401 (the collection and its run)
from test_report_html import PROBE, Parsed, chromium, decode_png, needs_chromium

from reimagen.cli.main import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

HELD_OUT = 3  # the collection's held-out records (tests/test_folder_training.py)
REFERENCES = {  # row label -> references per card
    "copy top-1 reference (no network)": 1,
    "no retrieval (K=0)": 0,
    "Re-Imagen K=2": 2,
}
IMAGES = sum(HELD_OUT * (1 + refs + 1) for refs in REFERENCES.values())  # output, refs, target


def bench_args(kb_folder, weights, out, *extra: str) -> list[str]:
    return [
        "bench",
        "--kb",
        str(kb_folder),
        "--weights",
        str(weights),
        *("--n", "3", "--k", "2", "--sampler", "ddim", "--steps", "2"),
        *("--threads", "1", "--evaluators", "pixel", "--out", str(out)),
        *extra,
    ]


@pytest.fixture(scope="module")
def benched(kb, trained, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("bench_kb")
    assert main(bench_args(kb.folder, trained, out)) == 0
    return out


def test_report_shows_every_row_with_its_outputs_references_and_targets(benched, kb):  # noqa: F811
    parsed = Parsed((benched / "report.html").read_text(encoding="utf-8"))
    images = [attrs for tag, attrs in parsed.tags if tag == "img"]
    assert len(images) == IMAGES
    assert all(decode_png(a["src"]).shape == (16, 16, 3) for a in images)
    kinds = [a["alt"].split(":")[0] for a in images]
    assert kinds.count("generated") == kinds.count("held-out target") == 3 * HELD_OUT
    assert kinds.count("reference") == HELD_OUT * sum(REFERENCES.values())
    words = "".join(parsed.text)
    blob = json.loads((benched / "results.json").read_text())
    assert [r["label"] for r in blob["rows"]] == list(REFERENCES)
    headings = [i for i, (tag, _) in enumerate(parsed.tags) if tag == "h3"]
    assert len(headings) == len(REFERENCES)
    for label in REFERENCES:
        assert label in words
    captions = {record.key: record.text for record in kb.records}
    for example in blob["examples"]:  # each held-out caption, each reference's caption
        assert example["text"] in words
        assert all(captions[key] in words for key in example["references"])
    assert "| K | right | shuffled | none | right vs shuffled |" not in words  # rendered
    assert "right vs shuffled" in words and "target PSNR" in words  # the two tables
    assert not list(benched.glob(".writing-*"))  # the staging folder is gone


def test_no_report_removes_an_earlier_page(benched, kb, trained, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "bench"
    assert main(bench_args(kb.folder, trained, out)) == 0
    assert "report.html" in capsys.readouterr().out and (out / "report.html").is_file()
    assert main(bench_args(kb.folder, trained, out, "--no-report")) == 0
    assert "report.html" not in capsys.readouterr().out
    assert not (out / "report.html").exists()  # not an earlier run's page beside new results
    assert (out / "results.json").is_file() and (out / "grid_02.png").is_file()


@needs_chromium
def test_chromium_loads_the_page_and_decodes_every_image(benched, tmp_path):
    page = benched / "report.html"
    done = chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri())
    assert ":CONSOLE" not in done.stderr, done.stderr  # no error, warning or log line
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', done.stdout)) == IMAGES
    probed = tmp_path / "probed.html"
    probed.write_text(
        page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8"
    )
    dom = chromium(tmp_path, "--dump-dom", probed.as_uri()).stdout
    assert f'data-images="{IMAGES}"' in dom and 'data-broken="0"' in dom, dom[:300]
