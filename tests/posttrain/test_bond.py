"""J-BOND maths against hand-computed values and closed-form gradients on a 1-token toy policy."""

import math

import pytest
import torch

from posttrain.bond import (
    LOG16,
    as_rewards,
    backward_loss,
    best_anchor,
    bond_reward,
    forward_loss,
    forward_weights,
    jbond_loss,
    jbond_reward,
    quantile,
    regulariser_loss,
    returns,
)


def test_quantile_without_ties():
    p = quantile(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.5, 1.5, 2.5, 3.5]]))
    assert p.tolist() == [[0.25, 0.5, 0.75]]
    for ties in ("paper", "random"):  # no ties: every rule agrees
        assert quantile(
            torch.tensor([[1.0, 2.0, 3.0]]),
            torch.tensor([[0.5, 1.5, 2.5, 3.5]]),
            ties=ties,
            generator=torch.Generator().manual_seed(0),
        ).tolist() == [[0.25, 0.5, 0.75]]


def test_quantile_with_ties():
    r, anchors = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 2.0, 2.0, 5.0]])
    assert quantile(r, anchors, ties="paper").tolist() == [[0.25, 0.75, 0.75]]  # a tie counts as ≤
    assert quantile(r, anchors, ties="mid").tolist() == [[0.125, 0.5, 0.75]]  # a tie counts 1/2
    draws = torch.stack(
        [quantile(r, anchors, ties="random", generator=torch.Generator().manual_seed(s)) for s in range(400)]
    )
    # r=2 ties two anchors: 1/4 + {0, 1, 2}/4 each time; the mean is the mid-rank value
    assert set(draws[:, 0, 1].tolist()) == {0.25, 0.5, 0.75}
    assert abs(draws[:, 0, 1].mean().item() - 0.5) < 0.03
    assert (draws[:, 0, 2] == 0.75).all()


def test_bond_reward_is_log_quantile_with_a_floor_at_zero():
    k = 4
    r = bond_reward(torch.tensor([0.0, 0.5, 1.0]), k)
    assert r.tolist() == pytest.approx([math.log(1 / 8), math.log(0.5), 0.0])


def test_jbond_reward_fires_only_when_y_is_below_both_anchors():
    rewards = torch.tensor([0.1, 0.5, 0.9, 0.3])
    anchors = torch.tensor([[0.2, 0.3], [0.2, 0.9], [0.1, 0.2], [0.3, 0.8]])
    paper = jbond_reward(rewards, anchors, ties="paper")
    assert paper.tolist() == pytest.approx([-LOG16, 0.0, 0.0, 0.0])
    assert LOG16 == pytest.approx(4 * math.log(2))
    # without ties every rule gives the same value
    assert jbond_reward(rewards[:3], anchors[:3], ties="mid").tolist() == pytest.approx([-LOG16, 0.0, 0.0])
    # tie at the min: the paper says 0, mid-rank says y loses the tie half of the time
    assert jbond_reward(rewards[3:], anchors[3:], ties="mid").item() == pytest.approx(-LOG16 / 2)


def test_binary_rewards_tie_aware_signal_fires_where_the_paper_is_silent():
    # y fails; anchors (fail, succeed) / (fail, fail) / (succeed, succeed); y succeeds with (fail, succeed)
    rewards = torch.tensor([0.0, 0.0, 0.0, 1.0])
    anchors = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    assert jbond_reward(rewards, anchors, ties="paper").tolist() == pytest.approx([0.0, 0.0, -LOG16, 0.0])
    assert jbond_reward(rewards, anchors, ties="mid").tolist() == pytest.approx(
        [-LOG16 / 2, -LOG16 / 4, -LOG16, 0.0]
    )
    # mid-rank r_J is the mean of random tie-breaking
    draws = torch.stack(
        [
            jbond_reward(rewards, anchors, ties="random", generator=torch.Generator().manual_seed(s))
            for s in range(400)
        ]
    )
    assert torch.allclose(draws.mean(0), jbond_reward(rewards, anchors, ties="mid"), atol=0.15)
    # the first sample (a failure next to a success) gets a return below the others' only with ties
    zero = torch.zeros(4)
    assert returns(jbond_reward(rewards[:1], anchors[:1], ties="paper"), zero[:1], zero[:1]).item() == 0.0
    adv_paper = returns(jbond_reward(rewards, anchors, ties="paper"), zero, zero)
    adv_mid = returns(jbond_reward(rewards, anchors, ties="mid"), zero, zero)
    assert adv_paper[0] == adv_paper[3] and adv_mid[0] < adv_mid[3]


