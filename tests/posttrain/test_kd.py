"""The sampled-logit KD loss against its closed forms."""

import torch

from posttrain.distill import _collate
from posttrain.kd import full_kd_loss, kd_forward, sample_targets, sparse_kd_loss, target_positions


def _head(vocab, dim, seed=0):
    torch.manual_seed(seed)
    head = torch.nn.Linear(dim, vocab, bias=False)
    return head


def test_unbiased_estimator_mean_matches_full_cross_entropy():
    # With replacement and count/K weights, E[loss] equals full-vocabulary CE to the teacher.
    vocab, dim, n, k = 50, 8, 6, 256
    head = _head(vocab, dim)
    hidden = torch.randn(n, dim)
    teacher_logits = torch.randn(n, vocab) * 2
    with torch.no_grad():
        exact = full_kd_loss(head(hidden), teacher_logits).item()
        estimates = []
        for seed in range(200):
            ids, w = sample_targets(teacher_logits, k, generator=torch.Generator().manual_seed(seed))
            estimates.append(sparse_kd_loss(hidden, head, ids, w).item())
    mean = sum(estimates) / len(estimates)
    # Stated tolerance: 0.5% relative (the std error of the mean here is ~0.05%).
    assert abs(mean - exact) / exact < 5e-3, (mean, exact)


def test_renormalized_estimator_is_biased_for_small_k_and_exact_when_all_ids_are_sampled():
    vocab, dim, n = 16, 8, 5
    head = _head(vocab, dim)
    hidden = torch.randn(n, dim)
    teacher_logits = torch.randn(n, vocab) * 3
    with torch.no_grad():
        exact = full_kd_loss(head(hidden), teacher_logits, temperature=0.7)
        ids, w = sample_targets(
            teacher_logits,
            k=vocab,
            temperature=0.7,
            estimator="renormalized",
            generator=torch.Generator().manual_seed(0),
        )
        assert all(sorted(row.tolist()) == list(range(vocab)) for row in ids)  # every id is in the set
        sparse = sparse_kd_loss(hidden, head, ids, w)
        # fp16 target weights: relative error ~1e-3
        torch.testing.assert_close(sparse, exact, rtol=2e-3, atol=0)
        # K > V pads with zero-weight slots and stays exact
        ids, w = sample_targets(teacher_logits, k=24, temperature=0.7, estimator="renormalized")
        assert ids.shape == (n, 24) and (w[:, vocab:] == 0).all()
        torch.testing.assert_close(sparse_kd_loss(hidden, head, ids, w), exact, rtol=2e-3, atol=0)


def test_sample_targets_respects_temperature_and_format():
    logits = torch.tensor([[5.0, 0.0, 0.0, 0.0]])
    ids, w = sample_targets(logits, 4000, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert ids.dtype == torch.int32 and w.dtype == torch.float16
    cold = (ids == 0).float().mean().item()
    ids, _ = sample_targets(logits, 4000, temperature=4.0, generator=torch.Generator().manual_seed(0))
    hot = (ids == 0).float().mean().item()
    p0 = lambda t: torch.softmax(logits / t, -1)[0, 0].item()  # noqa: E731
    assert abs(cold - p0(1.0)) < 0.03 and abs(hot - p0(4.0)) < 0.03


def test_chunking_changes_neither_value_nor_gradient():
    vocab, dim, n, k = 40, 8, 37, 16
    head = _head(vocab, dim)
    hidden = torch.randn(n, dim, requires_grad=True)
    ids, w = sample_targets(torch.randn(n, vocab), k, generator=torch.Generator().manual_seed(1))
    one = sparse_kd_loss(hidden, head, ids, w, chunk_size=1000)
    g_one = torch.autograd.grad(one, [hidden, head.weight])
    many = sparse_kd_loss(hidden, head, ids, w, chunk_size=5)
    g_many = torch.autograd.grad(many, [hidden, head.weight])
    torch.testing.assert_close(one, many)
    for a, b in zip(g_one, g_many):
        torch.testing.assert_close(a, b)


def test_target_positions_cover_exactly_the_model_turn_tokens():
    mask = [False, False, True, True, False, False, True]
    # position p predicts token p+1
    assert target_positions(mask) == [1, 2, 5]


def test_batch_loss_counts_only_model_turns_and_ignores_padding(tiny_model_and_tokenizer):
    from posttrain.data import tokenize_chat

    model, tok = tiny_model_and_tokenizer
    chats = [
        [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there"},
            {"role": "assistant", "content": "hi"},
            {"role": "user", "content": "and?"},
            {"role": "assistant", "content": "that is all"},
        ],
    ]
    examples = []
    vocab = model.config.vocab_size
    for i, chat in enumerate(chats):
        ids, mask = tokenize_chat(tok, chat, 256)
        pos = target_positions(mask)
        t_ids, t_w = sample_targets(torch.randn(len(pos), vocab), 8, generator=torch.Generator().manual_seed(i))
        examples.append(
            {"input_ids": ids, "loss_mask": mask, "positions": pos, "target_ids": t_ids, "target_weights": t_w}
        )
    model.eval()
    with torch.no_grad():
        batch_loss, n = kd_forward(model, _collate(examples, tok.pad_token_id), chunk=7)
        singles = [kd_forward(model, _collate([ex], tok.pad_token_id), chunk=7) for ex in examples]
        # reference: full logits of each example alone, CE at exactly the model-turn prediction positions
        reference = 0.0
        for ex in examples:
            logp = torch.log_softmax(model(torch.tensor([ex["input_ids"]])).logits[0].float(), -1)
            rows = logp[ex["positions"]]
            reference += -(ex["target_weights"].float() * rows.gather(-1, ex["target_ids"].long())).sum()
    assert n == sum(len(ex["positions"]) for ex in examples)
    # model-turn tokens: reply content + <end_of_turn>, for each assistant turn
    assert n == (len(tok("4")["input_ids"]) + 1) + (len(tok("hi")["input_ids"]) + 1) + (
        len(tok("that is all")["input_ids"]) + 1
    )
    torch.testing.assert_close(batch_loss, sum(s[0] for s in singles), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(batch_loss, reference, rtol=1e-4, atol=1e-4)


def test_gradient_does_not_reach_tokens_after_the_last_model_turn(tiny_model_and_tokenizer):
    from posttrain.data import tokenize_chat

    model, tok = tiny_model_and_tokenizer
    chat = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "trailing user turn that is never trained on"},
    ]
    ids, mask = tokenize_chat(tok, chat, 256)
    pos = target_positions(mask)
    t_ids, t_w = sample_targets(torch.randn(len(pos), model.config.vocab_size), 8)
    embeds = model.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
    hidden = model.model(inputs_embeds=embeds).last_hidden_state[0][pos]
    sparse_kd_loss(hidden, model.lm_head, t_ids, t_w).backward()
    grad_norm = embeds.grad[0].norm(dim=-1)
    assert (grad_norm[: max(pos) + 1] > 0).all()
    assert (grad_norm[max(pos) + 1 :] == 0).all()
