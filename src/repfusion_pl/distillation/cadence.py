"""When the distillation step talks to the host: reading the non-finite record, and logging.

Each read of a tensor on an accelerator makes the host wait for it, so on a GPU the step reads
nothing: the non-finite record (`repfusion_pl.distillation.finite`) is read every
``log_every_n_steps`` and values are logged on the steps Lightning writes. On a CPU a read costs
nothing, and both happen every step.
"""

from __future__ import annotations

from lightning.pytorch import LightningModule


def log_interval(module: LightningModule) -> int:
    """The trainer's ``log_every_n_steps`` (set on the trainer at run time, hence ``getattr``); 50 alone."""
    trainer = module._trainer
    return 50 if trainer is None else max(1, int(getattr(trainer, "log_every_n_steps", 50) or 1))


def finite_check_interval(module: LightningModule, every: int | None) -> int:
    """Steps between reads of the non-finite record: ``every``, else 1 on a CPU and the log interval."""
    if every is not None:
        return every
    return 1 if module.device.type == "cpu" else log_interval(module)


def should_log_step(module: LightningModule, batch_idx: int) -> bool:
    """Log this step's values? Every step on a CPU; on an accelerator on logging steps and epoch ends.

    Every logged value is read back to the host by the progress bar and the logger, so an
    accelerator logs only the steps Lightning writes (and the last batch of each epoch).
    """
    if module._trainer is None:
        return False
    if module.device.type == "cpu":
        return True
    last = batch_idx + 1 == module.trainer.num_training_batches
    return (module.global_step + 1) % log_interval(module) == 0 or last
