"""What every HF-Trainer-based stage shares: atomically published checkpoints, metrics callbacks, resume.

A `checkpoint-N` dir is saved into a staging dir beside it and renamed into place, so a crash mid-save
never leaves a dir that `--resume` would take for a checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from posttrain import artifacts


def atomic_checkpoints(trainer_cls):
    """A subclass of `trainer_cls` (Trainer, TRL's RewardTrainer, ...) whose checkpoints appear atomically.

    Multi-process launches: every rank writes its part (its rng state; its shards under DeepSpeed) into one
    staging dir per step, and the main rank publishes it after all have written."""
    from transformers.trainer_utils import rotate_checkpoints

    class AtomicCheckpoints(trainer_cls):
        def _get_output_dir(self, trial):
            return getattr(self, "_staging", None) or super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial):
            final_root = Path(self.args.output_dir)
            main = self.is_world_process_zero()
            with shared_staging(
                final_root / f".staging-{self.state.global_step}", main, self.accelerator.wait_for_everyone
            ) as staging:
                self._staging = str(staging)
                try:
                    super()._save_checkpoint(model, trial)
                finally:
                    self._staging = None
            if main:
                for ckpt in staging.glob("checkpoint-*"):
                    artifacts.publish_dir(ckpt, final_root / ckpt.name)
                shutil.rmtree(staging)
                if self.args.should_save:
                    rotate_checkpoints(
                        output_dir=str(final_root),
                        save_total_limit=self.args.save_total_limit,
                        best_model_checkpoint=None,
                        use_mtime=False,
                    )
            self.accelerator.wait_for_everyone()

    AtomicCheckpoints.__name__ = f"Atomic{trainer_cls.__name__}"
    return AtomicCheckpoints


@contextlib.contextmanager
def shared_staging(staging: Path, main: bool, wait):
    """One staging dir that every rank writes its part into: the main rank empties it first (a run killed
    mid-save leaves one), and all ranks wait before and after writing. The caller's main rank publishes it."""
    if main:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    wait()
    yield staging
    wait()


def ranks() -> tuple[bool, callable]:
    """(is this the main rank, a barrier) for a multi-process launch (torchrun, accelerate launch, deepspeed:
    WORLD_SIZE > 1); (True, no-op) for one process. Initialises the process group the Trainer then reuses."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True, lambda: None
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank() == 0, dist.barrier


def metrics_callbacks(out: Path, main: bool = True) -> list:
    """metrics.jsonl + TensorBoard (out/tensorboard), from the main rank."""
    from torch.utils.tensorboard import SummaryWriter
    from transformers import TrainerCallback
    from transformers.integrations import TensorBoardCallback

    class JsonlMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and logs:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    callbacks = []
    if main:
        tensorboard = TensorBoardCallback(tb_writer=SummaryWriter(str(out / "tensorboard")))
        tensorboard.logging_dir = str(out / "tensorboard")  # where it reopens after train end (final evaluate)
        callbacks = [JsonlMetrics(), tensorboard]
    return callbacks


def latest_checkpoint(out: Path) -> str | None:
    ckpts = sorted((Path(out) / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(ckpts[-1]) if ckpts else None


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the metrics logged up to `step` (a resumed run logs the later steps again)."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
        artifacts.atomic_write_text(path, "".join(line + "\n" for line in kept))
