"""`posttrain rl --algorithm bond`: J-BOND with an EMA anchor on prompts scored by pluggable rewards.

One step, top to bottom (the maths is in posttrain/bond.py, ../shared/ALGORITHMS.md):
  1. take the next `prompts_per_step` prompts (a seeded permutation per epoch);
  2. sample 1 completion per prompt from the policy π and `anchor_samples` (k, default n = 2) from the
     anchor π_a, in chunks of `generation_batch` prompts, in-process or on a Ray actor pool; as soon as a
     chunk exists its rewards are scored in the reward workers, while the next chunk is generated;
  3. while the last chunk is scored: log π_a(y) and log π_init(y) of the policy samples (no grad);
  4. the BOND reward of each policy sample from the ranks of the rewards against its prompt's anchor
     samples: r_J (n = k = 2, J-BOND) or log p̂≤ (general N), with the tie rule `ties`;
  5. loss = (1−β)·NLL(best anchor sample) + β·PG(r − kl_coef·(log π − log π_a), batch baseline)
     + γ·KL-surrogate to `regulariser` (the SFT init by default); one AdamW step;
  6. anchor ← (1−η)·anchor + η·policy (the trainable tensors only: with LoRA the adapters).

Choices (docs/ARCHITECTURE.md): log π(y) is the sum of token log-probs (the sequence probability the
paper's π(y) is), not a per-token mean; dropout is off (model.eval()) so sampling and training see one
policy; the anchor, the init and the policy share their frozen tensors and differ only in the trainable
ones, which are swapped in for the anchor and init forwards; all randomness is drawn from generators seeded
by (seed, step), so `--resume` from a checkpoint (policy, anchor, optimizer, scheduler) continues exactly.
A reward that fails for a sample (timeout, crash) scores None: that sample has no term, the step goes on.

Outputs: the final policy as an HF dir (LoRA merged), metrics.jsonl + TensorBoard, rollouts.jsonl (every
policy sample with its scores), reward_kl.png, checkpoints/, posttrain.json and DONE.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from posttrain import artifacts, bond, config as cfg
from posttrain.config import doc
from posttrain.errors import UserError

ALGORITHMS = ("bond", "reinforce", "warp")


@dataclasses.dataclass
class Config:
    algorithm: str = doc("bond", "'bond' (J-BOND), 'reinforce' (REINFORCE with the KL to the EMA anchor, "
                         "WARP's inner loop) or 'warp' (WARP: `runs` RL runs per iteration, SLERP, LITI)")
    policy: str = doc("runs/demo/sft", "initial policy: an HF dir (a `posttrain sft` output), a .gguf file, "
                      "'gemma3-270m' or 'tiny:...'")
    data: list[str] = doc(["data/demo/sft.jsonl"], "prompt files (.jsonl, .parquet or datasets dirs): rows "
                          "with 'messages' (trailing assistant turns are dropped) plus the rewards' columns")
    output_dir: str = doc("runs/rl", "output dir: final policy (HF), metrics, rollouts, plot, checkpoints")
    rewards: list[str] = doc(["math", "code"], "rewards: built-in names (math, code, format, reward_model), "
                             "package.module:function or path/to/file.py:function")
    reward_weights: list[float] | None = doc(None, "one weight per reward in the combined reward (default 1)")
    reward_model: str | None = doc(None, "reward-model dir (a `posttrain rm` output) for the reward_model reward")
    max_examples: int | None = doc(None, "use only the first N prompts (None = all)")
    steps: int = doc(40, "optimizer steps")
    prompts_per_step: int = doc(8, "prompts per step (the batch)")
    n: int = doc(2, "BOND's N: the policy distils best-of-N of the anchor (N = 2 is J-BOND)")
    anchor_samples: int | None = doc(None, "anchor samples per prompt k for the quantile estimate (default n); "
                                     "n = k = 2 uses J-BOND's r_J, otherwise r = log p̂≤ from the k samples")
    ties: str = doc("mid", "how a reward tie counts: 'mid' (1/2), 'paper' (as written: a tie is ≤ for "
                    "p̂≤ and r_J needs a strict loss) or 'random' (coin flip)")
    beta: float = doc(0.5, "Jeffreys mix: (1−β)·forward (SFT on the best anchor sample) + β·backward (PG)")
    kl_coef: float | None = doc(None, "KL-to-anchor weight in the backward return (default 1/(n−1))")
    gamma: float = doc(0.0, "weight of the extra KL regulariser (the paper tries 0, 0.5, 1, 2)")
    regulariser: str = doc("init", "the regulariser's target: 'init' (the SFT policy) or 'anchor'")
    eta: float = doc(0.02, "anchor EMA rate: anchor ← (1−η)·anchor + η·policy after every step")
    learning_rate: float = doc(3e-6, "AdamW learning rate (paper: 3e-6)")
    warmup_steps: int = doc(0, "linear warm-up steps, then constant")
    weight_decay: float = doc(0.0, "AdamW weight decay")
    max_grad_norm: float = doc(1.0, "gradient clipping (0 = off)")
    freeze_embeddings: bool = doc(True, "keep the (tied) embeddings frozen")
    lora_r: int = doc(0, "LoRA rank (0 = full fine-tuning); the anchor EMA then runs on the adapters")
    lora_alpha: int = doc(16, "LoRA alpha")
    lora_dropout: float = doc(0.0, "LoRA dropout (dropout is off while sampling either way)")
    lora_target_modules: list[str] = doc(["q_proj", "k_proj", "v_proj", "o_proj"], "LoRA target modules")
    max_new_tokens: int = doc(64, "completion budget")
    max_prompt_length: int = doc(512, "longer prompts are an error (naming the row)")
    temperature: float = doc(1.0, "sampling temperature (1.0 samples π itself, as BOND assumes)")
    top_p: float = doc(1.0, "nucleus sampling threshold")
    generation_batch: int = doc(8, "prompts per generation chunk: each chunk's rewards are scored while the "
                                "next one is generated (on CPU decoding is weight-bandwidth bound, so fewer, "
                                "larger chunks are faster)")
    overlap_rewards: bool = doc(True, "compute the anchor/init log-probs while the last chunk's rewards are "
                                "scored (false: wait for the rewards first, the sequential baseline)")
    generation_workers: int = doc(0, "Ray actors that generate (0 = in this process)")
    generation_worker_gpus: float = doc(0.0, "GPUs each generation actor asks for")
    reward_timeout: float = doc(120.0, "hard wall-clock limit per reward call, in seconds")
    reward_batch_size: int = doc(64, "samples per reward call")
    reward_workers: int = doc(2, "reward worker processes")
    code_timeout: float = doc(10.0, "wall-clock limit per program run by the code reward, in seconds")
    sandbox_isolation: str = doc("bwrap", "code sandbox: 'bwrap', or 'rlimits' (no isolation: unsafe)")
    bf16: bool = doc(True, "bf16 autocast for sampling and the forward passes (fp32 master weights)")
    torch_threads: int | None = doc(None, "CPU threads for this process's torch (None = torch's default)")
    save_steps: int = doc(10, "checkpoint every N steps (and at the end)")
    save_total_limit: int | None = doc(2, "checkpoints kept: older ones are removed once a newer one is "
                                          "published (~1.3 GB each for the demo student); None keeps all")
    log_rollouts: bool = doc(True, "write every policy sample with its scores to rollouts.jsonl")
    seed: int = doc(0, "seed for the data order, sampling and random tie-breaks")
    # WARP (algorithm: warp; posttrain/warp.py)
    inner: str = doc("bond", "WARP's inner RL algorithm: 'bond' (J-BOND) or 'reinforce'")
    iterations: int = doc(2, "WARP iterations I")
    runs: int = doc(2, "WARP: RL runs M per iteration, in parallel as Ray tasks, each from the current init")
    run_cpus: float = doc(1.0, "WARP: CPUs each run's Ray task asks for")
    run_gpus: float = doc(0.0, "WARP: GPUs each run's Ray task asks for")
    slerp_lambda: float | None = doc(None, "WARP: SLERP weight of the second run (M = 2; None = 0.5)")
    liti_eta: float = doc(0.3, "WARP: LITI step, init ← (1−η)·init + η·slerp")
    pareto_etas: list[float] = doc([0.0, 0.25, 0.5, 0.75, 1.0], "WARP: η' of the Pareto front "
                                   "(1−η')·θ_sft + η'·θ_final, each evaluated")
    eval_data: list[str] = doc(["data/demo/eval_math.jsonl", "data/demo/eval_code.jsonl"],
                               "WARP: held-out files the Pareto front is evaluated on")
    eval_max_examples: int | None = doc(None, "WARP: evaluate only the first N rows of each eval file")
    eval_samples: int = doc(4, "WARP: sampled completions per eval prompt (pass@k)")
    ray_address: str | None = doc(None, "Ray cluster address (default: RAY_ADDRESS, else embedded local Ray)")
    resume: bool = doc(False, "continue an unfinished run from its latest checkpoint")
    overwrite: bool = doc(False, "replace a finished run in output_dir")


def _check(config: Config) -> None:
    if config.algorithm not in ALGORITHMS:
        raise UserError(f"unknown algorithm '{config.algorithm}' (expected one of {ALGORITHMS})")
    if config.algorithm == "warp":
        if config.inner not in ("bond", "reinforce"):
            raise UserError(f"inner must be 'bond' or 'reinforce', got '{config.inner}'")
        if config.iterations < 1 or config.runs < 2:
            raise UserError(f"WARP needs iterations >= 1 and runs >= 2 (got {config.iterations}, {config.runs})")
        from posttrain import warp

        warp.check(config)  # before the output dir exists: bad input leaves nothing behind
        config = dataclasses.replace(config, algorithm=config.inner)
    k = anchor_count(config)
    if config.algorithm != "reinforce" and (config.n < 2 or k < 1 or (config.n == 2 and k < 2)):
        raise UserError(f"need n >= 2 and anchor_samples >= 2 (got n={config.n}, anchor_samples={k})")
    if config.ties not in bond.TIES:
        raise UserError(f"ties must be one of {bond.TIES}, got '{config.ties}'")
    if config.regulariser not in ("init", "anchor"):
        raise UserError(f"regulariser must be 'init' or 'anchor', got '{config.regulariser}'")
    if not 0.0 <= config.beta <= 1.0 or not 0.0 <= config.eta <= 1.0:
        raise UserError(f"beta and eta must be in [0, 1] (got beta={config.beta}, eta={config.eta})")
    if min(config.steps, config.prompts_per_step, config.generation_batch, config.max_new_tokens,
           config.save_steps) < 1:
        raise UserError("steps, prompts_per_step, generation_batch, max_new_tokens and save_steps must be >= 1")
    if config.save_total_limit is not None and config.save_total_limit < 1:
        raise UserError(f"save_total_limit must be >= 1 or null (got {config.save_total_limit})")


# ----------------------------------------------------------------------------------------------------
# The policy's trainable tensors; the anchor and the init are other values of the same tensors


def trainable(model) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def snapshot(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in params.items()}


@torch.no_grad()
def assign(params: dict[str, torch.Tensor], values: dict[str, torch.Tensor]) -> None:
    """Copy `values` into the trainable tensors by name (across dtypes and devices)."""
    for name, p in params.items():
        p.copy_(values[name])


@contextlib.contextmanager
def swapped(params: dict[str, torch.Tensor], values: dict[str, torch.Tensor]):
    """Temporarily give the model's trainable tensors other values (the anchor's, the init's)."""
    saved = snapshot(params)
    assign(params, values)
    try:
        yield
    finally:
        assign(params, saved)


