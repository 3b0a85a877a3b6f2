"""``torch.compile`` of the U-Net forward, as an option (issue 16): ``compile_unet(model)``.

Inductor fuses the elementwise ops around the convolutions (norm, FiLM, SiLU, residual adds)
into generated C++ loops and drops the per-op dispatch of the eager forward. On the 2-core AMD
EPYC it took ~45 s of CPU to compile the ``small`` forward for one input shape, so it pays off
over a long sampling run, not for one image (figures: docs/results/peers.md, the
``reimagen+compile`` column). The model is compiled in place: the same module, parameters and
``state_dict`` keys; fused kernels round differently, so ε stays within float32 rounding of the
eager forward (tests/test_torch_compile.py), not bit-identical.

Degrades gracefully: with no C++ compiler on PATH it warns once and the model stays eager; a
compile that fails at its first call (a broken toolchain, an op Inductor cannot lower) warns and
falls back to the eager forward for good.
"""

from __future__ import annotations

import os
import shutil
import warnings

import torch
from torch import nn

COMPILERS = ("g++", "clang++", "c++")


def cxx_compiler() -> str | None:
    """The C++ compiler Inductor would find ($CXX or g++/clang++/c++ on PATH), or None."""
    for name in (os.environ.get("CXX"), *COMPILERS):
        if name and shutil.which(name):
            return name
    return None


def _compile_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean "this could not be compiled" (not "the inputs are wrong")."""
    from torch._dynamo import exc as dynamo_exc
    from torch._inductor import exc as inductor_exc

    names = ("InductorError", "InvalidCxxCompiler", "CppCompileError")
    found = [getattr(inductor_exc, n) for n in names if hasattr(inductor_exc, n)]
    return (dynamo_exc.BackendCompilerFailed, *found)


def compile_unet(model: nn.Module, **options) -> nn.Module:
    """``model`` with its forward compiled by ``torch.compile(**options)`` (in place), or
    unchanged, with a warning, where no C++ compiler exists. Compile after copying the model
    (``copy.deepcopy`` would share the compiled forward of the original)."""
    if cxx_compiler() is None:
        warnings.warn(
            "compile_unet: torch.compile needs a C++ compiler (g++, clang++ or $CXX) and none "
            "is on PATH; the U-Net runs eagerly",
            RuntimeWarning,
            stacklevel=2,
        )
        return model
    eager = model.forward
    compiled = torch.compile(eager, **options)
    errors = _compile_errors()

    def forward(*args, **kwargs):
        try:
            return compiled(*args, **kwargs)
        except errors as err:
            warnings.warn(
                f"compile_unet: torch.compile failed ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); the U-Net runs eagerly",
                RuntimeWarning,
                stacklevel=2,
            )
            model.forward = eager  # for good: the next call does not retry
            return eager(*args, **kwargs)

    model.forward = forward  # an instance attribute: nn.Module.__call__ runs it
    return model
