"""`posttrain eval`: generate for held-out prompts (greedy, and n samples) and score them with the rewards.

Reports, per reward and overall: greedy accuracy (the mean score of the greedy completions: accuracy for
0/1 rewards, the mean RM score for `reward_model`) and pass@k from the n samples with the unbiased
estimator of Chen et al. 2021 (a sample passes a reward when it scores 1.0; "overall" means every
pass/fail reward that applies to the row passes; `reward_model` is a score, so it has neither). Writes
`report.json`,
`completions.jsonl` (every completion with its scores and, where a score is None, why), `metrics.jsonl`,
TensorBoard scalars, `posttrain.json` and `DONE`, and prints a table.

    posttrain eval --model runs/sft --data data/demo/eval_math.jsonl,data/demo/eval_code.jsonl --rewards math,code
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from posttrain import artifacts, scoring
from posttrain import config as cfg
from posttrain.config import doc
from posttrain.errors import UserError


@dataclasses.dataclass
class Config:
    model: str = doc(
        "gemma3-270m",
        "model to evaluate: an HF dir (e.g. a stage's output dir), a .gguf file, "
        "'gemma3-270m' (embedded) or 'tiny:...'",
    )
    data: list[str] = doc(
        ["data/demo/eval_math.jsonl", "data/demo/eval_code.jsonl"],
        "held-out eval files (.jsonl, .parquet or datasets dirs): rows with 'messages' plus "
        "the rewards' columns (answer; prompt/test/entry_point or tests)",
    )
    rewards: scoring.Rewards = doc(
        scoring.Rewards(timeout=300.0), "the rewards and how they run (names, weights, ...)"
    )
    output_dir: str = doc("runs/eval", "where report.json, completions.jsonl and metrics go")
    max_examples: int | None = doc(None, "evaluate only the first N rows of each file (None = all)")
    samples: int = doc(4, "sampled completions per prompt (n) for pass@k; 0 = greedy only")
    pass_k: list[int] = doc([1, 4], "k values for pass@k (each <= samples)")
    temperature: float = doc(0.8, "sampling temperature")
    top_p: float = doc(0.95, "nucleus sampling threshold")
    max_new_tokens: int = doc(256, "generation budget per completion")
    batch_size: int = doc(8, "prompts per generation batch")
    seed: int = doc(0, "seed for sampling")
    bf16: bool = doc(
        True,
        "generate with the model in bf16 where the hardware has it natively (fp32 otherwise); scores are "
        "of sampled text, so bf16 rounding only changes which samples are drawn",
    )
    torch_threads: int | None = doc(
        None, "CPU threads for generation (None = torch's default); 1 avoids OpenMP spinning on a busy machine"
    )
    overwrite: bool = doc(False, "replace a finished evaluation in output_dir")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k), computed stably."""
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def _check(config: Config) -> None:
    scoring.check(config.rewards)
    if config.samples < 0 or min(config.max_new_tokens, config.batch_size) < 1:
        raise UserError("samples must be >= 0; max_new_tokens and batch_size >= 1")
    bad = [k for k in config.pass_k if k < 1 or k > config.samples]
    if config.samples and bad:
        raise UserError(f"pass_k values {bad} must be between 1 and samples={config.samples}")


def generate(
    model, tokenizer, prompts: list[list[int]], *, n: int, sample: bool, config: Config
) -> list[list[str]]:
    """`n` completions per prompt (greedy when not `sample`), cut at the end of the model's turn; batched
    best-of-n decoding (posttrain.rollout: the prompt prefix is computed once for its n samples)."""
    import torch

    from posttrain import rollout

    out = []
    for start in range(0, len(prompts), config.batch_size):
        batch = prompts[start : start + config.batch_size]
        r = rollout.sample(
            model,
            tokenizer,
            batch,
            n,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature if sample else 0.0,
            top_p=config.top_p,
            generator=torch.Generator().manual_seed(config.seed + start),
        )
        out += [r.texts[i * n : (i + 1) * n] for i in range(len(batch))]
    return out


