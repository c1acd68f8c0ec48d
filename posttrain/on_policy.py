"""On-policy distillation inside `posttrain sft` (GKD's `lmbda`, Agarwal et al. 2024): a fraction λ of every
training batch gets completions sampled from the current student; the teacher scores exactly those tokens (its
Gemma 3 sparse targets for `divergence: forward`, its log-prob of each sampled token for `reverse`), and the
student is trained on them. The other rows keep the dataset's completions and their cached targets.

    on_policy:
      fraction: 1.0          # λ; 0 = the off-policy path, unchanged
      max_new_tokens: 128
      temperature: 1.0       # the student samples from its own distribution at this temperature
      top_p: 1.0

Per batch (`replace_rows` = `start_rows`, then `finish_rows`):
  1. the first round(λ·B) rows of the batch (the Trainer's order is already a seeded shuffle) are re-made:
     prompt = the row's messages without its last assistant turn;
  2. the student (eval mode, no grad; a bf16 copy with bf16) samples one completion per prompt, `generation_batch`
     prompts at a time; the noise of row i at optimizer step s comes from a generator seeded by (seed, s, i), so
     `--resume` redraws the same completions;
  3. each chunk goes to the teacher's Ray actors as soon as it is sampled, and they score it while the student
     samples the next chunk (teacher.TeacherWorker: the same code as the off-policy targets, with the teacher's
     privileged context spliced in front, posttrain.teacher_context): K ids + fp16 weights per token (1.5 KB at
     K = 256) or one fp32 log-prob (4 B); only ids and these travel, never logits;
  4. the rows become ordinary examples (input ids, target positions over the completion, targets) for kd.

Overlap (`overlap: true`): steps 2-3 for optimizer step s+1 run during step s, right after step s's rows are
collected and before its forward, backward and update: the student samples them with the weights it has at
step s, and the teacher's actors score them while step s trains, so the teacher's time (on other nodes, with
an address) hides behind the student's update. The price is one step of staleness (prime-rl's async level 1,
PipelineRL's lag): rows trained at step s+1 come from the policy of step s. The first step of each epoch is
sampled strictly (the next epoch's order is not drawn yet). Sampled completions that a checkpoint's weights
could not redraw are saved with it (on_policy_pending_<rank>.json) and resubmitted on `--resume`; the teacher's
draws are seeded by (seed, step, row), so a resumed run trains on exactly the same targets.
"""

from __future__ import annotations

import dataclasses

import torch

from posttrain import models
from posttrain.config import doc
from posttrain.errors import UserError


@dataclasses.dataclass
class OnPolicy:
    fraction: float = doc(
        0.0,
        "λ: the share of each batch's completions sampled from the current student "
        "(0 = off-policy, the dataset's completions; 1 = all on-policy)",
    )
    max_new_tokens: int = doc(128, "tokens per sampled completion")
    temperature: float = doc(1.0, "the student's sampling temperature")
    top_p: float = doc(1.0, "the student's nucleus threshold")
    generation_batch: int = doc(
        8, "prompts sampled together; each chunk is scored by the teacher's actors while the next one is sampled"
    )
    overlap: bool = doc(
        False,
        "sample the next optimizer step's rows with the current weights before this step trains, so the teacher "
        "scores them while it does (they are one step off-policy when trained; exact --resume)",
    )


def check(section: OnPolicy, divergence: str, label_weight: float) -> None:
    if not 0.0 <= section.fraction <= 1.0:
        raise UserError(f"on_policy.fraction must be in [0, 1] (λ), got {section.fraction}")
    if (
        section.max_new_tokens < 1
        or section.generation_batch < 1
        or section.temperature <= 0
        or not 0.0 < section.top_p <= 1.0
    ):
        raise UserError(
            "on_policy.max_new_tokens must be >= 1, on_policy.temperature > 0, on_policy.top_p in (0, 1]"
        )
    if divergence not in ("forward", "reverse"):
        raise UserError(f"divergence must be 'forward' or 'reverse', got '{divergence}'")
    if divergence == "reverse" and section.fraction != 1.0:
        raise UserError(
            "divergence=reverse is estimated on the student's own samples: set on_policy.fraction=1 "
            f"(got {section.fraction})"
        )
    if not 0.0 <= label_weight <= 1.0:
        raise UserError(f"label_weight must be in [0, 1], got {label_weight}")
    if label_weight > 0 and section.fraction == 1.0:
        raise UserError(
            "label_weight mixes the dataset's reference tokens into off-policy rows; with "
            "on_policy.fraction=1 there are none"
        )


def rows_on_policy(batch_size: int, fraction: float) -> int:
    return int(round(fraction * batch_size))


