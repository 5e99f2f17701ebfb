"""Q-SFT targets and loss against slow references (explicit loops, dense target distributions)."""

import math

import pytest
import torch

from qsft.algorithms.qsft import (
    action_logprobs,
    behavior_cloning_loss,
    bellman_targets,
    max_ratio_dense,
    max_ratio_sparse,
    q_hat,
    qsft_loss,
    support_value,
    weighted_cross_entropy,
)

V = 11
DUMMY = 10


def _reference_loss(logits, input_ids, targets, action_mask, variant):
    """Loop over agent tokens and the vocabulary, with an explicit dense target distribution."""
    losses = []
    B, T, _ = logits.shape
    for b in range(B):
        for t in range(1, T):
            if not action_mask[b, t]:
                continue
            logp = torch.log_softmax(logits[b, t - 1].double(), -1)
            a, y = int(input_ids[b, t]), float(targets[b, t])
            dense = torch.zeros(V, dtype=torch.float64)
            for k in range(V):
                if k == a:
                    dense[k] = y
                elif variant == "uniform":
                    dense[k] = (1 - y) / (V - 1)
            if variant == "dummy":
                dense[DUMMY] += 1 - y
            losses.append(-sum(dense[k] * logp[k] for k in range(V)))
    return torch.stack(losses)


