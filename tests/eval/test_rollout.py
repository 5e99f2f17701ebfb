"""Batched rollouts: same results as one-at-a-time rollouts, the training token layout, bookkeeping."""

import copy

import pytest
import torch

from qsft.data.episode import Turn
from qsft.data.tiny_tokenizer import build_tiny_tokenizer
from qsft.data.tokenize import SegmentEncoder, TokenMDPConfig, context_ids
from qsft.decoding.policy import load_policy, policy_from_models
from qsft.envs import make
from qsft.errors import ConfigError
from qsft.eval.rollout import rollout
from qsft.models.loading import build_tiny_model
from qsft.training.run import RunInfo
from tests.eval.chain_env import ChainEnv
from tests.eval.conftest import MAZE_TURNS


def maze_env():
    return make("maze", max_turns=MAZE_TURNS)


def two_model_policy(run_dir, mode: str):
    """The BC run as behavior model and a perturbed copy as Q-model: exercises both KV caches."""
    policy = load_policy(run_dir)
    behavior = policy.models.model
    q_model = copy.deepcopy(behavior)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in q_model.parameters():
            parameter.add_(0.005 * torch.randn(parameter.shape, generator=generator))
    return policy_from_models(q_model, policy.tokenizer, policy.run_info, behavior, mode=mode, beta=2.0)


def outcome(results):
    return [(r.index, r.start_seed, r.total_return, r.success, r.turns, r.invalid_actions, r.transcript)
            for r in results]


@pytest.mark.parametrize(("mode", "greedy"), [("beta", True), ("beta_ratio", False)], ids=["greedy", "sample"])
def test_batched_maze_rollouts_equal_sequential_rollouts(maze_bc_run, mode, greedy):
    policy = two_model_policy(maze_bc_run, mode)
    batched = rollout(policy, maze_env, 64, seed=3, batch_size=16, greedy=greedy, max_new_tokens=5)
    sequential = rollout(policy, maze_env, 64, seed=3, batch_size=1, greedy=greedy, max_new_tokens=5)
    assert outcome(batched) == outcome(sequential)
    assert [r.index for r in batched] == list(range(64))
    # the comparison means something: episodes differ in length and outcome, actions are real moves
    assert len({r.turns for r in batched}) > 1
    assert any(r.success for r in batched)
    moves = [t["text"] for r in batched for t in r.transcript if t["role"] == "agent"]
    assert sum(m.startswith("move ") for m in moves) > 0.8 * len(moves)
    if not greedy:  # a different seed gives different sampled episodes
        other = rollout(policy, maze_env, 8, seed=4, batch_size=8, greedy=False, max_new_tokens=5)
        assert outcome(other) != outcome(batched[:8])


def test_prompts_use_the_training_layout(maze_bc_run):
    """Every decision's prompt is `context_ids` of the turns so far (history_turns window, EOTs)."""
    policy = load_policy(maze_bc_run)
    seen = []
    original = policy.models.model.forward

    def spy(*args, **kwargs):
        if kwargs.get("cache") is None and kwargs.get("past_key_values") is None:  # prefill = the prompt
            ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
            seen.append(ids[0][mask[0].bool()].tolist())
        return original(*args, **kwargs)

    policy.models.model.forward = spy
    [result] = rollout(policy, maze_env, 1, seed=0, batch_size=1, greedy=True, max_new_tokens=6)
    tokenizer = policy.tokenizer
    layout = TokenMDPConfig(1.0, policy.run_info.max_length, tokenizer.bos_token_id, tokenizer.eos_token_id,
                            history_turns=1, reserve=policy.run_info.reply_tokens)
    turns = [Turn(t["role"], t["text"], t.get("reward", 0.0)) for t in result.transcript]
    expected = [context_ids(turns[:k], SegmentEncoder(tokenizer), layout)
                for k in range(1, len(turns), 2)]
    assert seen == expected
    assert policy.run_info.history_turns == 1 and len(seen) == result.turns


def test_results_record_return_success_turns_invalid_and_close_every_env():
    tokenizer = build_tiny_tokenizer(["p0 p1 p2 p3 p4 L R"])
    model = build_tiny_model(tokenizer, "micro", seed=0)
    info = RunInfo(algo="bc", history_turns=1, max_length=32)
    policy = policy_from_models(model, tokenizer, info)
    ChainEnv.closed = 0
    results = rollout(policy, ChainEnv, 10, seed=0, batch_size=4, greedy=False, max_new_tokens=3)
    assert ChainEnv.closed == 4
    for r in results:
        agent = [t for t in r.transcript if t["role"] == "agent"]
        assert r.turns == len(agent) <= ChainEnv.max_turns
        assert r.total_return == sum(t["reward"] for t in agent)
        assert r.invalid_actions == sum(t["text"] not in ("L", "R") for t in agent)
        assert r.success == (r.total_return == 1.0)
        assert r.truncated == (not r.success and r.turns == ChainEnv.max_turns)


def test_turn_budget_and_bad_arguments():
    tokenizer = build_tiny_tokenizer(["p0 p1 L R"])
    policy = policy_from_models(build_tiny_model(tokenizer, "micro"), tokenizer,
                                RunInfo(algo="bc", history_turns=1, max_length=8))
    results = rollout(policy, ChainEnv, 2, seed=0, batch_size=2, greedy=True, max_new_tokens=32)
    # max_length 8: an utterance may take at most 4 tokens, EOT included
    tokens = [len(tokenizer.encode(t["text"], add_special_tokens=False))
              for r in results for t in r.transcript if t["role"] == "agent"]
    assert max(tokens) <= 4
    with pytest.raises(ConfigError):
        rollout(policy, ChainEnv, 0)
    with pytest.raises(ConfigError):
        rollout(policy, ChainEnv, 2, batch_size=0)
