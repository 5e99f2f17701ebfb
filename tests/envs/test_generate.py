import json
import statistics
import time

import pytest

from qsft.data.episode import Episode, Turn
from qsft.data.io import load_episodes
from qsft.envs import generate_dataset, generate_episodes, make, stats_path, summarize
from qsft.envs.generate import episode_seeds
from qsft.errors import ConfigError


@pytest.mark.parametrize("env_name", ["maze", "maze-po", "wordle"])
def test_same_seed_same_episodes(env_name):
    first = generate_episodes(env_name, None, 15, seed=5, progress=False)
    second = generate_episodes(env_name, None, 15, seed=5, progress=False)
    other = generate_episodes(env_name, None, 15, seed=6, progress=False)
    assert [e.to_dict() for e in first] == [e.to_dict() for e in second]
    assert [e.to_dict() for e in first] != [e.to_dict() for e in other]
    # An episode does not depend on how many come before it.
    assert generate_episodes(env_name, None, 3, seed=5, progress=False)[2].to_dict() == first[2].to_dict()


def test_episode_layout_and_meta():
    episodes = generate_episodes("maze", "lmrl", 50, seed=1, progress=False)
    assert [e.id for e in episodes[:2]] == ["maze-1-0", "maze-1-1"]
    for ep in episodes:
        roles = [t.role for t in ep.turns]
        assert roles[0] == "env"
        # real endings close on the agent's turn; turn-limit cuts keep the final observation to bootstrap from
        assert (roles[-1] == "agent" and ep.done) or (roles[-1] == "env" and not ep.done and ep.meta["truncated"])
        assert all(a != b for a, b in zip(roles, roles[1:]))  # strictly alternating
        assert all(t.text.endswith("\n") for t in ep.turns if t.role == "env")
        assert all("\n" not in t.text for t in ep.turns if t.role == "agent")
        meta = ep.meta
        assert meta["return"] == ep.total_return and meta["turns"] == len(ep.agent_turns)
        assert meta["start_seed"] == episode_seeds(1, int(ep.id.rsplit("-", 1)[1]))[0]
        assert meta["truncated"] == (not meta["success"]) == (len(ep.agent_turns) == 100)
        assert set(meta) >= {"success", "return", "optimal_return", "turns", "invalid_actions", "start_seed",
                             "truncated", "env", "policy"}


def test_generate_1000_maze_episodes_and_report_time():
    start = time.perf_counter()
    episodes = generate_episodes("maze", "lmrl", 1000, seed=0, progress=False)
    elapsed = time.perf_counter() - start
    turns = sum(len(e.agent_turns) for e in episodes)
    print(f"\n1000 maze episodes ({turns} agent turns) generated in {elapsed:.2f} s")
    assert len(episodes) == 1000


def test_summarize_against_hand_computation():
    def ep(i, rewards, success, optimal):
        turns = [Turn("env", "o\n")]
        for r in rewards:
            turns += [Turn("agent", "a", r), Turn("env", "o\n")]
        return Episode(f"e{i}", tuple(turns[:-1]), True, {"success": success, "optimal_return": optimal})

    episodes = [ep(0, [-1, -1, 0], True, -2.0), ep(1, [-1] * 4, False, -1.0), ep(2, [0], True, 0.0)]
    summary = summarize(episodes, make("maze"))
    assert summary["episodes"] == 3 and summary["return_mean"] == pytest.approx(-2.0)
    assert (summary["return_min"], summary["return_max"]) == (-4.0, 0.0)
    assert summary["success_rate"] == pytest.approx(2 / 3) and summary["optimal_rate"] == pytest.approx(2 / 3)
    assert summary["return_std"] == pytest.approx(statistics.pstdev([-2, -4, 0]))
    assert summary["normalization"] == {"min_return": -100.0, "dataset_average": -2.0, "optimal_return": -1.0}
    with pytest.raises(ConfigError):
        summarize([])


def test_dataset_files_round_trip_and_summary_matches_recount(tmp_path):
    out = tmp_path / "sub" / "maze.jsonl"
    stats = generate_dataset("maze", None, 200, seed=3, out_path=out, progress=False)
    sidecar = json.loads(stats_path(out).read_text())
    assert stats_path(out).name == "maze.jsonl.stats.json"
    assert sidecar == json.loads(json.dumps(stats))
    assert (sidecar["env"], sidecar["policy"], sidecar["seed"]) == ("maze", "lmrl", 3)
    assert sidecar["env_config"]["reward_transform"] == "success" and sidecar["env_config"]["history_turns"] == 1
    loaded = load_episodes(out)
    assert [e.to_dict() for e in loaded] == [e.to_dict() for e in generate_episodes("maze", None, 200, 3,
                                                                                      progress=False)]
    recount = summarize(loaded, make("maze"))
    assert {k: sidecar[k] for k in recount} == json.loads(json.dumps(recount))
    assert not list(out.parent.glob(".*.tmp"))  # atomic writes leave no temp files behind


def test_bad_arguments():
    with pytest.raises(ConfigError, match="at least 1"):
        generate_episodes("maze", None, 0, seed=0)
    with pytest.raises(ConfigError, match="seed"):
        generate_episodes("maze", None, 5, seed=-1)