def load_policy(spec: str, config: Config, dtype=None):
    """(model, tokenizer) with the config's frozen tensors and LoRA adapters, in eval mode (no dropout)."""
    from posttrain import models

    model, tokenizer = models.load_causal_lm(spec, dtype=dtype)
    if config.freeze_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
    model = models.apply_lora(model, r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                              target_modules=config.lora_target_modules)
    model.eval()
    return model, tokenizer


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(model, enabled: bool):
    device = next(model.parameters()).device
    ok = enabled and (device.type == "cpu" or torch.cuda.is_bf16_supported())
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=ok)


# ----------------------------------------------------------------------------------------------------
# 2. Sampling: policy and anchor samples for a chunk of prompts


class Sampler:
    """Its own copy of the policy in the sampling dtype (bf16 with config.bf16: decoding under autocast
    re-casts every weight at every token, ~6x slower here than a bf16 copy), given the trainable tensors of
    the policy and the anchor every step. Runs in the driver or as a Ray actor (generation_workers)."""

    def __init__(self, spec: str, config: Config):
        self.config = config
        self.model, self.tokenizer = load_policy(spec, config, torch.bfloat16 if config.bf16 else torch.float32)
        self.model.to(_device())
        self.params = trainable(self.model)
        self.anchor = None

    def set_weights(self, policy: dict, anchor: dict) -> None:
        assign(self.params, policy)
        self.anchor = anchor

    def sample(self, job: tuple) -> tuple[list, list]:
        """(policy completions, anchor completions) for a chunk of prompts; noise (B, 1 + k, T) uniforms:
        column 0 drives the policy sample, columns 1..k the anchor samples. A completion is
        (token ids, text, finished)."""
        from posttrain import rollout

        prompts, noise = job
        c = self.config

        def draw(cols):
            r = rollout.sample(self.model, self.tokenizer, prompts, cols.shape[1], max_new_tokens=c.max_new_tokens,
                               temperature=c.temperature, top_p=c.top_p, noise=cols)
            return [(r.completion_ids(i), r.texts[i], bool(r.finished[i])) for i in range(len(r.texts))]

        policy = draw(noise[:, :1])
        if noise.shape[1] == 1:  # REINFORCE: no anchor samples
            return policy, []
        with swapped(self.params, self.anchor):
            anchors = draw(noise[:, 1:])
        return policy, anchors