def _random_batch(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 3, 9
    logits = torch.randn(B, T, V, generator=g) * 2
    input_ids = torch.randint(0, DUMMY, (B, T), generator=g)
    action_mask = torch.rand(B, T, generator=g) > 0.4
    action_mask[:, 0] = False
    action_mask[2, 6:] = False  # padding at the end of the last row
    targets = torch.rand(B, T, generator=g)
    return logits, input_ids, targets, action_mask


@pytest.mark.parametrize("variant", ["uniform", "dummy"])
def test_weighted_cross_entropy_matches_dense_reference_value_and_gradient(variant):
    logits, input_ids, targets, action_mask = _random_batch(0)
    fast_logits = logits.clone().requires_grad_(True)
    fast = weighted_cross_entropy(fast_logits, input_ids, targets, action_mask, variant, DUMMY, chunk_size=4)
    ref_logits = logits.double().clone().requires_grad_(True)
    ref = _reference_loss(ref_logits, input_ids, targets, action_mask, variant)
    assert fast.shape == ref.shape
    torch.testing.assert_close(fast.double(), ref.detach(), atol=1e-5, rtol=1e-5)
    fast.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(fast_logits.grad.double(), ref_logits.grad, atol=1e-5, rtol=1e-5)


def test_uniform_loss_is_soft_label_cross_entropy():
    logits, input_ids, targets, action_mask = _random_batch(1)
    fast = weighted_cross_entropy(logits, input_ids, targets, action_mask, "uniform")
    rows, idx = [], []
    for b in range(3):
        for t in range(1, 9):
            if action_mask[b, t]:
                q = torch.full((V,), (1 - float(targets[b, t])) / (V - 1))
                q[input_ids[b, t]] = targets[b, t]
                rows.append(logits[b, t - 1])
                idx.append(q)
    soft = torch.nn.functional.cross_entropy(torch.stack(rows), torch.stack(idx), reduction="none")
    torch.testing.assert_close(fast, soft, atol=1e-5, rtol=1e-5)


def _reference_max_ratio(target_row, behavior_row, threshold, exclude=None):
    p_t, p_b = torch.softmax(target_row.double(), -1), torch.softmax(behavior_row.double(), -1)
    best = None
    for a in range(len(p_t)):
        if p_b[a] > threshold and a != exclude:
            best = p_t[a] / p_b[a] if best is None else max(best, p_t[a] / p_b[a])
    return 0.0 if best is None else float(best)


def test_max_ratio_dense_and_sparse_match_loop():
    g = torch.Generator().manual_seed(2)
    target = torch.randn(4, 5, V, generator=g)
    behavior = torch.randn(4, 5, V, generator=g) * 4  # peaked: some actions fall below the threshold
    threshold = 0.02
    dense = max_ratio_dense(target, behavior, threshold, exclude_token_id=DUMMY, chunk_size=3)
    for i in range(4):
        for j in range(5):
            ref = _reference_max_ratio(target[i, j], behavior[i, j], threshold, DUMMY)
            assert math.isclose(float(dense[i, j]), ref, rel_tol=1e-5, abs_tol=1e-6)
    # sparse: the support ids with their behavior log-probs, padded with -inf
    logp_b = torch.log_softmax(behavior, -1)
    keep = (logp_b > math.log(threshold))
    keep[..., DUMMY] = False
    K = int(keep.sum(-1).max())
    ids = torch.zeros(4, 5, K, dtype=torch.long)
    lps = torch.full((4, 5, K), float("-inf"))
    for i in range(4):
        for j in range(5):
            support = keep[i, j].nonzero().flatten()
            ids[i, j, : len(support)] = support
            lps[i, j, : len(support)] = logp_b[i, j, support]
    torch.testing.assert_close(max_ratio_sparse(target, ids, lps), dense, atol=1e-5, rtol=1e-5)


def _reference_expectile(values, weights, tau):
    """The tau-expectile of a discrete distribution: on the interval [x_j, x_j+1] holding the root, the
    balance tau * sum_{x > m} w (x - m) = (1 - tau) * sum_{x <= m} w (m - x) is linear in m: solve it there."""
    pairs = sorted(zip(values, weights))
    xs, ws = [x for x, _ in pairs], [w for _, w in pairs]
    for j in range(len(xs)):
        lo_w, lo_x = sum(ws[: j + 1]), sum(w * x for w, x in zip(ws[: j + 1], xs[: j + 1]))
        hi_w, hi_x = sum(ws[j + 1:]), sum(w * x for w, x in zip(ws[j + 1:], xs[j + 1:]))
        m = (tau * hi_x + (1 - tau) * lo_x) / (tau * hi_w + (1 - tau) * lo_w)
        if xs[j] - 1e-12 <= m <= (xs[j + 1] if j + 1 < len(xs) else float("inf")):
            return m
    raise AssertionError("no root")


@pytest.mark.parametrize("operator", ["expectile", "expectile_uniform"])
@pytest.mark.parametrize("tau", [0.5, 0.7, 0.9, 0.99])
def test_expectile_bootstrap_matches_loop_reference(tau, operator):
    g = torch.Generator().manual_seed(3)
    target = torch.randn(3, 4, V, generator=g)
    behavior = torch.randn(3, 4, V, generator=g) * 3
    threshold = 0.02
    dense = max_ratio_dense(target, behavior, threshold, exclude_token_id=DUMMY, chunk_size=5,
                            operator=operator, expectile=tau)
    for i in range(3):
        for j in range(4):
            p_t = torch.softmax(target[i, j].double(), -1)
            p_b = torch.softmax(behavior[i, j].double(), -1)
            support = [a for a in range(V) if p_b[a] > threshold and a != DUMMY]
            total = sum(float(p_b[a]) for a in support)
            weights = [float(p_b[a]) / total if operator == "expectile" else 1.0 / len(support) for a in support]
            ref = _reference_expectile([min(float(p_t[a] / p_b[a]), 1.0) for a in support], weights, tau)
            assert math.isclose(float(dense[i, j]), ref, rel_tol=1e-5, abs_tol=1e-6)
            if tau == 0.5 and operator == "expectile":  # the behavior's mean of the (capped) ratio: sum_S min(p_target, pi_beta) / sum_S pi_beta
                assert math.isclose(ref, sum(min(float(p_t[a]), float(p_b[a])) for a in support) / total, rel_tol=1e-9)


def test_expectile_one_is_the_max_and_sparse_matches_dense():
    g = torch.Generator().manual_seed(4)
    target, behavior = torch.randn(2, 6, V, generator=g), torch.randn(2, 6, V, generator=g) * 3
    top = max_ratio_dense(target, behavior, 0.02, operator="expectile", expectile=1.0)
    torch.testing.assert_close(top, max_ratio_dense(target, behavior, 0.02).clamp(max=1), atol=1e-5, rtol=1e-5)
    logp_b = torch.log_softmax(behavior, -1)
    lps = logp_b.masked_fill(logp_b <= math.log(0.02), float("-inf"))
    ids = torch.arange(V).expand(2, 6, V)
    sparse = max_ratio_sparse(target, ids, lps, operator="expectile", expectile=0.8)
    torch.testing.assert_close(sparse, max_ratio_dense(target, behavior, 0.02, operator="expectile", expectile=0.8),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="bootstrap operator"):
        support_value(torch.zeros(1, 2), torch.zeros(1, 2), operator="mean")


def test_empty_support_has_zero_value():
    target = torch.zeros(1, V)
    behavior = torch.zeros(1, V)
    assert float(max_ratio_dense(target, behavior, support_threshold=0.5)[0]) == 0.0
    assert float(max_ratio_dense(target, behavior, support_threshold=0.5, operator="expectile")[0]) == 0.0


def test_bellman_targets_loop_reference_with_terminal_truncated_and_external():
    # row 0: utterance tokens 1,2 (inside), 3 ends turn -> next decision at token 5 (logits pos 4)
    #        token 5 ends the last turn, truncated -> bootstrap from pos 7 (final observation end)
    # row 1: token 2 terminal; token 4 window-mode external next state (-2)
    values = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], [0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]])
    nsi = torch.tensor([[-1, 1, 2, 4, -1, 7, -1, -1], [-1, -1, -1, -1, -2, -1, -1, -1]])
    reward = torch.tensor([[0, 0, 0, 0.3, 0, 0.95, 0, 0], [0, 0, 0.7, 0, 0.1, 0, 0, 0]])
    discount = torch.tensor([[0, 1, 1, 0.9, 0, 0.9, 0, 0], [0, 0, 0, 0, 0.9, 0, 0, 0.0]])
    mask = torch.tensor([[0, 1, 1, 1, 0, 1, 0, 0], [0, 0, 1, 0, 1, 0, 0, 0]], dtype=torch.bool)
    external = torch.tensor([0.0, 0.5])
    y, stats = bellman_targets(values, reward, discount, nsi, mask, external)
    expected = {(0, 1): 0.2, (0, 2): 0.3, (0, 3): 0.3 + 0.9 * 0.5, (0, 5): 1.0,  # 0.95 + 0.9*0.8 clipped
                (1, 2): 0.7, (1, 4): 0.1 + 0.9 * 0.5}
    for (b, t), v in expected.items():
        assert math.isclose(float(y[b, t]), v, abs_tol=1e-6), (b, t)
    assert math.isclose(stats.clipped_fraction, 1 / 6, rel_tol=1e-6)
    assert math.isclose(stats.max, 1.0)
    # --mc_lower_bound: y = clip(max(bootstrap, G), 0, 1), G the logged return-to-go
    lower = torch.rand(values.shape, generator=torch.Generator().manual_seed(0)) * mask
    floored, stats = bellman_targets(values, reward, discount, nsi, mask, external, lower)
    raised = 0
    for (b, t), v in expected.items():
        want = min(1.0, max(v, float(lower[b, t])))  # v is already clipped; G <= 1
        raised += float(lower[b, t]) > v
        assert math.isclose(float(floored[b, t]), want, abs_tol=1e-6), (b, t)
    assert math.isclose(stats.floored_fraction, raised / 6, rel_tol=1e-6)


