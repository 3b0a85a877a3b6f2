import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from reimagen import hookimpl
from reimagen.core import registry
from reimagen.core.hookspecs import HOOKS
from reimagen.core.registry import RegistryError


@pytest.fixture
def fresh_registry():
    yield registry
    registry.reset()


def test_builtin_kinds_are_the_design_kinds():
    assert set(registry.kinds()) == {
        "retriever",
        "encoder",
        "preset",
        "guidance",
        "sampler",
        "backend",
        "source",
        "evaluator",
    }


def test_unknown_name_lists_known_names():
    with pytest.raises(RegistryError) as err:
        registry.get("preset", "nope")
    assert "nope" in str(err.value) and "tiny" in str(err.value) and "small" in str(err.value)


def test_unknown_kind_lists_kinds():
    with pytest.raises(RegistryError, match="known kinds: retriever"):
        registry.names("widgets")


class _MockPlugin:
    @hookimpl
    def reimagen_register_samplers(self, register):
        register("mock-sampler", lambda *a, **k: "sampled")


class _DuplicatePlugin:
    @hookimpl
    def reimagen_register_presets(self, register):
        register("tiny", lambda: None)


def test_mock_plugin_registers(fresh_registry):
    reg = registry.reset(extra_plugins=(_MockPlugin(),), autoload=False)
    assert "mock-sampler" in reg.names("sampler")
    assert reg.get("sampler", "mock-sampler")() == "sampled"


def test_duplicate_name_raises_naming_both(fresh_registry):
    with pytest.raises(RegistryError, match="duplicate preset name 'tiny'"):
        registry.reset(extra_plugins=(_DuplicatePlugin(),), autoload=False)


def test_every_hook_is_documented_and_has_a_kind():
    from reimagen.core import hookspecs

    for hook_name in HOOKS.values():
        fn = getattr(hookspecs, hook_name)
        assert fn.__doc__ and "register" in fn.__doc__.lower(), hook_name


def test_entry_point_plugin_discovered_end_to_end(tmp_path):
    """A third-party plugin found through an entry point on sys.path (a real dist-info)."""
    site = tmp_path / "site"
    pkg = site / "acme_reimagen.py"
    site.mkdir()
    pkg.write_text(
        textwrap.dedent("""
        from reimagen import hookimpl
        @hookimpl
        def reimagen_register_retrievers(register):
            register("acme", lambda **kw: "acme-retriever")
    """)
    )
    dist = site / "acme_reimagen-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-reimagen\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[reimagen]\nacme = acme_reimagen\n")
    code = (
        f"import sys, json; sys.path.insert(0, {str(site)!r})\n"
        "from reimagen.core import registry\n"
        "print(json.dumps([registry.names('retriever'), registry.get('retriever','acme')()]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    names, made = json.loads(out.stdout.strip().splitlines()[-1])
    assert "acme" in names and made == "acme-retriever"
    # ... and the autoload switch turns entry points off.
    env_off = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "REIMAGEN_DISABLE_PLUGIN_AUTOLOAD": "1"},
        check=False,
    )
    assert env_off.returncode != 0 and "unknown retriever 'acme'" in env_off.stderr


def test_components_cli_json_lists_builtins_and_example_plugin():
    out = subprocess.run(
        [sys.executable, "-m", "reimagen.cli.main", "components", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    table = json.loads(out.stdout)["components"]
    assert {"torch", "jax"} <= set(table["backend"])
    assert {"tiny", "small", "paper-64"} <= set(table["preset"])
    example = Path(__file__).parents[1] / "examples" / "reimagen_example_plugin"
    assert example.is_dir()
    # The Makefile installs the example plugin; it must then be listed.
    assert "text-only" in table["guidance"]
