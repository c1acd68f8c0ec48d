"""`posttrain rl`: J-BOND with an EMA anchor (or REINFORCE) on prompts scored by pluggable rewards.

`train()` is this loop (the maths is in posttrain/bond.py, ../shared/ALGORITHMS.md):
  1. take the next `prompts_per_step` prompts (a seeded permutation per epoch);
  2. `sample_and_score`: 1 completion per prompt from the policy π and `anchor_samples` (k, default n = 2)
     from the anchor π_a, in chunks of `generation_batch` prompts, in-process or on a Ray actor pool; each
     chunk's rewards are scored in the reward workers while the next chunk is generated, and while the last
     chunk is scored: log π_a(y) and log π_init(y) of the policy samples (no grad);
  3. the algorithm's loss (`LOSSES[config.algorithm]`):
       bond:      BOND reward of each policy sample from its ranks against its prompt's anchor samples, r_J
                  (n = k = 2, J-BOND) or log p̂≤ (general N), with the tie rule `ties`; loss = (1−β)·NLL(best
                  anchor sample; `forward: contrast` subtracts the mean over the anchor samples) +
                  β·PG(r − kl_coef·(log π − log π_a), baseline) + γ·KL-surrogate to `regulariser` (the SFT
                  init by default);
       reinforce: WARP's inner loop, PG(r − kl_coef·(log π − log π_a), baseline), no anchor samples;
  4. `update`: one AdamW step, then anchor ← (1−η)·anchor + η·policy (the trainable tensors; with LoRA the
     anchor is the init, η = 0: an EMA of the factors A, B would not be an EMA of the policy W + B·A);
  5. `log_step` (metrics.jsonl, TensorBoard, rollouts.jsonl), a checkpoint every `save_steps`, the hooks.

Choices (docs/ARCHITECTURE.md): log π(y) is the sum of token log-probs (the sequence probability the
paper's π(y) is), not a per-token mean, at the sampling temperature and top-p (the distribution that was
sampled, posttrain/rollout.py); dropout is off (model.eval()) so sampling and training see one
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
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from posttrain import artifacts, bond, scoring
from posttrain import config as cfg
from posttrain.config import doc
from posttrain.errors import UserError
from posttrain.hooks import NO_HOOKS, Hooks
from posttrain.models import Lora

ALGORITHMS = ("bond", "reinforce")


@dataclasses.dataclass
class Config:
    algorithm: str = doc(
        "bond",
        "'bond' (J-BOND) or 'reinforce' (REINFORCE with the KL to the EMA anchor, "
        "WARP's inner loop; `posttrain warp` runs WARP around either)",
    )
    policy: str = doc(
        "runs/demo/sft",
        "initial policy: an HF dir (a `posttrain sft` output), a .gguf file, 'gemma3-270m' or 'tiny:...'",
    )
    data: list[str] = doc(
        ["data/demo/sft.jsonl"],
        "prompt files (.jsonl, .parquet or datasets dirs): rows "
        "with 'messages' (trailing assistant turns are dropped) plus the rewards' columns",
    )
    output_dir: str = doc("runs/rl", "output dir: final policy (HF), metrics, rollouts, plot, checkpoints")
    rewards: scoring.Rewards = doc(scoring.Rewards(), "the rewards and how they run (names, weights, ...)")
    max_examples: int | None = doc(None, "use only the first N prompts (None = all)")
    steps: int = doc(40, "optimizer steps")
    prompts_per_step: int = doc(8, "prompts per step (the batch)")
    n: int = doc(2, "BOND's N: the policy distils best-of-N of the anchor (N = 2 is J-BOND)")
    anchor_samples: int | None = doc(
        None,
        "anchor samples per prompt k for the quantile estimate (default n); "
        "n = k = 2 uses J-BOND's r_J, otherwise r = log p̂≤ from the k samples",
    )
    ties: str = doc(
        "mid",
        "how a reward tie counts: 'mid' (1/2), 'paper' (as written: a tie is ≤ for "
        "p̂≤ and r_J needs a strict loss) or 'random' (coin flip)",
    )
    beta: float = doc(0.5, "Jeffreys mix: (1−β)·forward (SFT on the best anchor sample) + β·backward (PG)")
    forward: str = doc(
        "best",
        "the forward term's estimator: 'best' (SFT on the best anchor sample, the paper) or 'contrast' "
        "(minus the mean over the anchor samples: the same expected gradient while the policy is its anchor, "
        "0 on prompts whose anchor samples tie; posttrain/bond.py)",
    )
    kl_coef: float | None = doc(
        None, "KL-to-anchor weight in the backward return (default 1/(n−1); reinforce: 0.1)"
    )
    gamma: float = doc(0.0, "weight of the extra KL regulariser (the paper tries 0, 0.5, 1, 2)")
    regulariser: str = doc("init", "the regulariser's target: 'init' (the SFT policy) or 'anchor'")
    eta: float = doc(0.02, "anchor EMA rate: anchor ← (1−η)·anchor + η·policy after every step")
    learning_rate: float = doc(3e-6, "AdamW learning rate (paper: 3e-6)")
    warmup_steps: int = doc(0, "linear warm-up steps, then constant")
    weight_decay: float = doc(0.0, "AdamW weight decay")
    max_grad_norm: float = doc(1.0, "gradient clipping (0 = off)")
    freeze_embeddings: bool = doc(True, "keep the (tied) embeddings frozen")
    lora: Lora = doc(
        Lora(),
        "LoRA adapters (lora.r = 0: full fine-tuning); with LoRA the anchor must stay the init (eta = 0)",
    )
    baseline: str = doc(
        "batch",
        "policy-gradient baseline: 'batch' (mean return of the batch, each sample's own included) or "
        "'loo' (leave-one-out: the mean of the other samples' returns)",
    )
    max_new_tokens: int = doc(64, "completion budget")
    max_prompt_length: int = doc(512, "longer prompts are an error (naming the row)")
    temperature: float = doc(
        1.0,
        "sampling temperature (> 0); the losses, the KL and the anchor score the samples at this "
        "temperature and top_p: the distribution that was sampled",
    )
    top_p: float = doc(1.0, "nucleus sampling threshold, in (0, 1]")
    generation_batch: int = doc(
        8,
        "prompts per generation chunk: each chunk's rewards are scored while the "
        "next one is generated (on CPU decoding is weight-bandwidth bound, so fewer, "
        "larger chunks are faster)",
    )
    overlap_rewards: bool = doc(
        True,
        "compute the anchor/init log-probs while the last chunk's rewards are "
        "scored (false: wait for the rewards first, the sequential baseline)",
    )
    generation_workers: int = doc(0, "Ray actors that generate (0 = in this process)")
    generation_worker_gpus: float = doc(0.0, "GPUs each generation actor asks for")
    bf16: bool = doc(True, "bf16 autocast for sampling and the forward passes (fp32 master weights)")
    torch_threads: int | None = doc(None, "CPU threads for this process's torch (None = torch's default)")
    save_steps: int = doc(10, "checkpoint every N steps (and at the end)")
    save_total_limit: int | None = doc(
        2,
        "checkpoints kept: older ones are removed once a newer one is "
        "published (~1.3 GB each for the demo student); None keeps all",
    )
    log_rollouts: bool = doc(True, "write every policy sample with its scores to rollouts.jsonl")
    seed: int = doc(0, "seed for the data order, sampling and random tie-breaks")
    ray_address: str | None = doc(None, "Ray cluster address (default: RAY_ADDRESS, else embedded local Ray)")
    resume: bool = doc(False, "continue an unfinished run from its latest checkpoint")
    overwrite: bool = doc(False, "replace a finished run in output_dir")


def check(config: Config) -> None:
    """Every field's range, before anything is loaded or written."""
    if config.algorithm not in ALGORITHMS:
        raise UserError(
            f"unknown algorithm '{config.algorithm}' (expected one of {ALGORITHMS}; WARP is `posttrain warp`)"
        )
    k = anchor_count(config)
    if config.algorithm == "bond" and (config.n < 2 or k < 1 or (config.n == 2 and k < 2)):
        raise UserError(f"need n >= 2 and anchor_samples >= 2 (got n={config.n}, anchor_samples={k})")
    if config.forward not in bond.FORWARDS:
        raise UserError(f"forward must be one of {bond.FORWARDS}, got '{config.forward}'")
    if config.ties not in bond.TIES:
        raise UserError(f"ties must be one of {bond.TIES}, got '{config.ties}'")
    if config.regulariser not in ("init", "anchor"):
        raise UserError(f"regulariser must be 'init' or 'anchor', got '{config.regulariser}'")
    if not 0.0 <= config.beta <= 1.0 or not 0.0 <= config.eta <= 1.0:
        raise UserError(f"beta and eta must be in [0, 1] (got beta={config.beta}, eta={config.eta})")
    if (
        min(
            config.steps,
            config.prompts_per_step,
            config.generation_batch,
            config.max_new_tokens,
            config.save_steps,
        )
        < 1
    ):
        raise UserError("steps, prompts_per_step, generation_batch, max_new_tokens and save_steps must be >= 1")
    if config.save_total_limit is not None and config.save_total_limit < 1:
        raise UserError(f"save_total_limit must be >= 1 or null (got {config.save_total_limit})")
    if config.temperature <= 0 or not 0.0 < config.top_p <= 1.0:
        raise UserError(
            f"temperature must be > 0 and top_p in (0, 1] (got temperature={config.temperature}, "
            f"top_p={config.top_p}): RL scores the distribution it samples, and greedy decoding is none"
        )
    if config.baseline not in bond.BASELINES:
        raise UserError(f"baseline must be one of {bond.BASELINES}, got '{config.baseline}'")
    if config.lora.r > 0 and config.eta > 0:
        # B·A is not linear in (A, B): the EMA of the factors is not the EMA of the merged weights
        raise UserError(
            f"lora.r={config.lora.r} with eta={config.eta}: an EMA of the LoRA factors A and B is not an EMA "
            "of the policy (its weights are W + B·A, not linear in A and B); set eta=0 (the anchor stays the "
            "init) or lora.r=0 (full fine-tuning)"
        )
    scoring.check(config.rewards)


