"""Test tiers, pinned numerics and pinned randomness.

Fast tier by default; ``REIMAGEN_SLOW=1`` also runs tests marked ``slow``. The default tier is
deterministic: every random input comes from a fixed seed (tests/parity.py's ``parity_seed``)
and hypothesis runs derandomized (the ``ci`` profile: the same examples on every run, no
example database). ``REIMAGEN_FUZZ=1`` is the fuzz tier: fresh parity seeds per run and the
``fuzz`` hypothesis profile (new random examples each run); a failure it finds prints its seed or
its ``@reproduce_failure`` blob, and is pinned as a regression case (an ``@example`` or a
fixed-seed test) before it is fixed. JAX runs on the CPU in
float32 with the highest matmul precision, and torch with TF32 off, so backend parity is exact
to float32 rounding (STYLE.md, "Pin numerics in conftest.py").
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest
from hypothesis import settings

SLOW = bool(os.environ.get("REIMAGEN_SLOW"))
FUZZ = bool(os.environ.get("REIMAGEN_FUZZ"))

# Registered at import, before the test modules' @settings decorators read the active profile.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("fuzz", derandomize=False, database=None, print_blob=True)
settings.load_profile("fuzz" if FUZZ else "ci")


def pytest_configure(config):
    try:
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")
        jax.config.update("jax_platforms", "cpu")
        # Compiling the tiny U-Net's gradients dominates the parity suite's time; a persistent
        # cache (ignored folder) makes every run after the first much faster.
        from reimagen.core.paths import home

        jax.config.update("jax_compilation_cache_dir", str(home() / "jax-cache"))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    except ImportError:
        pass
    try:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    except ImportError:
        pass


def pytest_collection_modifyitems(config, items):
    if SLOW:
        return
    skip = pytest.mark.skip(reason="slow tier: set REIMAGEN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module, restored afterwards (``pytestmark =
    pytest.mark.usefixtures("one_torch_thread")``). Bit-identity across processes and resumes
    needs the same thread count everywhere, and on this shared 2-core machine OpenMP threads
    that spin-wait on each other are ~100x slower under contention than one thread."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
