"""reimagen: Re-Imagen (retrieval-augmented cascaded text-to-image diffusion) as composable parts."""

from reimagen.core.hookspecs import hookimpl
from reimagen.core.registry import get, names

__all__ = ["__version__", "get", "hookimpl", "names"]
__version__ = "0.1.0"