def anchor_count(config: Config) -> int:
    """Anchor samples per prompt: k for BOND (default n), none for REINFORCE."""
    return 0 if config.algorithm == "reinforce" else (config.anchor_samples or config.n)


def kl_coefficient(config: Config) -> float:
    if config.kl_coef is not None:
        return config.kl_coef
    return 0.1 if config.algorithm == "reinforce" else 1.0 / (config.n - 1)


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
    model = models.apply_lora(model, config.lora, seed=config.seed)
    model.eval()
    return model, tokenizer


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _autocast(model, enabled: bool):
    device = next(model.parameters()).device
    from posttrain import models

    ok = models.use_bf16(enabled, device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=ok)


def _sample_bf16(config: Config) -> bool:
    from posttrain import models

    return models.use_bf16(config.bf16)


@dataclasses.dataclass
class State:
    """What the loop changes and a checkpoint holds: the policy (whose trainable tensors are `params`), the
    anchor's and the init's values of those tensors, AdamW and the scheduler, and the last finished step."""

    model: torch.nn.Module
    tokenizer: object
    params: dict[str, torch.Tensor]
    anchor: dict[str, torch.Tensor]
    init: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: int = 0


def initial_state(config: Config) -> State:
    model, tokenizer = load_policy(config.policy, config)
    model.to(_device())
    params = trainable(model)
    optimizer = torch.optim.AdamW(params.values(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    )
    return State(model, tokenizer, params, snapshot(params), snapshot(params), optimizer, scheduler)


# ----------------------------------------------------------------------------------------------------
# Checkpoints: trainable tensors of policy and anchor, optimizer, scheduler


def save_checkpoint(out: Path, state: State, keep: int | None = None) -> None:
    """checkpoint-N: the policy as an HF dir (peft adapter dir with LoRA), plus what exact resume needs: the
    trainable tensors of policy and anchor by parameter name, AdamW and scheduler state, the step. Then only
    the newest `keep` checkpoints are kept (resume reads the newest)."""
    from safetensors.torch import save_file
    from transformers.trainer_utils import rotate_checkpoints

    final = out / "checkpoints" / f"checkpoint-{state.step}"
    staging = artifacts.atomic_dir(final)
    state.model.save_pretrained(staging)
    state.tokenizer.save_pretrained(staging)
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in state.params.items()}, str(staging / "policy.safetensors")
    )
    save_file({k: v.cpu().contiguous() for k, v in state.anchor.items()}, str(staging / "anchor.safetensors"))
    torch.save(
        {"optimizer": state.optimizer.state_dict(), "scheduler": state.scheduler.state_dict()},
        staging / "optim.pt",
    )
    (staging / "state.json").write_text(json.dumps({"step": state.step}))
    artifacts.publish_dir(staging, final)
    rotate_checkpoints(
        output_dir=str(final.parent), save_total_limit=keep, best_model_checkpoint=None, use_mtime=False
    )  # HF's, as the Trainer stages use


