"""`posttrain warp`: WARP, Weight Averaged Rewarded Policies (Ramé et al. 2024, arXiv 2406.16768),
the outer loop around posttrain/rl.py's RL runs (its config's `inner:` section is an rl config), top to bottom.
The merge maths are in posttrain/merging.py.

    θ_init ← θ_sft
    for i = 1..I:
        θ_m ← RL(θ_init, seed_im)              m = 1..M, parallel Ray tasks; the inner algorithm (`inner`) is
                                               J-BOND or REINFORCE, each with the KL to its own EMA anchor
        θ_slerp^i ← SLERP(θ_init; θ_1..θ_M)    per tensor, on the task vectors δ_m = θ_m − θ_init (λ)
        θ_init ← (1 − η)·θ_init + η·θ_slerp^i  LITI: the next iteration starts here
    Pareto front: θ_η' = (1 − η')·θ_sft + η'·θ_slerp^I for η' in `pareto_etas`, each evaluated with
    `posttrain eval` (reward) and by KL(π_η' ‖ π_sft) estimated on sampled completions.

The M runs of an iteration differ only in their seed (prompt order, samples): that is the diversity SLERP
merges. A run that fails (an exception, or its Ray worker dying) runs once more, from its own latest
checkpoint; a second failure fails the stage with one error naming the run, once the other runs are done.
Runs write DONE last and merges are published atomically, so `--resume` skips finished runs and merges,
continues unfinished runs from their checkpoints, and redoes everything downstream of what it redid.

Output dir:
  config.json, model.safetensors, tokenizer*   θ_slerp^I, the final policy (hard links into iter-I/slerp)
  iter-<i>/run-<m>/        one RL run: HF dir, metrics.jsonl, rollouts.jsonl, reward_kl.png, checkpoints/,
                           posttrain.json, DONE (error.log while its last attempt failed)
  iter-<i>/slerp/          the SLERP merge of the iteration's runs (HF dir)
  iter-<i>/init/           its LITI step: the next iteration's init (HF dir)
  iter-<i>/iteration.json  the iteration's metrics, written last (the iteration is finished)
  sft/                     θ_sft in fp32, only when the policy is stored otherwise (bf16, .bin)
  pareto/eta-<η'>/         θ_η' (HF dir), kl.json, eval/ (its `posttrain eval` output)
  pareto.json, pareto.png  the front: per η' its KL, reward and every eval score; reward against KL
  metrics.jsonl (one row per iteration), tensorboard/, posttrain.json, DONE (last)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import shutil
import time
import traceback
from pathlib import Path

import torch

from posttrain import artifacts, merging, rl, scoring
from posttrain import config as cfg
from posttrain.config import doc
from posttrain.errors import UserError
from posttrain.hooks import NO_HOOKS, Hooks

RETRIES = 1  # a failed run (or Pareto evaluation) runs once more before it fails the stage


@dataclasses.dataclass
class Config:
    policy: str = doc(
        "runs/demo/sft",
        "θ_sft, the first init: an HF dir (a `posttrain sft` output), a .gguf file, 'gemma3-270m' or 'tiny:...'",
    )
    output_dir: str = doc("runs/warp", "output dir: the final policy (HF), iter-*/, pareto/, pareto.json, plot")
    inner: rl.Config = doc(
        rl.Config(),
        "each RL run's config (algorithm bond or reinforce, data, rewards, "
        "steps, ...); WARP sets its policy, output_dir, seed, resume and torch_threads per run",
    )
    iterations: int = doc(2, "WARP iterations I")
    runs: int = doc(2, "RL runs M per iteration, in parallel as Ray tasks, each from the current init")
    run_cpus: float = doc(1.0, "CPUs each run's Ray task asks for (also its torch threads)")
    run_gpus: float = doc(0.0, "GPUs each run's Ray task asks for")
    slerp_lambda: float | None = doc(None, "SLERP weight of the second run (M = 2; None = 0.5)")
    liti_eta: float = doc(0.3, "LITI step, init ← (1−η)·init + η·slerp")
    pareto_etas: list[float] = doc(
        [0.0, 0.25, 0.5, 0.75, 1.0], "η' of the Pareto front (1−η')·θ_sft + η'·θ_final, each evaluated"
    )
    eval_data: list[str] = doc(
        ["data/demo/eval_math.jsonl", "data/demo/eval_code.jsonl"],
        "held-out files the Pareto front is evaluated on (with inner.rewards)",
    )
    eval_max_examples: int | None = doc(None, "evaluate only the first N rows of each eval file")
    eval_samples: int = doc(4, "sampled completions per eval prompt (pass@k)")
    seed: int = doc(0, "run m of iteration i has seed seed + (i − 1)·runs + m − 1")
    ray_address: str | None = doc(None, "Ray cluster address (default: RAY_ADDRESS, else embedded local Ray)")
    resume: bool = doc(False, "continue an unfinished WARP: finished runs and iterations are kept")
    overwrite: bool = doc(False, "replace a finished run in output_dir")


def check(config: Config) -> None:
    """WARP's own fields, then the inner runs' (rl.check)."""
    if config.iterations < 1 or config.runs < 2:
        raise UserError(f"WARP needs iterations >= 1 and runs >= 2 (got {config.iterations}, {config.runs})")
    if config.slerp_lambda is not None and (config.runs != 2 or not 0.0 <= config.slerp_lambda <= 1.0):
        raise UserError(
            f"slerp_lambda applies to runs=2 and must be in [0, 1] (got {config.slerp_lambda} with "
            f"runs={config.runs}; more runs are merged with equal weights)"
        )
    if not 0.0 <= config.liti_eta <= 1.0:
        raise UserError(f"liti_eta must be in [0, 1], got {config.liti_eta}")
    bad = [e for e in config.pareto_etas if not 0.0 <= e <= 1.0]
    if bad:
        raise UserError(f"pareto_etas must be in [0, 1], got {bad}")
    if len({_eta_name(e) for e in config.pareto_etas}) != len(config.pareto_etas):
        raise UserError(f"pareto_etas has duplicates: {config.pareto_etas}")
    if config.pareto_etas and not config.eval_data:
        raise UserError("the Pareto front needs eval_data (held-out prompt files)")
    if config.eval_samples < 0 or config.run_cpus <= 0 or config.run_gpus < 0:
        raise UserError("eval_samples and run_gpus must be >= 0, run_cpus > 0")
    rl.check(config.inner)


def _eta_name(eta: float) -> str:
    return f"eta-{eta:g}"


def sft_weights(policy_dir: Path, out: Path) -> Path:
    """θ_sft as the merges need it: fp32 safetensors, which is what every run loads and saves (merging refuses
    mixed dtypes). A policy stored otherwise (bf16, .bin files) is written once as fp32 into out/sft."""
    from posttrain import models

    try:
        state = merging.open_state(policy_dir)
        if all(state.dtype(k) == torch.float32 or not state.dtype(k).is_floating_point for k in state):
            return policy_dir
    except UserError:
        pass
    target = out / "sft"
    if not (target / "config.json").is_file():
        model, tokenizer = models.load_causal_lm(str(policy_dir))
        staging = artifacts.atomic_dir(target)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        artifacts.publish_dir(staging, target)
    return target


# ----------------------------------------------------------------------------------------------------
# 1. One RL run (a Ray task)


def run_config(config: Config, init: Path, out: Path, iteration: int, run: int) -> rl.Config:
    """The inner run's config: from the current init, its own seed, one process (no generation actors;
    `run_cpus` torch threads), always resuming from its own checkpoints when it has any."""
    return dataclasses.replace(
        config.inner,
        policy=str(init),
        output_dir=str(out),
        seed=config.seed + (iteration - 1) * config.runs + run - 1,
        generation_workers=0,
        torch_threads=max(1, round(config.run_cpus)),
        ray_address=config.ray_address,
        resume=True,
        overwrite=False,
    )


@contextlib.contextmanager
def error_log(path: Path):
    """A failure's traceback goes to `path`, which the driver's one-line error points to; removed on success."""
    try:
        yield
    except UserError:
        raise
    except Exception:
        artifacts.atomic_write_text(path, traceback.format_exc())
        raise
    path.unlink(missing_ok=True)


def run_jobs(config: Config, init: Path, idir: Path, i: int, hooks: Hooks = NO_HOOKS) -> list[dict]:
    """The Ray task inputs of iteration i's unfinished runs (out: iter-<i>/run-<m>)."""
    jobs = []
    for m in range(1, config.runs + 1):
        out = idir / f"run-{m}"
        if not artifacts.is_done(out):
            jobs.append(
                {
                    "config": run_config(config, init, out, i, m),
                    "out": str(out),
                    "log": str(out / "error.log"),
                    "name": f"{idir.name}/{out.name}",
                    "iteration": i,
                    "run": m,
                    "hooks": hooks,
                }
            )
    return jobs


