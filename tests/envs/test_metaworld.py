"""Meta-World robot manipulation on the real MuJoCo simulator: the expert, rewards, seeds, actions, data files."""

import argparse
import json
import random

import numpy as np
import pytest

pytest.importorskip("metaworld", reason="the metaworld-* environments need the `metaworld` package: "
                                         "pip install 'qsft[robotics]'")

from qsft.cli import data as data_cli  # noqa: E402
from qsft.data.io import load_episodes  # noqa: E402
from qsft.data.rewards import apply_reward_transform  # noqa: E402
from qsft.envs import make, make_policy, policy_specs, run_episode  # noqa: E402
from qsft.envs.metaworld.env import ACTIONS, TASKS  # noqa: E402
from qsft.envs.metaworld.policies import expert_step  # noqa: E402
from qsft.envs.registry import METAWORLD_TASKS  # noqa: E402

NAMES = [f"metaworld-{task}" for task in METAWORLD_TASKS]
SUCCESS_RADIUS = {"metaworld-pick-place": 0.07, "metaworld-push": 0.05}  # Meta-World's, object to goal


def test_registry_lists_every_task_and_envs_declare_what_training_needs(envs):
    assert set(METAWORLD_TASKS) == set(TASKS)
    for name, env in envs.items():
        assert env.name == name and env.min_return is not None and env.optimal_return() == 1.0
        assert (env.default_reward_transform, env.history_turns, env.reward_range) == ("none", 1, (0.0, 1.0))
        assert all(action in env.action_hint for action in ACTIONS)


@pytest.mark.parametrize("name,seeds", [("metaworld-pick-place", 12), ("metaworld-push", 12),
                                        ("metaworld-reach", 6)])
def test_expert_succeeds_on_seeded_starts(envs, name, seeds):
    env, expert = envs[name], make_policy(name, "optimal")
    episodes = [run_episode(env, expert, seed, seed, f"e{seed}") for seed in range(seeds)]
    wins = [ep for ep in episodes if ep.meta["success"]]
    assert len(wins) >= 0.8 * seeds  # measured: 100 of 100 seeds of each task
    for episode in wins:
        assert episode.done and episode.total_return == 1.0 and episode.meta["invalid_actions"] == 0
        assert [t.reward for t in episode.agent_turns] == [0.0] * (len(episode.agent_turns) - 1) + [1.0]
        assert len(episode.agent_turns) <= env.max_turns * 0.6
        assert episode.turns[-1].role == "agent"  # a real ending: no final observation


@pytest.mark.parametrize("name", ["metaworld-pick-place", "metaworld-push"])
def test_success_is_the_simulators(envs, name):
    env = envs[name]
    env.reset(3)
    sim = env._sim
    policy, rng = make_policy(name, "optimal"), random.Random(0)
    done, infos = False, []
    while not done:
        _, reward, done, info = env.step(policy.act(env, rng))
        infos.append(info)
        distance = np.linalg.norm(sim._get_pos_objects() - sim._target_pos)
        # the object is at the goal exactly when the episode ends with reward 1 (checked after every turn)
        assert (reward == 1.0) == done == (distance <= SUCCESS_RADIUS[name])
    assert info["success"] and not info["truncated"] and all(i["sim_reward"] >= 0 for i in infos)
    assert infos[-1]["sim_reward"] > max(i["sim_reward"] for i in infos[:-1])  # Meta-World's shaped reward


def test_reward_is_read_from_the_simulators_success_flag(monkeypatch):
    env = make("metaworld-reach")
    env.reset(0)
    evaluate = env._sim.evaluate_state

    def always_success(observation, action):
        reward, info = evaluate(observation, action)
        return reward, {**info, "success": 1.0}

    monkeypatch.setattr(env._sim, "evaluate_state", always_success)
    _, reward, done, info = env.step("move x+")
    assert (reward, done, info["success"], info["truncated"]) == (1.0, True, True, False)
    env.close()


def test_reset_is_reproducible_per_seed(envs):
    env, fresh = envs["metaworld-pick-place"], make("metaworld-pick-place")
    try:
        actions = ["move y+", "move z-", "close gripper", "move x-", "open gripper", "move z+"]
        first = [env.reset(7)] + [env.step(a)[0] for a in actions]
        env.reset(3)
        env.step("move x+")  # another episode in between
        again = [env.reset(7)] + [env.step(a)[0] for a in actions]
        elsewhere = [fresh.reset(7)] + [fresh.step(a)[0] for a in actions]
        assert first == again == elsewhere
        starts = {env.reset(seed) for seed in range(10)}
        assert len(starts) == 10  # each seed its own object and goal
        for seed in range(10):
            env.reset(seed)
            puck, goal = env.object_position, env.goal
            assert -0.1 <= puck[0] <= 0.1 and 0.6 <= puck[1] <= 0.7 and 0.8 <= goal[1] <= 0.9
    finally:
        fresh.close()