def load_checkpoint(path: Path, state: State) -> None:
    from safetensors.torch import load_file

    assign(state.params, load_file(str(path / "policy.safetensors")))
    assign(state.anchor, load_file(str(path / "anchor.safetensors")))
    saved = torch.load(path / "optim.pt", weights_only=True)
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    state.step = json.loads((path / "state.json").read_text())["step"]


# ----------------------------------------------------------------------------------------------------
# Prompts and the step's share of them


@dataclasses.dataclass
class Prompts:
    rows: list[dict]  # the dataset rows (their columns go to the rewards)
    messages: list[list[dict]]  # each row's prompt turns
    ids: list[list[int]]  # each row's prompt tokens, ending `<start_of_turn>model\n`


def load_prompts(config: Config, tokenizer) -> Prompts:
    from posttrain import data

    rows = []
    for path in config.data:
        rows += data.read_rows(path)[: config.max_examples]
    rows = rows[: config.max_examples]
    if not rows:
        raise UserError(f"no prompts in {config.data}")
    messages = [data.prompt_messages(r) for r in rows]
    ids = [data.prompt_ids(tokenizer, m) for m in messages]
    for row, p in zip(rows, ids):
        if len(p) > config.max_prompt_length:
            raise UserError(
                f"{row.get('_where', '?')}: prompt is {len(p)} tokens, over max_prompt_length="
                f"{config.max_prompt_length}"
            )
    return Prompts(rows, messages, ids)


