import random
import re

import pytest

from qsft.envs import default_policy_spec, make, make_policy, policy_specs
from qsft.envs.generate import generate_episodes, run_episode
from qsft.envs.maze.policies import DOUBLE_T_REGIONS, MazeRegionPolicy
from qsft.envs.policies import EpsilonPolicy, MixturePolicy
from qsft.envs.wordle.env import feedback
from qsft.errors import ConfigError, EnvError

POSITION = re.compile(r"Your current position is at position ([\d ]+), ([\d ]+)\.")


def cell_of(observation: str) -> tuple[int, int]:
    row, col = POSITION.search(observation).groups()
    return int(row.replace(" ", "")), int(col.replace(" ", ""))


def test_defaults_and_spec_lists():
    assert default_policy_spec("maze") == "lmrl" and default_policy_spec("maze-po") == "lmrl"
    assert default_policy_spec("wordle") == "consistent:0.3"
    assert default_policy_spec("chess-kq") == "epsilon:0.5"
    assert "stockfish:D" in policy_specs("chess-kr") and "lmrl[:P]" in policy_specs("maze")


def test_spec_parsing_and_errors():
    assert isinstance(make_policy("maze", "epsilon:0.3"), EpsilonPolicy)
    assert isinstance(make_policy("wordle", "mixture:0.3"), MixturePolicy)
    assert make_policy("chess-kq", "stockfish:5").depth == 5
    assert make_policy("maze", "lmrl:0.5").p_greedy == 0.5
    for spec, message in [("epsilon", "needs a probability"), ("epsilon:1.5", r"in \[0, 1\]"),
                          ("epsilon:x", "not a number"), ("optimal:1", "takes no argument"),
                          ("greedy", "unknown policy spec 'greedy' for 'maze'; use one of: optimal")]:
        with pytest.raises(ConfigError, match=message):
            make_policy("maze", spec)
    with pytest.raises(ConfigError, match="whole depth"):
        make_policy("chess-kq", "stockfish:2.5")
    with pytest.raises(EnvError, match="no scripted behavior policies"):
        make_policy("gym:Foo-v0", "optimal")


def test_epsilon_zero_is_optimal_and_mixture_picks_per_episode():
    optimal = generate_episodes("maze", "optimal", 20, 3, progress=False)
    eps0 = generate_episodes("maze", "epsilon:0", 20, 3, progress=False)
    assert [e.total_return for e in optimal] == [e.total_return for e in eps0]
    assert all(e.meta["return"] == e.meta["optimal_return"] for e in optimal)
    mixed = generate_episodes("maze", "mixture:0.5", 60, 3, progress=False)
    labels = {e.meta["behavior"] for e in mixed}
    assert labels == {"good", "poor"}
    assert all(e.meta["return"] == e.meta["optimal_return"] for e in mixed if e.meta["behavior"] == "good")


def test_lmrl_maze_data_is_confined_mostly_failing_and_stitchable():
    episodes = generate_episodes("maze", "lmrl", 400, seed=0, progress=False)
    regions = {r.name: r for r in DOUBLE_T_REGIONS}
    best_moves_seen: dict = {}
    env = make("maze")
    for ep in episodes:
        region = regions[ep.meta["behavior"]]
        observations = [t.text for t in ep.turns if t.role == "env"]
        actions = [t.text for t in ep.turns if t.role == "agent"]
        assert all(cell_of(o) in region.cells for o in observations)
        for obs, action in zip(observations, actions):
            cell = cell_of(obs)
            if action in env.layout.optimal_moves(cell):
                best_moves_seen[cell] = True
    success = sum(e.meta["success"] for e in episodes) / len(episodes)
    assert 0.15 <= success <= 0.35, success
    # Every start cell has a shortest-path move somewhere in the data: stitching is possible.
    assert set(best_moves_seen) == set(env.layout.start_cells)
    assert all(e.meta["behavior"] == "centre" for e in episodes if e.meta["success"])


def test_lmrl_rejects_foreign_layouts():
    env = make("maze", layout=("####", "#.G#", "####"))
    env.reset(0)
    with pytest.raises(EnvError, match="double-T"):
        MazeRegionPolicy().begin_episode(env, random.Random(0))


def test_wordle_consistent_policy_only_guesses_consistent_answers():
    env = make("wordle")
    policy = make_policy("wordle", "consistent:1")
    episode = run_episode(env, policy, start_seed=4, policy_seed=4, episode_id="w")
    guesses = ["".join(t.text.split()) for t in episode.agent_turns]
    assert episode.agent_turns[0].text == " ".join(guesses[0])  # spaced letters, as the env echoes them
    for k, guess in enumerate(guesses):
        assert guess in env.vocabulary.answers
        assert all(feedback(g, guess) == feedback(g, env.answer) for g in guesses[:k])


def test_wordle_solver_policy_matches_optimal_return():
    env = make("wordle")
    for i in range(10):
        episode = run_episode(env, make_policy("wordle", "optimal"), start_seed=i, policy_seed=0, episode_id="w")
        assert episode.meta["success"] and episode.total_return == episode.meta["optimal_return"]


def test_wordle_random_policy_uses_vocabulary():
    env = make("wordle")
    episode = run_episode(env, make_policy("wordle", "random"), start_seed=1, policy_seed=1, episode_id="w")
    assert all("".join(t.text.split()) in env.vocabulary.guess_set for t in episode.agent_turns)
    assert episode.meta["invalid_actions"] == 0