SCALAR_REWARDS = ("reward_model",)  # a score, not pass/fail: no pass@k, not part of "overall"


def summarize(
    names: list[str],
    greedy: dict[str, list],
    sampled: dict[str, list[list]],
    combined: list,
    pass_k: list[int],
    scalar: tuple[str, ...] = SCALAR_REWARDS,
) -> dict:
    """Per reward and overall: greedy accuracy, sampled mean, pass@k over the rows each reward applies to."""

    def block(greedy_scores: list, sample_scores: list[list], pass_k=pass_k) -> dict:
        rows = [i for i, s in enumerate(greedy_scores) if s is not None]
        res = {
            "rows": len(rows),
            "greedy_accuracy": sum(greedy_scores[i] for i in rows) / len(rows) if rows else None,
        }
        if sample_scores and any(sample_scores):
            flat = [s for row in sample_scores for s in row if s is not None]
            res["sampled_mean"] = sum(flat) / len(flat) if flat else None
            for k in pass_k:
                vals = [
                    pass_at_k(len(ok), sum(s >= 1.0 for s in ok), k)
                    for ok in ([s for s in row if s is not None] for row in sample_scores)
                    if len(ok) >= k
                ]
                res[f"pass@{k}"] = sum(vals) / len(vals) if vals else None
        return res

    def all_pass(scores: list) -> float | None:
        present = [s for s in scores if s is not None]
        return float(all(s >= 1.0 for s in present)) if present else None

    per = {name: block(greedy[name], sampled.get(name, []), () if name in scalar else pass_k) for name in names}
    n_rows = len(combined)
    graded = [name for name in names if name not in scalar]
    overall_greedy = [all_pass([greedy[name][i] for name in graded]) for i in range(n_rows)]
    overall_sampled = []
    if sampled:
        n = len(next(iter(sampled.values()))[0]) if n_rows else 0
        overall_sampled = [
            [all_pass([sampled[name][i][j] for name in graded]) for j in range(n)] for i in range(n_rows)
        ]
    overall = block(overall_greedy, overall_sampled)
    present = [c for c in combined if c is not None]
    overall["combined_greedy_mean"] = sum(present) / len(present) if present else None
    return {"per_reward": per, "overall": overall}


def _print_table(report: dict, pass_k: list[int]) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    table = Table(title=f"posttrain eval: {report['model']} ({report['rows']} prompts, n={report['samples']})")
    cols = ["rows", "greedy_accuracy", "sampled_mean"] + [f"pass@{k}" for k in pass_k]
    table.add_column("reward")
    for c in cols:
        table.add_column(c, justify="right")
    for name, res in [*report["per_reward"].items(), ("overall", report["overall"])]:
        table.add_row(name, *[str(res.get(c, "-")) if c == "rows" else fmt(res.get(c)) for c in cols])
    Console().print(table)


def generate_all(config: Config, model_dir: Path, prompts: list[list[int]]) -> tuple[list[str], list[list[str]]]:
    """The greedy completion and `samples` sampled completions of every prompt."""
    import torch

    from posttrain import models

    dtype = torch.bfloat16 if models.use_bf16(config.bf16) else torch.float32
    model, tokenizer = models.load_causal_lm(str(model_dir), dtype)
    model.eval()
    threads = torch.get_num_threads()
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    try:
        greedy = [c[0] for c in generate(model, tokenizer, prompts, n=1, sample=False, config=config)]
        samples = (
            generate(model, tokenizer, prompts, n=config.samples, sample=True, config=config)
            if config.samples
            else [[] for _ in prompts]
        )
    finally:
        torch.set_num_threads(threads)
    return greedy, samples