def step_prompts(config: Config, step: int, n_rows: int) -> list[int]:
    """Row indices for a step: consecutive slices of a fresh seeded permutation per epoch."""
    per = config.prompts_per_step
    perms, out = {}, []
    for pos in range((step - 1) * per, step * per):
        epoch, i = divmod(pos, n_rows)
        if epoch not in perms:
            perms[epoch] = torch.randperm(
                n_rows, generator=torch.Generator().manual_seed(config.seed + 7919 * epoch)
            )
        out.append(int(perms[epoch][i]))
    return out


def _step_noise(config: Config, step: int, n_prompts: int) -> torch.Tensor:
    """(prompts, 1 + k, T) uniforms: column 0 drives the policy sample, columns 1..k the anchor samples."""
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    return torch.rand((n_prompts, 1 + anchor_count(config), config.max_new_tokens), generator=gen)


# ----------------------------------------------------------------------------------------------------
# 2. Sampling and scoring


class Sampler:
    """Its own copy of the policy in the sampling dtype (bf16 with config.bf16: decoding under autocast
    re-casts every weight at every token, ~6x slower here than a bf16 copy), given the trainable tensors of
    the policy and the anchor every step. Runs in the driver or as a Ray actor (generation_workers)."""

    def __init__(self, spec: str, config: Config):
        self.config = config
        dtype = torch.bfloat16 if _sample_bf16(config) else torch.float32
        self.model, self.tokenizer = load_policy(spec, config, dtype)
        self.model.to(_device())
        self.params = trainable(self.model)
        self.anchor = None

    def set_weights(self, policy: dict, anchor: dict) -> None:
        assign(self.params, policy)
        self.anchor = anchor

    def sample(self, job: tuple) -> tuple[list, list]:
        """(policy completions, anchor completions) for a chunk of prompts and its noise (B, 1 + k, T). A
        completion is (token ids, text, finished)."""
        from posttrain import rollout

        prompts, noise = job
        c = self.config

        def draw(cols):
            r = rollout.sample(
                self.model,
                self.tokenizer,
                prompts,
                cols.shape[1],
                max_new_tokens=c.max_new_tokens,
                temperature=c.temperature,
                top_p=c.top_p,
                noise=cols,
            )
            return [(r.completion_ids(i), r.texts[i], bool(r.finished[i])) for i in range(len(r.texts))]

        policy = draw(noise[:, :1])
        if noise.shape[1] == 1:  # REINFORCE: no anchor samples
            return policy, []
        with swapped(self.params, self.anchor):
            anchors = draw(noise[:, 1:])
        return policy, anchors


