"""The emoji scene composer on a torch device (issue #16 item 3: GPU training not host-bound).

:class:`DeviceBatchSource` is a BatchSource whose batches are composed where the network runs:
the sprite frames, augmentable drawings, plain neighbour renditions, background colours and
text encodings live on the device as tensors (:class:`~reimagen.training.scene_atlas.SceneAtlas`,
moved once); a step's host work is only the random draws of ``EmojiBatchSource.plan`` and the
small index arrays derived from them (:class:`~reimagen.training.scene_atlas.ScenePlanner`), made
ahead of the step by a thread, or by worker processes (reimagen.training.step_workers). Targets are
pasted by integer offsets (a gather from each example's sprite frame), neighbours gathered by
index, augmented same-style neighbours warped with the host's two 2-tap gathers, encodings
gathered by row.

The batch equals the host composer's bit for bit (tests/test_device_composer.py, on CPU
tensors): every float operation is the host's, one IEEE float32 op at a time (no fused kernels,
no torch.compile), and the divisions by 127.5 divide by a tensor on the device (CUDA would
multiply by the reciprocal of a CPU scalar). Images, neighbour images, noise and encodings are
tensors on the device; t and the two drop masks stay numpy on the host (the trainer's noise
levels and loss weights are computed there), as in a host batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Generator

import numpy as np
import torch

from reimagen.backends.torch.unet import NeighborInputs, TextInputs
from reimagen.core.interfaces import TextEncoding
from reimagen.diffusion.schedule import CosineSchedule
from reimagen.training import step_workers
from reimagen.training.contract import Batch
from reimagen.training.scene_atlas import (
    SceneAtlas,
    ScenePlanner,
    StepArrays,
    TextTable,
    build_atlas,
)


def _tensor(array: np.ndarray, device) -> torch.Tensor:
    """numpy (also a read-only memory map: the pool's EncodingTable) -> a tensor on ``device``
    (zero-copy on the CPU; nothing ever writes to these tables)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(array)).to(device, non_blocking=True)


class _Table:
    """A TextTable on the device."""

    def __init__(self, table: TextTable, device):
        self.tokens, self.mask, self.pooled = (
            _tensor(a, device) for a in (table.tokens, table.mask, table.pooled)
        )

    def gather(self, rows: torch.Tensor, length: int, compact: bool) -> TextEncoding:
        """Rows [M] -> tokens [M, length, D] (float16 when compact, as prefetch.compact_batch
        stores them; else float32), mask [M, length], pooled [M, D]."""
        tokens = self.tokens.index_select(0, rows)[:, :length]
        tokens = tokens.half() if compact else tokens.float()
        mask = self.mask.index_select(0, rows)[:, :length]
        return TextEncoding(tokens, mask, self.pooled.index_select(0, rows))