def test_actions_move_the_hand_and_unparseable_text_holds_still(envs):
    env = envs["metaworld-pick-place"]
    text = env.reset(1)
    assert text.startswith("hand ") and " | gripper open | puck " in text and " | goal " in text
    assert len(text.split()) == 17 and text.endswith("\n") and "-0.00" not in text
    for action, axis, sign in [("move x+", 0, 1), ("move y-", 1, -1), ("move z-", 2, -1), ("Move  Z+", 2, 1)]:
        before = env.hand
        _, reward, done, info = env.step(action)
        assert not info["invalid"] and reward == 0.0 and not done
        assert 0.008 <= sign * (env.hand - before)[axis] <= 0.025, action  # the hand trails its target ...
        _, reward, done, info = env.step("grab the puck")  # ... and catches up while holding still
        assert info["invalid"] and reward == 0.0 and not done
        moved = env.hand - before
        assert 0.015 <= sign * moved[axis] <= 0.025 and np.abs(np.delete(moved, axis)).max() < 0.005, action
    env.step("wait")
    before = env.hand
    env.step("wait")
    assert np.abs(env.hand - before).max() < 0.002
    opening = env._observation[3]
    observation, _, _, info = env.step("close gripper")
    assert "gripper closed" in observation and env._observation[3] < opening - 0.1 and not info["invalid"]
    observation, _, _, _ = env.step("open gripper")
    assert "gripper open" in observation


def test_random_policy_rarely_succeeds_and_is_truncated(envs):
    env, policy = envs["metaworld-push"], make_policy("metaworld-push", "random")
    episodes = [run_episode(env, policy, seed, seed, f"r{seed}") for seed in range(5)]
    assert sum(ep.meta["success"] for ep in episodes) <= 1  # measured: 0 of 100 seeds
    failed = [ep for ep in episodes if not ep.meta["success"]]
    assert failed and all(ep.meta["truncated"] and not ep.done and ep.turns[-1].role == "env" for ep in failed)
    assert all(len(ep.agent_turns) == env.max_turns for ep in failed)
    assert {t.text for ep in episodes for t in ep.agent_turns} == set(ACTIONS)


def test_half_competent_default_mixes_wins_and_failures(envs):
    name = "metaworld-pick-place"
    assert "half-competent[:P]" in policy_specs(name)
    env, policy = envs[name], make_policy(name)
    episodes = [run_episode(env, policy, seed, seed, f"h{seed}") for seed in range(10)]
    assert 0 < sum(ep.meta["success"] for ep in episodes) < 10  # measured: 45 of 100
    env.reset(0)
    assert expert_step(env) == ("approach", "move y+")
    knows_all = make_policy(name, "half-competent:1")
    knows_all.begin_episode(env, random.Random(0))
    assert knows_all.act(env, random.Random(0)) == "move y+"


def test_generate_writes_valid_episodes(tmp_path, capsys):
    out = tmp_path / "mw.jsonl"
    parser = argparse.ArgumentParser(prog="qsft")
    data_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "generate", "--env", "metaworld-push", "--policy", "epsilon:0.3",
                              "--episodes", "4", "--seed", "1", "--out", str(out), "--no-progress"])
    assert args.handler(args) == 0
    stats = json.loads((tmp_path / "mw.jsonl.stats.json").read_text())
    assert stats["env_config"]["reward_transform"] == "none" and stats["env_config"]["history_turns"] == 1
    assert stats["normalization"]["min_return"] == TASKS["push"].min_return
    assert stats["normalization"]["optimal_return"] == 1.0
    episodes = load_episodes(out)
    assert len(episodes) == 4 and all(ep.meta["env"] == "metaworld-push" for ep in episodes)
    assert all(t.text in ACTIONS for ep in episodes for t in ep.agent_turns)
    assert all(t.image is None for ep in episodes for t in ep.turns)
    transformed, _ = apply_reward_transform(episodes, "none", 0.95)  # raises if a partial return leaves [0, 1]
    assert len(transformed) == 4
    args = parser.parse_args(["data", "validate", str(out)])
    assert args.handler(args) == 0 and capsys.readouterr().out.count("OK") == 1