class Services:
    """What the loop talks to besides the model: the sampler (in this process, or Ray actors), the reward list,
    the reward worker processes and the threads that wait on them. A context manager: closed on exit."""

    def __init__(self, config: Config):
        from posttrain import cluster
        from rewards.workers import Workers

        self.reward_list = scoring.build(config.rewards)
        self.actors, self.sampler = [], None
        if config.generation_workers:
            cluster.init(config.ray_address)
            self.actors = cluster.start_actors(
                Sampler,
                num_actors=config.generation_workers,
                actor_args=(str(config.policy), config),
                num_gpus=config.generation_worker_gpus,
            )
        else:
            self.sampler = Sampler(str(config.policy), config)
        self.workers = Workers(processes=config.rewards.workers)
        self.scoring = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rewards")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        from posttrain import cluster

        self.scoring.shutdown(wait=True)
        self.workers.close()
        if self.actors:
            cluster.kill(self.actors)

    def generate(self, state: State, jobs: list[tuple]):
        """(chunk index, (policy completions, anchor completions)) as each chunk is done."""
        from posttrain import cluster

        if not self.actors:
            self.sampler.set_weights(state.params, state.anchor)
            yield from enumerate(self.sampler.sample(job) for job in jobs)
            return
        # one object-store copy for all actors; an actor runs its calls in order, so every sample call below
        # sees these weights
        policy_ref = cluster.put({name: v.detach().cpu() for name, v in state.params.items()})
        anchor_ref = cluster.put({name: v.cpu() for name, v in state.anchor.items()})
        for a in self.actors:
            a.set_weights.remote(policy_ref, anchor_ref)
        yield from cluster.as_completed(self.actors, "sample", jobs)


@dataclasses.dataclass
class Rollouts:
    """One step's samples, their scores and the reference log-probs of the policy samples."""

    idx: list[int]  # the step's row indices
    prompt_ids: list[list[int]]  # their prompt tokens
    policy: list[tuple]  # per prompt: (token ids, text, finished) of the policy sample
    anchors: list[list[tuple]]  # per prompt: its k anchor samples
    scores: dict  # scoring.score_groups of [policy sample, *anchor samples] per prompt
    logp_anchor: torch.Tensor  # (P,) log π_a(y) of the policy samples
    logp_init: torch.Tensor  # (P,) log π_init(y)
    times: dict[str, float]

    @property
    def policy_ids(self) -> list[list[int]]:
        return [p[0] for p in self.policy]


def sample_and_score(config: Config, state: State, prompts: Prompts, services: Services, step: int) -> Rollouts:
    """Generate the step's samples chunk by chunk, scoring each chunk while the next is generated, and the
    anchor/init log-probs of the policy samples while the last chunk is scored."""
    t_start = time.perf_counter()
    idx = step_prompts(config, step, len(prompts.rows))
    noise = _step_noise(config, step, len(idx))
    chunks = [
        list(range(i, min(i + config.generation_batch, len(idx))))
        for i in range(0, len(idx), config.generation_batch)
    ]
    jobs = [([prompts.ids[idx[j]] for j in c], noise[c[0] : c[-1] + 1]) for c in chunks]
    k = anchor_count(config)
    policy, anchors, futures = [None] * len(idx), [None] * len(idx), {}
    for ci, (pol, anc) in services.generate(state, jobs):
        for p, j in enumerate(chunks[ci]):
            policy[j], anchors[j] = pol[p], anc[p * k : (p + 1) * k]
        texts = [[policy[j][1]] + [a[1] for a in anchors[j]] for j in chunks[ci]]
        futures[ci] = services.scoring.submit(
            scoring.score_groups,
            services.reward_list,
            services.workers,
            [prompts.rows[idx[j]] for j in chunks[ci]],
            [prompts.messages[idx[j]] for j in chunks[ci]],
            texts,
        )
    times = {"generate": time.perf_counter() - t_start}

    if not config.overlap_rewards:
        scores, times["reward_wait"] = _wait_for_scores(futures, services.reward_list)
    t0 = time.perf_counter()
    prompt_ids = [prompts.ids[i] for i in idx]
    seqs = [p[0] for p in policy]
    with torch.no_grad():
        with swapped(state.params, state.anchor):
            logp_anchor = _seq_logp(state.model, prompt_ids, seqs, config)
        with swapped(state.params, state.init):
            logp_init = _seq_logp(state.model, prompt_ids, seqs, config)
    times["ref_logprobs"] = time.perf_counter() - t0
    if config.overlap_rewards:
        scores, times["reward_wait"] = _wait_for_scores(futures, services.reward_list)
    return Rollouts(idx, prompt_ids, policy, anchors, scores, logp_anchor, logp_init, times)