class DeviceSceneComposer:
    """A SceneAtlas resident on ``device``; :meth:`compose` makes a step's Batch there."""

    def __init__(self, atlas: SceneAtlas, device="cpu"):
        self.device = torch.device(device)
        self.canvas, self.frame = atlas.canvas, atlas.frame
        put = self._put
        self.keep, self.ink = put(atlas.keep), put(atlas.ink)  # sprite frames
        self.colours, self.neutral = put(atlas.colours), put(atlas.neutral)  # [C, 3], [3]
        self.plain, self.drawings = put(atlas.plain), put(atlas.drawings)
        self.text = _Table(atlas.text, self.device)
        self.captions = _Table(atlas.captions, self.device)
        self.half_range = torch.tensor(127.5, dtype=torch.float32, device=self.device)
        self.positions = torch.arange(atlas.canvas, device=self.device)  # [S]

    def _put(self, array: np.ndarray) -> torch.Tensor:
        return _tensor(array, self.device)

    def compose(self, step: StepArrays) -> Batch:
        b, k = step.view_row.shape
        view_row = self._put(step.view_row.reshape(-1))  # [B·K]
        nb_text = self._captions(view_row, step, b, k)
        return Batch(
            images=self._targets(step),
            text=self.text.gather(self._put(step.text_row), step.length, step.compact),
            neighbor_images=self._neighbors(view_row, step).view(b, k, *self._pixel_shape),
            neighbor_text=nb_text,
            t=step.t,
            noise=self._put(step.noise),
            use_text=step.use_text,
            use_neighbors=step.use_neighbors,
        )

    @property
    def _pixel_shape(self) -> tuple[int, int, int]:
        return self.canvas, self.canvas, 3

    def _captions(self, view_row, step: StepArrays, b: int, k: int) -> TextEncoding:
        """[B, K, ...] caption encodings; K = 0 keeps them as the host does (never compacted)."""
        compact = step.compact and k > 0
        length = step.length if compact else self.captions.mask.shape[1]
        flat = self.captions.gather(view_row, length, compact)
        return TextEncoding(
            flat.tokens.view(b, k, *flat.tokens.shape[1:]),
            flat.mask.view(b, k, *flat.mask.shape[1:]),
            flat.pooled.view(b, k, *flat.pooled.shape[1:]),
        )

    def _targets(self, step: StepArrays) -> torch.Tensor:
        """[B, S, S, 3] in [-1, 1]: each example's sprite frame pasted at its corner on its
        background: canvas · (1 − α) + rgb · α, rounded half-to-even (scenes.compose_fitted)."""
        sprite = self._put(step.sprite)[:, None, None]  # [B, 1, 1]
        corner = self._put(step.corner)  # [B, 2]
        y = self._frame_index(corner[:, 0])[:, :, None]  # [B, S, 1]
        x = self._frame_index(corner[:, 1])[:, None, :]  # [B, 1, S]
        keep = self.keep[sprite, y, x][..., None]  # [B, S, S, 1]
        ink = self.ink[sprite, y, x]  # [B, S, S, 3]
        background = self.colours[self._put(step.colour)][:, None, None, :]
        canvas = background * keep + ink  # [B, S, S, 3], whole numbers where keep = 1
        return torch.round(canvas).clamp(0, 255) / self.half_range - 1.0  # as uint8 -> [-1, 1]

    def _frame_index(self, start: torch.Tensor) -> torch.Tensor:
        """[B] frame corner -> [B, S] frame row/column of each canvas row/column (F, the
        neutral border, outside the frame)."""
        index = self.positions[None, :] - start[:, None]  # [B, S]
        inside = (index >= 0) & (index < self.frame)
        return torch.where(inside, index, self.frame)

    def _neighbors(self, view_row: torch.Tensor, step: StepArrays) -> torch.Tensor:
        """[B·K, S, S, 3] in [-1, 1]: plain renditions, augmented slots redrawn."""
        out = self.plain.index_select(0, view_row)  # [B·K, S, S, 3]
        if step.aug_slot.size:
            out.index_copy_(0, self._put(step.aug_slot), self._augmented(step))
        return out

    def _augmented(self, step: StepArrays) -> torch.Tensor:
        """training_data.augment_drawings on the resident drawings, op for op -> [n, S, S, 3]
        in [-1, 1] (the host's × 255, / 127.5, − 1)."""
        lo_y, frac_y, lo_x, frac_x = (self._put(a) for a in step.taps)  # [n, S] each
        colour = self.drawings[self._put(step.aug_drawing)]  # [n, P, P, 4]
        batch = torch.arange(colour.shape[0], device=self.device)[:, None]  # [n, 1]
        rows = (
            colour[batch, lo_y] * (1 - frac_y)[..., None, None]
            + colour[batch, lo_y + 1] * frac_y[..., None, None]
        )  # [n, S(y), P(x), 4]
        sampled = (
            rows[batch, :, lo_x] * (1 - frac_x)[..., None, None]
            + rows[batch, :, lo_x + 1] * frac_x[..., None, None]
        )  # [n, S(x), S(y), 4]
        sampled = sampled.permute(0, 2, 1, 3)  # [n, S(y), S(x), 4]
        alpha = sampled[..., 3:]
        ink = sampled[..., :3] * self._put(step.gain)[:, None, None, :]
        ink = ink + self._put(step.brightness)[:, None, None, None] * alpha
        ink = torch.minimum(ink.clamp_min(0.0), alpha)  # np.clip(ink, 0, alpha)
        over = ink + self.neutral * (1.0 - alpha)  # [n, S, S, 3] in [0, 1]
        return (over * 255.0) / self.half_range - 1.0


