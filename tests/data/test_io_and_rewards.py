"""Episode loading, validation errors (file, line, episode, field) and reward transforms."""

import json
import math

import pytest

from qsft.data.episode import Episode, Turn
from qsft.data.io import load_episodes, save_episodes
from qsft.data.rewards import apply_reward_transform, check_partial_returns
from qsft.errors import ConfigError, EpisodeFormatError, RewardRangeError

GOOD = {"id": "ep-1", "turns": [{"role": "env", "text": "pos 0"}, {"role": "agent", "text": "R", "reward": 0.0},
                                {"role": "env", "text": "pos 1"}, {"role": "agent", "text": "R", "reward": 1.0}],
        "done": True}


def write_lines(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_native_and_hf_chat_shapes_load(tmp_path):
    chat = {"id": 7, "messages": [{"role": "system", "content": "be good"}, {"role": "user", "content": "hi"},
                                  {"role": "assistant", "content": "hello", "reward": 0.5}]}
    path = write_lines(tmp_path, [json.dumps(GOOD), "", json.dumps(chat)])
    first, second = load_episodes(path)
    assert first.rewards == [0.0, 1.0] and first.done
    assert [t.role for t in second.turns] == ["env", "env", "agent"] and second.id == "7"
    assert second.rewards == [0.5]


def test_loads_from_datasets_dataset():
    import datasets

    ds = datasets.Dataset.from_list([{"id": "a", "turns": GOOD["turns"], "done": False}])
    with pytest.raises(EpisodeFormatError, match="must end with an env turn"):
        load_episodes(ds)
    ds = datasets.Dataset.from_list([GOOD])
    (episode,) = load_episodes(ds)
    assert episode.total_return == 1.0


def test_save_and_reload_round_trip(tmp_path):
    episodes = load_episodes([GOOD])
    save_episodes(tmp_path / "out.jsonl", episodes)
    assert load_episodes(tmp_path / "out.jsonl") == episodes


def bad(**changes):
    obj = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if key.startswith("turn1_"):
            obj["turns"][1][key[6:]] = value
        else:
            obj[key] = value
    return json.dumps(obj)


@pytest.mark.parametrize("line,pattern", [
    ('{"id": "x", "turns": [', r"data.jsonl:2: invalid JSON"),
    (bad(turn1_role="robot"), r"data.jsonl:2, episode 'ep-1', field 'turns\[1\].role': unknown role 'robot'"),
    (bad(turn1_reward="high"), r"field 'turns\[1\].reward': reward must be a number"),
    (bad(turn1_reward=float("nan")).replace("NaN", "NaN"), r"field 'turns\[1\].reward': reward must be finite"),
    (bad(turn1_reward=1e309).replace("Infinity", "1e999"), r"reward must be finite"),
    (bad(turn1_text=None), r"field 'turns\[1\].text': 'text' must be a string"),
    (bad(turn1_text=""), r"agent text is empty"),
    (bad(done="yes"), r"field 'done'"),
    (json.dumps({"id": "q", "turns": [{"role": "env", "text": "only env"}]}), r"episode 'q'.*no agent turn"),
    (json.dumps({"id": "q"}), r"missing 'turns'"),
    (json.dumps([1, 2]), r"must be a JSON object"),
    (json.dumps(GOOD), r"episode 'ep-1', field 'id': duplicate episode id"),
])
def test_every_bad_input_names_file_line_episode_field(tmp_path, line, pattern):
    path = write_lines(tmp_path, [json.dumps(GOOD), line])
    with pytest.raises(EpisodeFormatError, match=pattern):
        load_episodes(path)


def test_invalid_utf8_and_missing_file(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n\xff\xfe\n")
    with pytest.raises(EpisodeFormatError, match="data.jsonl:2: not valid UTF-8"):
        load_episodes(path)
    with pytest.raises(EpisodeFormatError, match="file not found"):
        load_episodes(tmp_path / "nope.jsonl")


def episode(rewards, success=None):
    turns = []
    for r in rewards:
        turns += [Turn("env", "o"), Turn("agent", "a", r)]
    return Episode(f"e{len(rewards)}{rewards[-1]}", tuple(turns), True, {} if success is None else {"success": success})


def test_episode_return_normalises_sparse_on_last_turn():
    data = [episode([-1, -1, 0]), episode([-1] * 6), episode([0])]
    out, report = apply_reward_transform(data, "episode_return:-6:0", gamma=0.99)
    assert out[0].rewards == [0, 0, pytest.approx(4 / 6)]
    assert out[1].rewards[-1] == 0 and out[2].rewards == [1.0]
    assert report.low == -6 and "episode_return" in report.describe()
    out, report = apply_reward_transform(data, "episode_return", gamma=0.99)  # bounds from the data
    assert (report.low, report.high) == (-6, 0)


def test_scale_success_and_errors():
    out, _ = apply_reward_transform([episode([0, 2]), episode([4])], "scale", gamma=0.9)
    assert out[0].rewards == [0, 0.5]
    with pytest.raises(RewardRangeError, match="reward -1 < 0"):
        apply_reward_transform([episode([-1, 2])], "scale", gamma=0.9)
    out, _ = apply_reward_transform([episode([-1, -1, 0], True), episode([-1], False)], "success", gamma=0.9)
    assert out[0].rewards == [0, 0, 1.0] and out[1].rewards == [0.0]
    with pytest.raises(EpisodeFormatError, match="meta.success"):
        apply_reward_transform([episode([0])], "success", gamma=0.9)
    with pytest.raises(ConfigError):
        apply_reward_transform([episode([0])], "bogus", gamma=0.9)


def test_partial_return_check_names_episode_and_turn():
    with pytest.raises(RewardRangeError, match=r"episode 'e20.8'.*agent turn 0"):
        check_partial_returns(episode([0.5, 0.8]), gamma=1.0)  # 1.3 from turn 0
    check_partial_returns(episode([0.5, 0.5]), gamma=1.0)
    assert math.isclose(sum(episode([0.5, 0.5]).rewards), 1.0)


def named(episode_id, rewards, done=True):
    """Episode `episode_id` with one agent turn per reward; truncated ones end with a final observation."""
    turns = []
    for r in rewards:
        turns += [Turn("env", "o"), Turn("agent", "a", r)]
    if not done:
        turns.append(Turn("env", "final observation"))
    return Episode(episode_id, tuple(turns), done)


def slow_partial_returns(rewards, gamma):
    """sum_{j>=k} gamma^(j-k) r_j for every agent turn k, written out."""
    return [sum(gamma ** (j - k) * rewards[j] for j in range(k, len(rewards))) for k in range(len(rewards))]


def test_episode_return_pays_truncated_episodes_nothing_and_ended_ones_their_normalised_return():
    data = [named("lost", [-1, -1]), named("won", [0]), named("cut-low", [-1] * 5, done=False),
            named("cut-high", [3], done=False)]
    out, report = apply_reward_transform(data, "episode_return", gamma=0.9)
    assert (report.low, report.high) == (-5, 3)  # bounds over every return the data reached
    assert out[0].rewards == [0, pytest.approx(3 / 8)] and out[1].rewards == [pytest.approx(5 / 8)]
    assert out[2].rewards == [0.0] * 5 and out[3].rewards == [0.0]  # the bootstrap stands for them
    assert report.truncated_unpaid == 2 and "2 truncated episodes paid 0" in report.describe()
    assert json.loads(json.dumps(report.to_dict()))["truncated_unpaid"] == 2
    out, _ = apply_reward_transform(data, "episode_return:-6:4", gamma=0.9)  # declared bounds: same rule
    assert out[0].rewards == [0, pytest.approx(0.4)] and out[3].rewards == [0.0]
    out, report = apply_reward_transform(data, "episode_return", gamma=0.9, low=-4.0, high=0.0)  # stored bounds
    assert (report.low, report.high) == (-4, 0) and out[0].rewards == [0, 0.5] and out[2].rewards == [0.0] * 5


def test_episode_return_bounds_include_truncated_returns():
    """Every ended episode succeeding (the chain oracle's data) must not collapse the range to one point."""
    data = [named("won", [1]), named("won-too", [0, 1]), named("cut", [0, 0], done=False)]
    out, report = apply_reward_transform(data, "episode_return", gamma=0.9)
    assert (report.low, report.high) == (0, 1) and report.truncated_unpaid == 1
    assert out[0].rewards == [1.0] and out[1].rewards == [0, 1.0] and out[2].rewards == [0, 0]


def test_scale_divides_by_the_largest_discounted_partial_return():
    gamma = 0.9
    data = [named("two", [1, 1]), named("one", [0.5]), named("cut", [1, 0, 1], done=False)]
    bound = max(p for ep in data for p in slow_partial_returns(ep.rewards, gamma))
    assert bound == pytest.approx(1.9)  # "two" from turn 0, above any single reward
    out, report = apply_reward_transform(data, "scale", gamma=gamma)
    assert report.high == pytest.approx(bound, abs=1e-12)
    partials = [p for ep in out for p in slow_partial_returns(ep.rewards, gamma)]
    assert max(partials) == pytest.approx(1.0, abs=1e-12) and min(partials) >= 0
    out, _ = apply_reward_transform(data, "scale:3.8", gamma=gamma)  # a larger RMAX is kept
    assert max(p for ep in out for p in slow_partial_returns(ep.rewards, gamma)) == pytest.approx(0.5)


def test_scale_with_too_small_rmax_names_episode_turn_and_bound():
    data = [named("one", [0.5]), named("two", [1, 1])]
    with pytest.raises(RewardRangeError, match=r"episode 'two', field 'agent turn 0.reward'.*RMAX 1.5.* 1\.9 "
                                               r"\(gamma 0\.9\).*scale without an argument.*scale:1\.9"):
        apply_reward_transform(data, "scale:1.5", gamma=0.9)
    apply_reward_transform(data, "scale:1.9", gamma=0.9)  # exactly the bound is enough


def test_partial_return_advice_depends_on_the_transform():
    over = named("over", [0.5, 0.8])  # 1.3 from turn 0
    messages = {}
    for transform in (None, "none", "scale", "scale:2", "episode_return", "success"):
        with pytest.raises(RewardRangeError, match=r"episode 'over'.*agent turn 0") as caught:
            check_partial_returns(over, 1.0, transform)
        messages[transform] = str(caught.value)
    assert "pick --reward_transform scale, episode_return or success" in messages[None]
    assert "'none' uses rewards as logged" in messages["none"]
    assert "scale without an argument" in messages["scale"] and messages["scale:2"] == messages["scale"]
    assert "qsft bug" in messages["episode_return"] and "qsft bug" in messages["success"]
    assert len({messages[t] for t in (None, "none", "scale", "episode_return")}) == 4
    with pytest.raises(RewardRangeError, match="'none' uses rewards as logged"):
        apply_reward_transform([over], "none", gamma=1.0)
