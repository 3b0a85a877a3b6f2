"""The README's Python example runs as written (when the emoji KB and shipped weights exist)."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reimagen.core.paths import default_kb_dir
from reimagen.generation.shipped import available_stages

README = Path(__file__).parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_the_two_commands_and_ci_calls_the_test_one():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci


needs_kb_and_weights = pytest.mark.skipif(
    not (default_kb_dir() / "kb.json").is_file() or not {"base", "sr"} <= set(available_stages()),
    reason="needs the built emoji KB (make demo) and shipped base + sr weights",
)


def test_python_example_is_short_with_one_or_two_imports():
    lines = [line for line in python_blocks()[0].splitlines() if line.strip()]
    assert len(lines) <= 10
    assert 1 <= sum(line.startswith(("import ", "from ")) for line in lines) <= 2


@needs_kb_and_weights
def test_python_example_draws_what_generate_draws(tmp_path, monkeypatch, capsys):
    """The README's example, run as written, and `reimagen generate` for its prompt and seed
    write the same pixels at both stages. Fast settings for both through the one place they
    read them: 2 sampling steps per stage, and bm25 for the default retriever (hybrid's first
    index build encodes 7,273 captions, ~2 min on this CPU)."""
    from reimagen.cli.main import main
    from reimagen.generation import shipped as weights

    for stage in ("base", "sr"):
        monkeypatch.setitem(
            weights.DEFAULT_SAMPLING, stage, weights.DEFAULT_SAMPLING[stage].replace(steps=2)
        )
    monkeypatch.setattr(weights, "DEFAULT_RETRIEVER", "bm25")
    example = python_blocks()[0]
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102  (the README's own code)
    assert "(1, 64, 64, 3)" in capsys.readouterr().out

    prompt = re.search(r'generate\(\["(.+?)"\]', example)[1]
    seed = re.search(r"seed=(\d+)", example)[1]
    out = tmp_path / "x.png"
    assert main(["generate", prompt, "--seed", seed, "--out", str(out), "--retriever", "bm25"]) == 0
    for stage in ("base", "sr"):
        written = np.asarray(Image.open(out.with_suffix(f".{stage}.png")).convert("RGB"))
        assert np.array_equal(written, namespace[stage].images[0]), stage
    assert namespace["base"].neighbor_rows.shape == (1, 2)


def test_load_refuses_an_unknown_name():
    import reimagen

    with pytest.raises(
        ValueError, match=r"^name must be one of default, base, baseline; got 'nope'$"
    ):
        reimagen.load("nope")