def train_run(job: dict) -> dict:
    """rl.train into job['out'] (continuing from its latest checkpoint if an earlier attempt left one), then
    the run's posttrain.json and DONE."""
    config, out = job["config"], Path(job["out"])
    out.mkdir(parents=True, exist_ok=True)
    with error_log(Path(job["log"])):
        job["hooks"].on_task_start(job["name"])
        summary = rl.train(config, out, job["hooks"])
    artifacts.write_manifest(
        out,
        stage="rl",
        config=cfg.to_dict(config),
        inputs={"policy": config.policy, "data": config.data},
        extra={"summary": summary, "warp": {"iteration": job["iteration"], "run": job["run"]}},
    )
    artifacts.mark_done(out)
    # WARP never resumes a finished run, so its checkpoints (2 x 1.3 GB per run at demo size) are dead weight
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return summary


def run_all(fn, jobs: list[dict], config, what: str) -> None:
    """fn(job) for every job as Ray tasks with a run's resources, a failed one retried once; a job that fails
    again is one UserError naming it and its traceback (job['log']), after the others finish (job['out'] holds
    a finished job's DONE)."""
    from posttrain import cluster

    try:
        cluster.run_tasks(
            fn,
            jobs,
            num_cpus=config.run_cpus,
            num_gpus=config.run_gpus,
            names=[j["name"] for j in jobs],
            progress=what,
            retries=RETRIES,
        )
    except UserError:
        raise
    except Exception as e:
        failed = [j for j in jobs if not artifacts.is_done(j["out"])]
        log = Path(failed[0]["log"])
        reason = (str(e).strip().splitlines() or [""])[0]
        raise UserError(
            f"{what}: {failed[0]['name']} failed {1 + RETRIES} times ({type(e).__name__}: {reason})"
            + (f"; traceback in {log}" if log.is_file() else "")
            + f"; {len(failed)} of {len(jobs)} unfinished, --resume redoes only those"
        ) from e