def anchor_count(config: Config) -> int:
    """Anchor samples per prompt: k for BOND (default n), none for REINFORCE."""
    return 0 if config.algorithm == "reinforce" else (config.anchor_samples or config.n)


def _step_noise(config: Config, step: int, n_prompts: int) -> torch.Tensor:
    k = anchor_count(config)
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    return torch.rand((n_prompts, 1 + k, config.max_new_tokens), generator=gen)


def step_prompts(config: Config, step: int, n_rows: int) -> list[int]:
    """Row indices for a step: consecutive slices of a fresh seeded permutation per epoch."""
    per = config.prompts_per_step
    perms, out = {}, []
    for pos in range((step - 1) * per, step * per):
        epoch, i = divmod(pos, n_rows)
        if epoch not in perms:
            perms[epoch] = torch.randperm(n_rows, generator=torch.Generator().manual_seed(config.seed + 7919 * epoch))
        out.append(int(perms[epoch][i]))
    return out


# ----------------------------------------------------------------------------------------------------
# Rewards


def _score(reward_list, workers, rows: list[dict], messages: list, completions: list[list]) -> dict:
    """Scores of every completion of `rows` (completions[i] = that row's samples), shaped like them."""
    import rewards

    per_row = [len(c) for c in completions]
    keys = sorted({k for r in rows for k in r if k not in ("messages", "_where")})
    flat_msgs = [m for m, c in zip(messages, per_row) for _ in range(c)]
    flat = [text for row in completions for text in row]
    columns = {k: [r.get(k) for r, c in zip(rows, per_row) for _ in range(c)] for k in keys}
    s = rewards.score(reward_list, flat_msgs, flat, columns, workers=workers)

    def unflat(values):
        out, i = [], 0
        for c in per_row:
            out.append(values[i:i + c])
            i += c
        return out

    return {"combined": unflat(s.combined), "per_reward": {k: unflat(v) for k, v in s.per_reward.items()},
            "reasons": {k: unflat(v) for k, v in s.reasons.items()}}


