"""Batched best-of-N sampling on a real tiny Gemma 3 (sliding window 8, so prompts cross the window)."""

import pytest
import torch

from posttrain import rollout
from posttrain.data import END_OF_TURN, prompt_ids
from posttrain.models import load_causal_lm
from posttrain.rollout import sample, sequence_logprobs

MODEL = "tiny:sliding_window=8"
NEW = 10


@pytest.fixture(scope="module")
def lm():
    torch.set_num_threads(1)
    model, tok = load_causal_lm(MODEL)
    model.eval()
    prompts = [
        prompt_ids(tok, [{"role": "user", "content": "hi"}]),
        prompt_ids(tok, [{"role": "user", "content": "a much longer prompt than the first"}]),
    ]
    assert len(prompts[0]) < len(prompts[1])  # the first is left-padded in a batch
    return model, tok, prompts


@pytest.mark.parametrize("temperature, top_p", [(0.7, 0.9), (0.9, 1.0), (1.3, 0.5)])
def test_sampled_at_t_scored_at_t_equals_a_teacher_forced_pass_at_t(lm, temperature, top_p):
    model, tok, prompts = lm
    at = {"temperature": temperature, "top_p": top_p}
    r = sample(model, tok, prompts, 3, max_new_tokens=NEW, generator=torch.Generator().manual_seed(0), **at)
    assert r.tokens.shape == (6, NEW) and r.prompt_index.tolist() == [0, 0, 0, 1, 1, 1]
    with torch.no_grad():
        forward = sequence_logprobs(model, prompts, r.prompt_index, r.tokens, r.mask, **at)
        at_one = sequence_logprobs(model, prompts, r.prompt_index, r.tokens, r.mask)
    # fp32 on CPU; cached decode vs one full forward differ by summation order only (~1e-6)
    torch.testing.assert_close(forward, r.logprobs, atol=1e-4, rtol=0)
    assert (r.logprobs[r.mask] <= 0).all() and (r.logprobs[~r.mask] == 0).all()
    assert (r.logprobs[r.mask] > rollout.LOGP_FLOOR).all()  # the sampler's own tokens are in its nucleus
    assert not torch.allclose(at_one, forward, atol=1e-3)  # temperature 1 is another distribution
    # the forward is differentiable (training uses it)
    lp = sequence_logprobs(model, prompts, r.prompt_index, r.tokens, r.mask, **at)
    lp.sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_cache_repeat_and_left_padding_match_each_row_decoded_alone(lm):
    model, tok, prompts = lm
    noise = torch.rand((2, 2, NEW), generator=torch.Generator().manual_seed(1))
    batched = sample(model, tok, prompts, 2, max_new_tokens=NEW, noise=noise)
    assert not torch.equal(batched.tokens[0], batched.tokens[1])  # the samples of one prompt differ
    for b in range(2):
        for j in range(2):
            alone = sample(model, tok, [prompts[b]], 1, max_new_tokens=NEW, noise=noise[b : b + 1, j : j + 1])
            i = b * 2 + j
            assert alone.tokens[0].tolist() == batched.tokens[i].tolist(), (b, j)
            torch.testing.assert_close(alone.logprobs[0], batched.logprobs[i], atol=1e-4, rtol=0)


def test_greedy_matches_hf_generate(lm):
    model, tok, prompts = lm
    ours = sample(model, tok, prompts, 2, max_new_tokens=NEW, temperature=0)
    for b, p in enumerate(prompts):
        ref = model.generate(
            torch.tensor([p]),
            attention_mask=torch.ones(1, len(p), dtype=torch.long),
            max_new_tokens=NEW,
            do_sample=False,
        )[0, len(p) :].tolist()
        assert ours.completion_ids(2 * b) == ref and ours.completion_ids(2 * b + 1) == ref


def test_seeded_sampling_is_deterministic(lm):
    model, tok, prompts = lm
    a = sample(model, tok, prompts[:1], 2, max_new_tokens=NEW, generator=torch.Generator().manual_seed(3))
    b = sample(model, tok, prompts[:1], 2, max_new_tokens=NEW, generator=torch.Generator().manual_seed(3))
    c = sample(model, tok, prompts[:1], 2, max_new_tokens=NEW, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)


def test_stops_at_end_of_turn(lm):
    model, tok, prompts = lm
    eot = tok.convert_tokens_to_ids(END_OF_TURN)
    noise = torch.rand((1, 2, NEW), generator=torch.Generator().manual_seed(2))
    first = sample(model, tok, prompts[:1], 2, max_new_tokens=NEW, noise=noise)
    assert not first.finished.any() and first.mask.all()
    # Steer row 0's 4th draw into <end_of_turn>'s slice of the inverse CDF (temperature 1, no top-p).
    prefix = first.tokens[0, :3].tolist()
    with torch.no_grad():
        logits = model(torch.tensor([prompts[0] + prefix])).logits[0, -1].float()
    cdf = torch.softmax(logits, -1).cumsum(-1)
    noise[0, 0, 3] = (cdf[eot - 1] + cdf[eot]) / 2 / cdf[-1]
    r = sample(model, tok, prompts[:1], 2, max_new_tokens=NEW, noise=noise)
    assert r.tokens[0, :4].tolist() == prefix + [eot]
    assert r.mask[0].tolist() == [True] * 4 + [False] * (NEW - 4)
    assert (r.tokens[0, 4:] == tok.pad_token_id).all() and (r.logprobs[0, 4:] == 0).all()
    assert r.finished.tolist() == [True, False] and r.mask[1].all()  # the other row goes on
    assert r.completion_ids(0) == prefix + [eot] and r.texts[0] == tok.decode(prefix)


