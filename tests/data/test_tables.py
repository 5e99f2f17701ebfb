"""Episodes as tables (issue #21): Parquet files, `save_to_disk` folders and Hub-format folders in and out,
with the same one-line errors as JSONL, naming the file, the row and the field."""

from __future__ import annotations

import json

import datasets
import pytest

from qsft.cli import main
from qsft.data.io import export_episodes, load_episodes
from qsft.errors import EpisodeFormatError
from tests.oracle_chain import random_episodes


@pytest.fixture
def episodes():
    return random_episodes(12, seed=3)


@pytest.mark.parametrize("fmt,name", [("parquet", "chain.parquet"), ("hf", "chain_hf")])
def test_export_round_trips_every_field(tmp_path, episodes, fmt, name):
    out = export_episodes(episodes, tmp_path / name, fmt)
    assert load_episodes(out) == episodes
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no scratch left behind


def test_a_hub_format_folder_and_trl_style_messages_load(tmp_path):
    """A folder `datasets.load_dataset` reads (here data/train.jsonl) with chat rows: `messages`, the assistant
    turns carrying their reward."""
    folder = tmp_path / "hub" / "data"
    folder.mkdir(parents=True)
    rows = [{"id": f"c{i}", "messages": [{"role": "user", "content": "p0", "reward": None},
                                         {"role": "assistant", "content": "R", "reward": float(i)}]}
            for i in range(3)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_episodes(tmp_path / "hub")
    assert [ep.rewards for ep in loaded] == [[0.0], [1.0], [2.0]]
    assert loaded[0].turns[0].role == "env" and loaded[0].turns[1].text == "R"


def test_a_datasets_dataset_object_loads_with_absent_fields_as_nulls():
    rows = [{"id": "a", "turns": [{"role": "env", "text": "x"}, {"role": "agent", "text": "y", "reward": 1.0}]},
            {"id": "b", "turns": [{"role": "env", "text": "x", "reward": None},
                                  {"role": "agent", "text": "z", "reward": None}]}]
    loaded = load_episodes(datasets.Dataset.from_list(rows))
    assert [ep.rewards for ep in loaded] == [[1.0], [0.0]]


def test_bad_rows_and_files_are_one_clear_error(tmp_path, episodes, capsys):
    bad = [ep.to_dict() for ep in episodes[:3]]
    bad[2]["turns"][1]["role"] = "robot"
    datasets.Dataset.from_list(bad).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(EpisodeFormatError, match=r"bad\.parquet, row 2, episode 'chain-2', field 'turns\[1\]"):
        load_episodes(tmp_path / "bad.parquet")
    datasets.Dataset.from_list(bad).save_to_disk(str(tmp_path / "bad_hf"))
    with pytest.raises(EpisodeFormatError, match=r"bad_hf, row 2, episode 'chain-2'"):
        load_episodes(tmp_path / "bad_hf")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(EpisodeFormatError, match=r"junk\.parquet: not a readable Parquet file"):
        load_episodes(tmp_path / "junk.parquet")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(EpisodeFormatError, match="not a readable Hugging Face dataset folder"):
        load_episodes(tmp_path / "empty_dir")
    assert main(["data", "validate", str(tmp_path / "bad.parquet")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "row 2" in err


def test_data_export_cli_writes_what_validate_reads(tmp_path, episodes, capsys):
    from qsft.data.io import save_episodes

    save_episodes(tmp_path / "chain.jsonl", episodes)
    for fmt, out in (("parquet", tmp_path / "c.parquet"), ("hf", tmp_path / "c_hf")):
        assert main(["data", "export", str(tmp_path / "chain.jsonl"), "--format", fmt, "--out", str(out)]) == 0
        assert main(["data", "validate", str(out)]) == 0
        assert f"OK {out}: 12 episodes" in capsys.readouterr().out


def test_unreadable_folder_error_is_one_line(tmp_path, capsys):
    (tmp_path / "empty_dir").mkdir()
    assert main(["data", "validate", str(tmp_path / "empty_dir")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a readable Hugging Face dataset folder" in err
