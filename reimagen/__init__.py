"""reimagen: Re-Imagen (retrieval-augmented cascaded text-to-image diffusion) as composable parts."""

from reimagen.core.hookspecs import hookimpl
from reimagen.core.registry import get, names

__all__ = ["hookimpl", "get", "names", "__version__"]
__version__ = "0.1.0"