def _wait_for_scores(futures: dict, reward_list) -> tuple[dict, float]:
    """The chunks' scores concatenated in prompt order, and the seconds spent waiting for them."""
    t0 = time.perf_counter()
    scores = {
        "combined": [],
        "per_reward": {r.name: [] for r in reward_list},
        "reasons": {r.name: [] for r in reward_list},
    }
    for ci in range(len(futures)):
        s = futures[ci].result()
        scores["combined"] += s["combined"]
        for name in s["per_reward"]:
            scores["per_reward"][name] += s["per_reward"][name]
            scores["reasons"][name] += s["reasons"][name]
    return scores, time.perf_counter() - t0


def _seq_logp(model, prompts: list[list[int]], seqs: list[list[int]], config: Config) -> torch.Tensor:
    """Sum of token log-probs of each completion seqs[i] of prompts[i], at the sampling temperature and
    top-p (the distribution the samples were drawn from)."""
    from posttrain.rollout import sequence_logprobs

    width = max(1, max(len(s) for s in seqs))
    tokens = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    with _autocast(model, config.bf16):
        lp = sequence_logprobs(
            model,
            prompts,
            torch.arange(len(seqs)),
            tokens,
            mask,
            temperature=config.temperature,
            top_p=config.top_p,
        )
    return lp.sum(-1)


# ----------------------------------------------------------------------------------------------------
# 3. The losses, one per algorithm


@dataclasses.dataclass
class Loss:
    loss: torch.Tensor
    logp_policy: torch.Tensor  # (P,) log π(y) of the policy samples, with grad
    bond_reward: torch.Tensor  # (P,) r_J or log p̂≤ (NaN for REINFORCE)
    quantile: torch.Tensor  # (P,) p̂≤ (NaN for REINFORCE)
    stats: dict[str, float]  # loss, forward, backward, regulariser


def bond_loss(config: Config, state: State, batch: Rollouts, rewards: torch.Tensor, step: int) -> Loss:
    """J-BOND (general N: log p̂≤): forward term on the best anchor sample, backward term on the BOND reward."""
    r_policy, r_anchor = rewards[:, 0], rewards[:, 1:]
    tie_gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step + 17)
    p_hat = bond.quantile(r_policy.unsqueeze(-1), r_anchor, ties=config.ties, generator=tie_gen)[:, 0]
    if config.n == 2 and anchor_count(config) == 2:
        r_bond = bond.jbond_reward(r_policy, r_anchor, ties=config.ties, generator=tie_gen)
    else:
        r_bond = bond.bond_reward(p_hat, anchor_count(config))
    # the forward term's target: best of the first n anchor samples (a best-of-n sample); only the anchor
    # samples with a non-zero weight are scored (with "contrast", none of a prompt whose samples all tie)
    weights = bond.forward_weights(r_anchor[:, : config.n], config.forward)
    rows, cols = weights.nonzero(as_tuple=True)
    p = len(batch.idx)
    both = _seq_logp(
        state.model,
        batch.prompt_ids + [batch.prompt_ids[j] for j in rows.tolist()],
        batch.policy_ids + [batch.anchors[j][i][0] for j, i in zip(rows.tolist(), cols.tolist())],
        config,
    )
    logp_policy = both[:p]
    loss, stats = bond.jbond_loss(
        logp_policy=logp_policy,
        logp_anchor=batch.logp_anchor,
        reward=r_bond,
        forward_logp=both[p:],
        forward_weight=weights[rows, cols],
        forward_prompts=int((~torch.isnan(r_anchor[:, : config.n])).any(-1).sum()),
        beta=config.beta,
        gamma=config.gamma,
        kl_coef=kl_coefficient(config),
        logp_reg=batch.logp_init if config.regulariser == "init" else batch.logp_anchor,
        baseline=config.baseline,
    )
    return Loss(loss, logp_policy, r_bond, p_hat, stats)


def reinforce_loss(config: Config, state: State, batch: Rollouts, rewards: torch.Tensor, step: int) -> Loss:
    """WARP's inner loop: REINFORCE on r − kl_coef·(log π − log π_a), batch or LOO baseline."""
    r_policy = rewards[:, 0]
    logp_policy = _seq_logp(state.model, batch.prompt_ids, batch.policy_ids, config)
    adv = bond.returns(
        r_policy, logp_policy, batch.logp_anchor, kl_coef=kl_coefficient(config), baseline=config.baseline
    )
    loss = bond.backward_loss(logp_policy, adv)
    nan = torch.full_like(r_policy, math.nan)
    return Loss(
        loss,
        logp_policy,
        nan,
        nan,
        {"loss": loss.item(), "forward": 0.0, "backward": loss.item(), "regulariser": 0.0},
    )


