import math

import pytest
import torch

from dreamer.sleep.seeding.divergences import per_token_divergence, token_divergence

# Two positions, three-token vocab, written out as probabilities. Logits are
# their logs, so softmax(logits) gives these probabilities back exactly.
P_T = [[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]  # teacher
P_S = [[0.5, 0.3, 0.2], [0.3, 0.3, 0.4]]  # student


def logits(probs):
    return torch.tensor([probs], dtype=torch.float64).log()  # [1, 2, 3]


def kl(p, q):
    """Reference KL(p ‖ q) on Python floats."""
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def jsd(p_t, p_s, beta):
    """Reference generalized JSD, TRL convention, on Python floats."""
    m = [beta * t + (1 - beta) * s for t, s in zip(p_t, p_s)]
    return beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)


def test_forward_kl_hand_computed():
    # Position 0 spelled out term by term: Σ p_T (log p_T − log p_S).
    pos0 = (
        0.7 * (math.log(0.7) - math.log(0.5))
        + 0.2 * (math.log(0.2) - math.log(0.3))
        + 0.1 * (math.log(0.1) - math.log(0.2))
    )
    assert pos0 == pytest.approx(kl(P_T[0], P_S[0]))
    got = per_token_divergence(logits(P_S), logits(P_T), "forward_kl")
    assert got.shape == (1, 2)
    assert got[0, 0].item() == pytest.approx(pos0, abs=1e-6)
    assert got[0, 1].item() == pytest.approx(kl(P_T[1], P_S[1]), abs=1e-6)
    mean = token_divergence(logits(P_S), logits(P_T), "forward_kl")
    assert mean.item() == pytest.approx((pos0 + kl(P_T[1], P_S[1])) / 2, abs=1e-6)


def test_reverse_kl_hand_computed():
    got = per_token_divergence(logits(P_S), logits(P_T), "reverse_kl")
    for i in range(2):
        assert got[0, i].item() == pytest.approx(kl(P_S[i], P_T[i]), abs=1e-6)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_hand_computed(beta):
    got = per_token_divergence(logits(P_S), logits(P_T), "jsd", beta=beta)
    for i in range(2):
        assert got[0, i].item() == pytest.approx(jsd(P_T[i], P_S[i], beta), abs=1e-6)


def test_temperature_divides_logits():
    t = 2.0
    # softmax(log p / 2) ∝ sqrt(p)
    def soften(p):
        z = sum(math.sqrt(x) for x in p)
        return [math.sqrt(x) / z for x in p]

    got = per_token_divergence(logits(P_S), logits(P_T), "forward_kl", temperature=t)
    assert got[0, 0].item() == pytest.approx(kl(soften(P_T[0]), soften(P_S[0])), abs=1e-6)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_zero_when_logits_equal(kind):
    x = torch.randn(2, 5, 11)
    # Shifting all logits of a position by a constant leaves softmax unchanged.
    assert token_divergence(x, x + 3.0, kind).item() == pytest.approx(0.0, abs=1e-6)


def test_forward_and_reverse_kl_are_asymmetric():
    fwd = token_divergence(logits(P_S), logits(P_T), "forward_kl").item()
    rev = token_divergence(logits(P_S), logits(P_T), "reverse_kl").item()
    assert abs(fwd - rev) > 1e-3
    # ...but swapping the roles swaps them.
    swapped = token_divergence(logits(P_T), logits(P_S), "reverse_kl").item()
    assert swapped == pytest.approx(fwd, abs=1e-9)


def test_jsd_symmetric_at_half_and_bounded_by_ln2():
    s, t = torch.randn(3, 4, 7) * 3, torch.randn(3, 4, 7) * 3
    a = per_token_divergence(s, t, "jsd", beta=0.5)
    b = per_token_divergence(t, s, "jsd", beta=0.5)
    torch.testing.assert_close(a, b)
    # Disjoint supports reach the bound: one-hot vs one-hot on different tokens.
    far_s = torch.tensor([[[60.0, 0.0, 0.0]]])
    far_t = torch.tensor([[[0.0, 0.0, 60.0]]])
    top = token_divergence(far_s, far_t, "jsd", beta=0.5).item()
    assert top == pytest.approx(math.log(2), abs=1e-6)
    assert (a <= math.log(2) + 1e-6).all() and (a >= 0).all()


def test_beta_endpoints_are_forward_and_reverse_kl():
    s, t = logits(P_S), logits(P_T)
    torch.testing.assert_close(
        per_token_divergence(s, t, "jsd", beta=0.0), per_token_divergence(s, t, "forward_kl")
    )
    torch.testing.assert_close(
        per_token_divergence(s, t, "jsd", beta=1.0), per_token_divergence(s, t, "reverse_kl")
    )


def test_beta_endpoints_are_limits_of_normalised_jsd():
    # JSD(β)/β → KL(T‖S) as β → 0 and JSD(β)/(1−β) → KL(S‖T) as β → 1.
    s, t = logits(P_S), logits(P_T)
    eps = 1e-5
    near0 = per_token_divergence(s, t, "jsd", beta=eps) / eps
    near1 = per_token_divergence(s, t, "jsd", beta=1 - eps) / eps
    torch.testing.assert_close(near0, per_token_divergence(s, t, "forward_kl"), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(near1, per_token_divergence(s, t, "reverse_kl"), rtol=1e-3, atol=1e-4)


def test_mask_excludes_positions():
    s, t = logits(P_S), logits(P_T)
    only_second = torch.tensor([[0, 1]])
    got = token_divergence(s, t, "forward_kl", mask=only_second).item()
    assert got == pytest.approx(kl(P_T[1], P_S[1]), abs=1e-6)
    # Garbage at a masked-out position changes nothing.
    s2 = s.clone()
    s2[0, 0] = torch.tensor([50.0, -50.0, 0.0])
    got2 = token_divergence(s2, t, "forward_kl", mask=only_second.bool()).item()
    assert got2 == pytest.approx(got, abs=1e-9)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_gradient_reaches_student_only(kind):
    s = torch.randn(2, 3, 5, requires_grad=True)
    t = torch.randn(2, 3, 5, requires_grad=True)
    token_divergence(s, t, kind, beta=0.3).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_half_precision_is_upcast():
    s = logits(P_S).to(torch.bfloat16)
    t = logits(P_T).to(torch.bfloat16)
    out = token_divergence(s, t, "jsd")
    assert out.dtype == torch.float32


def test_errors():
    s, t = logits(P_S), logits(P_T)
    with pytest.raises(ValueError, match="unknown divergence kind 'tvd'"):
        token_divergence(s, t, "tvd")
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        token_divergence(s, t, "jsd", beta=1.5)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\]"):
        token_divergence(s, t, "forward_kl", beta=-0.1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_divergence(s, t, "jsd", temperature=0.0)
    with pytest.raises(ValueError, match="same shape"):
        token_divergence(s, t[..., :2], "jsd")
    with pytest.raises(ValueError, match=r"\[batch, seq, vocab\]"):
        token_divergence(s[0], t[0], "jsd")
    with pytest.raises(ValueError, match="mask must be"):
        token_divergence(s, t, "jsd", mask=torch.ones(1, 3))
    with pytest.raises(ValueError, match="mask selects no positions"):
        token_divergence(s, t, "jsd", mask=torch.zeros(1, 2, dtype=torch.bool))
