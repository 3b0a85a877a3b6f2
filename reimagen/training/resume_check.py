"""Whether a run may resume with the configs it is given (``reimagen train`` rerun, possibly
with --resume-from and a lower --lr: README "Reliability"): the checks
:meth:`reimagen.training.loop.TrainLoop.resume_latest` runs on the checkpoint it resumes from.
"""

from __future__ import annotations

import attrs

from reimagen.core.config import ConfigError
from reimagen.core.unet_config import UNetConfig
from reimagen.training import checkpoint as ckpt
from reimagen.training.contract import TrainConfig

# TrainConfig fields that may change between a run and its resumption: the run's length and
# cadence, and the optimizer's step size (lr, warmup_steps, grad_clip), the recovery for a run
# that diverged (rewind to an earlier step, resume with a lower lr: README "Reliability"). Each
# update still depends only on the state and the step, so a resumed run stays reproducible.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "log_every", "lr", "warmup_steps", "grad_clip")


def check_resumable(
    saved: ckpt.Checkpoint, model_config: UNetConfig, config: TrainConfig
) -> dict[str, list]:
    """A run may resume only with the same UNetConfig and TrainConfig (but the fields in
    ``RESUMABLE_CHANGES``); otherwise a one-line ConfigError naming what differs. Returns the
    resumable fields that did change, ``{name: [old, new]}`` (logged by the run)."""
    folder = saved.folder
    if saved.state["model_config"] != model_config.to_dict():
        raise ConfigError(f"{folder}: the run was trained with a different UNetConfig")
    old, new = saved.state["train_config"], config.to_dict()
    # a field the run predates had its default then (e.g. loss_weighting before it existed)
    default = {f.name: f.default for f in attrs.fields(TrainConfig)}
    changed = sorted(k for k in new if old.get(k, default[k]) != new[k])
    refused = [k for k in changed if k not in RESUMABLE_CHANGES]
    if refused:
        raise ConfigError(
            f"{folder}: TrainConfig differs from the run's in {', '.join(refused)}; only "
            f"{', '.join(RESUMABLE_CHANGES)} may change on resume"
        )
    return {k: [old.get(k, default[k]), new[k]] for k in changed}
