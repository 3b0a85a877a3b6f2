"""Backend-neutral core: interfaces, configs, registry, schedule, samplers, knowledge base.

Imports no torch, jax or flax (tests/test_core_imports.py proves it in a subprocess).
"""
