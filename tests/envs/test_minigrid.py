"""MiniGrid image navigation: determinism, frames, the BFS planner, invalid actions, dataset files."""

import json
import random

import numpy as np
import pytest

from qsft.data.io import load_episodes
from qsft.envs import make, make_policy
from qsft.envs.generate import generate_dataset, run_episode
from qsft.envs.minigrid.env import ACTIONS, TASKS
from qsft.envs.registry import MINIGRID_TASKS
from qsft.errors import EpisodeFormatError

ENV = "minigrid-empty-random-6x6"


def test_registry_lists_every_task():
    assert set(MINIGRID_TASKS) == set(TASKS)


def test_reset_is_deterministic_and_frames_are_small_rgb():
    env_a, env_b = make(ENV), make(ENV)
    assert env_a.reset(7) == env_b.reset(7) == "get to the green goal square\n"
    frame = env_a.observation_image()
    assert frame.shape == (48, 48, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame, env_b.observation_image())
    for action in ("forward", "turn left", "forward"):
        assert env_a.step(action)[:3] == env_b.step(action)[:3]
    np.testing.assert_array_equal(env_a.observation_image(), env_b.observation_image())
    starts = set()
    for seed in range(20):
        env_a.reset(seed)
        starts.add(env_a.state)
    assert len(starts) > 5  # Empty-Random: the start cell and heading vary with the seed


def test_turning_changes_the_frame_and_unparseable_text_is_a_no_op():
    env = make(ENV)
    env.reset(3)
    before, state = env.observation_image(), env.state
    _, reward, done, info = env.step("jump")
    assert info["invalid"] and reward == 0 and not done and env.state == state
    np.testing.assert_array_equal(before, env.observation_image())
    env.step("turn left")
    assert env.state[2] == (state[2] - 1) % 4
    assert not np.array_equal(before, env.observation_image())


@pytest.mark.parametrize("task", ["empty-random-6x6", "empty-5x5", "empty-8x8"])
def test_optimal_policy_wins_with_the_optimal_return(task):
    env, policy = make(f"minigrid-{task}"), make_policy(f"minigrid-{task}", "optimal")
    for seed in range(8):
        episode = run_episode(env, policy, seed, seed, f"e{seed}")
        assert episode.meta["success"] and episode.done
        assert episode.total_return == pytest.approx(env.optimal_return(seed))
        assert 0 < episode.total_return <= 1  # MiniGrid's 1 - 0.9 * steps / max_steps


def test_epsilon_policy_is_mixed_quality():
    env, policy = make(ENV), make_policy(ENV, "epsilon:0.5")
    episodes = [run_episode(env, policy, seed, seed + 100, f"e{seed}") for seed in range(30)]
    optimal = [ep.total_return >= env.optimal_return(ep.meta["start_seed"]) - 1e-9 for ep in episodes]
    assert 0 < sum(optimal) < len(episodes)
    assert {t.text for ep in episodes for t in ep.agent_turns} == set(ACTIONS)


def test_random_policy_hits_the_turn_limit_and_keeps_the_bootstrap_frame():
    env = make("minigrid-empty-8x8", max_turns=5)
    episode = run_episode(env, make_policy("minigrid-empty-8x8", "random"), 0, 0, "e")
    assert not episode.done and episode.meta["truncated"] and len(episode.agent_turns) == 5
    assert episode.turns[-1].role == "env" and episode.turns[-1].image is not None


def test_optimal_return_for_a_seed_leaves_the_current_episode_alone():
    env = make(ENV)
    env.reset(1)
    state = env.state
    values = {env.optimal_return(seed) for seed in range(10)}
    assert env.state == state and len(values) > 1


def test_generate_writes_frames_beside_the_jsonl(tmp_path):
    out = tmp_path / "mg.jsonl"
    stats = generate_dataset(ENV, "epsilon:0.5", 5, seed=0, out_path=out, progress=False)
    assert stats["success_rate"] is not None and stats["env_config"]["history_turns"] == 1
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    images = [t["image"] for line in lines for t in line["turns"] if t["role"] == "env"]
    assert images and all(i.startswith("mg_images/") and i.endswith(".png") for i in images)
    assert all("image" not in t for line in lines for t in line["turns"] if t["role"] == "agent")
    frames = list((tmp_path / "mg_images").iterdir())
    assert len(frames) == len(set(images))  # one file per distinct frame
    episodes = load_episodes(out)  # paths resolve against the JSONL's folder, from any working directory
    assert episodes[0].turns[0].image == str(tmp_path / images[0])
    again = tmp_path / "again.jsonl"
    generate_dataset(ENV, "epsilon:0.5", 5, seed=0, out_path=again, progress=False)
    assert again.read_text() == out.read_text().replace("mg_images/", "again_images/")


def test_missing_frame_names_file_line_and_field(tmp_path):
    out = tmp_path / "mg.jsonl"
    generate_dataset(ENV, "optimal", 3, seed=0, out_path=out, progress=False)
    lines = out.read_text().splitlines()
    second = json.loads(lines[1])
    victim = second["turns"][2]["image"]
    for line in lines[:1]:  # the frame must not be needed by an earlier line
        assert victim not in line
    (tmp_path / victim).unlink()
    with pytest.raises(EpisodeFormatError) as err:
        load_episodes(out)
    message = str(err.value)
    assert f"{out}:2" in message and "turns[2].image" in message and "not found" in message


def test_policies_are_reproducible():
    env = make(ENV)
    policy = make_policy(ENV)
    first = run_episode(env, policy, 11, 12, "a")
    second = run_episode(env, policy, 11, 12, "a")
    assert [t.text for t in first.turns] == [t.text for t in second.turns]
    rng = random.Random(0)
    env.reset(5)
    assert make_policy(ENV, "optimal").act(env, rng) in env.optimal_actions()
