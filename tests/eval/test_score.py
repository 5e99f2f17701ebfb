"""`qsft score`: q_hat per agent token against a hand computation, and the Q* oracle end to end."""

import argparse
import json
from collections import defaultdict

import pytest
import torch

from qsft.cli.eval import register
from qsft.data.episode import Episode, Turn
from qsft.data.io import save_episodes
from qsft.errors import ConfigError
from qsft.eval.score import score
from tests.decoding.fake_runs import fake_qsft_run, fake_single_model_run
from tests.oracle_chain import GAMMA, chain_transitions, q_star, random_episodes


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qsft")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


EPISODE = Episode("e1", (Turn("env", "look at the door"), Turn("agent", "open door", 0.0),
                         Turn("env", "the door opens"), Turn("agent", "wait", 1.0)), True)


@pytest.mark.parametrize("history_turns", [None, 1])
def test_q_hat_per_token_matches_a_hand_computation(tmp_path, history_turns):
    tokenizer, q_model, behavior = fake_qsft_run(tmp_path, history_turns)
    scores = score(tmp_path, [EPISODE], tmp_path / "scores.jsonl")
    assert [(s.turn, s.text, s.reward) for s in scores] == [(0, "open door", 0.0), (1, "wait", 1.0)]
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    bos, eot = tokenizer.bos_token_id, tokenizer.eos_token_id
    contexts = [[bos] + enc("look at the door"),
                ([bos] if history_turns == 1 else [bos] + enc("look at the door") + enc("open door") + [eot])
                + enc("the door opens")]
    for turn, context in zip(scores, contexts):
        action = enc(turn.text) + [eot]
        ids = torch.tensor([context + action])
        with torch.no_grad():
            log_p = torch.log_softmax(q_model(ids).logits[0], -1)
            log_pi = torch.log_softmax(behavior(ids).logits[0], -1)
        expected = [float((log_p[len(context) + k - 1, a] - log_pi[len(context) + k - 1, a]).exp())
                    for k, a in enumerate(action)]
        assert turn.tokens == tokenizer.convert_ids_to_tokens(action) and turn.tokens[-1] == "[EOT]"
        assert turn.q_hat == pytest.approx(expected, rel=1e-4)
        assert turn.q == turn.q_hat[-1]
    lines = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert [line["q"] for line in lines] == [s.q for s in scores]
    assert set(lines[0]) >= {"episode_id", "turn", "text", "reward", "q", "tokens", "q_hat"}


def test_score_needs_a_qsft_run(tmp_path, capsys):
    fake_single_model_run(tmp_path, "bc")
    with pytest.raises(ConfigError, match="needs a Q-SFT run"):
        score(tmp_path, [EPISODE])
    save_episodes(tmp_path / "d.jsonl", [EPISODE])
    assert run_cli(["score", "--run", str(tmp_path), "--data", str(tmp_path / "d.jsonl"),
                    "--out", str(tmp_path / "s.jsonl")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "s.jsonl").exists()


# Found by search on the tiny GPT-2 ("micro"), as in tests/training/test_cli_oracle.py: lr >= 5e-3
# never learns the state dependence; a Q-model started from the behavior model (uniform over L/R,
# so it ignores the state) learns it far more slowly than one from fresh weights (q_init="model");
# Polyak tau 0.05 beats hard copies; values rise from below and the linear decay fits them closely.
ORACLE_OVERRIDES = dict(
    history_turns=1, max_length=32, reward_transform="success", gamma=GAMMA, loss_variant="dummy",
    model_preset="micro", report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1000, seed=0,
    learning_rate=3e-3, per_device_train_batch_size=8, behavior_max_steps=100, max_steps=800,
    target_update="polyak", tau=0.05, q_init="model",
    # the chain's actions have pi_beta ~ 0.5; a threshold of 0.01 keeps tokens the behavior
    # model has not yet pushed below 1e-4 out of the max in the target
    support_threshold=0.01)


def test_score_recovers_q_star_on_the_oracle_chain(tmp_path):
    from qsft.training.run import train

    transitions, data = tmp_path / "transitions.jsonl", tmp_path / "chain.jsonl"
    save_episodes(transitions, chain_transitions())
    run = train("qsft", transitions, "tiny", tmp_path / "run", ORACLE_OVERRIDES)
    # score multi-turn logged episodes of the chain (sampled behavior), not the training data
    episodes = random_episodes(100, seed=1)
    save_episodes(data, episodes)
    assert run_cli(["score", "--run", str(run), "--data", str(data), "--out", str(tmp_path / "scores.jsonl")]) == 0
    by_pair = defaultdict(list)
    by_id = {ep.id: ep for ep in episodes}
    for line in (tmp_path / "scores.jsonl").read_text().splitlines():
        row = json.loads(line)
        turns = by_id[row["episode_id"]].turns
        agent_index = [k for k, t in enumerate(turns) if t.role == "agent"][row["turn"]]
        state = int(turns[agent_index - 1].text[1:])
        by_pair[(state, row["text"])].append(row["q"])
    truth = q_star()
    assert set(by_pair) == set(truth)
    assert sum(len(v) for v in by_pair.values()) == sum(len(ep.agent_turns) for ep in episodes)
    for pair, values in by_pair.items():
        assert max(values) - min(values) < 1e-4  # a Markov window: q depends on (state, action) only
        assert abs(values[0] - truth[pair]) < 0.05, (pair, values[0], truth[pair])
