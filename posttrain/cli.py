"""`posttrain STAGE [--config FILE] [--FIELD VALUE ...] [KEY=VALUE ...]`: parse, load config, run the stage.

Every stage is `module.run(config) -> output dir`, with `module.Config` its dataclass. Each config field is
also a flag (`--output_dir x` == `output_dir=x`, `--inner.steps 8` == `inner.steps=8`), so
`posttrain STAGE --help` documents every field.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import sys

# stage name -> (module, one-line description); modules are imported only when their stage runs.
STAGES = {
    "filter": ("posttrain.filter", "clean a chat dataset: PII, safety, identity, dedup, decontamination"),
    "sft": ("posttrain.distill", "distil a teacher into a student with Gemma 3 sampled-logit KD"),
    "rm": ("posttrain.warm", "train M reward models in parallel and weight-average them (WARM)"),
    "rl": ("posttrain.rl", "RL: J-BOND (or REINFORCE) with an EMA anchor"),
    "warp": ("posttrain.warp", "WARP: M parallel RL runs per iteration, SLERP, LITI, a Pareto front"),
    "eval": ("posttrain.evaluate", "evaluate a checkpoint with the rewards (accuracy, pass@k)"),
    "demo": ("posttrain.demo", "run the embedded default pipeline on real Gemma 3 270M weights"),
}
# bool fields that are also bare flags: `--resume` == `resume=true`.
FLAGS = ("resume", "overwrite", "quick")


def _available_stages() -> dict[str, str]:
    out = {}
    for name, (module, desc) in STAGES.items():
        if importlib.util.find_spec(module) is not None:
            out[name] = desc
    return out


def _stage_parser(name: str, cls) -> argparse.ArgumentParser:
    from posttrain import config as cfg

    parser = argparse.ArgumentParser(
        prog=f"posttrain {name}",
        description=STAGES[name][1] + ".\n\nConfig fields (set in the YAML, as KEY=VALUE with dotted keys for "
        "sections, or as --KEY VALUE):\n" + cfg.help_text(cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # `--rewards` must not silently mean `--rewards.names`
    )
    parser.add_argument("--config", help="YAML config file")
    field_names = {f.name for f in dataclasses.fields(cls)}
    if "ray_address" in field_names:
        parser.add_argument(
            "--ray-address",
            dest="ray_address_flag",
            help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)",
        )
    for flag in FLAGS:
        if flag in field_names:
            parser.add_argument(f"--{flag}", action="store_true", dest=f"{flag}_flag", help=f"same as {flag}=true")
    for key in cfg.field_paths(cls, shorthands=True):
        if key not in FLAGS:
            parser.add_argument(f"--{key}", dest=f"field_{key}", metavar="VALUE", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    return parser


def load_stage_config(name: str, argv: list[str]):
    """(stage module, its config) from the command line: YAML, then `--FIELD VALUE` flags, then KEY=VALUE."""
    from posttrain import config as cfg

    module = importlib.import_module(STAGES[name][0])
    cls = module.Config
    args, unknown = _stage_parser(name, cls).parse_known_intermixed_args(argv)
    if unknown:
        from posttrain.errors import UserError

        key = unknown[0].lstrip("-").split("=", 1)[0]
        raise UserError(
            f"command line {unknown[0]}: unknown config key '{key}'"
            f"{cfg.closest(key, cfg.field_paths(cls, shorthands=True))}"
        )
    overrides = []
    for key in cfg.field_paths(cls, shorthands=True):
        value = getattr(args, f"field_{key}", None)
        if value is not None:
            overrides.append((f"{key}={value}", f"command line --{key} {value}"))
    if getattr(args, "ray_address_flag", None):
        overrides.append((f"ray_address={args.ray_address_flag}", "command line --ray-address"))
    for flag in FLAGS:
        if getattr(args, f"{flag}_flag", False):
            overrides.append((f"{flag}=true", f"command line --{flag}"))
    return module, cfg.load(cls, args.config, overrides + list(args.overrides))


def run_stage(name: str, argv: list[str], hooks=None) -> int:
    """Run a stage from its command line; `hooks` (posttrain.hooks) go to stages that take them."""
    module, config = load_stage_config(name, argv)
    out = module.run(config) if hooks is None else module.run(config, hooks=hooks)
    if out is not None:
        print(f"[posttrain {name}] done: {out}")
    return 0


def main(argv: list[str] | None = None, hooks=None) -> int:
    from posttrain.errors import UserError

    argv = list(sys.argv[1:] if argv is None else argv)
    stages = _available_stages()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in stages:
        lines = [f"  {n:8s} {d}" for n, d in stages.items()]
        print(
            "usage: posttrain STAGE [--config FILE] [KEY=VALUE ...]\n\nstages:\n"
            + "\n".join(lines)
            + "\n\n`posttrain STAGE --help` lists every config field."
        )
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown stage '{argv[0]}'", file=sys.stderr)
            return 2
        return 0
    try:
        return run_stage(argv[0], argv[1:], hooks)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        # Ray's atexit handlers can hang a CLI on a cluster connection; shut down what cluster.py started.
        if "posttrain.cluster" in sys.modules:
            sys.modules["posttrain.cluster"].shutdown()


if __name__ == "__main__":
    sys.exit(main())
