"""The PyTorch denoiser: the U-Net bound to one batch's prompts and cached neighbours.

A sampler asks for ε under several condition variants per step (docs/design.md §5: e.g. interleaved
guidance needs ``full`` and ``text`` or ``neighbors``). :class:`TorchDenoiser` tiles the B
samples to V·B rows with per-row ``use_text`` / ``use_neighbors`` masks
(:func:`reimagen.core.interfaces.variant_masks`) and runs ONE network call. The K neighbours
went through the DStack once, at construction (t=0, paper §3.2): every step and every variant
reuses their keys/values.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import numpy as np
import torch

from reimagen.backends.torch.unet import NeighborCache, ReImagenUNet, TextInputs
from reimagen.core.conditions import check_conditions
from reimagen.core.interfaces import Denoiser, TextEncoding, variant_masks

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype) -> torch.dtype:
    """'float32' | 'bfloat16' (or the torch dtypes) -> torch dtype; anything else is an error."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")


def autocast(dtype: torch.dtype, device: str = "cpu"):
    """bf16 autocast for matmuls/convs on ``device`` ("cpu" or "cuda[:N]"), or nothing for
    float32."""
    if dtype == torch.bfloat16:
        return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
    return nullcontext()


def text_inputs(text: TextEncoding) -> TextInputs:
    """Host TextEncoding (numpy) -> tensors (zero-copy where the arrays allow it)."""
    return TextInputs(
        torch.as_tensor(np.asarray(text.tokens, dtype=np.float32)),
        torch.as_tensor(np.asarray(text.mask, dtype=bool)),
        torch.as_tensor(np.asarray(text.pooled, dtype=np.float32)),
    )


class TorchDenoiser(Denoiser):
    """ε(x_t, t | variant) for B fixed samples; one batched call of V·B rows per step."""

    def __init__(
        self,
        model: ReImagenUNet,
        text: TextEncoding,
        neighbor_images: np.ndarray,
        neighbor_text: TextEncoding,
        *,
        dtype="float32",
        lowres: np.ndarray | None = None,
        aug_level: float = 0.0,
    ):
        check_conditions(model.config, text, neighbor_images, neighbor_text, lowres)
        self.dtype = resolve_dtype(dtype)
        self.model = model.eval()
        self.batch_size = len(text)
        self.calls = 0
        self.rows = 0
        self._text = text_inputs(text)
        self._lowres = None if lowres is None else self.asarray(np.asarray(lowres, np.float32))
        self._aug_level = float(aug_level)
        images = torch.as_tensor(np.asarray(neighbor_images, dtype=np.float32))
        with torch.inference_mode(), autocast(self.dtype):
            self.cache: NeighborCache = model.encode_neighbors(images, *text_inputs(neighbor_text))
        self._tiled: dict[int, tuple[TextInputs, NeighborCache, torch.Tensor | None]] = {}

    def _rows_for(self, v: int) -> tuple[TextInputs, NeighborCache, torch.Tensor | None]:
        """The bound conditions repeated for V variants (row v·B + b = sample b), memoised."""
        if v not in self._tiled:
            text = TextInputs(*(a.repeat(v, *([1] * (a.dim() - 1))) for a in self._text))
            lowres = None if self._lowres is None else self._lowres.repeat(v, 1, 1, 1)
            self._tiled[v] = (text, self.cache.tile(v), lowres)
        return self._tiled[v]

    def __call__(self, x: torch.Tensor, t: float, variants: Sequence[str]) -> torch.Tensor:
        """x [B, H, W, C], t scalar -> ε [V, B, H, W, C] float32, in ``variants`` order."""
        use_text, use_neighbors = variant_masks(variants)  # [V] each; unknown names raise
        v, b = len(variants), self.batch_size
        if x.shape[0] != b:
            raise ValueError(f"x has batch {x.shape[0]}, the denoiser was built for B={b}")
        text, cache, lowres = self._rows_for(v)
        rows = v * b
        with torch.inference_mode(), autocast(self.dtype):
            eps = self.model(
                x.float().repeat(v, 1, 1, 1),  # [V·B, H, W, C]
                torch.full((rows,), float(t)),
                text,
                use_text=torch.as_tensor(np.repeat(use_text, b)),  # [V·B]
                use_neighbors=torch.as_tensor(np.repeat(use_neighbors, b)),
                cache=cache,
                lowres=lowres,
                aug_level=None if lowres is None else torch.full((rows,), self._aug_level),
            )
        self.calls += 1
        self.rows += rows
        # A copy made outside inference mode: samplers may update it in place.
        return eps.to(torch.float32, copy=True).reshape(v, b, *eps.shape[1:])

    def asarray(self, array: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array))

    def to_numpy(self, array: torch.Tensor) -> np.ndarray:
        array = array.detach().cpu()
        return (array.float() if array.dtype == torch.bfloat16 else array).numpy()
