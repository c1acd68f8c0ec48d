"""Best-of-N sampling: N completions per prompt in one batched decode, with the log-probs the RL losses need.

  1. prefill the B (left-padded) prompts once;
  2. repeat the KV cache N times along the batch (`DynamicCache.batch_repeat_interleave`): the prompt prefix
     is never recomputed per sample;
  3. decode the B·N rows together with a plain loop (temperature, top-p), each row stopping at
     `<end_of_turn>` or eos, or at max_new_tokens.

Randomness: every (prompt, sample) row owns a row of uniforms u[b, j, t] drawn up front from the seeded
generator, and picks its token by inverse-CDF sampling. A completion therefore depends only on its own
noise row, not on which other prompts share the batch (tested against decoding each row alone).

Log-probs are those of the distribution that was sampled (`sampling_logprobs`): softmax(logits / T) over
the softcapped logits, renormalised over the top-p nucleus. That is the π(y) the RL losses, the KL and the
anchor use, so a policy sampled at WARP's T = 0.9 is scored at T = 0.9 too (scoring it at T = 1 is scoring
another distribution: the KL estimate can then go negative). `sequence_logprobs` recomputes the same values
with one teacher-forced forward at the same T and top-p (for training and for the anchor/init log-probs).
Greedy decoding (T = 0) is no distribution: its log-probs are at T = 1.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from posttrain.data import END_OF_TURN


@dataclasses.dataclass
class Rollout:
    """M = B·N completions, row b·N + j is sample j of prompt b. `tokens` holds the completion (stop token
    included, pad after it), `mask` marks its real tokens, `logprobs` their temperature-1 log-probs."""

    prompt_index: torch.Tensor  # (M,) long
    tokens: torch.Tensor  # (M, T) long
    logprobs: torch.Tensor  # (M, T) float32, 0 where ~mask
    mask: torch.Tensor  # (M, T) bool
    finished: torch.Tensor  # (M,) bool: stopped at a stop token (False: cut at max_new_tokens)
    texts: list[str]  # decoded completion, stop token excluded

    def completion_ids(self, i: int) -> list[int]:
        return self.tokens[i][self.mask[i]].tolist()


def stop_token_ids(tokenizer) -> list[int]:
    ids = {tokenizer.convert_tokens_to_ids(END_OF_TURN)}
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _base(model):
    """The transformers model under a peft wrapper (LoRA layers stay in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _project(base, hidden: torch.Tensor) -> torch.Tensor:
    """fp32 temperature-1 logits of 2-D hidden states (N, d): the LM head, then Gemma's logit softcap."""
    logits = base.lm_head(hidden)
    softcap = getattr(base.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.float()


# A token outside a model's top-p nucleus has probability 0 under its sampling distribution; that happens when
# another model (the anchor, the init) scores a policy sample. Its log-prob is floored here instead of -inf,
# so a KL estimate stays finite (the nucleus of the model that sampled always holds its own tokens).
LOGP_FLOOR = math.log(1e-8)


def sampling_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float, top_p: float
) -> torch.Tensor:
    """(N,) log-probs of `tokens` (N,) under the distribution `_pick` samples from logits (N, V):
    softmax(logits / T) renormalised over the top-p nucleus; T = 0 (greedy) gives T = 1 log-probs.
    Differentiable in the logits (the nucleus membership itself is a constant)."""
    logp = F.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
    token_logp = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if temperature == 0 or top_p >= 1.0:
        return token_logp
    top, order = _top_mass(logp.exp(), top_p)
    keep = _in_nucleus(top.detach(), top_p)
    mass = (top * keep).sum(-1)
    inside = ((order == tokens.unsqueeze(-1)) & keep).any(-1)
    return torch.where(inside, token_logp - mass.log(), torch.full_like(token_logp, LOGP_FLOOR))


def _left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids.to(device), mask.to(device)


def _in_nucleus(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Which of the descending probabilities the top-p nucleus keeps: those whose preceding mass is < top_p
    (the top token always)."""
    return (sorted_probs.cumsum(-1) - sorted_probs) < top_p


def _top_mass(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest probabilities in descending order, and their ids: the top k for the smallest k in
    (1024, 16384, vocab) whose mass reaches top_p in every row, so the nucleus lies inside them (a full
    sort of a 262k vocabulary costs ~10x a top-1024)."""
    vocab = probs.shape[-1]
    for k in (1024, 16384):
        if k < vocab:
            top, order = probs.topk(k, dim=-1)
            if bool((top.sum(-1) >= top_p).all()):
                return top, order
    return probs.sort(dim=-1, descending=True)


def _pick(logits: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Inverse-CDF sample from softmax(logits / temperature) restricted to the top-p nucleus;
    temperature 0 is greedy."""
    return _draw(logits, u, temperature, top_p)[0]


def _draw(
    logits: torch.Tensor, u: torch.Tensor, temperature: float, top_p: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, their log-probs under the sampled distribution): `_pick` and `sampling_logprobs` in one pass
    over the vocabulary (the nucleus is found once; on a flat distribution that is a full sort)."""
    if temperature == 0:
        tok = logits.argmax(-1)
        return tok, F.log_softmax(logits, dim=-1).gather(-1, tok.unsqueeze(-1)).squeeze(-1)
    probs = F.softmax(logits / temperature, dim=-1)
    order = None
    if top_p < 1.0:
        probs, order = _top_mass(probs, top_p)
        probs = probs * _in_nucleus(probs, top_p)
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    # rounding can put u·total at the very end of the cdf: fall back to the last token with mass
    last = (probs > 0).long().cumsum(-1).argmax(-1)
    idx = torch.minimum(idx, last)
    logp = (probs.gather(-1, idx.unsqueeze(-1)).squeeze(-1) / cdf[:, -1]).log()
    return (idx if order is None else order.gather(-1, idx.unsqueeze(-1)).squeeze(-1)), logp


@torch.no_grad()
def _prefill(model, prompts: list[list[int]], n: int, pad_id: int, device):
    """The prompts' KV cache computed once and repeated n times: (next-token logits (B·n, V), cache, attention
    mask, next positions), rows ordered prompt-major (prompt 0's n samples first)."""
    from transformers import DynamicCache

    ids, attn = _left_pad(prompts, pad_id, device)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    base = _base(model)
    hidden = base.model(
        input_ids=ids, attention_mask=attn, position_ids=positions, past_key_values=cache, use_cache=True
    ).last_hidden_state
    # Project the last position as a 2-D batch. Through HF's logits_to_keep=1 the (B, 1, d) slice of a longer
    # sequence is not foldable, and with a frozen head torch.matmul then broadcasts the head into a (B, d, V)
    # copy: 5.8 s of a 7.3 s draw for 4 prompts on the demo student.
    logits = _project(base, hidden[:, -1]).repeat_interleave(n, dim=0)
    cache.batch_repeat_interleave(n)
    return logits, cache, attn.repeat_interleave(n, dim=0), positions[:, -1:].repeat_interleave(n, dim=0) + 1


def _texts(tokenizer, tokens: torch.Tensor, mask: torch.Tensor, stops: list[int]) -> list[str]:
    """Each row's completion text, without its stop token."""
    texts = []
    for i in range(tokens.shape[0]):
        seq = tokens[i][mask[i]].tolist()
        if seq and seq[-1] in stops:
            seq = seq[:-1]
        texts.append(tokenizer.decode(seq, skip_special_tokens=False))
    return texts


@torch.no_grad()  # sampling never trains; without it each decode step's graph (and logits) is kept alive
def sample(
    model,
    tokenizer,
    prompts: list[list[int]],
    n: int,
    *,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> Rollout:
    """n completions for each prompt (token id lists from `posttrain.data.prompt_ids`).

    `noise` (B, n, max_new_tokens) uniforms override the ones drawn from `generator` (tests use it to
    replay one row's randomness alone)."""
    device = _device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    stops = torch.tensor(stop_token_ids(tokenizer), device=device)
    b, m = len(prompts), len(prompts) * n
    if noise is None:
        # drawn on the CPU so a seed gives the same samples on any device
        noise = torch.rand((b, n, max_new_tokens), generator=generator)
    noise = noise.reshape(m, max_new_tokens).to(device)

    logits, cache, attn, next_pos = _prefill(model, prompts, n, pad_id, device)
    base = _base(model)
    done = torch.zeros(m, dtype=torch.bool, device=device)
    tokens, logps, masks = [], [], []
    for t in range(max_new_tokens):
        tok, logp = _draw(logits, noise[:, t], temperature, top_p)
        tok = torch.where(done, torch.full_like(tok, pad_id), tok)
        tokens.append(tok)
        logps.append(logp)
        masks.append(~done)
        done = done | torch.isin(tok, stops)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        # finished rows keep decoding pad tokens (masked out): simpler than shrinking the cache
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=-1)
        hidden = base.model(
            input_ids=tok.unsqueeze(-1),
            attention_mask=attn,
            position_ids=next_pos,
            past_key_values=cache,
            use_cache=True,
        ).last_hidden_state
        logits = _project(base, hidden[:, -1])  # 2-D, as in _prefill: no (B, d, V) copy of the head
        next_pos = next_pos + 1

    tokens = torch.stack(tokens, dim=1)
    mask = torch.stack(masks, dim=1)
    logprobs = torch.stack(logps, dim=1) * mask
    texts = _texts(tokenizer, tokens, mask, stops.tolist())
    prompt_index = torch.arange(b, device=device).repeat_interleave(n)
    return Rollout(
        prompt_index=prompt_index, tokens=tokens, logprobs=logprobs, mask=mask, finished=done, texts=texts
    )


def sequence_logprobs(
    model,
    prompts: list[list[int]],
    prompt_index: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> torch.Tensor:
    """(M, T) log-probs of `tokens` (completions of prompts[prompt_index[i]]) at sampling temperature T and
    top-p (`sampling_logprobs`), from one teacher-forced forward; 0 where ~mask. Differentiable (training)
    unless called under no_grad.

    Sequences are right-padded (prompt + completion, then pad), so positions are plain aranges and padding
    never precedes a real token; only completion positions are projected to the vocabulary."""
    base = _base(model)
    device = _device(model)
    m, width = tokens.shape
    lengths = mask.sum(-1).tolist()
    seqs = [prompts[int(p)] + tokens[i, : lengths[i]].tolist() for i, p in enumerate(prompt_index.tolist())]
    total = max(len(s) for s in seqs)
    ids = torch.zeros((m, total), dtype=torch.long)
    attn = torch.zeros((m, total), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[i, : len(s)] = 1
    ids, attn = ids.to(device), attn.to(device)
    hidden = base.model(input_ids=ids, attention_mask=attn).last_hidden_state
    # completion token t of row i is predicted at position len(prompt_i) + t - 1
    mask = mask.to(device)
    prompt_len = torch.tensor([len(p) for p in prompts], device=device)[prompt_index.to(device)]
    rows_t, t_idx = mask.nonzero(as_tuple=True)  # row-major, so in the order of tokens[mask]
    cols_t = prompt_len[rows_t] - 1 + t_idx
    logits = _project(base, hidden[rows_t, cols_t])
    lp = sampling_logprobs(logits, tokens.to(device)[mask], temperature, top_p)
    return torch.zeros((m, width), dtype=torch.float32, device=device).index_put((rows_t, t_idx), lp)