def test_behavior_cloning_q_hat_and_logprobs_match_loop():
    logits, input_ids, _, action_mask = _random_batch(3)
    behavior = torch.randn_like(logits)
    ref, qref = [], torch.zeros(input_ids.shape)
    for b in range(3):
        for t in range(1, 9):
            lp = torch.log_softmax(logits[b, t - 1], -1)[input_ids[b, t]]
            lb = torch.log_softmax(behavior[b, t - 1], -1)[input_ids[b, t]]
            qref[b, t] = (lp - lb).exp()
            if action_mask[b, t]:
                ref.append(-lp)
    assert math.isclose(float(behavior_cloning_loss(logits, input_ids, action_mask)), float(torch.stack(ref).mean()),
                        rel_tol=1e-5)
    torch.testing.assert_close(q_hat(logits, behavior, input_ids)[:, 1:], qref[:, 1:], atol=1e-5, rtol=1e-4)
    assert action_logprobs(logits, input_ids)[:, 0].abs().sum() == 0


@pytest.mark.parametrize("variant", ["uniform", "dummy"])
def test_qsft_loss_composes_the_reference_pieces(variant):
    logits, input_ids, _, action_mask = _random_batch(4)
    g = torch.Generator().manual_seed(5)
    target_logits, behavior_logits = torch.randn(logits.shape, generator=g), torch.randn(logits.shape, generator=g)
    B, T = input_ids.shape
    nsi = torch.where(action_mask, torch.arange(T).expand(B, T) % (T - 1), torch.full((B, T), -1))
    nsi[0, 3] = -1
    reward = torch.rand(B, T, generator=g) * 0.1
    discount = torch.full((B, T), 0.9)
    out = qsft_loss(logits, target_logits, behavior_logits, input_ids, action_mask, reward, discount, nsi,
                    variant=variant, dummy_token_id=DUMMY, support_threshold=1e-4)
    exclude = DUMMY if variant == "dummy" else None
    y = torch.zeros(B, T)
    for b in range(B):
        for t in range(T):
            if action_mask[b, t]:
                j = int(nsi[b, t])
                boot = 0.0 if j < 0 else _reference_max_ratio(target_logits[b, j], behavior_logits[b, j], 1e-4, exclude)
                y[b, t] = min(max(float(reward[b, t]) + 0.9 * boot, 0.0), 1.0)
    ref = _reference_loss(logits, input_ids, y, action_mask, variant).mean()
    assert math.isclose(float(out.loss), float(ref), rel_tol=1e-5)


