import subprocess
import sys


def test_core_imports_no_framework():
    """reimagen.core (and listing every component) imports no torch / jax / flax / equinox."""
    code = (
        "import sys, reimagen.core, reimagen.core.config, reimagen.core.interfaces, "
        "reimagen.core.schedule, reimagen.core.samplers, reimagen.core.unet_config\n"
        "import pkgutil, importlib, reimagen.core as c\n"
        "for m in pkgutil.iter_modules(c.__path__): importlib.import_module('reimagen.core.' + m.name)\n"
        "from reimagen.core import registry\n"
        "[registry.names(k) for k in registry.kinds()]\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'jax', 'jaxlib', 'flax', 'equinox', 'tensorflow'))\n"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