def test_none_rewards_are_dropped_explicitly():
    r = as_rewards([[2.0, None]])
    assert math.isnan(r[0, 1])
    anchors = as_rewards([[1.0, None, 3.0]])
    p = quantile(r, anchors)
    assert p[0, 0].item() == 0.5 and math.isnan(p[0, 1])  # k counts the 2 valid anchors, not 3
    assert math.isnan(quantile(torch.tensor([[1.0]]), as_rewards([[None, None]])).item())
    rj = jbond_reward(as_rewards([0.0, None, 0.0]), as_rewards([[1.0, 1.0], [1.0, 1.0], [1.0, None]]))
    assert rj[0].item() == pytest.approx(-LOG16) and math.isnan(rj[1]) and math.isnan(rj[2])
    assert best_anchor(as_rewards([[None, 0.5, 0.7], [0.2, None, 0.2], [None, None, None]])).tolist() == [2, 0, -1]
    # a NaN return is left out of the baseline and gets no gradient
    theta = torch.zeros(3, requires_grad=True)
    logp = torch.log_softmax(theta, -1)[torch.tensor([0, 1, 2])]
    adv = returns(torch.tensor([1.0, 0.0, math.nan]), logp, logp.detach())
    assert adv[:2].tolist() == pytest.approx([0.5, -0.5]) and math.isnan(adv[2])
    backward_loss(logp, adv).backward()
    pi = torch.full((3,), 1 / 3)
    expected = -(0.5 * (torch.eye(3)[0] - pi) - 0.5 * (torch.eye(3)[1] - pi)) / 2
    torch.testing.assert_close(theta.grad, expected)


# ----------------------------------------------------------------------------------------------------
# Gradients on a 1-token policy π = softmax(θ) over V tokens: ∇_θ log π(y) = e_y − π.

V = 5


def _toy(seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.randn(V, generator=g).requires_grad_()
    return theta, torch.eye(V)


def test_forward_term_gradient_is_the_sft_gradient():
    theta, e = _toy()
    best = torch.tensor([1, 3, 3])
    valid = torch.tensor([True, True, False])
    forward_loss(torch.log_softmax(theta, -1)[best], valid.float(), int(valid.sum())).backward()
    pi = torch.softmax(theta.detach(), -1)
    expected = ((pi - e[1]) + (pi - e[3])) / 2  # mean NLL over the valid prompts only
    torch.testing.assert_close(theta.grad, expected)


def test_forward_weights_by_hand():
    r = as_rewards([[1, 0], [0, 0], [1, 1], [None, 1], [0, 1], [None, None]])
    assert forward_weights(r, "best").tolist() == [[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 0]]
    # contrast: the tied best share 1, minus the mean over the valid samples; all-tied prompts weigh 0
    assert forward_weights(r, "contrast").tolist() == [[0.5, -0.5], [0, 0], [0, 0], [0, 0], [-0.5, 0.5], [0, 0]]
    three = forward_weights(as_rewards([[2, 2, 1]]), "contrast")
    torch.testing.assert_close(three, torch.tensor([[1 / 2 - 1 / 3, 1 / 2 - 1 / 3, -1 / 3]]))
    with pytest.raises(ValueError, match="forward must be one of"):
        forward_weights(r, "worst")


def _forward_gradient_moments(theta, reward, how):
    """Exact mean and E‖g‖² of the forward term's per-prompt gradient over all anchor pairs y'1, y'2 ~ π."""
    pi = torch.softmax(theta.detach(), -1)
    mean, square = torch.zeros(V), torch.zeros(())
    for a in range(V):
        for b in range(V):
            w = forward_weights(reward[torch.tensor([[a, b]])], how)[0]
            t = theta.detach().clone().requires_grad_()
            lsm = torch.log_softmax(t, -1)
            forward_loss(lsm[torch.tensor([a, b])], w, 1).backward()
            mean += pi[a] * pi[b] * t.grad
            square += pi[a] * pi[b] * t.grad.square().sum()
    return mean, square


def test_contrast_forward_has_the_papers_expected_gradient_with_less_variance():
    # anchor = policy (as at every WARP iteration's start): 'contrast' subtracts a zero-mean control
    # variate, so the expected gradient is the paper's; with 0/1 rewards its second moment is smaller
    theta, _ = _toy(4)
    reward = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0])
    mean_best, square_best = _forward_gradient_moments(theta, reward, "best")
    mean_contrast, square_contrast = _forward_gradient_moments(theta, reward, "contrast")
    torch.testing.assert_close(mean_contrast, mean_best, atol=1e-6, rtol=1e-5)
    assert mean_best.abs().sum() > 0.05  # there is a signal to agree on
    assert square_contrast < 0.5 * square_best


def test_backward_term_gradient_is_reinforce_with_the_kl_return_and_baseline():
    theta, e = _toy(1)
    y = torch.tensor([0, 2, 4, 2])
    logp_anchor = torch.tensor([-1.0, -2.0, -1.5, -2.0])
    r_j = torch.tensor([-LOG16, 0.0, 0.0, -LOG16])
    logp = torch.log_softmax(theta, -1)[y]
    adv = returns(r_j, logp, logp_anchor)
    big_r = r_j - (logp.detach() - logp_anchor)  # R = r_J − (log π − log π_a)
    torch.testing.assert_close(adv, big_r - big_r.mean())
    backward_loss(logp, adv).backward()
    pi = torch.softmax(theta.detach(), -1)
    expected = -sum(adv[i] * (e[y[i]] - pi) for i in range(4)) / 4
    torch.testing.assert_close(theta.grad, expected)


