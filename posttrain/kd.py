"""Gemma 3 sampled-logit distillation, the maths, top to bottom (Gemma 3 report §2.2; ../shared/ALGORITHMS.md).

  1. per target token t, draw K token ids S_t from the teacher distribution p_T (at a temperature);
  2. the teacher target keeps only those ids:
       unbiased (default): K draws with replacement, each weighted 1/K (duplicates stay as separate
                           slots, so the weight of an id is its count/K): E[target] = p_T exactly, so the
                           loss is an unbiased estimate of full-vocabulary cross-entropy to the teacher;
       renormalized:       K distinct ids drawn without replacement (Gumbel top-K), weighted
                           p_T(v) / sum_{u in S_t} p_T(u): the report's "zero the rest, renormalise" (biased);
  3. the student is trained with cross-entropy on that sparse target, L_t = -sum_{v in S_t} q(v) log p_S(v),
     where log p_S is the student's full-vocabulary log-softmax.
The student's log-softmax is computed over chunks of target positions with activation checkpointing, so
the B x T x V logits are never materialised (only one chunk x V block at a time, in fwd and in bwd).
`full_kd_loss` is the exact full-vocabulary reference the sparse loss estimates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from posttrain.errors import UserError

# ----------------------------------------------------------------------------------------------------
# 1-2. Sparse teacher targets


def sample_targets(
    teacher_logits: torch.Tensor,
    k: int,
    *,
    temperature: float = 1.0,
    estimator: str = "unbiased",
    generator: torch.Generator | None = None,
):
    """(N, V) teacher logits -> (ids int32 (N, k), weights fp16 (N, k)); padding slots have weight 0."""
    logp = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    n, vocab = logp.shape
    if estimator == "unbiased":
        ids = torch.multinomial(logp.exp(), k, replacement=True, generator=generator)
        ids, _ = ids.sort(dim=-1)
        weights = torch.full((n, k), 1.0 / k)
    elif estimator == "renormalized":
        kk = min(k, vocab)
        uniform = torch.rand(logp.shape, generator=generator).clamp_(1e-20, 1.0)
        ids = torch.topk(logp - torch.log(-torch.log(uniform)), kk, dim=-1).indices  # Gumbel top-k
        ids, _ = ids.sort(dim=-1)
        p = logp.gather(-1, ids).exp()
        weights = p / p.sum(-1, keepdim=True)
        if kk < k:
            ids = F.pad(ids, (0, k - kk))
            weights = F.pad(weights, (0, k - kk))
    else:
        raise UserError(f"unknown estimator '{estimator}' (expected 'unbiased' or 'renormalized')")
    return ids.to(torch.int32), weights.to(torch.float16)


# ----------------------------------------------------------------------------------------------------
# 3. The loss


def _chunk_ce(
    hidden: torch.Tensor, lm_head: torch.nn.Module, ids: torch.Tensor, weights: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    logits = lm_head(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits.float()
    logp = logits.gather(-1, ids.long()) - torch.logsumexp(logits, dim=-1, keepdim=True)
    return -(weights.float() * logp).sum()


def sparse_kd_loss(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    target_ids: torch.Tensor,
    target_weights: torch.Tensor,
    *,
    chunk_size: int = 256,
    softcap: float | None = None,
):
    """Sum over target positions of -sum_k w_k log p_S(id_k). `hidden` holds only the target positions
    (N, D); each chunk's logits are recomputed in backward instead of stored."""
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        args = (hidden[sl], lm_head, target_ids[sl], target_weights[sl], softcap)
        if torch.is_grad_enabled():
            total = total + checkpoint(_chunk_ce, *args, use_reentrant=False)
        else:
            total = total + _chunk_ce(*args)
    return total


def full_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """Exact full-vocabulary cross-entropy to the teacher, summed over positions (the reference)."""
    p_t = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return -(p_t * F.log_softmax(student_logits.float(), dim=-1)).sum()


def target_positions(loss_mask: list[bool]) -> list[int]:
    """Positions p whose next token p+1 is a model-turn token: where the student predicts a target."""
    return [p for p in range(len(loss_mask) - 1) if loss_mask[p + 1]]


def kd_forward(model, batch: dict, chunk: int) -> tuple[torch.Tensor, int]:
    """(summed loss, target count) for a collated batch."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])[batch["target_pos"]]
    softcap = getattr(base.config, "final_logit_softcapping", None)
    loss = sparse_kd_loss(
        hidden, base.lm_head, batch["target_ids"], batch["target_weights"], chunk_size=chunk, softcap=softcap
    )
    return loss, int(batch["target_pos"].numel())