LOSSES = {"bond": bond_loss, "reinforce": reinforce_loss}


# ----------------------------------------------------------------------------------------------------
# 4. The update; 5. the step's records


def update(config: Config, state: State, loss: torch.Tensor) -> float:
    """Backward, clip, one AdamW and scheduler step, then the anchor EMA; returns the gradient norm."""
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(
        list(state.params.values()), config.max_grad_norm if config.max_grad_norm > 0 else float("inf")
    )
    state.optimizer.step()
    state.scheduler.step()
    bond.ema_update(state.anchor.values(), state.params.values(), config.eta)
    return float(grad_norm)


def step_metrics(
    step: int,
    batch: Rollouts,
    rewards: torch.Tensor,
    out: Loss,
    grad_norm: float,
    lr: float,
    times: dict[str, float],
) -> dict:
    scores = batch.scores
    lengths = [len(s) for s in batch.policy_ids]
    logp = out.logp_policy.detach()
    token_logp = [-(logp[j].item()) / max(1, lengths[j]) for j in range(len(lengths))]
    return {
        "step": step,
        "reward": _mean(rewards[:, 0].tolist()),
        "reward_anchor": _mean(rewards[:, 1:].flatten().tolist()),
        **{f"reward/{name}": _mean([v[0] for v in vals]) for name, vals in scores["per_reward"].items()},
        # scores that failed (timeout, crash): None with a reason; a reward that does not apply to a row is None
        # without one, and a wrong answer has a score and a reason
        "reward_failed": sum(
            score is None and reason is not None
            for name, vals in scores["per_reward"].items()
            for row, why in zip(vals, scores["reasons"][name])
            for score, reason in zip(row, why)
        ),
        "bond_reward": _mean(out.bond_reward.tolist()),
        "quantile": _mean(out.quantile.tolist()),
        "kl_anchor": (logp - batch.logp_anchor).mean().item(),
        "kl_init": (logp - batch.logp_init).mean().item(),
        "entropy": sum(token_logp) / len(token_logp),
        "length": sum(lengths) / len(lengths),
        "finished": sum(p[2] for p in batch.policy) / len(lengths),
        **{key: out.stats[key] for key in ("loss", "forward", "backward", "regulariser")},
        "grad_norm": grad_norm,
        "lr": lr,
        **{f"time/{key}": times[key] for key in ("generate", "ref_logprobs", "reward_wait", "train", "step")},
        "reward_wait_share": times["reward_wait"] / times["step"],
    }


def log_step(
    out: Path, tb, metrics: dict, batch: Rollouts, rows: list[dict], bond_reward: torch.Tensor, log_rollouts: bool
) -> None:
    """metrics.jsonl, TensorBoard, and every policy sample with its scores in rollouts.jsonl."""
    step = metrics["step"]
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(metrics) + "\n")
    for key, value in metrics.items():
        if key != "step" and value is not None:
            tb.add_scalar(f"rl/{key}", value, step)
    if not log_rollouts:
        return
    scores = batch.scores
    with open(out / "rollouts.jsonl", "a") as f:
        for j, i in enumerate(batch.idx):
            f.write(
                json.dumps(
                    {
                        "step": step,
                        "id": rows[i].get("id", i),
                        "completion": batch.policy[j][1],
                        "scores": {n: v[j][0] for n, v in scores["per_reward"].items()},
                        "reasons": {n: v[j][0] for n, v in scores["reasons"].items() if v[j][0]},
                        "anchor_rewards": scores["combined"][j][1:],
                        "bond_reward": _nan_none(bond_reward[j]),
                    }
                )
                + "\n"
            )


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def _nan_none(x: torch.Tensor) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


# ----------------------------------------------------------------------------------------------------
# The loop


