"""MC returns (`--algo mc`, LMRL-Gym's "MC"): targets and loss against slow references, and the run end to end."""

from __future__ import annotations

import pytest
import torch

from qsft.algorithms.ilql import mc_loss, mc_returns
from qsft.data.collate import TokenMDPCollator
from qsft.data.episode import Episode, Turn
from qsft.data.tiny_tokenizer import build_tiny_tokenizer
from qsft.decoding.policy import load_policy
from qsft.models.loading import bos_token_id
from qsft.training.ilql import MCConfig, load_ilql_policy, mc_dataset
from qsft.training.run import RunInfo, train
from tests.oracle_chain import chain_transitions

GAMMA = 0.9


def _episodes() -> list[Episode]:
    """Multi-turn, multi-token utterances, several rewards per episode, one truncated."""
    return [
        Episode("a", (Turn("env", "x y"), Turn("agent", "go left now", 0.2), Turn("env", "y"),
                      Turn("agent", "stop", 0.5)), True, {"success": True}),
        Episode("b", (Turn("env", "y"), Turn("agent", "go", 0.0), Turn("env", "x"), Turn("agent", "left now", 0.3),
                      Turn("env", "x y")), False, {"success": False}),
    ]


def _batch(episodes, history_turns=None):
    tokenizer = build_tiny_tokenizer([t.text for ep in episodes for t in ep.turns])
    config = MCConfig(output_dir="unused", report_to="none", gamma=GAMMA, reward_transform="scale:1.0",
                      max_length=64, history_turns=history_turns)
    dataset, _ = mc_dataset(episodes, tokenizer, config)
    batch = TokenMDPCollator(tokenizer.pad_token_id, bos_token_id(tokenizer))(dataset.samples)
    return batch, dataset.samples


@pytest.mark.parametrize("history_turns", [None, 1])
def test_every_token_of_a_turn_carries_the_turns_discounted_return_to_go(history_turns):
    episodes = _episodes()
    batch, samples = _batch(episodes, history_turns)
    returns = mc_returns(batch["reward"], batch["next_state_index"], batch["action_mask"])
    for row, sample in enumerate(samples):
        rewards = next(ep for ep in episodes if ep.id == sample.episode_id).rewards
        for turn, first, end in sample.turn_spans:
            expected = sum(GAMMA ** (j - turn) * rewards[j] for j in range(turn, len(rewards)))  # the slow way
            for t in range(first, end):
                assert returns[row, t].item() == pytest.approx(expected, abs=1e-6)
    off_agent = ~batch["action_mask"].bool()
    assert torch.all(returns[off_agent] == 0)


def test_episode_return_pays_a_truncated_episode_its_partial_return():
    episodes = _episodes()
    tokenizer = build_tiny_tokenizer([t.text for ep in episodes for t in ep.turns])
    config = MCConfig(output_dir="unused", report_to="none", gamma=GAMMA, reward_transform="episode_return:0:1",
                      max_length=64)
    dataset, report = mc_dataset(episodes, tokenizer, config)
    truncated = next(s for s in dataset.samples if s.episode_id == "b")
    last_token = truncated.turn_spans[-1][2] - 1
    assert truncated.reward[last_token] == pytest.approx(0.3)  # Q-SFT's data would pay 0 and bootstrap
    assert report.truncated_unpaid == 0


def test_mc_loss_matches_a_loop_reference():
    g = torch.Generator().manual_seed(0)
    B, T, V = 2, 6, 5
    lm, q1, q2 = (torch.randn(B, T, V, generator=g) for _ in range(3))
    values = torch.randn(B, T, generator=g)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 0, 1], [0, 1, 1, 0, 1, 1]])
    returns = torch.rand(B, T, generator=g) * mask
    out = mc_loss(lm, q1, q2, values, ids, mask, returns, cql_weight=0.3, bc_weight=0.7)
    sq_q, sq_v, cql, bc, n = 0.0, 0.0, 0.0, 0.0, 0
    for b in range(B):
        for t in range(1, T):
            if not mask[b, t]:
                continue
            a, s = int(ids[b, t]), t - 1  # token t is decided at position t - 1
            g_t = float(returns[b, t])
            sq_q += (float(q1[b, s, a]) - g_t) ** 2 + (float(q2[b, s, a]) - g_t) ** 2
            sq_v += (float(values[b, s]) - g_t) ** 2
            for q in (q1, q2):
                cql += float(torch.logsumexp(q[b, s], 0)) - float(q[b, s, a])
            bc += -float(torch.log_softmax(lm[b, s], 0)[a])
            n += 1
    expected = (sq_q + sq_v + 0.3 * cql + 0.7 * bc) / n
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_mc_run_regresses_observed_returns_and_decodes_like_ilql(tmp_path):
    # one-turn episodes: the Monte-Carlo return is the immediate reward (1 only for R at p3), no bootstrap
    out = train("mc", chain_transitions(copies=2), "tiny", tmp_path / "mc",
                {"model_preset": "micro", "history_turns": 1, "max_length": 32, "reward_transform": "success",
                 "gamma": GAMMA, "max_steps": 150, "learning_rate": 3e-3, "per_device_train_batch_size": 16,
                 "save_strategy": "no", "report_to": "none", "use_cpu": True, "disable_tqdm": True, "beta": 2.0})
    info = RunInfo.load(out)
    assert info.algo == "mc" and {k: info.extra[k] for k in ("beta", "cql_weight", "bc_weight")} == {"beta": 2.0, "cql_weight": 0.1, "bc_weight": 1.0}
    model = load_ilql_policy(out)
    model.decode = False  # read the heads, not the policy's logits
    tokenizer = load_policy(out).tokenizer
    with torch.no_grad():
        for state in range(4):
            ids = torch.tensor([[tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids(f"p{state}")]])
            heads = model(input_ids=ids, return_heads=True)
            for action in ("L", "R"):
                a = tokenizer.convert_tokens_to_ids(action)
                q = min(float(heads.q1[0, -1, a]), float(heads.q2[0, -1, a]))
                assert q == pytest.approx(1.0 if (state, action) == (3, "R") else 0.0, abs=0.1), (state, action, q)
    assert load_policy(out).beta == 2.0  # `qsft eval` decodes it as ILQL: log pi_beta + beta (Q - V)
