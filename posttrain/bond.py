"""J-BOND (Sessa et al. 2024, arXiv 2407.14622), the maths, top to bottom; ../shared/ALGORITHMS.md.

BOND distils the best-of-N distribution of a reference policy π_ref into the policy π:
  π_BoN(y) = π_ref(y) · p≤(y)^{N−1} · (tie correction),  p≤(y) = P_{y'∼π_ref}[r(y') ≤ r(y)],
which is KL-regularised RL with reward r_BOND = log p≤(y) and strength 1/(N−1): it depends on ranks only.
J-BOND minimises the Jeffreys divergence (1−β)·KL(π_BoN‖π) + β·KL(π‖π_BoN) against a moving EMA anchor
π_a with n = 2: per prompt, one policy sample y and two anchor samples y'1, y'2;
  forward term  = SFT (NLL) on the better anchor sample (a best-of-2 sample of the anchor);
  backward term = policy gradient with return R = r_J(y) − (log π(y) − log π_a(y)), batch (or LOO) baseline,
                  r_J(y) = −log 16 if r(y) < min(r(y'1), r(y'2)) else 0 (E[r_J] = log p≤ at the median);
  loss          = (1−β)·forward + β·backward + γ·regulariser.

The forward term's estimator (`forward_weights`): the paper's is −log π(y_best), one best-of-n sample. Its
gradient's expectation is ∇ of −E_{π_BoN}[log π]; while π = π_a, E_{y'∼π_a}[∇log π(y')] = 0, so the
per-prompt mean of ∇log π over the anchor samples is a control variate with expectation zero there:
  "best"      w = 1 on the best anchor sample (ties to the first), 0 elsewhere (the paper);
  "contrast"  w_i = t_i − 1/k, t_i = 1/m on each of the m samples tied for best (a uniform tie-break in
              expectation, as "best" is in distribution): the same expected gradient while π = π_a, and
              exactly 0 on a prompt whose anchor samples all tie, which with 0/1 rewards is most prompts
              (the plain term then imitates a random, often wrong, sample: pure noise). The price: once π
              drifts from π_a the control variate removes the forward term's pull towards π_a, leaving the
              backward term's KL (and WARP's interpolation) to regularise.
  forward       = −(1/P) Σ_prompts Σ_i w_i·log π(y'_i).

Ties. With 0/1 rewards (math, unit tests) most comparisons are ties and the paper's strict "<" rarely
fires: the signal appears only when y fails and both anchors succeed. `ties` chooses how a tie counts:
  "paper"  the paper's estimators as written: p̂≤ counts a tie as ≤ (a win for y); r_J needs a strict loss;
  "mid"    (default) a tie counts 1/2 (mid-rank): the expectation of random tie-breaking, deterministic, so
           no extra variance; p̂≤ then estimates the quantile under a uniform random tie-break, and r_J
           becomes −log 16 · w1 · w2 with w_i = 1 if r(y) < r(y'_i), 1/2 if equal, 0 otherwise (the
           probability that y loses to both anchors under coin-flip tie-breaks);
  "random" each tie is broken by a fair coin from `generator` (unbiased for "mid", noisier).
With ties="mid", a failing y against (fail, succeed) anchors gets −log 16 / 2 instead of 0, and a group in
which everything ties gets the same value for all samples, which the batch baseline removes.

Failed rewards. A reward that crashed or timed out is None; here it is NaN (`as_rewards`). A NaN anchor
reward is dropped from the quantile (k counts valid anchors only) and cannot be picked as the best sample;
a NaN policy reward gives a NaN return: that sample has no policy-gradient term and is left out of the
baseline. r_J needs both anchor rewards: with fewer than 2 valid ones it is NaN (no backward term for that
prompt); a prompt with no valid anchor reward has no forward term.
"""

from __future__ import annotations

import math

import torch

LOG16 = math.log(16.0)
TIES = ("mid", "paper", "random")


def as_rewards(values, device=None) -> torch.Tensor:
    """Nested lists of float | None -> float32 tensor with NaN for None (a reward that failed)."""

    def conv(v):
        return [conv(x) for x in v] if isinstance(v, (list, tuple)) else (math.nan if v is None else float(v))

    return torch.tensor(conv(values), dtype=torch.float32, device=device)


def _check_ties(ties: str) -> None:
    if ties not in TIES:
        raise ValueError(f"unknown ties '{ties}' (expected one of {TIES})")


