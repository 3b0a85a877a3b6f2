"""A small torch training run for tests/test_torch_distributed.py, started by torchrun
(``distributed=True``) or as a plain process (one rank, no process group).

    python -m torch.distributed.run --nproc-per-node 2 ... tests/torch_ddp_driver.py OUT_DIR

Environment: RUN_DIR (the run folder, shared by the ranks); DIE_AT="<rank>@<step>" makes that
rank SIGKILL itself right after that step's update, in the first attempt only (torchrun's
TORCHELASTIC_RESTART_COUNT is 0), so a restarted job runs through.

Each rank writes ``OUT_DIR/rank<r>-attempt<a>.json`` after every step (atomically): the global
loss of each step it trained, its world size and the checkpoint it ended on.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_torch_trainer import TINY, SyntheticSource

from reimagen.core.io import atomic_write_text
from reimagen.training.contract import TrainConfig

STEPS = 20
GLOBAL_BATCH = 4


def train_config(steps: int = STEPS) -> TrainConfig:
    """Tiny preset, K=1, a clip low enough to bite (the global gradient norm matters)."""
    return TrainConfig(
        steps=steps,
        batch_size=GLOBAL_BATCH,
        neighbors=1,
        lr=2e-3,
        warmup_steps=2,
        grad_clip=0.5,
        checkpoint_every=5,
        log_every=1,
        ema_decay=0.9,
        seed=3,
    )


def source() -> SyntheticSource:
    """The global batch of every step (a pure function of the step)."""
    return SyntheticSource(batch_size=GLOBAL_BATCH, k=1)


def main(out_dir: str) -> None:
    from reimagen.backends.torch import distributed as dist
    from reimagen.backends.torch.trainer import Trainer

    torch.set_num_threads(1)
    distributed = dist.launched()
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    die_rank, _, die_step = os.environ.get("DIE_AT", "-1@-1").partition("@")
    losses: dict[int, float] = {}
    trainer = None

    def report(step: int, loss: float) -> None:
        losses[step] = loss
        rank = dist.rank()
        record = {
            "rank": rank,
            "world_size": dist.world_size(),
            "attempt": attempt,
            "losses": losses,
            "checkpoint": None if trainer is None else str(trainer.checkpoint),
        }
        atomic_write_text(Path(out_dir) / f"rank{rank}-attempt{attempt}.json", json.dumps(record))
        if attempt == 0 and (rank, step) == (int(die_rank), int(die_step)):
            os.kill(os.getpid(), signal.SIGKILL)

    trainer = Trainer(
        TINY,
        train_config(),
        source(),
        os.environ["RUN_DIR"],
        progress=False,
        callback=report,
        distributed=distributed,
    )
    result = trainer.run()
    report(result.step, result.loss)  # once more, now with the final checkpoint
    dist.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