def wait_for_scores(futures: dict, reward_list) -> tuple[dict, float]:
    """The chunks' scores concatenated in prompt order, and the seconds spent waiting for them."""
    t0 = time.perf_counter()
    scores = {"combined": [], "per_reward": {r.name: [] for r in reward_list},
              "reasons": {r.name: [] for r in reward_list}}
    for ci in range(len(futures)):
        s = futures[ci].result()
        scores["combined"] += s["combined"]
        for name in s["per_reward"]:
            scores["per_reward"][name] += s["per_reward"][name]
            scores["reasons"][name] += s["reasons"][name]
    return scores, time.perf_counter() - t0


# ----------------------------------------------------------------------------------------------------
# Checkpoints: trainable tensors of policy and anchor, optimizer, scheduler


def save_checkpoint(out: Path, step: int, model, tokenizer, params, anchor, optimizer, scheduler,
                    keep: int | None = None) -> None:
    """checkpoint-N: the policy as an HF dir (peft adapter dir with LoRA), plus what exact resume needs: the
    trainable tensors of policy and anchor by parameter name, AdamW and scheduler state, the step. Then only
    the newest `keep` checkpoints are kept (resume reads the newest)."""
    from safetensors.torch import save_file
    from transformers.trainer_utils import rotate_checkpoints

    final = out / "checkpoints" / f"checkpoint-{step}"
    staging = artifacts.atomic_dir(final)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    save_file({k: v.detach().cpu().contiguous() for k, v in params.items()}, str(staging / "policy.safetensors"))
    save_file({k: v.cpu().contiguous() for k, v in anchor.items()}, str(staging / "anchor.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, staging / "optim.pt")
    (staging / "state.json").write_text(json.dumps({"step": step}))
    artifacts.publish_dir(staging, final)
    rotate_checkpoints(output_dir=str(final.parent), save_total_limit=keep, best_model_checkpoint=None,
                       use_mtime=False)  # HF's, as the Trainer stages use


def load_checkpoint(path: Path, params, anchor, optimizer, scheduler) -> int:
    from safetensors.torch import load_file

    assign(params, load_file(str(path / "policy.safetensors")))
    assign(anchor, load_file(str(path / "anchor.safetensors")))
    state = torch.load(path / "optim.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return json.loads((path / "state.json").read_text())["step"]


# ----------------------------------------------------------------------------------------------------
# The run


def _load_prompts(config: Config, tokenizer) -> tuple[list[dict], list, list[list[int]]]:
    from posttrain import data
    from posttrain.evaluate import prompt_messages

    rows = []
    for path in config.data:
        rows += data.read_rows(path)[: config.max_examples]
    rows = rows[: config.max_examples]
    if not rows:
        raise UserError(f"no prompts in {config.data}")
    messages = [prompt_messages(r) for r in rows]
    prompts = [data.prompt_ids(tokenizer, m) for m in messages]
    for row, p in zip(rows, prompts):
        if len(p) > config.max_prompt_length:
            raise UserError(f"{row.get('_where', '?')}: prompt is {len(p)} tokens, over max_prompt_length="
                            f"{config.max_prompt_length}")
    return rows, messages, prompts


def _seq_logp(model, prompts, prompt_index, seqs: list[list[int]], bf16: bool) -> torch.Tensor:
    """Sum of token log-probs of each completion (one row per seq)."""
    from posttrain.rollout import sequence_logprobs

    width = max(1, max(len(s) for s in seqs))
    tokens = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        tokens[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = True
    with _autocast(model, bf16):
        lp = sequence_logprobs(model, prompts, torch.tensor(prompt_index), tokens, mask)
    return lp.sum(-1)


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def train(config: Config, out: Path) -> dict:
    """The RL loop: from config.policy to the trained policy saved in `out`. Returns the run's summary."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from rewards.workers import Workers

    from posttrain import cluster
    from posttrain.checkpoint import latest_checkpoint, truncate_metrics
    from posttrain.evaluate import build_rewards

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    reward_list = build_rewards(config)
    device = _device()
    model, tokenizer = load_policy(config.policy, config)
    model.to(device)
    rows, messages, prompts = _load_prompts(config, tokenizer)
    params = trainable(model)
    anchor, init = snapshot(params), snapshot(params)
    k = anchor_count(config)
    reinforce = config.algorithm == "reinforce"
    jbond = config.n == 2 and k == 2
    kl_coef = config.kl_coef if config.kl_coef is not None else (0.1 if reinforce else 1.0 / (config.n - 1))

    optimizer = torch.optim.AdamW(params.values(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps) if config.warmup_steps else 1.0)
    start = 0
    ckpt = latest_checkpoint(out) if config.resume else None
    if ckpt:
        start = load_checkpoint(Path(ckpt), params, anchor, optimizer, scheduler)
        print(f"[posttrain rl] resuming from {ckpt} (step {start})", flush=True)
    for name in ("metrics.jsonl", "rollouts.jsonl"):
        truncate_metrics(out / name, start)

    actors, sampler = [], None
    if config.generation_workers:
        cluster.init(config.ray_address)
        actors = cluster.start_actors(Sampler, num_actors=config.generation_workers,
                                      actor_args=(str(config.policy), config),
                                      num_gpus=config.generation_worker_gpus)
    else:
        sampler = Sampler(str(config.policy), config)
    kill_at = int(os.environ.get("POSTTRAIN_KILL_AT_STEP", 0))  # test hook: a real SIGKILL after a step
    tb = SummaryWriter(str(out / "tensorboard"))
    workers = Workers(processes=config.reward_workers)
    scoring = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rewards")
    try:
        bar = tqdm(range(start + 1, config.steps + 1), desc="rl", initial=start, total=config.steps)
        for step in bar:
            t_step = time.perf_counter()
            idx = step_prompts(config, step, len(rows))
            noise = _step_noise(config, step, len(idx))
            chunks = [list(range(i, min(i + config.generation_batch, len(idx))))
                      for i in range(0, len(idx), config.generation_batch)]
            jobs = [([prompts[idx[j]] for j in c], noise[c[0]:c[-1] + 1]) for c in chunks]

            # 2. generate chunk by chunk; score each chunk while the next is generated
            policy_out, anchor_out, futures = [None] * len(idx), [None] * len(idx), {}

            def collect(ci, result):
                pol, anc = result
                for p, j in enumerate(chunks[ci]):
                    policy_out[j], anchor_out[j] = pol[p], anc[p * k:(p + 1) * k]
                chunk_rows = [rows[idx[j]] for j in chunks[ci]]
                texts = [[policy_out[j][1]] + [a[1] for a in anchor_out[j]] for j in chunks[ci]]
                futures[ci] = scoring.submit(_score, reward_list, workers, chunk_rows,
                                             [messages[idx[j]] for j in chunks[ci]], texts)

            if actors:
                # one object-store copy for all actors; an actor runs its calls in order, so every
                # sample call below sees these weights
                policy_ref = cluster.put({name: v.detach().cpu() for name, v in params.items()})
                anchor_ref = cluster.put({name: v.cpu() for name, v in anchor.items()})
                for a in actors:
                    a.set_weights.remote(policy_ref, anchor_ref)
                for ci, result in cluster.as_completed(actors, "sample", jobs):
                    collect(ci, result)
            else:
                sampler.set_weights(params, anchor)
                for ci, job in enumerate(jobs):
                    collect(ci, sampler.sample(job))
            t_gen = time.perf_counter() - t_step

            # 3. while the last chunk is scored: log π_a(y) and log π_init(y) of the policy samples
            if not config.overlap_rewards:
                scores, t_wait = wait_for_scores(futures, reward_list)
            t0 = time.perf_counter()
            pol_seqs = [policy_out[j][0] for j in range(len(idx))]
            pidx = list(range(len(idx)))
            step_prompt_ids = [prompts[i] for i in idx]
            with torch.no_grad():
                with swapped(params, anchor):
                    logp_anchor = _seq_logp(model, step_prompt_ids, pidx, pol_seqs, config.bf16)
                with swapped(params, init):
                    logp_init = _seq_logp(model, step_prompt_ids, pidx, pol_seqs, config.bf16)
            t_ref = time.perf_counter() - t0
            if config.overlap_rewards:
                scores, t_wait = wait_for_scores(futures, reward_list)

            combined = bond.as_rewards(scores["combined"], device=device)  # (P, 1 + k)
            r_policy, r_anchor = combined[:, 0], combined[:, 1:]
            t0 = time.perf_counter()
            model.zero_grad(set_to_none=True)
            if reinforce:
                # 4-5'. WARP's inner loop: REINFORCE on r − kl_coef·(log π − log π_a), batch baseline
                p_hat = r_bond = torch.full_like(r_policy, math.nan)
                logp_policy = _seq_logp(model, step_prompt_ids, pidx, pol_seqs, config.bf16)
                adv = bond.returns(r_policy, logp_policy, logp_anchor, kl_coef=kl_coef)
                loss = bond.backward_loss(logp_policy, adv)
                stats = {"loss": loss.item(), "forward": 0.0, "backward": loss.item(), "regulariser": 0.0}
            else:
                # 4. BOND reward from ranks against the anchor samples
                tie_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step + 17)
                p_hat = bond.quantile(r_policy.unsqueeze(-1), r_anchor, ties=config.ties, generator=tie_gen)[:, 0]
                if jbond:
                    r_bond = bond.jbond_reward(r_policy, r_anchor, ties=config.ties, generator=tie_gen)
                else:
                    r_bond = bond.bond_reward(p_hat, k)
                # the forward term's target: best of the first n anchor samples (a best-of-n sample)
                best = bond.best_anchor(r_anchor[:, :config.n])
                best_valid = best >= 0
                best_seqs = [anchor_out[j][max(int(best[j]), 0)][0] for j in range(len(idx))]

                # 5. loss and update
                both = _seq_logp(model, step_prompt_ids + step_prompt_ids, pidx + [len(idx) + i for i in pidx],
                                 pol_seqs + best_seqs, config.bf16)
                logp_policy, best_logp = both[:len(idx)], both[len(idx):]
                loss, stats = bond.jbond_loss(
                    logp_policy=logp_policy, logp_anchor=logp_anchor, reward=r_bond, best_logp=best_logp,
                    best_valid=best_valid, beta=config.beta, gamma=config.gamma, kl_coef=kl_coef,
                    logp_reg=logp_init if config.regulariser == "init" else logp_anchor)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(
                list(params.values()), config.max_grad_norm if config.max_grad_norm > 0 else float("inf"))
            optimizer.step()
            scheduler.step()
            # 6. anchor EMA
            bond.ema_update(anchor.values(), params.values(), config.eta)
            t_train = time.perf_counter() - t0
            t_total = time.perf_counter() - t_step

            lengths = [len(s) for s in pol_seqs]
            token_logp = [-(logp_policy[j].item()) / max(1, lengths[j]) for j in range(len(idx))]
            metrics = {
                "step": step, "reward": _mean(r_policy.tolist()), "reward_anchor": _mean(r_anchor.flatten().tolist()),
                **{f"reward/{name}": _mean([v[0] for v in vals]) for name, vals in scores["per_reward"].items()},
                # scores that failed (timeout, crash); a reward that does not apply to a row is None too
                "reward_failed": sum(v is not None for vals in scores["reasons"].values() for row in vals for v in row),
                "bond_reward": _mean(r_bond.tolist()), "quantile": _mean(p_hat.tolist()),
                "kl_anchor": (logp_policy.detach() - logp_anchor).mean().item(),
                "kl_init": (logp_policy.detach() - logp_init).mean().item(),
                "entropy": sum(token_logp) / len(token_logp),
                "length": sum(lengths) / len(lengths),
                "finished": sum(policy_out[j][2] for j in range(len(idx))) / len(idx),
                "loss": stats["loss"], "forward": stats["forward"], "backward": stats["backward"],
                "regulariser": stats["regulariser"], "grad_norm": float(grad_norm),
                "lr": scheduler.get_last_lr()[0],
                "time/generate": t_gen, "time/ref_logprobs": t_ref, "time/reward_wait": t_wait,
                "time/train": t_train, "time/step": t_total, "reward_wait_share": t_wait / t_total,
            }
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            for key, value in metrics.items():
                if key != "step" and value is not None:
                    tb.add_scalar(f"rl/{key}", value, step)
            if config.log_rollouts:
                with open(out / "rollouts.jsonl", "a") as f:
                    for j, i in enumerate(idx):
                        f.write(json.dumps({
                            "step": step, "id": rows[i].get("id", i), "completion": policy_out[j][1],
                            "scores": {n: v[j][0] for n, v in scores["per_reward"].items()},
                            "reasons": {n: v[j][0] for n, v in scores["reasons"].items() if v[j][0]},
                            "anchor_rewards": scores["combined"][j][1:], "bond_reward": _nan_none(r_bond[j])}) + "\n")
            bar.set_postfix(reward=_fmt(metrics["reward"]), kl=f"{metrics['kl_anchor']:.3f}")
            if step % config.save_steps == 0 or step == config.steps:
                save_checkpoint(out, step, model, tokenizer, params, anchor, optimizer, scheduler,
                                config.save_total_limit)
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if not math.isfinite(stats["loss"]):
                raise UserError(f"step {step}: the loss is not finite ({stats['loss']}); lower learning_rate")
    finally:
        scoring.shutdown(wait=True)
        workers.close()
        tb.close()
        if actors:
            cluster.kill(actors)

    staging = artifacts.atomic_dir(out / "model")
    final = model.merge_and_unload() if config.lora_r > 0 else model
    final.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    staging.rmdir()
    all_metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    plot(all_metrics, out / "reward_kl.png")
    return summarize(all_metrics)


def _nan_none(x: torch.Tensor) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def summarize(metrics: list[dict], window: int = 5) -> dict:
    """Mean reward and KL of the first and last `window` steps, and the step-time breakdown."""
    def avg(key, part):
        vals = [m[key] for m in part if m.get(key) is not None]
        return sum(vals) / len(vals) if vals else None

    first, last = metrics[:window], metrics[-window:]
    out = {"steps": len(metrics)}
    for key in ("reward", "reward_anchor", "bond_reward", "kl_anchor", "kl_init", "length"):
        out[f"{key}_first"], out[f"{key}_last"] = avg(key, first), avg(key, last)
    total = sum(m["time/step"] for m in metrics)
    for key in ("generate", "ref_logprobs", "reward_wait", "train"):
        out[f"time_share/{key}"] = sum(m[f"time/{key}"] for m in metrics) / total if total else None
    out["seconds_per_step"] = total / len(metrics) if metrics else None
    return out


def plot(metrics: list[dict], path: Path) -> None:
    """Reward (policy and anchor samples) and KL (to anchor and to init) over steps, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("reward", "policy samples"), ("reward_anchor", "anchor samples")):
        ax1.plot(steps, [m.get(key) if m.get(key) is not None else math.nan for m in metrics], label=label)
    ax1.set(xlabel="step", ylabel="combined reward", title="reward")
    ax1.legend()
    for key, label in (("kl_anchor", "KL(π‖anchor)"), ("kl_init", "KL(π‖init)")):
        ax2.plot(steps, [m[key] for m in metrics], label=label)
    ax2.set(xlabel="step", ylabel="nats / sequence", title="KL (sample estimate)")
    ax2.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def run(config: Config) -> Path:
    from posttrain import cluster, models

    _check(config)
    if Path(config.policy).is_dir():
        artifacts.require_done(config.policy, "policy")
    policy_dir = models.resolve(config.policy)  # before the output dir exists: a bad spec leaves nothing
    out = artifacts.prepare_output(config.output_dir, overwrite=config.overwrite, resume=config.resume)
    torch.manual_seed(config.seed)
    if config.algorithm == "warp":
        from posttrain import warp

        return warp.run(config, out, policy_dir)
    summary = train(config, out)
    artifacts.write_manifest(out, stage="rl", config=cfg.to_dict(config),
                             inputs={"policy": str(policy_dir), "data": config.data},
                             extra={"summary": summary, "ray": cluster.describe()})
    artifacts.mark_done(out)
    _print_summary(summary)
    return out


def _print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"posttrain rl: first vs last steps ({summary['steps']} steps)")
    for col in ("", "first", "last"):
        table.add_column(col)
    for key in ("reward", "reward_anchor", "bond_reward", "kl_anchor", "kl_init", "length"):
        table.add_row(key, _fmt(summary[f"{key}_first"]), _fmt(summary[f"{key}_last"]))
    Console().print(table)
