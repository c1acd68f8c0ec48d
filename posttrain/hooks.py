"""Hooks: what a caller passes to a stage to act at fixed points of its loops, as HF's `TrainerCallback` does.

A stage takes `hooks=` (default: none) and calls them; it reads nothing from the environment for them. Tests
inject faults this way (a hook that SIGKILLs the process after step N, or raises in one Ray task), and a user
can watch a run. A hook object travels into Ray tasks with the job, so it must pickle.
"""

from __future__ import annotations


class Hooks:
    """No-op hooks; subclass and override what you need."""

    def on_step_end(self, step: int) -> None:
        """At the end of optimizer step `step`: in rl after the step is logged and checkpointed; in the HF
        Trainer stages at the Trainer's own on_step_end (before that step's log and checkpoint)."""

    def on_task_start(self, name: str) -> None:
        """At the start of a stage's Ray task: a WARP run ('iter-2/run-1'), a WARM member ('member 1')."""


NO_HOOKS = Hooks()


def trainer_callback(hooks: Hooks):
    """`hooks` as an HF TrainerCallback, for the stages that train with the HF Trainer."""
    from transformers import TrainerCallback

    class _Hooks(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            hooks.on_step_end(state.global_step)

    return _Hooks()
