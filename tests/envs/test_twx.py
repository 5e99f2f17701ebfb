"""TextWorldExpress environments on the real engine (one JVM per registered game, shared by the module)."""

import random
import shutil

import pytest

pytest.importorskip("textworld_express")
if shutil.which("java") is None:
    pytest.skip("TextWorldExpress needs java on PATH", allow_module_level=True)

from qsft.data.io import load_episodes  # noqa: E402
from qsft.data.rewards import apply_reward_transform  # noqa: E402
from qsft.envs import generate_dataset, make, make_policy, policy_specs, run_episode, stats_path  # noqa: E402
from qsft.envs.twx.env import compact_text  # noqa: E402
from qsft.envs.twx.policies import HalfCompetentPolicy, gold_command  # noqa: E402

NAMES = ["twx-cookingworld", "twx-coin", "twx-twc"]


def play(env, policy, seed, policy_seed=0):
    """(observations, actions, rewards, infos) of one episode of `policy` from `env.reset(seed)`."""
    rng = random.Random(policy_seed)
    observations, actions, rewards, infos = [env.reset(seed)], [], [], [{"admissible": env.admissible}]
    policy.begin_episode(env, rng)
    done = False
    while not done:
        actions.append(policy.act(env, rng))
        observation, reward, done, info = env.step(actions[-1])
        observations.append(observation)
        rewards.append(reward)
        infos.append(info)
    return observations, actions, rewards, infos


@pytest.mark.parametrize("name", NAMES)
def test_gold_path_wins_with_the_full_score(envs, name):
    env = envs[name]
    assert env.name == name and env.action_hint and env.min_return is not None and env.history_turns is None
    for seed in (0, 1, 7):
        episode = run_episode(env, make_policy(name, "optimal"), seed, 0, f"gold-{seed}")
        assert episode.meta["success"] and not episode.meta["truncated"] and episode.meta["invalid_actions"] == 0
        assert episode.total_return == pytest.approx(1.0) and env.optimal_return() == 1.0
        assert episode.meta["turns"] <= len(env.gold_actions) < env.max_turns / 2
        for turn in episode.turns:
            assert turn.text.endswith("\n") if turn.role == "env" else "\n" not in turn.text


def test_rewards_sum_to_the_engine_score(envs):
    env = envs["twx-twc"]  # twc's score goes down when an item leaves its place again
    policy = make_policy("twx-twc", "epsilon:0.5")
    seen_negative = False
    for seed in range(4):
        _, _, rewards, infos = play(env, policy, seed, policy_seed=seed)
        total = 0.0
        for reward, info in zip(rewards, infos[1:]):
            total += reward
            assert total == pytest.approx(info["score"])
        seen_negative |= min(rewards) < 0
    assert seen_negative
    cooking = envs["twx-cookingworld"]
    _, _, rewards, infos = play(cooking, make_policy("twx-cookingworld", "random"), 3)
    assert sum(rewards) == pytest.approx(infos[-1]["score"]) and all(r >= 0 for r in rewards)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_repeats_the_same_episode(envs, name):
    env = envs[name]
    policy = make_policy(name, "epsilon:0.3")
    first = play(env, policy, 5)
    play(env, policy, 6)  # another game in between
    again = play(env, policy, 5)
    assert first[:3] == again[:3]
    assert [i["admissible"] for i in first[3]] == [i["admissible"] for i in again[3]]
    assert all(i["admissible"] == sorted(i["admissible"]) and i["admissible"] for i in first[3])


@pytest.mark.parametrize("name", NAMES)
def test_gold_path_is_the_same_in_a_fresh_engine(envs, name):
    """The engine's own coin gold path is an unseeded random walk; ours is a shortest route."""
    fresh = make(name)
    try:
        for seed in (3, 2, 3):
            fresh.reset(seed)
            envs[name].reset(seed)
            assert fresh.gold_actions == envs[name].gold_actions
    finally:
        fresh.close()


