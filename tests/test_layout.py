"""The layout rules of CONTRIBUTING.md, checked on the package's source (issue 18).

- every module of ``reimagen/`` is at most 400 lines, every function at most 50, unless the
  module (or the function's first lines) carries a ``# layout: <why>`` comment saying why not;
- every "docs/design.md §N" a docstring or comment cites names a section that exists;
- the backend-neutral packages import no framework (tests/test_core_imports.py does that one).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "reimagen"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 50
REASON = re.compile(r"#\s*layout:\s*\S")


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _function_lines(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node, node.end_lineno - node.lineno + 1


def test_modules_are_at_most_400_lines_or_say_why():
    too_long = []
    for path in _modules():
        text = path.read_text()
        n = len(text.splitlines())
        if n > MAX_FILE_LINES and not REASON.search(text):
            too_long.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not too_long, "modules over 400 lines without a '# layout:' reason:\n" + "\n".join(
        too_long
    )


def test_functions_are_at_most_50_lines_or_say_why():
    too_long = []
    for path in _modules():
        lines = path.read_text().splitlines()
        for node, n in _function_lines(ast.parse("\n".join(lines))):
            head = "\n".join(lines[node.lineno - 1 : node.lineno + 3])  # signature + first lines
            if n > MAX_FUNCTION_LINES and not REASON.search(head):
                too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {n} lines")
    assert not too_long, "functions over 50 lines without a '# layout:' reason:\n" + "\n".join(
        too_long
    )


def test_design_references_name_existing_sections():
    design = (ROOT / "docs" / "design.md").read_text()
    sections = set(re.findall(r"^## (\d+)\.", design, flags=re.MULTILINE))
    assert sections == {str(i) for i in range(1, 11)}, sorted(sections)
    cited: dict[str, list[str]] = {}
    for path in [*_modules(), *sorted((ROOT / "tests").glob("*.py"))]:
        for number in re.findall(r"design\.md §(\d+)", path.read_text()):
            cited.setdefault(number, []).append(path.name)
    missing = {n: files for n, files in cited.items() if n not in sections}
    assert cited and not missing, missing
    old = "DESIGN" + " §"  # the name of a document that was never in the repository
    stale = [str(p.relative_to(ROOT)) for p in _modules() if old in p.read_text()]
    assert not stale, f"{old!r} still cited in {stale}"


def test_readme_layout_names_every_package():
    """The README's Layout section lists every package of the tree (and nothing that is gone)."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") : readme.index("## Results")]
    packages = sorted(
        str(init.parent.relative_to(ROOT))
        for init in PACKAGE.rglob("__init__.py")
        if "__pycache__" not in init.parts and init.parent != PACKAGE
    )
    listed = set(re.findall(r"^(reimagen/[\w/]+?)/\s", layout, flags=re.MULTILINE))
    # a parent package (reimagen/backends) counts as listed through its listed children
    missing = [
        p for p in packages if p not in listed and not any(n.startswith(p + "/") for n in listed)
    ]
    assert not missing, missing
    assert listed <= set(packages), sorted(listed - set(packages))
