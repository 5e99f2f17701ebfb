"""Property-based fuzzing of the episode loader and tokeniser (reliability issue).

Every input either loads, or raises the library's own `EpisodeFormatError` naming the file and
line: never another exception, never a hang. The nasty cases found so far are kept as fixtures in
fuzz_corpus/ and replayed first.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qsft.data.io import load_episodes
from qsft.data.tokenize import TokenMDPConfig, tokenize_episodes
from qsft.errors import EpisodeFormatError, QSFTError

CORPUS = Path(__file__).parent / "fuzz_corpus"


class CharTokenizer:
    def encode(self, text, add_special_tokens=False):
        return [3 + (ord(c) % 97) for c in text]


CFG = TokenMDPConfig(gamma=0.9, max_length=256, bos_token_id=1, eot_token_id=2)

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=20))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=12)
texts = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
turns = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["env", "agent", "user", "robot"]), json_values),
     "text": st.one_of(texts, json_values)},
    optional={"reward": st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                                  st.integers(min_value=-10**30, max_value=10**30), json_values)})
episodes = st.fixed_dictionaries(
    {"turns": st.one_of(st.lists(turns, max_size=6), json_values)},
    optional={"id": st.one_of(st.text(max_size=6), st.integers(), json_values),
              "done": st.one_of(st.booleans(), json_values), "meta": json_values})


def check_load(path: Path) -> None:
    try:
        loaded = load_episodes(path)
    except EpisodeFormatError as err:
        message = str(err)
        assert str(path) in message or err.source == str(path), message
        return
    samples = tokenize_episodes(loaded, CharTokenizer(), CFG)
    for sample in samples:
        assert len(sample.input_ids) <= CFG.max_length
        assert all(math.isfinite(r) for r in sample.reward)


def write_lines(tmp_path: Path, lines: list[bytes]) -> Path:
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("fixture", sorted(CORPUS.glob("*.jsonl")), ids=lambda p: p.name)
def test_corpus_of_nasty_cases(fixture):
    try:
        load_episodes(fixture)
    except QSFTError as err:
        assert fixture.name in str(err)


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(episodes, min_size=1, max_size=3))
def test_structured_episodes_load_or_fail_cleanly(tmp_path_factory, objs):
    path = write_lines(tmp_path_factory.mktemp("f"), [json.dumps(o, allow_nan=True).encode() for o in objs])
    check_load(path)


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(st.binary(max_size=60), min_size=1, max_size=3))
def test_random_bytes_and_truncated_lines(tmp_path_factory, lines):
    good = json.dumps({"id": "g", "turns": [{"role": "env", "text": "o"}, {"role": "agent", "text": "a"}]})
    lines = [line.replace(b"\n", b" ") for line in lines] + [good.encode()[: len(lines[0]) % len(good)]]
    check_load(write_lines(tmp_path_factory.mktemp("b"), lines))


def test_ten_thousand_turn_episode_and_duplicate_ids(tmp_path):
    long = {"id": "long", "turns": [t for _ in range(5000) for t in
                                    ({"role": "env", "text": "o"}, {"role": "agent", "text": "a", "reward": 0})]}
    path = write_lines(tmp_path, [json.dumps(long).encode()])
    (episode,) = load_episodes(path)
    (sample,) = tokenize_episodes([episode], CharTokenizer(), CFG)  # left-truncated to fit
    assert len(sample.input_ids) <= CFG.max_length and sum(sample.action_mask) > 0
    path = write_lines(tmp_path, [json.dumps(long).encode()] * 2)
    with pytest.raises(EpisodeFormatError, match="duplicate episode id"):
        load_episodes(path)
