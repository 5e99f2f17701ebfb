"""Policy extraction rules (DESIGN §1.5) on hand-built logits, against the formulas written out."""

import math

import pytest
import torch

from qsft.decoding.extraction import (
    MODES,
    PolicyExtractionProcessor,
    align_vocab,
    choose_tokens,
    extract_policy_logits,
)
from qsft.errors import ConfigError

DUMMY = 4


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.tensor([probs]).log()


# vocabulary of 5: tokens 0..3 real, 4 the dummy. Behavior: token 3 almost never (outside support).
PI_BETA = [0.5, 0.3, 0.19999, 0.00001, 0.0]
P_THETA = [0.1, 0.15, 0.05, 0.0001, 0.6999]  # dummy holds the 1 - Q mass (dummy variant)


def q_hat(a: int) -> float:
    return P_THETA[a] / PI_BETA[a]


def policy(mode: str, beta: float = 1.0, threshold: float = 1e-4) -> torch.Tensor:
    out = extract_policy_logits(mode, logits_of(P_THETA), logits_of(PI_BETA), beta, threshold, DUMMY)
    return torch.softmax(out, -1)[0]


def test_beta_mode_is_behavior_times_exp_beta_p():
    beta = 3.0
    weights = [PI_BETA[a] * math.exp(beta * P_THETA[a]) for a in range(4)]
    expected = [w / sum(weights) for w in weights]
    got = policy("beta", beta)
    assert torch.allclose(got[:4], torch.tensor(expected), atol=1e-6)
    assert got[DUMMY] == 0


@pytest.mark.parametrize("mode", ["beta", "beta_ratio"])
def test_beta_zero_is_the_behavior_policy(mode):
    got = policy(mode, 0.0)
    if mode == "beta":
        expected = torch.tensor(PI_BETA[:4]) / sum(PI_BETA[:4])
    else:  # restricted to the support S(s): token 3 (pi 1e-5 <= 1e-4) is out
        expected = torch.tensor(PI_BETA[:3] + [0.0]) / sum(PI_BETA[:3])
    assert torch.allclose(got[:4], expected, atol=1e-6)


def test_beta_ratio_uses_q_hat_on_the_support_only():
    beta = 2.0
    weights = [PI_BETA[a] * math.exp(beta * q_hat(a)) for a in range(3)]
    got = policy("beta_ratio", beta)
    assert torch.allclose(got[:3], torch.tensor([w / sum(weights) for w in weights]), atol=1e-6)
    # token 3 has the largest ratio (10) but pi_beta below the threshold: never chosen
    assert q_hat(3) > max(q_hat(a) for a in range(3))
    assert got[3] == 0 and got[DUMMY] == 0


def test_q_greedy_picks_argmax_ratio_inside_support():
    got = policy("q_greedy")
    best = max(range(3), key=q_hat)  # token 1: 0.5; token 3 (ratio 10) is outside the support
    assert best == 1
    assert got[best] == 1.0 and got.sum() == 1.0
    # with the threshold below pi_beta(3), token 3 joins the support and wins
    assert policy("q_greedy", threshold=1e-6)[3] == 1.0


def test_q_greedy_never_leaves_the_support_even_with_huge_ratios():
    torch.manual_seed(0)
    for _ in range(50):
        p, pi = torch.randn(1, 50) * 4, torch.randn(1, 50) * 4
        out = extract_policy_logits("q_greedy", p, pi, support_threshold=1e-2, dummy_token_id=7)
        choice = int(out.argmax())
        pi_probs = torch.softmax(pi, -1)[0]
        assert pi_probs[choice] > 1e-2 or choice == int(pi_probs.argmax())
        assert choice != 7
        inside = (pi_probs > 1e-2).nonzero().flatten().tolist()
        if 7 in inside:
            inside.remove(7)
        ratio = torch.softmax(p, -1)[0] / pi_probs
        if inside:
            assert choice == max(inside, key=lambda a: float(ratio[a]))


def test_p_theta_and_bc_modes_are_the_model_distribution_without_dummy():
    for mode in ("p_theta", "bc"):
        got = policy(mode)
        expected = torch.tensor(P_THETA[:4]) / sum(P_THETA[:4])
        assert torch.allclose(got[:4], expected, atol=1e-6) and got[DUMMY] == 0


@pytest.mark.parametrize("mode", MODES)
def test_dummy_is_never_chosen_greedy_or_sampled(mode):
    # the dummy token dominates both models: still never emitted
    p = logits_of([0.01, 0.01, 0.01, 0.01, 0.96])
    pi = logits_of([0.2, 0.2, 0.2, 0.2, 0.2])
    out = extract_policy_logits(mode, p, pi, beta=5.0, dummy_token_id=DUMMY)
    assert out[0, DUMMY] == float("-inf")
    assert int(choose_tokens(out, greedy=True)) != DUMMY
    gen = torch.Generator().manual_seed(0)
    samples = [int(choose_tokens(out, greedy=False, generators=[gen])) for _ in range(200)]
    assert DUMMY not in samples


def test_processor_runs_the_behavior_callable_and_matches_the_function():
    seen = []

    def behavior(input_ids):
        seen.append(input_ids.shape)
        return logits_of(PI_BETA)

    processor = PolicyExtractionProcessor("beta", 2.0, 1e-4, DUMMY, behavior)
    ids = torch.zeros(1, 3, dtype=torch.long)
    out = processor(ids, logits_of(P_THETA))
    assert seen == [ids.shape]
    assert torch.equal(out, extract_policy_logits("beta", logits_of(P_THETA), logits_of(PI_BETA), 2.0, 1e-4, DUMMY))


def test_two_model_modes_need_a_behavior_model_and_unknown_modes_fail():
    with pytest.raises(ConfigError, match="behavior"):
        PolicyExtractionProcessor("q_greedy")
    with pytest.raises(ConfigError, match="unknown decoding mode"):
        extract_policy_logits("argmax", logits_of(P_THETA))


def test_narrower_behavior_vocab_gives_missing_tokens_zero_probability():
    aligned = align_vocab(torch.zeros(2, 3), 5)
    assert aligned.shape == (2, 5) and torch.isinf(aligned[:, 3:]).all()
    out = extract_policy_logits("beta", torch.zeros(1, 5), torch.zeros(1, 3), beta=1.0)
    assert torch.isinf(out[0, 3:]).all()


def test_sampling_follows_the_policy_and_per_row_generators_are_independent():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # pi = (0.25, 0.75)
    gen = torch.Generator().manual_seed(1)
    draws = [int(choose_tokens(logits, False, [gen])) for _ in range(2000)]
    assert abs(sum(draws) / len(draws) - 0.75) < 0.04
    # row b's draws depend only on its own generator, not on the rows beside it
    two = torch.cat([logits, torch.zeros(1, 2)])
    a = [int(choose_tokens(logits, False, [torch.Generator().manual_seed(s)])) for s in range(30)]
    b = [int(choose_tokens(two, False, [torch.Generator().manual_seed(s), torch.Generator().manual_seed(99)])[0])
         for s in range(30)]
    assert a == b