def _win_weight(r: torch.Tensor, r_anchor: torch.Tensor, ties: str, generator) -> torch.Tensor:
    """How much each anchor counts as ≤ r: 1 if r_anchor < r, tie weight if equal, 0 otherwise."""
    less = (r_anchor < r).float()
    equal = (r_anchor == r).float()
    if ties == "paper":
        return less + equal
    if ties == "mid":
        return less + 0.5 * equal
    coins = (torch.rand(equal.shape, generator=generator) < 0.5).float().to(equal.device)
    return less + coins * equal


# ----------------------------------------------------------------------------------------------------
# Quantile reward (general N)


def quantile(
    rewards: torch.Tensor,
    anchor_rewards: torch.Tensor,
    *,
    ties: str = "mid",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """p̂≤(y) = (1/k) Σ_i 1{r(y_i) ≤ r(y)} with the tie rule `ties`.

    rewards (P, m): m samples per prompt; anchor_rewards (P, k): k reference/anchor samples per prompt.
    NaN anchors are not counted; NaN policy rewards (or no valid anchor) give NaN."""
    _check_ties(ties)
    r = rewards.unsqueeze(-1)  # (P, m, 1)
    ra = anchor_rewards.unsqueeze(-2)  # (P, 1, k)
    valid = ~torch.isnan(ra)
    wins = (_win_weight(r, ra, ties, generator) * valid).sum(-1)
    k = valid.sum(-1).float()
    p = wins / k
    return torch.where(torch.isnan(rewards) | (k == 0), torch.full_like(p, math.nan), p)


def bond_reward(p_hat: torch.Tensor, k: int) -> torch.Tensor:
    """r_BOND = log p̂≤. p̂ = 0 (y below every anchor, possible with ties="paper" or "random") would give
    −inf: it is floored at 1/(2k), half of the smallest non-zero estimate, the mid-rank value of a sample
    tied with the lowest anchor."""
    return torch.log(p_hat.clamp(min=1.0 / (2 * k)))


# ----------------------------------------------------------------------------------------------------
# J-BOND (n = 2)


def jbond_reward(
    rewards: torch.Tensor,
    anchor_rewards: torch.Tensor,
    *,
    ties: str = "mid",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """r_J per policy sample. rewards (P,), anchor_rewards (P, 2) -> (P,); NaN when not computable."""
    _check_ties(ties)
    if anchor_rewards.shape[-1] != 2:
        raise ValueError(f"J-BOND uses 2 anchor samples per prompt, got {anchor_rewards.shape[-1]}")
    r = rewards.unsqueeze(-1)
    if ties == "paper":
        loses = (r < anchor_rewards).all(-1).float()
    else:
        # 1 − win weight = how much y loses to each anchor (1, 1/2 or a coin on a tie)
        loses = (1.0 - _win_weight(r, anchor_rewards, ties, generator)).prod(-1)
    r_j = -LOG16 * loses
    bad = torch.isnan(rewards) | torch.isnan(anchor_rewards).any(-1)
    return torch.where(bad, torch.full_like(r_j, math.nan), r_j)


def best_anchor(anchor_rewards: torch.Tensor) -> torch.Tensor:
    """Index of the best anchor sample per prompt (P, k) -> (P,), −1 when no reward is valid. Ties go to
    the first: anchor samples are i.i.d., so that is a uniform pick among the tied ones in distribution."""
    filled = torch.nan_to_num(anchor_rewards, nan=-math.inf)
    idx = filled.argmax(-1)
    return torch.where(torch.isnan(anchor_rewards).all(-1), torch.full_like(idx, -1), idx)


BASELINES = ("batch", "loo")


def returns(
    reward: torch.Tensor,
    logp_policy: torch.Tensor,
    logp_anchor: torch.Tensor,
    *,
    kl_coef: float = 1.0,
    baseline: str = "batch",
) -> torch.Tensor:
    """Backward-term advantage: R = reward − kl_coef·(log π(y) − log π_a(y)) minus a baseline over the valid
    samples: "batch" the mean of all R (each sample's own included), "loo" the mean of the *other* samples'
    R (leave-one-out, as RLOO; = batch·n/(n−1), so the same direction, unbiased scale). Detached (a REINFORCE
    weight); NaN where the reward is NaN. kl_coef = β_BOND = 1/(n−1) = 1 for J-BOND."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    ret = reward - kl_coef * (logp_policy.detach() - logp_anchor.detach())
    valid = ~torch.isnan(ret)
    n = int(valid.sum())
    total = ret[valid].sum() if n else ret.new_zeros(())
    if baseline == "batch" or n < 2:
        base = total / n if n else total
    else:
        base = (total - ret) / (n - 1)
    return (ret - base).detach()


FORWARDS = ("best", "contrast")


def forward_weights(anchor_rewards: torch.Tensor, how: str = "best") -> torch.Tensor:
    """Each anchor sample's weight w in the forward term (module docstring), (P, k) -> (P, k). NaN rewards
    weigh 0; a prompt with no valid reward has all-zero weights."""
    if how not in FORWARDS:
        raise ValueError(f"forward must be one of {FORWARDS}, got {how!r}")
    valid = ~torch.isnan(anchor_rewards)
    if how == "best":
        best = best_anchor(anchor_rewards)
        picked = torch.nn.functional.one_hot(best.clamp(min=0), anchor_rewards.shape[-1]).float()
        return picked * (best >= 0).float().unsqueeze(-1)
    filled = torch.nan_to_num(anchor_rewards, nan=-math.inf)
    top = (filled == filled.max(-1, keepdim=True).values) & valid
    top_share = top.float() / top.sum(-1, keepdim=True).clamp(min=1)
    return top_share - valid.float() / valid.sum(-1, keepdim=True).clamp(min=1)


def forward_loss(logp: torch.Tensor, weight: torch.Tensor, prompts: int) -> torch.Tensor:
    """−(1/prompts) Σ w·log π(y') over the anchor samples given (any shape; `prompts` counts those with a
    valid anchor reward). With "best" weights this is SFT on the best anchor samples."""
    return -(logp * weight).sum() / max(prompts, 1)


def backward_loss(logp_policy: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """Policy-gradient surrogate −mean(A · log π(y)) over samples with a valid (non-NaN) advantage."""
    valid = ~torch.isnan(advantage)
    n = valid.sum().clamp(min=1)
    return -(torch.nan_to_num(advantage) * logp_policy * valid).sum() / n


def regulariser_loss(logp_policy: torch.Tensor, logp_reg: torch.Tensor) -> torch.Tensor:
    """Policy-gradient surrogate of KL(π‖π_reg) from the policy's own samples:
    ∇KL = E_π[(log π(y) − log π_reg(y)) ∇log π(y)], so the surrogate is mean(stopgrad(log π − log π_reg)
    · log π). π_reg is the caller's choice (the anchor or the SFT init); the stage decides."""
    k = (logp_policy - logp_reg).detach()
    return (k * logp_policy).mean()


def jbond_loss(
    *,
    logp_policy: torch.Tensor,
    logp_anchor: torch.Tensor,
    reward: torch.Tensor,
    forward_logp: torch.Tensor,
    forward_weight: torch.Tensor,
    forward_prompts: int,
    beta: float = 0.5,
    gamma: float = 0.0,
    logp_reg: torch.Tensor | None = None,
    kl_coef: float = 1.0,
    baseline: str = "batch",
) -> tuple[torch.Tensor, dict]:
    """(1−β)·forward + β·backward + γ·regulariser, and the terms as floats for logging.

    logp_policy (P,): log π(y) of the policy samples (with grad); logp_anchor (P,): log π_a(y) of the same
    samples; reward (P,): r_J or r_BOND, NaN = no backward term; forward_logp: log π (with grad) of the
    anchor samples with their `forward_weights` forward_weight, over forward_prompts prompts."""
    adv = returns(reward, logp_policy, logp_anchor, kl_coef=kl_coef, baseline=baseline)
    fw = forward_loss(forward_logp, forward_weight, forward_prompts)
    bw = backward_loss(logp_policy, adv)
    loss = (1.0 - beta) * fw + beta * bw
    reg = logp_policy.new_zeros(())
    if gamma:
        reg = regulariser_loss(logp_policy, logp_anchor if logp_reg is None else logp_reg)
        loss = loss + gamma * reg
    kl = (logp_policy - logp_anchor).detach()
    stats = {
        "loss": loss.item(),
        "forward": fw.item(),
        "backward": bw.item(),
        "regulariser": reg.item(),
        "kl_anchor": kl.mean().item(),
        "reward_bond": torch.nanmean(reward).item(),
        "valid_samples": int((~torch.isnan(adv)).sum()),
    }
    return loss, stats


# ----------------------------------------------------------------------------------------------------
# Moving anchor


@torch.no_grad()
def ema_update(anchor_params, policy_params, eta: float = 0.02) -> None:
    """θ_a ← (1−η)·θ_a + η·θ, in place, tensor by tensor (pass only the trainable tensors, e.g. the LoRA
    adapters, when the frozen base is shared)."""
    anchor_params, policy_params = list(anchor_params), list(policy_params)
    if len(anchor_params) != len(policy_params):
        raise ValueError(f"anchor has {len(anchor_params)} tensors, policy {len(policy_params)}")
    for a, p in zip(anchor_params, policy_params):
        a.lerp_(p.detach().to(a.dtype), eta)
