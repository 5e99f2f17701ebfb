"""Q-SFT through the CLI with nothing but --data, --model, --out, --behavior and --gamma (issue #16).

A 5-state chain (actions L/R, reward 1 at the goal, gamma 0.9), uniform random behavior from random
starts, episodes of at most 6 turns ending truncated when the goal is not reached; the context is
the whole episode (the default). `qsft train --algo bc`, `qsft train --algo qsft --behavior BC`, then
`qsft score`: the mean of the turns' q per (state, action) must be within 0.05 of Q*.

Measured 2026-12-02 (benchmarks/chain_defaults.py --episodes 4000, same defaults): max |mean - Q*| 0.040
at steps 800-1,000 (0.72 at step 100, 0.12 at 400), worst single turn 0.107; BC ~4.5 min, Q-SFT ~5 min
on 2 busy cores. With 400 episodes the same defaults overestimate by up to +0.27: 320 epochs let the
two networks memorise the (mostly unique) histories to different degrees, and the max over L/R collects
the ratio errors (docs/algorithm.md §5). With the paper's tau 0.005 the values are still 0.41 below Q*
at step 1,000.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from qsft.cli import main
from qsft.data.io import save_episodes
from tests.oracle_chain import GAMMA, q_star, random_episodes


@pytest.mark.slow
def test_flagless_cli_scores_match_q_star(tmp_path):
    episodes = random_episodes(4000)
    data, bc, q, scores = (tmp_path / name for name in ("chain.jsonl", "bc", "q", "scores.jsonl"))
    save_episodes(data, episodes)
    assert main(["train", "--algo", "bc", "--data", str(data), "--model", "tiny", "--out", str(bc)]) == 0
    assert main(["train", "--algo", "qsft", "--data", str(data), "--model", "tiny", "--out", str(q),
                 "--behavior", str(bc), "--gamma", str(GAMMA)]) == 0
    assert main(["score", "--run", str(q), "--data", str(data), "--out", str(scores)]) == 0

    by_id, values = {ep.id: ep for ep in episodes}, defaultdict(list)
    for line in scores.read_text().splitlines():
        turn = json.loads(line)
        observation = [t.text for t in by_id[turn["episode_id"]].turns if t.role == "env"][turn["turn"]]
        values[(int(observation[1:]), turn["text"])].append(turn["q"])
    truth = q_star(GAMMA)
    errors = {key: sum(v) / len(v) - truth[key] for key, v in values.items()}
    assert len(errors) == 8
    assert max(abs(e) for e in errors.values()) <= 0.05, errors