class StudentSampler:
    """The student as it samples: the trained model itself, or with `bf16` a bf16 copy refreshed from the trained
    weights before every batch's sampling (decoding an fp32 model under autocast re-casts every weight at every
    token: ~6x slower on CPU, as rl measured). Under DeepSpeed ZeRO-3 (partitioned weights) it samples from the
    model itself."""

    def __init__(self, model, bf16: bool):
        self.model, self.copy = model, None
        if bf16 and not getattr(model, "is_deepspeed_enabled", False):
            self.copy = models.cast_copy(model, torch.bfloat16).eval()

    @torch.no_grad()
    def refresh(self) -> None:
        if self.copy is not None:
            for source, target in zip(self.model.parameters(), self.copy.parameters()):
                target.copy_(source)

    @torch.no_grad()
    def sample(
        self, tokenizer, prompts: list[list[int]], section: OnPolicy, noise: torch.Tensor
    ) -> list[list[int]]:
        """One completion per prompt (its token ids, the stop token included when it stopped)."""
        from posttrain import rollout

        model = self.copy if self.copy is not None else self.model
        was_training = model.training
        model.eval()
        try:
            r = rollout.sample(
                model,
                tokenizer,
                prompts,
                1,
                max_new_tokens=section.max_new_tokens,
                temperature=section.temperature,
                top_p=section.top_p,
                noise=noise,
            )
        finally:
            model.train(was_training)
        return [r.completion_ids(i) for i in range(len(prompts))]


def step_noise(seed: int, step: int, indices: list[int], max_new_tokens: int) -> torch.Tensor:
    """(rows, 1, T) uniforms, row i's from a generator seeded by (seed, optimizer step, example index)."""
    rows = []
    for i in indices:
        g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_000_003 + i)
        rows.append(torch.rand((1, max_new_tokens), generator=g))
    return torch.stack(rows)


def completion_example(ex: dict, completion: list[int]) -> dict:
    """The row re-made around a sampled completion: the student's and the teacher's ids, the positions whose
    next token is a completion token (in both), and the example index (which seeds the teacher's draws)."""
    prompt, teacher_prompt = ex["prompt_ids"], ex["teacher_prompt_ids"]
    positions = list(range(len(prompt) - 1, len(prompt) + len(completion) - 1))
    offset = len(teacher_prompt) - len(prompt)
    return {
        "input_ids": prompt + completion,
        "positions": positions,
        "teacher_input_ids": teacher_prompt + completion,
        "teacher_positions": [p + offset for p in positions],
        "index": ex["index"],
        "on_policy": True,
    }


@dataclasses.dataclass
class Started:
    """On-policy rows sampled and submitted to the teacher, not yet collected: `made` (the re-made rows),
    `completions` (their sampled ids) and the teacher's `handles`, one per chunk."""

    made: list[dict]
    completions: list[list[int]]
    handles: list


def start_rows(sampler: StudentSampler, tokenizer, examples: list[dict], section: OnPolicy, teacher, step: int,
               seed: int) -> Started:  # fmt: skip
    """Sample the on-policy share (the first round(λ·B) rows) of a batch trained at optimizer step `step`,
    `generation_batch` rows at a time; each chunk goes to the teacher (`teacher.submit`, its Ray actors) as soon as
    it exists, so the teacher scores it while the student samples the next one. Returns without waiting."""
    chosen = examples[: rows_on_policy(len(examples), section.fraction)]
    noise = step_noise(seed, step, [ex["index"] for ex in chosen], section.max_new_tokens)
    if chosen:
        sampler.refresh()
    started = Started([], [], [])
    for begin in range(0, len(chosen), section.generation_batch):
        part = chosen[begin : begin + section.generation_batch]
        sampled = sampler.sample(
            tokenizer, [ex["prompt_ids"] for ex in part], section, noise[begin : begin + len(part)]
        )
        resubmit(started, teacher, part, sampled, step)
    return started


def resubmit(started: Started, teacher, examples: list[dict], completions: list[list[int]], step: int) -> None:
    """Add rows whose completions exist (just sampled, or read back from a checkpoint) and submit them."""
    rows = [completion_example(ex, c) for ex, c in zip(examples, completions)]
    started.handles.append(teacher.submit(rows, step))
    started.made += rows
    started.completions += list(completions)


def finish_rows(started: Started, examples: list[dict], teacher) -> list[dict]:
    """The batch with its on-policy share replaced by the started rows, their targets collected."""
    scores = [t for handle in started.handles for t in teacher.collect(handle)]
    for ex, (ids, weights) in zip(started.made, scores):
        ex["target_ids"], ex["target_weights"] = ids, weights
    return started.made + examples[len(started.made) :]


def replace_rows(
    sampler: StudentSampler, tokenizer, examples: list[dict], section: OnPolicy, teacher, step: int, seed: int
):
    """The batch with its first round(λ·B) rows re-made on-policy (sampled now, with the current weights), and
    the sampled completions."""
    started = start_rows(sampler, tokenizer, examples, section, teacher, step, seed)
    return finish_rows(started, examples, teacher), started.completions
