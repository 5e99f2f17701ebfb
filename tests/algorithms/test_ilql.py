"""ILQL losses against slow references (explicit loops), Polyak of the heads, and a tabular Q* oracle."""

import math

import pytest
import torch

from qsft.algorithms.ilql import (
    action_values,
    cql_loss,
    decoding_logits,
    expectile_loss,
    ilql_loss,
    next_state_values,
    q_regression_loss,
    q_targets,
    token_state_values,
)
from qsft.data.collate import TokenMDPCollator
from qsft.data.rewards import apply_reward_transform
from qsft.data.tiny_tokenizer import build_tiny_tokenizer
from qsft.data.tokenize import TokenMDPConfig, tokenize_episodes
from qsft.models.loading import build_tiny_model
from qsft.models.target import polyak_update
from qsft.training.ilql import ILQLModel
from tests.oracle_chain import ACTIONS, GAMMA, GOAL, q_star, random_episodes, step

V = 7


def _random_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    B, T = 3, 8
    input_ids = torch.randint(0, V, (B, T), generator=g)
    action_mask = torch.rand(B, T, generator=g) > 0.35
    action_mask[:, 0] = False
    action_mask[2, 5:] = False  # right padding
    reward = torch.rand(B, T, generator=g) * action_mask
    discount = torch.where(torch.rand(B, T, generator=g) > 0.5, 0.9, 1.0) * action_mask
    next_state_index = torch.randint(0, T, (B, T), generator=g)
    next_state_index[0, 3], next_state_index[1, 4] = -1, -2  # a terminal and an external next state
    next_state_index[2, 2] = -2
    discount[0, 3] = 0.0
    heads = [torch.randn(B, T, V, generator=g) for _ in range(5)]  # lm, q1, q2, target q1, target q2
    values = torch.randn(B, T, generator=g)
    external = torch.randn(B, generator=g)
    return input_ids, action_mask, reward, discount, next_state_index, heads, values, external


def _decision_tokens(action_mask):
    B, T = action_mask.shape
    return [(b, t) for b in range(B) for t in range(1, T) if action_mask[b, t]]


def _reference_terms(input_ids, action_mask, reward, discount, next_state_index, heads, values, external, tau):
    """Loop over agent tokens: (mean Q loss per head summed, expectile, CQL per head summed, BC)."""
    lm, q1, q2, tq1, tq2 = (h.double() for h in heads)
    values = values.double()
    loss_q, loss_v, loss_cql, loss_bc = 0.0, 0.0, 0.0, 0.0
    tokens = _decision_tokens(action_mask)
    for b, t in tokens:
        a, j = int(input_ids[b, t]), int(next_state_index[b, t])
        next_v = 0.0 if j == -1 else float(external[b]) if j == -2 else float(values[b, j])
        y = float(reward[b, t]) + float(discount[b, t]) * next_v
        loss_q += (q1[b, t - 1, a] - y) ** 2 + (q2[b, t - 1, a] - y) ** 2
        u = min(tq1[b, t - 1, a], tq2[b, t - 1, a]) - values[b, t - 1]
        loss_v += (tau if u >= 0 else 1 - tau) * u**2
        for q in (q1, q2):
            loss_cql += math.log(sum(math.exp(q[b, t - 1, k]) for k in range(V))) - q[b, t - 1, a]
        loss_bc += -(lm[b, t - 1, a] - math.log(sum(math.exp(lm[b, t - 1, k]) for k in range(V))))
    n = len(tokens)
    return float(loss_q) / n, float(loss_v) / n, float(loss_cql) / n, float(loss_bc) / n


@pytest.mark.parametrize("tau", [0.5, 0.7, 0.9])
def test_expectile_loss_matches_loop(tau):
    g = torch.Generator().manual_seed(1)
    values, targets = torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g)
    mask = torch.rand(2, 6, generator=g) > 0.3
    mask[0, 1] = True
    expected, n = 0.0, 0
    for b in range(2):
        for t in range(1, 6):
            if mask[b, t]:
                u = float(targets[b, t] - values[b, t])
                expected += abs(tau - (1.0 if u < 0 else 0.0)) * u * u
                n += 1
    assert expectile_loss(values, targets, mask, tau).item() == pytest.approx(expected / n, rel=1e-5)


def test_expectile_minimiser_is_the_tau_expectile():
    # V fitted to samples of one state: tau = 0.5 gives the mean, tau -> 1 approaches the max.
    targets = torch.tensor([[0.0, 0.0, 1.0, 0.2, 0.6]])
    mask = torch.ones_like(targets, dtype=torch.bool)
    samples = targets[0, 1:]
    for tau, expected in [(0.5, samples.mean().item()), (0.999, samples.max().item())]:
        v = torch.zeros(1, requires_grad=True)
        opt = torch.optim.Adam([v], lr=0.05)
        for _ in range(1500):
            opt.zero_grad()
            expectile_loss(v.expand_as(targets), targets, mask, tau).backward()
            opt.step()
        assert v.item() == pytest.approx(expected, abs=0.01)


