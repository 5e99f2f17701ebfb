"""TextWorld environments on real generated games (each test builds at most two games, ~1-4 s each)."""

import random

import pytest

pytest.importorskip("textworld")

from qsft.envs import make, make_policy, policy_specs  # noqa: E402
from qsft.envs.generate import generate_episodes, summarize  # noqa: E402
from qsft.envs.textworld.env import TextWorldEnv, clean_feedback, normalize_command  # noqa: E402
from qsft.envs.textworld.games import TASKS, ensure_game, load_meta  # noqa: E402
from qsft.envs.textworld.policies import HalfCompetentPolicy  # noqa: E402

MALFORMED = ["", "   ", "xyzzy", "quit", "restart", "undo", "save", "go north. go south", "go east then go west",
             "take everything, drop everything", "ôpen fridge", "a" * 500, "take", "open the moon", "go nowhere", "eat the moon"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("textworld-games")


def nav(cache, **kwargs) -> TextWorldEnv:
    return make("textworld-nav", pool_size=2, cache_dir=cache, **kwargs)


def play(env, commands):
    """Rewards, last info and observations of `commands` from the current state."""
    rewards, observations, info = [], [], {}
    for command in commands:
        observation, reward, done, info = env.step(command)
        rewards.append(reward)
        observations.append(observation)
        if done:
            break
    return rewards, info, observations


@pytest.mark.parametrize("task", ["nav", "nav-hard", "simple", "coin"])
def test_generated_game_is_won_by_its_walkthrough(cache, task):
    env = make(f"textworld-{task}", pool_size=1, cache_dir=cache)
    assert env.name == f"textworld-{task}" and env.min_return == 0.0 and env.action_hint
    env.reset(0)
    walkthrough = env.meta["walkthrough"]
    rewards, info, _ = play(env, walkthrough)
    assert len(rewards) == len(walkthrough) and info["success"] and not info["truncated"]
    assert sum(rewards) == env.optimal_return() == env.optimal_return(5) == env.meta["max_score"] > 0
    assert all(env.reward_range[0] <= r <= env.reward_range[1] for r in rewards)
    env.close()


def test_step_rewards_sum_to_the_final_score(cache):
    env = make("textworld-simple", pool_size=1, cache_dir=cache)  # dense rewards: a point per quest step
    policy, rng = make_policy("textworld-simple", "epsilon:0.3"), random.Random(0)
    for seed in range(3):
        env.reset(seed)
        policy.begin_episode(env, rng)
        total, done = 0.0, False
        while not done:
            _, reward, done, info = env.step(policy.act(env, rng))
            total += reward
            assert total == info["score"]  # TextWorld's cumulative score
        assert info["success"] == (total == env.optimal_return())
    env.close()


def test_generation_and_rollouts_are_repeatable(cache, tmp_path):
    first = load_meta(ensure_game(TASKS["nav"], 0, cache))
    again = load_meta(ensure_game(TASKS["nav"], 0, tmp_path))  # built from scratch elsewhere
    assert first == again
    assert make("textworld-nav", pool_size=1, cache_dir=cache).reset(0) == \
        make("textworld-nav", pool_size=1, cache_dir=tmp_path).reset(0)
    runs = [generate_episodes("textworld-nav", "half-competent", 6, seed=3, progress=False,
                              env_kwargs={"pool_size": 2, "cache_dir": str(cache)}) for _ in range(2)]
    assert [e.turns for e in runs[0]] == [e.turns for e in runs[1]]
    other = generate_episodes("textworld-nav", "half-competent", 6, seed=4, progress=False,
                              env_kwargs={"pool_size": 2, "cache_dir": str(cache)})
    assert [e.turns for e in other] != [e.turns for e in runs[0]]
    env = nav(cache)
    assert {env.reset(s).splitlines()[0] for s in range(4)} == {env.reset(0).splitlines()[0],
                                                                 env.reset(1).splitlines()[0]}
    assert env.game_for_seed(7) == 1 and env.game_for_seed(8) == 0


def test_malformed_commands_are_ordinary_steps(cache):
    env = nav(cache, max_turns=100)
    start = env.reset(0)
    for action in MALFORMED:
        observation, reward, done, info = env.step(action)
        assert (reward, done, info["invalid"]) == (0.0, False, True), action
        assert observation.endswith("\n") and not observation.endswith("\n\n")
        assert observation.splitlines()[-2:] == start.splitlines()[-2:]  # same room, same inventory
        assert info["admissible_commands"] and all(normalize_command(c) == c for c in info["admissible_commands"])
    assert normalize_command("  Take  Milk from COUNTER ") == "take milk from counter"
    rewards, info, _ = play(env, env.meta["walkthrough"])  # the game is undisturbed
    assert info["success"] and sum(rewards) == 1.0


def test_observations_are_short_clean_text(cache):
    for observation_mode in ("compact", "native"):
        env = nav(cache, observation=observation_mode)
        first = env.reset(1)
        assert first.startswith(("Goal: Put the ", "Put the ")) and first.endswith("\n")
        observations = [first, *play(env, env.meta["walkthrough"])[2]]
        for text in observations:
            assert text.endswith("\n") and not text.endswith("\n\n")
            assert "$$" not in text and "\n>" not in text and "*** The End" not in text and "score" not in text
            assert len(text.split()) < 90
        if observation_mode == "compact":
            assert env.history_turns == 1
            assert [line.split(":")[0].split(".")[0] for line in first.splitlines()][-1] == "Carrying"
            assert "Carrying: nothing." in first and f"Carrying: {env.meta['food']}." in observations[-2]
        else:
            assert env.history_turns is None and "-= " in first
    assert clean_feedback("\nYou open it.\n\n\nYour score has just gone up by one point.\n\n>   -= Office =-0/3") \
        == "You open it."


def test_policies_optimal_random_and_half_competent(cache):
    assert "half-competent[:P]" in policy_specs("textworld-nav")
    env = nav(cache)
    optimal = generate_episodes("textworld-nav", "optimal", 4, seed=0, progress=False,
                                env_kwargs={"pool_size": 2, "cache_dir": str(cache)})
    assert all(e.meta["success"] and e.meta["return"] == e.meta["optimal_return"] == 1.0 for e in optimal)
    assert all(len(e.agent_turns) == len(load_meta(ensure_game(TASKS["nav"], e.meta["start_seed"] % 2, cache))
                                         ["walkthrough"]) for e in optimal)
    rng = random.Random(0)
    env.reset(0)
    random_policy = make_policy("textworld-nav", "random")
    assert all(random_policy.act(env, rng) in env.admissible_commands for _ in range(20))
    policy = make_policy("textworld-nav", "half-competent:0.5")
    assert isinstance(policy, HalfCompetentPolicy)
    for seed in range(4):
        env.reset(seed)
        policy.begin_episode(env, rng)
        assert len(policy.known_rooms) == 2 and policy.known_rooms <= set(env.rooms)
        done = False
        while not done:
            action = policy.act(env, rng)
            if env.current_room in policy.known_rooms:
                assert action == env.optimal_command()
            done = env.step(action)[2]
    mixed = generate_episodes("textworld-nav", None, 40, seed=0, progress=False,
                              env_kwargs={"pool_size": 2, "cache_dir": str(cache)})
    stats = summarize(mixed, env)
    assert 0.0 < stats["success_rate"] < 1.0
    norm = stats["normalization"]
    assert norm["min_return"] == 0.0 < norm["dataset_average"] < norm["optimal_return"] == 1.0


def test_turn_limit_and_game_cache(cache):
    env = nav(cache, max_turns=3)
    env.reset(0)
    results = [env.step("look") for _ in range(3)]
    assert [r[2] for r in results] == [False, False, True] and results[-1][3]["truncated"]
    folder = ensure_game(TASKS["nav"], 0, cache)
    stamp = (folder / "meta.json").stat().st_mtime_ns
    assert ensure_game(TASKS["nav"], 0, cache) == folder and (folder / "meta.json").stat().st_mtime_ns == stamp
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no half-built games left
    with pytest.raises(Exception, match="pool_size"):
        make("textworld-nav", pool_size=0)
    with pytest.raises(Exception, match="observation"):
        make("textworld-nav", observation="pixels")
