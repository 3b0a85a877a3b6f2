"""The README's Python example runs as written (when the emoji KB and shipped weights exist)."""

import re
from pathlib import Path

import pytest

from reimagen.core.paths import default_kb_dir
from reimagen.weights import available_stages

README = Path(__file__).parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_readme_has_the_two_commands_and_ci_calls_the_test_one():
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert "\nmake test\n" in ci


@pytest.mark.skipif(
    not (default_kb_dir() / "kb.json").is_file() or "base" not in available_stages(),
    reason="needs the built emoji KB (make demo) and shipped base weights",
)
def test_python_example_runs(capsys):
    example = python_blocks()[0]
    assert len(example.strip().splitlines()) <= 12
    code = compile(example.replace("steps=25", "steps=2"), "README.md", "exec")
    exec(code, {})  # noqa: S102  (running the README's own example is the test)
    assert "(1, 32, 32, 3)" in capsys.readouterr().out
