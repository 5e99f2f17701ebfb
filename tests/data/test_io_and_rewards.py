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
