"""Array backends. Each is a sub-package (torch/, jax/) imported only when asked for by name, so
listing components never imports a framework.

The two mirror each other name for name: a file of one has a twin of the same name in the
other, holding the same public names (a twin class has the same parameter names, so both read
the same safetensors files). Every shared file: layers, attention, blocks, unet, denoiser,
trainer, checkpoint, distributed. The files with no twin, and why:

    file               torch  jax  why only one
    compiled.py        yes    -    torch.compile of the eager forward; JAX always jits
    scene_composer.py  yes    -    scene batches composed on the CUDA device; the JAX trainer
                                   takes host batches
    convert.py         -      yes  pytree paths <-> torch state_dict keys, HWIO <-> OIHW; a
                                   torch module's state_dict already is the canonical layout
    sharding.py        -      yes  the jit-partitioned device mesh; torch's data parallel is
                                   DDP, set up in distributed.py
"""

from __future__ import annotations

import importlib

from reimagen.core.hookspecs import hookimpl


def _lazy(module_name: str):
    def factory():
        return importlib.import_module(module_name).BACKEND

    return factory


@hookimpl
def reimagen_register_backends(register):
    register("torch", _lazy("reimagen.backends.torch"))
    register("jax", _lazy("reimagen.backends.jax"))
