"""Data-parallel placement for the JAX trainer (issue #9, "Scale-out"): a 1-D device mesh
with the axis ``"batch"``, the training batch split along it and the weights and optimizer
state replicated on every device.

jit then partitions the one training step itself (GSPMD/Shardy): each device runs the U-Net
on its rows of the batch, the loss is still the mean over the *global* batch, so the gradient
is all-reduced across devices and every replica applies the same AdamW update. The result is
the single-device step up to the order of the float reductions (tests/test_jax_distributed.py
measures it against a one-device run: ≤1e-5).

The same code runs on several local devices (``--xla_force_host_platform_device_count=N`` on
a CPU, or N GPUs) and across processes started with
:func:`reimagen.backends.jax.distributed.initialize`: the mesh spans ``jax.devices()`` (every
process's devices, ordered by process), and each process feeds only the rows that its own
devices hold — with one device per process, rows ``[p·b, (p+1)·b)`` of the global batch for
process ``p`` and ``b = batch_size / process_count``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXIS = "batch"


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``"batch"`` over ``devices`` (default: ``jax.devices()``, every
    process's), ordered by (process, device id) so each process holds a contiguous block of
    rows."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must name at least one device; got none")
    devices.sort(key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), (BATCH_AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh) -> None:
    """The global batch splits evenly over the mesh's ``"batch"`` axis (one-line ValueError)."""
    if BATCH_AXIS not in mesh.axis_names:
        raise ValueError(f"mesh must have a {BATCH_AXIS!r} axis; got axes {mesh.axis_names}")
    count = mesh.shape[BATCH_AXIS]
    if batch_size % count:
        raise ValueError(
            f"TrainConfig.batch_size={batch_size} must be divisible by the device count "
            f"{count} of the data-parallel mesh"
        )


def row_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``"batch"``; every other axis whole."""
    return NamedSharding(mesh, P(BATCH_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def process_rows(mesh: Mesh, batch_size: int) -> slice:
    """The rows of a [batch_size, ...] global batch that this process's devices hold: one
    contiguous slice (``[p·b, (p+1)·b)`` for process p of a :func:`batch_mesh`)."""
    index_map = row_sharding(mesh).addressable_devices_indices_map((batch_size,))
    rows = [idx[0] for idx in index_map.values() if idx is not None]  # None: holds no rows
    starts = sorted({(row.start or 0, row.stop or batch_size) for row in rows})
    for (_, stop), (start, _) in itertools.pairwise(starts):
        if stop != start:
            raise ValueError(
                f"mesh gives process {jax.process_index()} non-contiguous batch rows {starts}; "
                "order the mesh's devices by process (batch_mesh does)"
            )
    return slice(starts[0][0], starts[-1][1])


def shard_rows(tree, mesh: Mesh, batch_size: int):
    """Host arrays [batch_size, ...] of the *global* batch (numpy; ``None`` leaves stay None)
    -> global jax Arrays split along the batch axis. This process uploads only its own rows
    (:func:`process_rows`), through ``jax.make_array_from_process_local_data``."""
    rows, sharding = process_rows(mesh, batch_size), row_sharding(mesh)

    def put(host):
        host = np.asarray(host)
        if host.shape[:1] != (batch_size,):
            raise ValueError(
                f"batch arrays must lead with batch_size={batch_size}; got {host.shape}"
            )
        return jax.make_array_from_process_local_data(sharding, host[rows], host.shape)

    return jax.tree_util.tree_map(put, tree)


def replicate(tree, mesh: Mesh):
    """Every array leaf of ``tree`` (a module, optimizer state, scalar...) -> a global Array
    replicated on the mesh; non-array leaves are kept. Every process must pass equal values."""
    sharding = replicated(mesh)

    def put(leaf):
        if not eqx.is_array(leaf):
            return leaf
        host = np.asarray(leaf)
        return jax.make_array_from_process_local_data(sharding, host, host.shape)

    return jax.tree_util.tree_map(put, tree)


def constrain(tree, sharding: NamedSharding):
    """Inside jit: pin every array leaf of ``tree`` to ``sharding`` (the step's outputs stay
    replicated rather than whatever the partitioner would pick)."""
    pin = lambda a: jax.lax.with_sharding_constraint(a, sharding) if eqx.is_array(a) else a
    return jax.tree_util.tree_map(pin, tree)
