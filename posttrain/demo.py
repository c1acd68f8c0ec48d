"""`posttrain demo`: the embedded default pipeline on real Gemma 3 270M weights, one stage after another.

filter (raw demo data -> clean) -> sft (Gemma 3 270M teacher -> 6-layer student) -> rm (WARM: M reward
models from the sft student, weight-averaged). Later stages (rl, eval) join here as they land. Each stage
reads its own config under configs/demo/; `--overwrite` reruns finished stages, otherwise a finished stage
output is reused.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from posttrain import artifacts, config as cfg
from posttrain.config import doc


@dataclasses.dataclass
class Config:
    configs: str = doc("configs/demo", "dir holding filter.yaml, sft.yaml and rm.yaml")
    output_root: str | None = doc(None, "put every stage's output under this dir (default: as each config says)")
    overwrite: bool = doc(False, "rerun stages whose output is already finished")
    ray_address: str | None = doc(None, "Ray cluster address (default: RAY_ADDRESS, else embedded local Ray)")


def _stage(module, path: Path, overrides: list[str], output_key: str, config: Config):
    if config.output_root:
        overrides = overrides + [f"{output_key}={Path(config.output_root) / path.stem}"]
    stage_config = cfg.load(module.Config, path, overrides)
    out = Path(getattr(stage_config, output_key))
    if artifacts.is_done(out) and not config.overwrite:
        print(f"[posttrain demo] {path.name}: reusing finished {out}")
        return out
    stage_config = dataclasses.replace(stage_config, overwrite=True)
    return Path(module.run(stage_config))


def run(config: Config) -> Path:
    from posttrain import distill, filter as filter_stage, warm

    root = Path(config.configs)
    ray = [f"ray_address={config.ray_address}"] if config.ray_address else []
    clean_dir = _stage(filter_stage, root / "filter.yaml", ray, "output", config)
    sft_dir = _stage(distill, root / "sft.yaml", ray + [f"data={clean_dir / 'clean.jsonl'}"], "output_dir", config)
    summary = json.loads((sft_dir / artifacts.MANIFEST).read_text())["summary"]
    print(f"[posttrain demo] student KD loss on held-out rows: before {summary['eval_kd_loss_before']:.4f}"
          f" -> after {summary['eval_kd_loss_after']:.4f} nats/token ({summary['steps']} steps)")
    rm_dir = _stage(warm, root / "rm.yaml", ray + [f"init={sft_dir}"], "output_dir", config)
    for v in json.loads((rm_dir / "report.json").read_text())["variants"]:
        print(f"[posttrain demo] reward models, label noise {v['label_noise']:g}: held-out pairwise accuracy "
              f"members {v['members_mean_accuracy']:.3f} (mean), WARM average {v['average_accuracy']:.3f}, "
              f"ensemble {v['ensemble_accuracy']:.3f}")
    return rm_dir
