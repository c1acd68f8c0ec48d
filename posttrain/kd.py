"""Gemma 3 sampled-logit distillation, the maths, top to bottom (Gemma 3 report §2.2; ../shared/ALGORITHMS.md),
and its on-policy counterpart.

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

Hard labels (Hinton's mix, `with_labels`): α·CE on the reference token + (1−α)·KD is one more slot in the same
sparse target: the reference id with weight α, the teacher's K slots scaled by (1−α).

The two divergences (`divergence`), on a completion y = (y_1..y_T) and its positions t:
  forward  Σ_t CE(p_T(·|y_<t), p_S(·|y_<t)) estimated by the sparse target above: the Gemma 3 loss, at every
           completion position, whoever wrote y (the dataset off-policy, the student on-policy);
           E[∇] = ∇ Σ_t KL(p_T‖p_S), so with p_T = p_S its gradient vanishes in expectation.
  reverse  Σ_t KL(p_S‖p_T) at the student's own sampled tokens (on-policy only), with the per-token estimate
           k_t = log p_S(y_t) − log p_T(y_t) as a (detached) advantage:
               loss = Σ_t sg(k_t) · log p_S(y_t),   ∇loss = Σ_t k_t ∇log p_S(y_t),
           whose expectation over y_t ~ p_S is ∇ KL(p_S‖p_T) per position (E[∇log p_S] = 0 removes the rest):
           the on-policy distillation recipes' per-token reward −k_t with no discounting. With p_T = p_S, k_t = 0
           and the loss and its gradient are exactly 0. The teacher sends one log-prob per token (4 bytes).
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


def capped_logits(hidden: torch.Tensor, lm_head: torch.nn.Module, softcap: float | None) -> torch.Tensor:
    """fp32 logits: the LM head, then Gemma's final-logit softcap (the student's and the teacher's alike)."""
    logits = lm_head(hidden)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.float()


def _chunk_ce(
    hidden: torch.Tensor, lm_head: torch.nn.Module, ids: torch.Tensor, weights: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    logits = capped_logits(hidden, lm_head, softcap)
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


def _chunk_reverse(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    ids: torch.Tensor,
    teacher_logp: torch.Tensor,
    softcap: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    logits = capped_logits(hidden, lm_head, softcap)
    logp = logits.gather(-1, ids.long()[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)
    return reverse_kl_loss(logp, teacher_logp.float())


def reverse_kl_loss(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_t sg(k_t)·log p_S(y_t), Σ_t k_t) with k_t = log p_S(y_t) − log p_T(y_t): the surrogate whose gradient
    is the per-token reverse-KL gradient, and the reverse-KL estimate itself (for the logs)."""
    k = student_logp.detach() - teacher_logp
    return (k * student_logp).sum(), k.sum()


def sparse_reverse_kl_loss(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    token_ids: torch.Tensor,
    teacher_logp: torch.Tensor,
    *,
    chunk_size: int = 256,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`reverse_kl_loss` at the completion positions in `hidden` (N, D), whose next tokens are `token_ids` (N,) and
    the teacher's log-probs of them `teacher_logp` (N,); chunked and recomputed in backward like
    `sparse_kd_loss`."""
    loss = kl = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        sl = slice(start, start + chunk_size)
        args = (hidden[sl], lm_head, token_ids[sl], teacher_logp[sl], softcap)
        if torch.is_grad_enabled():
            part, part_kl = checkpoint(_chunk_reverse, *args, use_reentrant=False)
        else:
            part, part_kl = _chunk_reverse(*args)
        loss, kl = loss + part, kl + part_kl
    return loss, kl


def with_labels(ids: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor, alpha: float):
    """The sparse target with the hard label mixed in: (N, K+1) ids and weights, slot K the reference token
    with weight α, the teacher's slots times (1−α)."""
    ids = torch.cat([ids, labels.to(ids.dtype)[:, None]], dim=-1)
    weights = torch.cat(
        [weights.float() * (1.0 - alpha), torch.full_like(weights[:, :1], alpha, dtype=torch.float)], dim=-1
    )
    return ids, weights


def full_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0):
    """Exact full-vocabulary cross-entropy to the teacher, summed over positions (the reference)."""
    p_t = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return -(p_t * F.log_softmax(student_logits.float(), dim=-1)).sum()


def target_positions(loss_mask: list[bool]) -> list[int]:
    """Positions p whose next token p+1 is a model-turn token: where the student predicts a target."""
    return [p for p in range(len(loss_mask) - 1) if loss_mask[p + 1]]


def kd_forward(model, batch: dict, chunk: int) -> tuple[torch.Tensor, int]:
    """(summed loss, target count) for a collated batch: the forward sparse loss, or with `teacher_logp` in the
    batch the reverse-KL surrogate at the tokens `token_ids`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    hidden = hidden.reshape(-1, hidden.shape[-1])[batch["target_pos"]]
    softcap = getattr(base.config, "final_logit_softcapping", None)
    if "teacher_logp" in batch:
        loss, _ = sparse_reverse_kl_loss(
            hidden, base.lm_head, batch["token_ids"], batch["teacher_logp"], chunk_size=chunk, softcap=softcap
        )
    else:
        loss = sparse_kd_loss(
            hidden, base.lm_head, batch["target_ids"], batch["target_weights"], chunk_size=chunk, softcap=softcap
        )
    return loss, int(batch["target_pos"].numel())