def _reference_support_label(target_row, behavior_row, action, y, threshold):
    """The support variant's label, token by token (docs/algorithm.md §2a)."""
    pi, pt = torch.softmax(behavior_row.double(), -1), torch.softmax(target_row.double(), -1)
    label = [0.0] * V
    for v in range(V):
        if v != DUMMY and v != action and pi[v] > threshold:
            label[v] = min(float(pt[v]), float(pi[v]))
    label[action] = float(pi[action]) * y
    total = sum(label)
    if total > 1:
        label = [x / total for x in label]
    label[DUMMY] = max(0.0, 1.0 - total)
    return torch.tensor(label)


@pytest.mark.parametrize("cap", [0.0, 4.0])
def test_support_variant_loss_matches_a_loop_over_tokens_value_and_gradient(cap):
    logits, input_ids, _, action_mask = _random_batch(4)
    g = torch.Generator().manual_seed(7)
    target_logits = torch.randn(logits.shape, generator=g) * 2
    behavior_logits = torch.randn(logits.shape, generator=g) * 2
    behavior_logits[0, :, 3] = -30.0  # a token far outside the support in every state of row 0
    B, T = input_ids.shape
    nsi = torch.where(action_mask, torch.arange(T).expand(B, T) % (T - 1), torch.full((B, T), -1))
    reward = torch.rand(B, T, generator=g) * 0.3
    discount = torch.full((B, T), 0.9)
    logits = logits.clone().requires_grad_(True)
    out = qsft_loss(logits, target_logits, behavior_logits, input_ids, action_mask, reward, discount, nsi,
                    variant="support", dummy_token_id=DUMMY, support_threshold=0.02, support_reweight_cap=cap)
    out.loss.backward()
    losses, ref_logits = [], logits.detach().clone().requires_grad_(True)
    for b in range(B):
        for t in range(1, T):
            if not action_mask[b, t]:
                continue
            j = int(nsi[b, t])
            boot = 0.0 if j < 0 else _reference_max_ratio(target_logits[b, j], behavior_logits[b, j], 0.02, DUMMY)
            y = min(max(float(reward[b, t]) + 0.9 * boot, 0.0), 1.0)
            label = _reference_support_label(target_logits[b, t - 1], behavior_logits[b, t - 1],
                                              int(input_ids[b, t]), y, 0.02)
            assert abs(float(label.sum()) - 1.0) < 1e-6
            weight = 1.0
            if cap:  # importance weight from pi_beta to uniform over the support, capped
                pi = torch.softmax(behavior_logits[b, t - 1].double(), -1)
                action = int(input_ids[b, t])
                size = sum(1 for v in range(V) if v != DUMMY and (pi[v] > 0.02 or v == action))
                weight = min(cap, 1.0 / (size * float(pi[action])))
            losses.append(-weight * (label.float() * torch.log_softmax(ref_logits[b, t - 1], -1)).sum())
    ref = torch.stack(losses).mean()
    ref.backward()
    assert math.isclose(out.loss.item(), ref.item(), rel_tol=1e-5)
    torch.testing.assert_close(logits.grad, ref_logits.grad, atol=1e-6, rtol=1e-4)