# ----------------------------------------------------------------------------------------------------
# 2. The merge: SLERP of the task vectors, LITI towards the init


def task_vector_geometry(init: Path, runs: list[Path]) -> dict:
    """Whole-model norms of the task vectors δ_m = θ_m − θ_init and their mean pairwise angle (WARP observes
    ~90°: nearly orthogonal, so SLERP keeps a norm that linear averaging would shrink by √2). One streamed
    read of the models, with merging's per-tensor Gram matrices summed over the tensors."""
    states = [merging.open_state(p) for p in (init, *runs)]
    gram = sum(
        merging._gram(states, key, merging._CHUNK) for key in states[0] if states[0].dtype(key).is_floating_point
    )
    norms = gram.diagonal().sqrt()
    angles = [
        math.degrees(math.acos(max(-1.0, min(1.0, float(gram[a, b] / (norms[a] * norms[b]))))))
        for a in range(len(runs))
        for b in range(a + 1, len(runs))
        if norms[a] > 0 and norms[b] > 0
    ]
    return {
        "task_vector_norms": norms.tolist(),
        "task_vector_angle_deg": sum(angles) / len(angles) if angles else None,
    }


def iteration_metrics(i: int, summaries: list[dict], geometry: dict, t_runs: float, t_merge: float) -> dict:
    keys = ("reward_first", "reward_last", "kl_anchor_last", "kl_init_last")

    def mean(key):
        vals = [s[key] for s in summaries if s.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    return {
        "iteration": i,
        **{k: mean(k) for k in keys},
        **geometry,
        "runs": [{k: s.get(k) for k in (*keys, "steps", "seconds_per_step")} for s in summaries],
        "time/runs": t_runs,
        "time/merge": t_merge,
    }


# ----------------------------------------------------------------------------------------------------
# 3. The Pareto front: evaluation and KL to the SFT policy of each point (a Ray task per point)


@torch.no_grad()
def estimate_kl(model_dir: Path, sft_dir: Path, config) -> float:
    """KL(π ‖ π_sft) ≈ mean over y ~ π of log π(y) − log π_sft(y) (sums over the completion's tokens): each
    eval prompt sampled `eval_samples` times at the RL temperature and top-p (the policy as RL samples it, and
    both log-probs at them), with the same noise at every η' so
    the front's points differ by their model, not by their draw. Both log-probs are recomputed teacher-forced
    in fp32 by one code path, so η' = 0 gives exactly 0."""
    from posttrain import data, models, rollout

    rows = [r for path in config.eval_data for r in data.read_rows(path)[: config.eval_max_examples]]
    policy, tokenizer = models.load_causal_lm(str(model_dir))
    sft, _ = models.load_causal_lm(str(sft_dir))
    sampler = models.cast_copy(policy, torch.bfloat16) if models.use_bf16(config.inner.bf16) else policy
    prompts = [data.prompt_ids(tokenizer, data.prompt_messages(r)) for r in rows]
    n, total, count = max(1, config.eval_samples), 0.0, 0
    batch_size = config.inner.generation_batch
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        r = rollout.sample(
            sampler,
            tokenizer,
            batch,
            n,
            max_new_tokens=config.inner.max_new_tokens,
            temperature=config.inner.temperature,
            top_p=config.inner.top_p,
            generator=torch.Generator().manual_seed(config.seed + start),
        )
        at = {"temperature": config.inner.temperature, "top_p": config.inner.top_p}  # the sampled distribution
        logp = rollout.sequence_logprobs(policy, batch, r.prompt_index, r.tokens, r.mask, **at).sum(-1)
        logp_sft = rollout.sequence_logprobs(sft, batch, r.prompt_index, r.tokens, r.mask, **at).sum(-1)
        total, count = total + float((logp - logp_sft).sum()), count + len(logp)
    return total / count


def sampled_reward(eval_dir: Path, weights: dict[str, float]) -> float | None:
    """Mean combined reward (rewards.combine) of the eval's sampled completions (its greedy ones when it drew
    none): the reward the RL runs maximise, the y axis of the front."""
    import rewards

    values = []
    for line in (eval_dir / "completions.jsonl").read_text().splitlines():
        rec = json.loads(line)
        scores = rec.get("sample_scores") or {k: [v] for k, v in rec["greedy_scores"].items()}
        values += [v for v in rewards.combine(scores, weights) if v is not None]
    return sum(values) / len(values) if values else None


def evaluate_point(job: dict) -> dict:
    """KL of θ_η' to θ_sft (kl.json), then `posttrain eval` of θ_η' into job['out'] (its DONE comes last),
    sampling at the runs' temperature and top_p: the front measures the reward the runs optimised."""
    from posttrain import evaluate

    config, point, out = job["config"], Path(job["dir"]), Path(job["out"])
    threads = max(1, round(config.run_cpus))
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    with error_log(Path(job["log"])):
        kl = estimate_kl(point, Path(job["sft"]), config)
        artifacts.atomic_write_text(point / "kl.json", json.dumps({"kl": kl}))
        evaluate.run(
            evaluate.Config(
                model=str(point),
                data=list(config.eval_data),
                rewards=copy.deepcopy(config.inner.rewards),
                output_dir=str(out),
                max_examples=config.eval_max_examples,
                samples=config.eval_samples,
                pass_k=sorted({1, config.eval_samples}) if config.eval_samples else [],
                temperature=config.inner.temperature,
                top_p=config.inner.top_p,
                max_new_tokens=config.inner.max_new_tokens,
                seed=config.seed,
                bf16=config.inner.bf16,
                torch_threads=threads,
                overwrite=True,
            )
        )
    return {"kl": kl}


def pareto_row(eta: float, point: Path) -> dict:
    report = json.loads((point / "eval" / "report.json").read_text())
    return {
        "eta": eta,
        "dir": str(point),
        "kl": json.loads((point / "kl.json").read_text())["kl"],
        "reward": sampled_reward(point / "eval", report["rewards"]),
        "overall": report["overall"],
        "per_reward": report["per_reward"],
    }


def plot_front(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from posttrain.curves import save_figure

    kl = [r["kl"] for r in rows]
    reward = [r["reward"] if r["reward"] is not None else math.nan for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(kl, reward, "o-")
    for r, x, y in zip(rows, kl, reward):
        ax.annotate(f"η'={r['eta']:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(
        xlabel="KL(π_η' ‖ π_sft), nats per completion (sample estimate)",
        ylabel="combined reward (eval samples)",
        title="WARP Pareto front: (1−η')·θ_sft + η'·θ_final",
    )
    save_figure(fig, path)


def print_front(rows: list[dict], history: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(v):
        return "-" if v is None else f"{v:.3f}"

    console = Console()
    table = Table(title="WARP iterations (mean over the runs)")
    for col in ("iteration", "reward first", "reward last", "KL to init (last)", "task vectors' angle"):
        table.add_column(col, justify="right")
    for h in history:
        angle = h.get("task_vector_angle_deg")
        table.add_row(
            str(h["iteration"]),
            fmt(h["reward_first"]),
            fmt(h["reward_last"]),
            fmt(h["kl_init_last"]),
            "-" if angle is None else f"{angle:.1f}°",
        )
    console.print(table)
    if not rows:
        return
    names = list(rows[0]["per_reward"])
    table = Table(title="WARP Pareto front: (1−η')·θ_sft + η'·θ_final")
    for col in ("η'", "KL to SFT", "reward (sampled)", "overall greedy", *(f"{n} greedy" for n in names)):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['eta']:g}",
            fmt(r["kl"]),
            fmt(r["reward"]),
            fmt(r["overall"].get("greedy_accuracy")),
            *(fmt(r["per_reward"][n].get("greedy_accuracy")) for n in names),
        )
    console.print(table)


# ----------------------------------------------------------------------------------------------------
# The stage


def link_model(src: Path, out: Path) -> None:
    """The model files of `src` at the top of `out`, as hard links (no second copy on disk; a copy where the
    filesystem has none), each moved into place from a staging dir."""
    staging = artifacts.atomic_dir(out / "model")
    for f in src.iterdir():
        if f.is_file():
            try:
                os.link(f, staging / f.name)
            except OSError:
                shutil.copy2(f, staging / f.name)
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    staging.rmdir()


def check_resources(config: Config) -> None:
    """Refuse runs bigger than the embedded Ray (a cluster may autoscale; here the tasks would wait forever)."""
    from posttrain import cluster

    have = cluster.init(config.ray_address).cluster_resources()
    too_big = config.run_cpus > have.get("CPU", 0) or config.run_gpus > have.get("GPU", 0)
    if too_big and cluster.describe()["embedded"]:
        raise UserError(
            f"a run asks for {config.run_cpus:g} CPU / {config.run_gpus:g} GPU but this machine's Ray "
            f"has {have.get('CPU', 0):g} CPU / {have.get('GPU', 0):g} GPU (run_cpus, run_gpus)"
        )


def iterate(config: Config, out: Path, sft: Path, hooks: Hooks) -> tuple[list[dict], bool]:
    """The I iterations (runs, SLERP, LITI), skipping those finished earlier; returns their metrics and whether
    any was (re)done."""
    from torch.utils.tensorboard import SummaryWriter

    init, redone, history = sft, False, []
    with SummaryWriter(str(out / "tensorboard")) as tb:
        for i in range(1, config.iterations + 1):
            idir = out / f"iter-{i}"
            record = idir / "iteration.json"
            runs = [idir / f"run-{m}" for m in range(1, config.runs + 1)]
            if record.is_file() and not redone:
                history.append(json.loads(record.read_text()))
                init = idir / "init"
                print(f"[posttrain warp] WARP iteration {i}: finished earlier, kept", flush=True)
                continue
            jobs = run_jobs(config, init, idir, i, hooks)
            print(
                f"[posttrain warp] WARP iteration {i}/{config.iterations}: {len(jobs)} of {config.runs} "
                f"{config.inner.algorithm} runs to train from {init} ({config.run_cpus:g} CPU / "
                f"{config.run_gpus:g} GPU each)",
                flush=True,
            )
            t0 = time.perf_counter()
            if jobs:
                run_all(train_run, jobs, config, f"WARP iteration {i}")
            t_runs = time.perf_counter() - t0
            summaries = [json.loads((r / artifacts.MANIFEST).read_text())["summary"] for r in runs]
            t0 = time.perf_counter()
            merging.slerp(init, runs, lam=config.slerp_lambda, out_dir=idir / "slerp")
            merging.liti(init, idir / "slerp", config.liti_eta, out_dir=idir / "init")
            geometry = task_vector_geometry(init, runs)
            row = iteration_metrics(i, summaries, geometry, t_runs, time.perf_counter() - t0)
            artifacts.atomic_write_text(record, json.dumps(row, indent=2))
            for key in ("reward_first", "reward_last", "kl_init_last", "task_vector_angle_deg"):
                if row[key] is not None:
                    tb.add_scalar(f"warp/{key}", row[key], i)
            history.append(row)
            redone, init = True, idir / "init"
    return history, redone


def pareto_front(config: Config, out: Path, sft: Path, final: Path, redone: bool) -> list[dict]:
    """θ_η' for every η', each evaluated (a Ray task per point; finished points kept unless redone)."""
    points = {eta: out / "pareto" / _eta_name(eta) for eta in config.pareto_etas}
    jobs = []
    for eta, point in points.items():
        if redone or not (artifacts.is_done(point / "eval") and (point / "kl.json").is_file()):
            merging.liti(sft, final, eta, out_dir=point)
            jobs.append(
                {
                    "config": config,
                    "dir": str(point),
                    "out": str(point / "eval"),
                    "sft": str(sft),
                    "log": str(point / "error.log"),
                    "name": f"pareto/{point.name}",
                }
            )
    if jobs:
        print(f"[posttrain warp] WARP Pareto front: evaluating {len(jobs)} of {len(points)} points", flush=True)
        run_all(evaluate_point, jobs, config, "WARP Pareto front")
    rows = [pareto_row(eta, point) for eta, point in points.items()]
    artifacts.atomic_write_text(out / "pareto.json", json.dumps(rows, indent=2))
    if rows:
        plot_front(rows, out / "pareto.png")
    return rows


def run(config: Config, hooks: Hooks = NO_HOOKS) -> Path:
    """`posttrain warp`: WARP from config.policy into config.output_dir."""
    from posttrain import cluster, models

    check(config)  # before the output dir exists: bad input leaves nothing behind
    if Path(config.policy).is_dir():
        artifacts.require_done(config.policy, "policy")
    policy_dir = models.resolve(config.policy)
    scoring.build(config.inner.rewards)  # a bad reward spec fails here, not in every Ray task
    out = artifacts.prepare_output(config.output_dir, overwrite=config.overwrite, resume=config.resume)
    out = out.resolve()  # Ray workers need not share the driver's working directory
    torch.manual_seed(config.seed)
    check_resources(config)
    sft = sft_weights(policy_dir, out)
    history, redone = iterate(config, out, sft, hooks)
    final = out / f"iter-{config.iterations}" / "slerp"
    link_model(final, out)
    artifacts.atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    rows = pareto_front(config, out, sft, final, redone)
    artifacts.write_manifest(
        out,
        stage="warp",
        config=cfg.to_dict(config),
        inputs={
            "policy": str(policy_dir),
            "sft_weights": str(sft),
            "data": config.inner.data,
            "eval_data": config.eval_data,
        },
        extra={"summary": {"iterations": history, "pareto": rows}, "ray": cluster.describe()},
    )
    artifacts.mark_done(out)
    print_front(rows, history)
    return out