def test_regulariser_gradient_is_the_kl_policy_gradient():
    theta, e = _toy(2)
    y = torch.tensor([1, 1, 3])
    logp_ref = torch.tensor([-0.5, -0.5, -3.0])
    logp = torch.log_softmax(theta, -1)[y]
    regulariser_loss(logp, logp_ref).backward()
    pi = torch.softmax(theta.detach(), -1)
    k = logp.detach() - logp_ref
    expected = sum(k[i] * (e[y[i]] - pi) for i in range(3)) / 3
    torch.testing.assert_close(theta.grad, expected)
    # exact check of the estimator: Σ_y π(y)·(log π(y) − log q(y))·(e_y − π) is ∇KL(π‖q)
    theta2 = theta.detach().clone().requires_grad_()
    q = torch.log_softmax(torch.arange(V, dtype=torch.float32), -1)
    lp = torch.log_softmax(theta2, -1)
    (lp.exp() * (lp - q)).sum().backward()
    pi_ = pi
    estimator = sum(pi_[v] * (torch.log(pi_[v]) - q[v]) * (e[v] - pi_) for v in range(V))
    torch.testing.assert_close(theta2.grad, estimator, atol=1e-6, rtol=1e-5)


def test_jbond_loss_combines_the_terms_with_beta_and_gamma():
    y = torch.tensor([0, 2, 4])
    best = torch.tensor([1, 1, 3])
    logp_anchor = torch.tensor([-1.0, -2.0, -1.5])
    r_j = torch.tensor([-LOG16, 0.0, math.nan])
    grads = {}
    for name, (beta, gamma) in {"fw": (0.0, 0.0), "bw": (1.0, 0.0), "all": (0.3, 0.5)}.items():
        theta, _ = _toy(3)
        lsm = torch.log_softmax(theta, -1)
        loss, stats = jbond_loss(
            logp_policy=lsm[y],
            logp_anchor=logp_anchor,
            reward=r_j,
            forward_logp=lsm[best],
            forward_weight=torch.ones(3),
            forward_prompts=3,
            beta=beta,
            gamma=gamma,
        )
        loss.backward()
        grads[name] = theta.grad
        assert stats["valid_samples"] == 2
    theta, _ = _toy(3)
    regulariser_loss(torch.log_softmax(theta, -1)[y], logp_anchor).backward()
    torch.testing.assert_close(grads["all"], 0.7 * grads["fw"] + 0.3 * grads["bw"] + 0.5 * theta.grad)


def test_ema_anchor_update():
    from posttrain.bond import ema_update

    anchor = [torch.tensor([1.0, 2.0]), torch.tensor([[0.0]])]
    policy = [torch.tensor([3.0, 0.0], requires_grad=True), torch.tensor([[10.0]], requires_grad=True)]
    ema_update(anchor, policy, eta=0.25)
    torch.testing.assert_close(anchor[0], torch.tensor([1.5, 1.5]))  # 0.75·θ_a + 0.25·θ
    torch.testing.assert_close(anchor[1], torch.tensor([[2.5]]))
    ema_update(anchor, policy, eta=1.0)
    assert torch.equal(anchor[0], policy[0].detach()) and not anchor[0].requires_grad
    with pytest.raises(ValueError):
        ema_update(anchor, policy[:1])


def test_leave_one_out_baseline_by_hand():
    r = torch.tensor([1.0, 0.0, 0.5, math.nan, 2.0])
    zero = torch.zeros(5)
    adv = returns(r, zero, zero, kl_coef=1.0, baseline="loo")
    # valid returns 1, 0, .5, 2 (sum 3.5): each minus the mean of the other three
    expected = torch.tensor([1 - 2.5 / 3, 0 - 3.5 / 3, 0.5 - 3.0 / 3, math.nan, 2 - 1.5 / 3])
    torch.testing.assert_close(adv, expected, equal_nan=True)
    batch = returns(r, zero, zero, baseline="batch")
    torch.testing.assert_close(adv[~adv.isnan()], batch[~batch.isnan()] * 4 / 3)  # n/(n−1) x the batch one
    # the KL term is part of the return the baseline is taken of
    logp, logp_a = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    adv2 = returns(torch.tensor([1.0, 1.0]), logp, logp_a, kl_coef=0.5, baseline="loo")
    torch.testing.assert_close(adv2, torch.tensor([0.75 - 1.5, 1.5 - 0.75]))
    assert returns(torch.tensor([3.0]), torch.zeros(1), torch.zeros(1), baseline="loo").item() == 0.0
    with pytest.raises(ValueError, match="baseline"):
        returns(r, zero, zero, baseline="mean")