def test_support_label_is_stationary_at_pi_beta_times_y_whatever_the_data_frequencies():
    """E over a ~ pi_hat of the label equals p wherever p = pi_beta * y (the fixed point the variant is built for)."""
    from qsft.algorithms.qsft import support_soft_labels

    g = torch.Generator().manual_seed(3)
    behavior = torch.randn(1, V, generator=g)
    y = torch.tensor([0.9, 0.5, 0.7, 0.2, 1.0, 0.3, 0.6, 0.8, 0.4, 0.1, 0.0])
    pi = torch.softmax(behavior, -1)[0]
    p = pi * y
    p[DUMMY] = 1 - p.sum()
    target = p.log()[None]  # a target network that already holds the fixed point
    pi_hat = torch.softmax(torch.randn(V, generator=g) * 2, -1)  # data frequencies unlike pi_beta
    pi_hat[DUMMY] = 0
    pi_hat = pi_hat / pi_hat.sum()
    expected = sum(pi_hat[a] * support_soft_labels(target, behavior, torch.tensor([a]), y[a:a + 1], DUMMY, 0.0)[0]
                   for a in range(V) if a != DUMMY)
    torch.testing.assert_close(expected, p, atol=1e-6, rtol=0)


def test_uniform_support_weights_match_a_loop_and_keep_the_fixed_point():
    """Row weight min(cap, (1/|S|) / pi_beta(a)); the weighted label's expectation still sits at pi_beta * y."""
    from qsft.algorithms.qsft import support_soft_labels, uniform_support_weights

    g = torch.Generator().manual_seed(11)
    behavior = torch.randn(5, V, generator=g) * 2
    actions = torch.tensor([0, 2, 4, 6, 1])
    weights = uniform_support_weights(behavior, actions, DUMMY, 0.05, cap=8.0)
    for i in range(5):
        pi = torch.softmax(behavior[i].double(), -1)
        size = sum(1 for v in range(V) if v != DUMMY and (pi[v] > 0.05 or v == int(actions[i])))
        assert math.isclose(float(weights[i]), min(8.0, 1.0 / (size * float(pi[actions[i]]))), rel_tol=1e-5)

    behavior = torch.randn(1, V, generator=g)
    y = torch.tensor([0.9, 0.5, 0.7, 0.2, 1.0, 0.3, 0.6, 0.8, 0.4, 0.1, 0.0])
    pi = torch.softmax(behavior, -1)[0]
    p = pi * y
    p[DUMMY] = 1 - p.sum()
    target = p.log()[None]
    pi_hat = torch.softmax(torch.randn(V, generator=g) * 2, -1)
    pi_hat[DUMMY] = 0
    pi_hat = pi_hat / pi_hat.sum()
    rows = [a for a in range(V) if a != DUMMY]
    w = {a: float(uniform_support_weights(behavior, torch.tensor([a]), DUMMY, 0.0, cap=3.0)[0]) for a in rows}
    assert max(w.values()) == 3.0 > min(w.values())  # the cap binds for some rows and not others
    # minimiser of sum_a pi_hat(a) w(a) CE(label_a, p): the (pi_hat * w)-weighted mean label
    expected = sum(pi_hat[a] * w[a] * support_soft_labels(target, behavior, torch.tensor([a]), y[a:a + 1], DUMMY,
                                                          0.0)[0] for a in rows) / sum(pi_hat[a] * w[a] for a in rows)
    torch.testing.assert_close(expected, p, atol=1e-6, rtol=0)


def test_start_labels_put_pi_beta_times_the_value_on_the_support():
    """Loop reference; the fixed point of their cross-entropy is Q_hat = value on the support."""
    from qsft.algorithms.qsft import start_labels

    g = torch.Generator().manual_seed(12)
    behavior = torch.randn(3, V, generator=g) * 2
    labels = start_labels(behavior, 0.2, DUMMY, support_threshold=0.05)
    for i in range(3):
        pi = torch.softmax(behavior[i].double(), -1)
        ref = [0.2 * float(pi[v]) if v != DUMMY and pi[v] > 0.05 else 0.0 for v in range(V)]
        ref[DUMMY] = 1.0 - sum(ref)
        torch.testing.assert_close(labels[i].double(), torch.tensor(ref, dtype=torch.float64), atol=1e-6, rtol=0)
    # the minimiser of a cross-entropy is its label: p / pi_beta = 0.2 wherever pi_beta > threshold
    q_hat = labels / torch.softmax(behavior, -1)
    inside = (torch.softmax(behavior, -1) > 0.05) & (torch.arange(V) != DUMMY)
    torch.testing.assert_close(q_hat[inside], torch.full_like(q_hat[inside], 0.2))