def test_cql_term_matches_logsumexp_loop():
    input_ids, action_mask, *_, heads, _, _ = _random_batch(2)
    q = heads[1]
    tokens = _decision_tokens(action_mask)
    expected = sum(math.log(sum(math.exp(float(q[b, t - 1, k])) for k in range(V)))
                   - float(q[b, t - 1, input_ids[b, t]]) for b, t in tokens) / len(tokens)
    assert cql_loss(q, input_ids, action_mask).item() == pytest.approx(expected, rel=1e-5)


def test_bellman_regression_with_terminal_and_external_next_states():
    input_ids, action_mask, reward, discount, next_state_index, heads, values, external = _random_batch(3)
    got = q_targets(reward, discount, next_state_values(values, next_state_index, external))
    for b, t in _decision_tokens(action_mask):
        j = int(next_state_index[b, t])
        next_v = 0.0 if j == -1 else float(external[b]) if j == -2 else float(values[b, j])
        assert got[b, t].item() == pytest.approx(float(reward[b, t]) + float(discount[b, t]) * next_v, abs=1e-6)
    assert got[0, 3].item() == pytest.approx(float(reward[0, 3]))  # terminal: the reward alone
    # Q regression: value, and V(s') is a stop-gradient (only the Q head moves towards y)
    q = heads[1].clone().requires_grad_(True)
    v = values.clone().requires_grad_(True)
    y = q_targets(reward, discount, next_state_values(v, next_state_index, external))
    loss = q_regression_loss(action_values(q, input_ids), y, action_mask)
    tokens = _decision_tokens(action_mask)
    expected = sum((float(heads[1][b, t - 1, input_ids[b, t]]) - float(got[b, t])) ** 2
                   for b, t in tokens) / len(tokens)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert v.grad is None and q.grad.abs().sum() > 0


def test_alignment_helpers():
    ids = torch.tensor([[0, 2, 1]])
    q = torch.arange(3 * V, dtype=torch.float32).reshape(1, 3, V)
    assert action_values(q, ids).tolist() == [[0.0, float(q[0, 0, 2]), float(q[0, 1, 1])]]
    assert token_state_values(torch.tensor([[5.0, 6.0, 7.0]])).tolist() == [[0.0, 5.0, 6.0]]


@pytest.mark.parametrize("cql_weight,bc_weight", [(0.1, 1.0), (1.0, 0.5)])
def test_ilql_loss_matches_loop_reference(cql_weight, bc_weight):
    input_ids, action_mask, reward, discount, next_state_index, heads, values, external = _random_batch(4)
    out = ilql_loss(*heads, values, input_ids, action_mask, reward, discount, next_state_index, external,
                    tau=0.7, cql_weight=cql_weight, bc_weight=bc_weight)
    ref_q, ref_v, ref_cql, ref_bc = _reference_terms(input_ids, action_mask, reward, discount, next_state_index,
                                                     heads, values, external, 0.7)
    assert out.loss_q == pytest.approx(ref_q, rel=1e-5)
    assert out.loss_v == pytest.approx(ref_v, rel=1e-5)
    assert out.loss_cql == pytest.approx(ref_cql, rel=1e-5)
    assert out.loss_bc == pytest.approx(ref_bc, rel=1e-5)
    assert out.loss.item() == pytest.approx(ref_q + ref_v + cql_weight * ref_cql + bc_weight * ref_bc, rel=1e-5)


def test_ilql_loss_without_agent_tokens_is_zero_and_differentiable():
    input_ids, action_mask, reward, discount, next_state_index, heads, values, _ = _random_batch(5)
    heads = [h.requires_grad_(True) for h in heads]
    out = ilql_loss(*heads, values, input_ids, torch.zeros_like(action_mask), reward, discount, next_state_index)
    out.loss.backward()
    assert out.loss.item() == 0.0


@pytest.mark.parametrize("beta", [0.0, 1.0, 4.0])
def test_decoding_logits_match_loop(beta):
    g = torch.Generator().manual_seed(6)
    lm, q1, q2 = (torch.randn(2, 3, V, generator=g) for _ in range(3))
    values = torch.randn(2, 3, generator=g)
    got = decoding_logits(lm, q1, q2, values, beta)
    for b in range(2):
        for t in range(3):
            lse = math.log(sum(math.exp(float(lm[b, t, k])) for k in range(V)))
            for k in range(V):
                q = min(float(q1[b, t, k]), float(q2[b, t, k]))
                expected = float(lm[b, t, k]) - lse + beta * (q - float(values[b, t]))
                assert got[b, t, k].item() == pytest.approx(expected, abs=1e-5)


