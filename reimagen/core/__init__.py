"""The backend-neutral contracts and plumbing every other package builds on.

Interfaces (``interfaces``), validated configs (``config``, ``unet_config``), the component
registry and its plugin hooks (``registry``, ``hookspecs``), the backend seam (``backend``,
``array_ops``, ``conditions``) and crash-safe, checksummed files (``io``, ``digests``,
``paths``). Imports no torch, jax or flax (tests/test_core_imports.py proves it in a subprocess).
"""