def score_all(
    config: Config, reward_list, rows: list[dict], messages: list, greedy: list[str], samples: list[list[str]]
):
    """(greedy Scores, sampled Scores or None) from the reward workers."""
    import rewards
    from rewards.workers import Workers

    n = config.samples
    with Workers(processes=config.rewards.workers) as workers:
        g = rewards.score(reward_list, messages, greedy, scoring.columns(rows), workers=workers)
        flat = [s for row in samples for s in row]
        s = (
            rewards.score(
                reward_list,
                [m for m in messages for _ in range(n)],
                flat,
                scoring.columns(rows, [n] * len(rows)),
                workers=workers,
            )
            if flat
            else None
        )
    return g, s


def write_completions(
    path: Path, rows: list[dict], greedy: list[str], samples: list[list[str]], g, s, names: list[str], n: int
) -> None:
    """Every completion with its scores and, where a score is None, why."""
    with open(path, "w") as f:
        for i, row in enumerate(rows):
            rec = {
                "id": row.get("id", i),
                "where": row.get("_where"),
                "greedy": greedy[i],
                "greedy_scores": {k: g.per_reward[k][i] for k in names},
                "greedy_reasons": {k: g.reasons[k][i] for k in names if g.reasons[k][i]},
                "samples": samples[i],
            }
            if s is not None:
                span = range(i * n, (i + 1) * n)
                rec["sample_scores"] = {k: [s.per_reward[k][j] for j in span] for k in names}
                rec["sample_reasons"] = {
                    k: [s.reasons[k][j] for j in span] for k in names if any(s.reasons[k][j] for j in span)
                }
            f.write(json.dumps(rec) + "\n")


def write_metrics(out: Path, report: dict) -> None:
    from torch.utils.tensorboard import SummaryWriter

    flat_metrics = {
        f"{name}/{k}": v
        for name, res in [*report["per_reward"].items(), ("overall", report["overall"])]
        for k, v in res.items()
        if isinstance(v, (int, float))
    }
    (out / "metrics.jsonl").write_text(json.dumps({"step": 0, **flat_metrics}) + "\n")
    with SummaryWriter(str(out / "tensorboard")) as tb:
        for key, value in flat_metrics.items():
            tb.add_scalar(f"eval/{key}", value, 0)


def run(config: Config) -> Path:
    from posttrain import data, models

    _check(config)
    reward_list = scoring.build(config.rewards)
    rows = []
    for path in config.data:
        rows += data.read_rows(path)[: config.max_examples]
    if Path(config.model).is_dir():
        artifacts.require_done(config.model, "model")
    model_dir = models.resolve(config.model)  # before the output dir exists: a bad spec leaves nothing behind
    out = artifacts.prepare_output(config.output_dir, overwrite=config.overwrite, resume=False)

    tokenizer = models.load_tokenizer(str(model_dir))
    messages = [data.prompt_messages(r) for r in rows]
    prompts = [data.prompt_ids(tokenizer, m) for m in messages]
    print(f"[posttrain eval] generating for {len(rows)} prompts (greedy + {config.samples} samples)", flush=True)
    greedy, samples = generate_all(config, model_dir, prompts)
    g, s = score_all(config, reward_list, rows, messages, greedy, samples)
    names = [r.name for r in reward_list]
    sampled = {}
    if s is not None:
        sampled = {
            name: [s.per_reward[name][i * config.samples : (i + 1) * config.samples] for i in range(len(rows))]
            for name in names
        }

    report = {
        "model": config.model,
        "data": config.data,
        "rows": len(rows),
        "samples": config.samples,
        "rewards": {r.name: r.weight for r in reward_list},
        **summarize(names, g.per_reward, sampled, g.combined, config.pass_k if config.samples else []),
    }
    write_completions(out / "completions.jsonl", rows, greedy, samples, g, s, names, config.samples)
    write_metrics(out, report)
    artifacts.atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    inputs = {
        "model": config.model,
        "data": {p: artifacts.file_sha256(p) if Path(p).is_file() else None for p in config.data},
    }
    artifacts.write_manifest(
        out, stage="eval", config=cfg.to_dict(config), inputs=inputs, extra={"summary": report["overall"]}
    )
    artifacts.mark_done(out)
    _print_table(report, config.pass_k if config.samples else [])
    return out