class DeviceBatchSource:
    """A BatchSource over an EmojiBatchSource whose batches are composed on ``device``.

    ``workers``: processes drawing the steps' random choices ahead (reimagen.training.step_workers;
    0: a thread of this process draws them, ahead of the step). ``compact`` (default: workers
    > 0): text cut and rounded as the host path's prefetch does, so a run gives the network the
    same inputs as ``--composer host`` with the same ``--workers``. ``composer`` names the path
    in the trainer's checkpoints."""

    composer = "device"

    def __init__(self, source, device="cpu", *, workers: int = 0, compact: bool | None = None):
        if isinstance(workers, bool) or not isinstance(workers, int) or not 0 <= workers <= 256:
            raise ValueError(f"workers must be an int in [0, 256], got {workers!r}")
        self.source, self.config = source, source.config
        self.workers = workers
        atlas = build_atlas(source)
        self.planner = ScenePlanner(
            source, atlas, compact=workers > 0 if compact is None else compact
        )
        self.scenes = DeviceSceneComposer(atlas, device)
        self._stream: Generator[StepArrays, None, None] | None = None
        self._next: int | None = None

    def batch(self, step: int) -> Batch:
        return self.scenes.compose(self.step_arrays(step))

    def step_arrays(self, step: int) -> StepArrays:
        """The next of a stream read ahead by a thread (restarted when steps come out of
        order): made in that thread (workers = 0; numpy's noise fill releases the GIL) or
        received there from the worker processes, while the trainer runs its step."""
        if self._stream is None or step != self._next:
            self.close()
            stop = max(self.config.steps, step + 1)
            if self.workers:
                plans = step_workers.ordered(self.planner, step, stop, self.workers)
            else:
                plans = (self.planner.batch(s) for s in range(step, stop))
            self._stream = step_workers.threaded(plans)
        self._next = step + 1
        return next(self._stream)

    def close(self) -> None:
        """Stop the reader thread and the worker processes (also done when the stream is
        collected)."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def device_model_kwargs(batch: Batch, schedule: CosineSchedule) -> dict:
    """trainer.model_kwargs for a batch composed on the device: x_t from the host's float64
    √ᾱ, σ (train_loop.noisy_inputs, op for op), the rest moved or converted in place."""
    device = batch.images.device
    alpha, sigma = (
        torch.from_numpy(np.asarray(v, np.float64)).to(device).view(-1, 1, 1, 1)
        for v in schedule.alpha_sigma(batch.t)
    )  # [B, 1, 1, 1] float64
    x = (alpha * batch.images.double() + sigma * batch.noise.double()).float()  # [B, S, S, 3]
    neighbors = None
    if batch.neighbor_images.shape[1]:
        neighbors = NeighborInputs(batch.neighbor_images, _text_inputs(batch.neighbor_text))
    return {
        "x": x,
        "t": _tensor(np.asarray(batch.t, np.float32), device),
        "text": _text_inputs(batch.text),
        "use_text": _tensor(np.asarray(batch.use_text, bool), device),
        "use_neighbors": _tensor(np.asarray(batch.use_neighbors, bool), device),
        "neighbors": neighbors,
        "lowres": None,
        "aug_level": None,
    }


def _text_inputs(text: TextEncoding) -> TextInputs:
    return TextInputs(text.tokens.float(), text.mask, text.pooled.float())


def is_device_batch(batch: Batch) -> bool:
    return isinstance(batch.images, torch.Tensor)


__all__ = [
    "DeviceBatchSource",
    "DeviceSceneComposer",
    "device_model_kwargs",
    "is_device_batch",
]
