"""`posttrain demo`: the embedded default pipeline on real Gemma 3 270M weights, one stage after another.

filter (raw demo data -> clean) -> sft (the student distilled from its teacher; the embedded default: Gemma 3
270M taught by itself with solved exemplars in the teacher's prompt only) -> rm (WARM: M reward models from the
sft student, weight-averaged) -> eval of the base and the SFT student -> rl (WARP around J-BOND from the
student, rewarded by math + code; configs/demo leaves the WARM model out) -> eval of the RL policy; then a
table base -> SFT -> RL, demo.json and demo.png beside the stage outputs (posttrain/demo_report.py). Each
stage reads its own config under configs/demo/ (eval.yaml for both evaluations; the RL config runs `posttrain
warp` when it has an `inner:` section, else `posttrain rl`); `--overwrite` reruns finished stages, otherwise a
finished stage output is reused when its config is unchanged and it finished after the outputs it reads.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from posttrain import artifacts, demo_report
from posttrain import config as cfg
from posttrain.config import doc
from posttrain.errors import UserError

QUICK_CONFIGS = "configs/demo-quick"


@dataclasses.dataclass
class Config:
    configs: str = doc("configs/demo", "dir holding filter.yaml, sft.yaml, rm.yaml, eval.yaml and the rl config")
    quick: bool = doc(
        False,
        "run configs/demo-quick instead: the same stages at toy size (~4 min on 2 cores) "
        "(shows every stage working; its numbers mean nothing)",
    )
    rl: str = doc(
        "recipe.yaml",
        "the RL stage's config file in `configs` (recipe.yaml: WARP around J-BOND, "
        "`posttrain warp`; rl.yaml: one J-BOND run, `posttrain rl`)",
    )
    output_root: str | None = doc(None, "put every stage's output under this dir (default: as each config says)")
    overwrite: bool = doc(False, "rerun stages whose output is already finished")
    seed: int | None = doc(None, "set every stage's seed (sampling, data order, init); None = as each config says")
    ray_address: str | None = doc(None, "Ray cluster address (default: RAY_ADDRESS, else embedded local Ray)")


def _stage(
    module,
    path: Path,
    overrides: list[str],
    output_key: str,
    config: Config,
    name: str | None = None,
    inputs: tuple[Path, ...] = (),
):
    """Run one stage, or reuse its finished output: made with this config, and after every stage output it reads
    (`inputs`), so a rerun upstream stage (a new RL policy in the same dir) reruns what depends on it."""
    if config.output_root:
        overrides = overrides + [f"{output_key}={Path(config.output_root) / (name or path.stem)}"]
    if config.seed is not None and "seed" in cfg.field_paths(module.Config):
        overrides = overrides + [f"seed={config.seed}"]
    stage_config = cfg.load(module.Config, path, overrides)
    out = Path(getattr(stage_config, output_key))
    if artifacts.is_done(out) and not config.overwrite and _same_config(out, stage_config) and _newer(out, inputs):
        print(f"[posttrain demo] {path.name}: reusing finished {out}")
        return out
    stage_config = dataclasses.replace(stage_config, overwrite=True)
    return Path(module.run(stage_config))


def _newer(out: Path, inputs: tuple[Path, ...]) -> bool:
    """Whether `out` was finished after every one of `inputs` (make's rule, on the DONE files)."""
    done = (out / artifacts.DONE).stat().st_mtime_ns
    return all(done >= (Path(i) / artifacts.DONE).stat().st_mtime_ns for i in inputs)


def _same_config(out: Path, stage_config) -> bool:
    """A finished output is reused only if it was made with this config (e.g. eval-rl of another model is not)."""
    try:
        done = json.loads((out / artifacts.MANIFEST).read_text())["config"]
    except (OSError, ValueError, KeyError):
        return False
    now = cfg.to_dict(stage_config)
    ignore = {"overwrite", "resume"}
    return {k: v for k, v in done.items() if k not in ignore} == {k: v for k, v in now.items() if k not in ignore}


def run(config: Config) -> Path:
    from posttrain import distill, evaluate, warm
    from posttrain import filter as filter_stage

    root = Path(config.configs)
    if config.quick:
        if config.configs != Config.configs:
            raise UserError(f"demo: quick=true uses {QUICK_CONFIGS}; drop configs={config.configs} or quick")
        root = Path(QUICK_CONFIGS)
    ray = [f"ray_address={config.ray_address}"] if config.ray_address else []
    clean_dir = _stage(filter_stage, root / "filter.yaml", ray, "output", config)
    sft_dir = _stage(
        distill,
        root / "sft.yaml",
        ray + [f"data={clean_dir / 'clean.jsonl'}"],
        "output_dir",
        config,
        inputs=(clean_dir,),
    )
    summary = json.loads((sft_dir / artifacts.MANIFEST).read_text())["summary"]
    print(
        f"[posttrain demo] student KD loss on held-out rows: before {summary['eval_kd_loss_before']:.4f}"
        f" -> after {summary['eval_kd_loss_after']:.4f} nats/token ({summary['steps']} steps)"
    )
    rm_dir = _stage(warm, root / "rm.yaml", ray + [f"init={sft_dir}"], "output_dir", config, inputs=(sft_dir,))
    for v in json.loads((rm_dir / "report.json").read_text())["variants"]:
        print(
            f"[posttrain demo] reward models, label noise {v['label_noise']:g}: held-out pairwise accuracy "
            f"members {v['members_mean_accuracy']:.3f} (mean), WARM average {v['average_accuracy']:.3f}, "
            f"ensemble {v['ensemble_accuracy']:.3f}"
        )
    eval_yaml = root / "eval.yaml"
    base = base_model(root / "sft.yaml")

    def evaluate_model(model: str, name: str, made_by: tuple[Path, ...] = ()) -> dict:
        out = _stage(
            evaluate,
            eval_yaml,
            [f"model={model}", f"output_dir={sft_dir.parent / name}"],
            "output_dir",
            config,
            name,
            inputs=made_by,
        )
        return json.loads((out / "report.json").read_text())

    reports = {
        "base": evaluate_model(base, "eval-base"),
        "sft": evaluate_model(str(sft_dir), "eval-sft", (sft_dir,)),
    }
    rl_module, rewards_key = rl_stage(root / config.rl)
    rl_dir = _stage(
        rl_module,
        root / config.rl,
        ray + [f"policy={sft_dir}", f"{rewards_key}.reward_model={rm_dir}"],
        "output_dir",
        config,
        "rl",
        inputs=(sft_dir, rm_dir),
    )
    reports["rl"] = evaluate_model(str(rl_dir), "eval-rl", (rl_dir,))
    models = {"base": base, "sft": str(sft_dir), "rl": str(rl_dir)}
    shown = demo_report.write(sft_dir.parent, models, reports, rl_dir)
    demo_report.print_table(shown)
    _print_rl_summary(rl_dir)
    print(f"[posttrain demo] {sft_dir.parent / 'demo.json'}, {sft_dir.parent / 'demo.png'}")
    return rl_dir


def base_model(sft_yaml: Path) -> str:
    """The SFT student's starting point as a model spec `posttrain eval --model` takes: the student spec, or
    the cached layer cut of it."""
    from posttrain import distill, models

    sft = cfg.load(distill.Config, sft_yaml, [])
    if not sft.student_layers:
        return sft.student
    return str(models.derive_student(models.resolve(sft.student), sft.student_layers))


def rl_stage(path: Path):
    """(the stage module, the key of its rewards section) for an RL config: WARP's has an `inner:` section."""
    from posttrain import rl, warp

    return (warp, "inner.rewards") if "inner" in cfg.read_yaml(path) else (rl, "rewards")


def _print_rl_summary(rl_dir: Path) -> None:
    summary = json.loads((rl_dir / artifacts.MANIFEST).read_text())["summary"]
    for i, it in enumerate(summary.get("iterations", [summary]), 1):  # WARP: one summary per iteration
        what = f"WARP iteration {i}, mean of its runs" if "iterations" in summary else "J-BOND"
        f = [
            ("-" if it.get(k) is None else f"{it[k]:.3f}") for k in ("reward_first", "reward_last", "kl_init_last")
        ]
        print(
            f"[posttrain demo] rl ({what}): training reward {f[0]} (first steps) -> {f[1]} (last steps); "
            f"KL to the init {f[2]} nats"
        )
