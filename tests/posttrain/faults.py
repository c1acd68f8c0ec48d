"""Fault injection for the stage tests, as hooks (posttrain.hooks): nothing in the product reads the environment.

In-process: `warm.run(config, hooks=FailTask("member 1"))`. As a process (a real SIGKILL needs one):

    python tests/posttrain/faults.py [--kill-at N] [--fail TASK] STAGE [stage args ...]

runs `posttrain STAGE ...` exactly as the CLI does, with the hooks. Under torchrun every rank gets them. Run as a
script, this module is `__main__`, which cloudpickle ships to Ray workers by value; imported, it registers
itself to be shipped the same way, so Ray tasks of any test can run these hooks.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from posttrain.hooks import Hooks


class KillAtStep(Hooks):
    """SIGKILL this process at the end of step `step` (in a Ray task: the worker dies)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, step: int) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class FailTask(Hooks):
    """Raise in the Ray task named `name` (every attempt): 'iter-2/run-2', 'member 1'."""

    def __init__(self, name: str):
        self.name = name

    def on_task_start(self, name: str) -> None:
        if name == self.name:
            raise RuntimeError(f"injected failure in {name}")


class Both(Hooks):
    def __init__(self, *hooks: Hooks):
        self.hooks = hooks

    def on_step_end(self, step: int) -> None:
        for h in self.hooks:
            h.on_step_end(step)

    def on_task_start(self, name: str) -> None:
        for h in self.hooks:
            h.on_task_start(name)


def main(argv: list[str]) -> int:
    from posttrain import cli

    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-at", type=int)
    parser.add_argument("--fail")
    args, rest = parser.parse_known_args(argv)
    hooks = Both(
        *([KillAtStep(args.kill_at)] if args.kill_at else []), *([FailTask(args.fail)] if args.fail else [])
    )
    return cli.main(rest, hooks=hooks)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
else:
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