def test_top_p_keeps_only_the_nucleus(lm):
    model, tok, prompts = lm
    greedy = sample(model, tok, prompts, 2, max_new_tokens=NEW, temperature=0)
    # a nucleus of (almost) no mass keeps only the top token: sampling at any temperature is then greedy
    tiny_p = sample(
        model,
        tok,
        prompts,
        2,
        max_new_tokens=NEW,
        temperature=2.0,
        top_p=1e-6,
        generator=torch.Generator().manual_seed(0),
    )
    full_p = sample(
        model,
        tok,
        prompts,
        2,
        max_new_tokens=NEW,
        temperature=2.0,
        top_p=1.0,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(tiny_p.tokens, greedy.tokens)
    assert not torch.equal(full_p.tokens, greedy.tokens)
    # a one-token nucleus holds all the mass: every sampled token had probability 1
    assert (tiny_p.logprobs == 0).all()


@pytest.mark.parametrize("scale", [8.0, 0.5])  # peaked (nucleus in the top 1024) and flat (needs more)
def test_top_p_over_a_large_vocabulary_equals_the_full_sort(scale):
    from posttrain.rollout import _pick

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn((6, 20000), generator=gen) * scale
    u = torch.rand(6, generator=gen)
    probs = torch.softmax(logits, dim=-1)
    ref_p, ref_order = probs.sort(dim=-1, descending=True)
    ref_p = ref_p * ((ref_p.cumsum(-1) - ref_p) < 0.9)
    cdf = ref_p.cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    expected = ref_order.gather(-1, idx.unsqueeze(-1)).squeeze(-1)
    assert torch.equal(_pick(logits, u, 1.0, 0.9), expected)


def test_prefill_never_copies_a_frozen_lm_head_per_row(lm):
    """With the head frozen (freeze_embeddings ties it to the embeddings), HF's logits_to_keep=1 path sends a
    non-foldable (B, 1, d) slice through torch.matmul, which broadcasts the head into a (B, d, V) copy: 5.8 s of
    a 7.3 s draw on the demo student. The prefill must project the last positions as one 2-D matmul."""
    from torch.profiler import profile

    model, tok, prompts = lm
    head = model.lm_head.weight
    vocab, d = head.shape
    head.requires_grad_(False)
    try:
        with profile(record_shapes=True) as prof:
            sample(model, tok, prompts, 2, max_new_tokens=2, generator=torch.Generator().manual_seed(0))
    finally:
        head.requires_grad_(True)
    shapes = [tuple(s) for e in prof.events() for s in e.input_shapes if s]
    assert (len(prompts), d, vocab) not in shapes, "the LM head was broadcast per prompt"
    assert any(e.name == "aten::mm" and [len(prompts), d] in e.input_shapes for e in prof.events())


@pytest.mark.parametrize("temperature, top_p", [(0.6, 0.8), (1.0, 1.0), (1.5, 0.3)])
def test_sampling_logprobs_are_the_distribution_that_pick_samples(temperature, top_p):
    """exp(log-probs) over the whole vocabulary sums to 1, and matches _pick's empirical frequencies."""
    from posttrain.rollout import _pick, sampling_logprobs

    logits = torch.randn(1, 50, generator=torch.Generator().manual_seed(0)) * 2
    probs = sampling_logprobs(logits.expand(50, -1), torch.arange(50), temperature, top_p).exp()
    probs = torch.where(probs > torch.tensor(rollout.LOGP_FLOOR).exp() * 2, probs, torch.zeros_like(probs))
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0), atol=1e-5, rtol=0)
    u = torch.rand(20000, generator=torch.Generator().manual_seed(1))
    picked = _pick(logits.expand(20000, -1), u, temperature, top_p)
    freq = torch.bincount(picked, minlength=50).float() / 20000
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)


def test_kl_estimate_at_the_sampling_temperature_is_positive_for_a_policy_unlike_its_anchor(lm):
    """E_{y~π_T}[log π_T(y) − log π_a,T(y)] = KL(π_T‖π_a,T) ≥ 0 when both are scored at the sampled T."""
    import copy

    model, tok, prompts = lm
    anchor = copy.deepcopy(model)
    with torch.no_grad():
        for p in anchor.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.05)
    at = {"temperature": 0.6, "top_p": 0.9}
    r = sample(model, tok, prompts, 16, max_new_tokens=6, generator=torch.Generator().manual_seed(0), **at)
    with torch.no_grad():
        logp = sequence_logprobs(model, prompts, r.prompt_index, r.tokens, r.mask, **at).sum(-1)
        logp_anchor = sequence_logprobs(anchor, prompts, r.prompt_index, r.tokens, r.mask, **at).sum(-1)
    assert (logp - logp_anchor).mean() > 0
