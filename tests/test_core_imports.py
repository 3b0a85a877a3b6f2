import subprocess
import sys


def test_core_imports_no_framework():
    """Every module of the backend-neutral packages (core, diffusion, kb, training, generation),
    and listing every component, imports no torch / jax / flax / equinox."""
    code = (
        "import sys, pkgutil, importlib\n"
        "for pkg in ('core', 'diffusion', 'kb', 'training', 'generation'):\n"
        "    p = importlib.import_module('reimagen.' + pkg)\n"
        "    for m in pkgutil.iter_modules(p.__path__):\n"
        "        importlib.import_module(f'reimagen.{pkg}.{m.name}')\n"
        "from reimagen.core import registry\n"
        "[registry.names(k) for k in registry.kinds()]\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'jax', 'jaxlib', 'flax', 'equinox', 'tensorflow'))\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_import_reimagen_is_cheap_and_the_front_door_imports_no_framework():
    """``import reimagen`` loads no numpy / torch / jax; the names it re-exports are imported
    on first use, and none of them imports torch or jax either (the backend is imported when a
    network is loaded)."""
    code = (
        "import sys, reimagen\n"
        "early = sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'torch', 'jax'))\n"
        "[getattr(reimagen, n) for n in ('load', 'Cascade', 'Pipeline', 'SamplingConfig', "
        "'KnowledgeBase', 'Generation', 'Stage', 'get', 'names', 'hookimpl')]\n"
        "late = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'jax', 'jaxlib', 'flax', 'equinox', 'tensorflow'))\n"
        "print(early, late); sys.exit(1 if early or late else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_unknown_top_level_name_is_an_attribute_error():
    import reimagen

    assert "load" in dir(reimagen) and "Pipeline" in reimagen.__all__
    try:
        reimagen.Nope  # noqa: B018
    except AttributeError as err:
        assert "'Nope'" in str(err)
    else:
        raise AssertionError("reimagen.Nope did not raise")
