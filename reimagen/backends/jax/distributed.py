"""Multi-process JAX (issue #9, "Scale-out"): join this process to a training job that spans
several processes or machines, before anything else touches JAX.

Every process of a job runs the same program with the same arguments; only its process id
differs. Process 0 also hosts the coordinator (a gRPC service on ``coordinator``'s port) that
the others connect to. After :func:`initialize`, ``jax.devices()`` lists every process's
devices, and ``Trainer(..., data_parallel=True)`` splits each batch over all of them
(:mod:`reimagen.backends.jax.sharding`): every process builds the global batch of a step and
uploads its own rows; process 0 alone writes checkpoints, so ``run_dir`` must be on a
filesystem that every process sees (resuming checks that they all found the same step).

On CPUs the cross-process collectives are Gloo over TCP (``jax_cpu_collectives_implementation``,
the default in jax 0.10; set here when unset). On GPUs they are NCCL, with nothing to set.

Arguments may come from the environment instead (a launcher sets them per process)::

    REIMAGEN_COORDINATOR=10.0.0.1:12355   # host:port of process 0, reachable by all
    REIMAGEN_NUM_PROCESSES=2
    REIMAGEN_PROCESS_ID=0                 # 0 .. N-1, different in every process

With none of the three given anywhere, JAX's own cluster detection (Slurm, Open MPI, TPU pods)
picks them. A coordinator on a loopback address (127.x, localhost, ::1) binds to that address
only; any other binds to every interface on its port (JAX's default).
"""

from __future__ import annotations

import ipaddress
import os
import socket

import attrs

ENV_COORDINATOR = "REIMAGEN_COORDINATOR"
ENV_NUM_PROCESSES = "REIMAGEN_NUM_PROCESSES"
ENV_PROCESS_ID = "REIMAGEN_PROCESS_ID"


@attrs.frozen
class ProcessInfo:
    """Where this process stands in the job once joined."""

    process_id: int  # jax.process_index()
    num_processes: int  # jax.process_count()
    local_devices: int  # jax.local_device_count()
    global_devices: int  # jax.device_count()


def process_env(coordinator: str, num_processes: int, process_id: int) -> dict[str, str]:
    """The environment variables that make :func:`initialize` (with no arguments) join process
    ``process_id`` of ``num_processes`` to ``coordinator`` (for a launcher script)."""
    return {
        ENV_COORDINATOR: coordinator,
        ENV_NUM_PROCESSES: str(num_processes),
        ENV_PROCESS_ID: str(process_id),
    }


def _from_env(value, name: str, cast):
    if value is not None:
        return value
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return cast(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer; got {raw!r}") from None


def resolve(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> tuple[str, int, int] | None:
    """(coordinator, num_processes, process_id) from the arguments, else the REIMAGEN_*
    variables; None when none of the three is given anywhere (JAX's cluster detection).
    One-line ValueErrors for a partial or invalid set."""
    values = (
        _from_env(coordinator, ENV_COORDINATOR, str),
        _from_env(num_processes, ENV_NUM_PROCESSES, int),
        _from_env(process_id, ENV_PROCESS_ID, int),
    )
    names = ("coordinator", "num_processes", "process_id")
    missing = [n for n, v in zip(names, values) if v is None]
    if len(missing) == 3:
        return None
    if missing:
        raise ValueError(
            f"{', '.join(missing)} missing: give coordinator, num_processes and process_id "
            f"(or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}) together"
        )
    address, count, index = values
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"coordinator must be 'host:port'; got {address!r}")
    if count < 1:
        raise ValueError(f"num_processes must be >= 1; got {count}")
    if not 0 <= index < count:
        raise ValueError(f"process_id must be in [0, {count - 1}]; got {index}")
    return address, count, index


def is_loopback(address: str) -> bool:
    """True when the host part of 'host:port' is a loopback address (127.0.0.0/8, ::1, or a
    name that resolves to one, e.g. localhost)."""
    host = address.rpartition(":")[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_s: int = 300,
) -> ProcessInfo:
    """Join this process to the job (``jax.distributed.initialize``): call it first, before
    any JAX computation. Arguments default to the REIMAGEN_* environment variables (module
    docstring). ``timeout_s``: how long to wait for every process to connect."""
    import jax

    resolved = resolve(coordinator, num_processes, process_id)
    # jax's Config stubs do not declare its flags as attributes
    if jax.config.jax_cpu_collectives_implementation is None:  # type: ignore[attr-defined]
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if resolved is None:
        jax.distributed.initialize(initialization_timeout=timeout_s)
    else:
        address, count, index = resolved
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=count,
            process_id=index,
            initialization_timeout=timeout_s,
            coordinator_bind_address=address if is_loopback(address) else None,
        )
    return ProcessInfo(
        jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count()
    )


def shutdown() -> None:
    """Leave the job (``jax.distributed.shutdown``); also done at interpreter exit."""
    import jax

    jax.distributed.shutdown()