def train(config: Config, out: Path, hooks: Hooks = NO_HOOKS) -> dict:
    """The RL loop: from config.policy to the trained policy saved in `out`. Returns the run's summary."""
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    from posttrain.checkpoint import latest_checkpoint, truncate_metrics

    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    state = initial_state(config)
    prompts = load_prompts(config, state.tokenizer)
    ckpt = latest_checkpoint(out) if config.resume else None
    if ckpt:
        load_checkpoint(Path(ckpt), state)
        print(f"[posttrain rl] resuming from {ckpt} (step {state.step})", flush=True)
    for name in ("metrics.jsonl", "rollouts.jsonl"):
        truncate_metrics(out / name, state.step)

    compute_loss = LOSSES[config.algorithm]
    with Services(config) as services, SummaryWriter(str(out / "tensorboard")) as tb:
        bar = tqdm(range(state.step + 1, config.steps + 1), desc="rl", initial=state.step, total=config.steps)
        for step in bar:
            t_step = time.perf_counter()
            batch = sample_and_score(config, state, prompts, services, step)  # 1-2
            t0 = time.perf_counter()
            rewards = bond.as_rewards(batch.scores["combined"], device=_device())  # (P, 1 + k)
            state.model.zero_grad(set_to_none=True)
            loss = compute_loss(config, state, batch, rewards, step)  # 3
            grad_norm = update(config, state, loss.loss)  # 4
            state.step = step
            times = {**batch.times, "train": time.perf_counter() - t0, "step": time.perf_counter() - t_step}
            metrics = step_metrics(step, batch, rewards, loss, grad_norm, state.scheduler.get_last_lr()[0], times)
            log_step(out, tb, metrics, batch, prompts.rows, loss.bond_reward, config.log_rollouts)  # 5
            bar.set_postfix(reward=_fmt(metrics["reward"]), kl=f"{metrics['kl_anchor']:.3f}")
            if step % config.save_steps == 0 or step == config.steps:
                save_checkpoint(out, state, config.save_total_limit)
            hooks.on_step_end(step)
            if not math.isfinite(loss.stats["loss"]):
                raise UserError(f"step {step}: the loss is not finite ({loss.stats['loss']}); lower learning_rate")

    save_final(out, state, config.lora.r > 0)
    all_metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    plot(all_metrics, out / "reward_kl.png")
    return summarize(all_metrics)


def save_final(out: Path, state: State, merge_lora: bool) -> None:
    """The policy as an HF dir at the top of `out` (LoRA merged), each file moved into place from staging."""
    staging = artifacts.atomic_dir(out / "model")
    final = state.model.merge_and_unload() if merge_lora else state.model
    final.save_pretrained(staging)
    state.tokenizer.save_pretrained(staging)
    for item in staging.iterdir():
        os.replace(item, out / item.name)
    staging.rmdir()


def summarize(metrics: list[dict], window: int | None = None) -> dict:
    """Mean reward and KL of the first and last `window` steps (default: a fifth of the run each), and the
    step-time breakdown."""
    window = window or max(1, len(metrics) // 5)

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
    """Reward (policy and anchor samples) and KL (to anchor and to init) over steps, as a PNG: each step's raw
    value faint, a trailing moving average (a fifth of the run) over it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from posttrain.curves import save_figure, smooth

    steps = [m["step"] for m in metrics]
    window = max(2, len(steps) // 5)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))

    def curve(ax, key, label):
        raw = [m.get(key) if m.get(key) is not None else math.nan for m in metrics]
        (line,) = ax.plot(steps, raw, alpha=0.3, linewidth=1)
        ax.plot(steps, smooth(raw, window), color=line.get_color(), linewidth=2, label=f"{label} (smoothed)")

    for key, label in (("reward", "policy samples"), ("reward_anchor", "anchor samples")):
        curve(ax1, key, label)
    ax1.set(xlabel="step", ylabel="combined reward", title="reward")
    ax1.legend()
    for key, label in (("kl_anchor", "KL(π‖anchor)"), ("kl_init", "KL(π‖init)")):
        curve(ax2, key, label)
    ax2.set(xlabel="step", ylabel="nats / sequence", title="KL (sample estimate)")
    ax2.legend()
    save_figure(fig, path)


def run(config: Config, hooks: Hooks = NO_HOOKS) -> Path:
    from posttrain import cluster, models

    check(config)
    if Path(config.policy).is_dir():
        artifacts.require_done(config.policy, "policy")
    policy_dir = models.resolve(config.policy)  # before the output dir exists: a bad spec leaves nothing
    scoring.build(config.rewards)  # likewise a bad reward spec
    out = artifacts.prepare_output(config.output_dir, overwrite=config.overwrite, resume=config.resume)
    torch.manual_seed(config.seed)
    summary = train(config, out, hooks)
    artifacts.write_manifest(
        out,
        stage="rl",
        config=cfg.to_dict(config),
        inputs={"policy": str(policy_dir), "data": config.data},
        extra={"summary": summary, "ray": cluster.describe()},
    )
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
