"""What `posttrain demo` shows: base → SFT → RL on the held-out eval files, as a table, `demo.json` and
`demo.png` (the scores side by side and the RL training reward over the run).

demo.json:
  models:  {"base": <model spec>, "sft": <dir>, "rl": <dir>}: each is something `posttrain eval --model` takes
  table:   {reward: {metric: {"base": x, "sft": y, "rl": z}}} for greedy_accuracy, sampled_mean and pass@k
  bond:    BOND's own yardstick: the RL policy's pass@1 against the SFT policy's pass@2 (J-BOND distils the
           best-of-2 of its anchor), per pass/fail reward, where the evals drew >= 2 samples
  training_reward: the RL runs' mean combined reward per step (WARP: iterations one after another, the mean
           of an iteration's runs), its mean over the first and the last fifth of the steps
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from posttrain.curves import save_figure, smooth

MODELS = ("base", "sft", "rl")


def table(reports: dict[str, dict]) -> dict:
    """{reward: {metric: {model: value}}} from each model's eval report.json, for every float metric."""
    out: dict = {}
    for model, report in reports.items():
        for reward, metrics in [*report["per_reward"].items(), ("overall", report["overall"])]:
            for metric, value in metrics.items():
                if isinstance(value, float) or value is None and metric != "rows":
                    out.setdefault(reward, {}).setdefault(metric, {})[model] = value
    return out


def bond_yardstick(scores: dict) -> dict:
    """Per reward: RL pass@1 and SFT pass@2, where both were measured."""
    out = {}
    for reward, metrics in scores.items():
        rl_p1 = metrics.get("pass@1", {}).get("rl")
        sft_p2 = metrics.get("pass@2", {}).get("sft")
        if rl_p1 is not None and sft_p2 is not None:
            out[reward] = {"rl_pass@1": rl_p1, "sft_pass@2": sft_p2}
    return out


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def training_reward(rl_dir: Path) -> dict:
    """The RL runs' combined reward per step, in run order: one `posttrain rl` run (metrics.jsonl), or WARP's
    iterations one after another (iter-<i>/run-<m>/metrics.jsonl, the mean over an iteration's runs)."""
    iterations = sorted(rl_dir.glob("iter-*"), key=lambda p: int(p.name.split("-")[1]))
    runs_by_iteration = [sorted(it.glob("run-*/metrics.jsonl")) for it in iterations]
    runs_by_iteration = runs_by_iteration or [[rl_dir / "metrics.jsonl"]]
    curve = []
    for runs in runs_by_iteration:
        per_run = [[m.get("reward") for m in _metrics(p)] for p in runs if p.is_file()]
        for values in zip(*per_run):
            valid = [v for v in values if v is not None]
            curve.append(sum(valid) / len(valid) if valid else None)
    fifth = max(1, len(curve) // 5)

    def mean(part):
        vals = [v for v in part if v is not None]
        return sum(vals) / len(vals) if vals else None

    return {"reward": curve, "first_fifth": mean(curve[:fifth]), "last_fifth": mean(curve[-fifth:])}


def write(out_dir: Path, models: dict[str, str], reports: dict[str, dict], rl_dir: Path) -> dict:
    """demo.json and demo.png in out_dir (each written to a temp name, then renamed); returns demo.json's dict."""
    scores = table(reports)
    demo = {
        "models": models,
        "eval_rows": {m: r["rows"] for m, r in reports.items()},
        "table": scores,
        "bond": bond_yardstick(scores),
        "training_reward": training_reward(rl_dir),
    }
    tmp = out_dir / ".demo.json.tmp"
    tmp.write_text(json.dumps(demo, indent=2))
    os.replace(tmp, out_dir / "demo.json")
    plot(demo, out_dir / "demo.png")
    return demo


def plot(demo: dict, path: Path) -> None:
    """Left: greedy accuracy and pass@k per reward for base, SFT and RL. Right: the RL training reward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [
        (f"{reward}\n{metric.replace('greedy_accuracy', 'greedy')}", values)
        for reward, metrics in demo["table"].items()
        if reward != "overall" and reward != "reward_model"
        for metric, values in metrics.items()
        if metric == "greedy_accuracy" or metric.startswith("pass@")
    ]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 1]})
    width = 0.8 / len(MODELS)
    for j, model in enumerate(MODELS):
        xs = [i + (j - 1) * width for i in range(len(bars))]
        ax1.bar(xs, [v.get(model) or 0.0 for _, v in bars], width, label=model)
    ax1.set_xticks(range(len(bars)), [label for label, _ in bars], fontsize=8)
    ax1.set(ylabel="score on held-out prompts", title="base → SFT → RL", ylim=(0, 1))
    ax1.legend()
    curve = [math.nan if v is None else v for v in demo["training_reward"]["reward"]]
    steps = list(range(1, len(curve) + 1))
    ax2.plot(steps, curve, alpha=0.35, label="per step")
    ax2.plot(steps, smooth(curve, max(2, len(curve) // 5)), linewidth=2, label="smoothed")
    ax2.set(xlabel="RL step (WARP: iterations in order)", ylabel="combined reward", title="RL training reward")
    ax2.legend()
    save_figure(fig, path)


def print_table(demo: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = demo["eval_rows"]
    table_ = Table(title=f"posttrain demo: base -> SFT -> RL on held-out prompts ({rows.get('sft')} per model)")
    for col in ("reward", "metric", *MODELS):
        table_.add_column(col)
    for reward, metrics in demo["table"].items():
        for metric, values in metrics.items():
            table_.add_row(reward, metric, *("-" if values.get(m) is None else f"{values[m]:.3f}" for m in MODELS))
    Console().print(table_)
    for reward, v in demo["bond"].items():
        print(
            f"[posttrain demo] BOND's yardstick, {reward}: RL pass@1 {v['rl_pass@1']:.3f} vs "
            f"SFT pass@2 {v['sft_pass@2']:.3f}"
        )
    t = demo["training_reward"]
    if t["first_fifth"] is not None:
        print(
            f"[posttrain demo] RL training reward: {t['first_fifth']:.3f} (first fifth of "
            f"{len(t['reward'])} steps) -> {t['last_fifth']:.3f} (last fifth)"
        )