def test_malformed_commands_are_ordinary_steps(envs):
    env = envs["twx-cookingworld"]
    start = env.reset(0)
    admissible = env.admissible
    for turn, action in enumerate(["dance wildly", "", "a" * 500, "TAKE COOKBOOK", "take cookbook then eat"], 1):
        observation, reward, done, info = env.step(action)
        assert (reward, done, info["invalid"]) == (0.0, False, True), action
        assert observation == "Unknown action: I'm not sure what you mean.\n"
        assert env.turns_taken == turn and info["admissible"] == admissible
    observation, reward, done, info = env.step("take   cookbook")  # whitespace is collapsed
    assert not info["invalid"] and observation == "You take the cookbook.\n"
    assert start.startswith("You are hungry!")
    rest = [c for c in env.gold_actions if c != "take cookbook"]
    rewards = [env.step(command)[1] for command in rest]
    assert sum(rewards) == pytest.approx(1.0) and env.done  # the game is undisturbed


def test_splits_observations_and_arguments(envs):
    train, test = envs["twx-twc"], make("twx-twc", split="test", observation="raw")
    try:
        assert train.game_for_seed(0) == 0 and test.game_for_seed(0) == 20000  # the engine's own test seeds
        assert test.reset(0) != train.reset(0)
        raw_episode = play(test, make_policy("twx-twc", "optimal"), 3)
        compact = make("twx-twc", split="test")
        compact_episode = play(compact, make_policy("twx-twc", "optimal"), 3)
        compact.close()
        assert raw_episode[1:] == compact_episode[1:]  # same actions, rewards and infos
        raw_words = sum(len(o.split()) for o in raw_episode[0])
        assert sum(len(o.split()) for o in compact_episode[0]) < 0.6 * raw_words
    finally:
        test.close()
    for bad in ({"split": "validation"}, {"observation": "native"}, {"game": "zork"}):
        with pytest.raises(Exception, match="split|observation|game"):
            make("twx-twc", **bad)


def test_compact_text():
    room = ("You are in the kitchen. In one part of the room you see a stove. There is also a fridge that is closed. "
            "You also see a counter that has a knife, a red apple, and a cookbook on it. In another part of the "
            "room you see a dining chair, that has nothing on it. In one part of the room you see An open "
            "trash can, that contains some salt. There is also an open dishwasher, that is empty. \n"
            "To the North you see the pantry. To the West you see the corridor. ")
    assert compact_text(room) == ("Kitchen: stove; fridge (closed); counter (on it: knife, red apple, cookbook); "
                                  "dining chair; trash can (open, in it: salt); dishwasher (open, empty).\n"
                                  "Exits: north (pantry), west (corridor).")
    assert compact_text("Inventory: \n  Your inventory is currently empty.\n") == "Inventory: nothing."
    assert compact_text("Inventory: \n  some olive oil\n  a knife\n") == "Inventory: olive oil, knife."
    assert compact_text("You take the knife.") == "You take the knife."


def test_policies(envs):
    assert "half-competent[:P]" in policy_specs("twx-cookingworld")
    env = envs["twx-cookingworld"]
    rng = random.Random(0)
    env.reset(2)
    assert all(make_policy("twx-cookingworld", "random").act(env, rng) in env.admissible for _ in range(20))
    env.step(env.admissible[0] if env.admissible[0] != env.gold_actions[0] else env.admissible[1])  # deviate
    assert gold_command(env) == env.gold_actions[0]  # resumed
    policy = make_policy("twx-cookingworld", "half-competent:1")
    assert isinstance(policy, HalfCompetentPolicy)
    assert play(env, policy, 4)[:3] == play(env, make_policy("twx-cookingworld", "optimal"), 4)[:3]
    successes = [run_episode(env, make_policy("twx-cookingworld", None), seed, seed, "x").meta["success"]
                 for seed in range(12)]
    assert 0 < sum(successes) < 12  # the default spec mixes wins and failures


def test_generate_dataset_writes_jsonl_and_stats(tmp_path):
    out = tmp_path / "twc.jsonl"
    stats = generate_dataset("twx-twc", None, 5, seed=0, out_path=out, progress=False)
    episodes = load_episodes(out)
    assert len(episodes) == 5 and stats_path(out).is_file()
    assert stats["env_config"]["reward_transform"] == "episode_return:0:1" and stats["policy"] == "half-competent"
    assert stats["normalization"]["min_return"] == make("twx-twc").min_return
    assert stats["normalization"]["optimal_return"] == 1.0
    transformed, _ = apply_reward_transform(episodes, "episode_return:0:1", 0.95)  # raises if out of [0, 1]
    assert len(transformed) == 5