def test_polyak_moves_only_the_target_q_heads():
    tokenizer = build_tiny_tokenizer(["p0 p1 L R"])
    model = ILQLModel(build_tiny_model(tokenizer, "micro", 16, seed=0))
    torch.nn.init.normal_(model.q.q1.weight)  # heads != targets, so the update is visible
    before_target = {k: v.clone() for k, v in model.target_q.state_dict().items()}
    online = {k: v.clone() for k, v in model.q.state_dict().items()}
    others = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(("q.", "target_q."))}
    tau = 0.25
    model.update_target(tau)
    for name, target in model.target_q.state_dict().items():
        old, new = before_target[name].flatten(), online[name].flatten()
        expected = torch.tensor([(1 - tau) * float(old[i]) + tau * float(new[i]) for i in range(old.numel())])
        assert torch.allclose(target.flatten(), expected, atol=1e-6), name
    for name, value in model.state_dict().items():
        if name in others:
            assert torch.equal(value, others[name]), name
    assert not any(p.requires_grad for p in model.target_q.parameters())


# --- Q* oracle (DESIGN §1.6) for the baseline: tabular heads trained by the library's ILQL loss ---

def _expectile_fixed_point(counts, tau: float, gamma: float = GAMMA):
    """Q(s,a) = r + gamma V(s'), V(s) = the tau-expectile of Q(s, .) under the data's action counts."""
    q = {(s, a): 0.0 for s in range(GOAL) for a in ACTIONS}
    v = dict.fromkeys(range(GOAL), 0.0)
    for _ in range(300):
        for s in range(GOAL):
            for _ in range(30):  # the expectile is the weighted mean with weights |tau - 1(q < v)|
                w = {a: counts[(s, a)] * (tau if q[(s, a)] >= v[s] else 1 - tau) for a in ACTIONS}
                v[s] = sum(w[a] * q[(s, a)] for a in ACTIONS) / sum(w.values())
        for (s, a) in q:
            nxt, reward, done = step(s, a)
            q[(s, a)] = reward + (0.0 if done else gamma * v[nxt])
    return q


class _Tables(torch.nn.Module):
    def __init__(self, rows: int, vocab: int) -> None:
        super().__init__()
        self.q1 = torch.nn.Parameter(torch.randn(rows, vocab) * 0.1)
        self.q2 = torch.nn.Parameter(torch.randn(rows, vocab) * 0.1)


@pytest.fixture
def one_thread():
    # ~10^5 tiny ops: a second intra-op thread only adds synchronisation (10x slower on a busy machine)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tabular_ilql_recovers_the_expectile_fixed_point_and_q_star(one_thread):
    tau = 0.95
    episodes, _ = apply_reward_transform(random_episodes(300, seed=0), "success", GAMMA)
    tokenizer = build_tiny_tokenizer([t.text for ep in episodes for t in ep.turns])
    cfg = TokenMDPConfig(GAMMA, 32, tokenizer.bos_token_id, tokenizer.eos_token_id, history_turns=1)
    samples = tokenize_episodes(episodes, tokenizer, cfg)
    batch = TokenMDPCollator(tokenizer.pad_token_id, tokenizer.bos_token_id)(samples)
    index: dict[tuple[int, ...], int] = {}

    def rows(ids):  # one table row per distinct token prefix: an exactly tabular "language model"
        return torch.tensor([[index.setdefault(tuple(seq[:t + 1]), len(index)) for t in range(len(seq))]
                             for seq in ids.tolist()])

    ids, nxt, nxt_mask = batch["input_ids"], batch["next_input_ids"], batch["next_attention_mask"]
    state_rows = rows(ids)
    next_rows = rows(nxt)[torch.arange(nxt.shape[0]), nxt_mask.sum(1) - 1]
    torch.manual_seed(0)
    vocab = len(tokenizer)
    q, v = _Tables(len(index), vocab), torch.nn.Parameter(torch.zeros(len(index)))
    lm = torch.zeros(len(index), vocab)  # the BC head plays no part in Q/V
    target = _Tables(len(index), vocab).requires_grad_(False)
    target.load_state_dict(q.state_dict())
    opt = torch.optim.Adam([*q.parameters(), v], lr=0.03)
    for _ in range(800):
        opt.zero_grad()
        out = ilql_loss(lm[state_rows], q.q1[state_rows], q.q2[state_rows], target.q1[state_rows],
                        target.q2[state_rows], v[state_rows], ids, batch["action_mask"], batch["reward"],
                        batch["discount"], batch["next_state_index"], v[next_rows], tau=tau, cql_weight=0.0)
        out.loss.backward()
        opt.step()
        polyak_update(target, q, 0.05)

    counts = {(s, a): 0 for s in range(GOAL) for a in ACTIONS}
    for sample in samples:
        s, a = tokenizer.convert_ids_to_tokens(sample.input_ids[1:3])
        counts[(int(s[1:]), a)] += 1
    fixed, truth = _expectile_fixed_point(counts, tau), q_star()
    learned_q = torch.minimum(q.q1, q.q2).detach()
    for (s, a), expected in fixed.items():
        row = index[(tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids(f"p{s}"))]
        a_id = tokenizer.convert_tokens_to_ids(a)
        learned = float(learned_q[row, a_id])
        assert learned == pytest.approx(expected, abs=0.01), (s, a, learned, expected)
        # the 0.95-expectile sits just under the max, so Q lands just under Q*
        assert learned == pytest.approx(truth[(s, a)], abs=0.04), (s, a, learned, truth[(s, a)])
