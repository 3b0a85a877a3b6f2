"""A complete third-party reimagen plugin in one file.

It adds a guidance strategy, ``text-only``: classifier-free guidance on the text alone,
ε̂ = w·ε(text) − (w−1)·ε(none), ignoring the neighbours (the "Imagen" row of the paper's tables
sampled from a Re-Imagen network). Installed with ``pip install -e examples/reimagen_example_plugin``
it is found through the ``reimagen`` entry-point group; ``reimagen components`` then lists it.
"""

from reimagen import hookimpl
from reimagen.core.interfaces import GuidanceStrategy


class TextOnlyGuidance(GuidanceStrategy):
    name = "text-only"

    def __init__(self, w: float = 3.0, **_ignored):
        if w < 1:
            raise ValueError(f"w must be >= 1, got {w}")
        self.w = float(w)

    def variants(self, draw):
        return ("text", "none")

    def combine(self, eps, draw):
        return self.w * eps["text"] - (self.w - 1.0) * eps["none"]


@hookimpl
def reimagen_register_guidance(register):
    register("text-only", TextOnlyGuidance)
