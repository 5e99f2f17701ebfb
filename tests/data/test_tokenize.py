"""The token MDP on hand-written episodes, checked field by field (DESIGN §1.1)."""

import pytest

from qsft.data.collate import TokenMDPCollator
from qsft.data.episode import Episode, Turn
from qsft.data.tokenize import (
    EXTERNAL_NEXT_STATE,
    TERMINAL,
    TokenMDPConfig,
    best_logged_returns,
    tokenize_episodes,
)
from qsft.errors import SequenceTooLongError


class CharTokenizer:
    """One id per character ('a' -> 10 ...): makes expected positions easy to write by hand."""

    def encode(self, text, add_special_tokens=False):
        return [10 + ord(c) - ord("a") for c in text]


BOS, EOT = 1, 2


def cfg(**kw):
    base = dict(gamma=0.9, max_length=64, bos_token_id=BOS, eot_token_id=EOT)
    base.update(kw)
    return TokenMDPConfig(**base)


def ep(done=True, turns=None):
    turns = turns or [Turn("env", "ab"), Turn("agent", "xy", 0.25), Turn("env", "c"), Turn("agent", "z", 0.5)]
    return Episode("e", tuple(turns), done)


def test_terminal_multi_token_two_turns_field_by_field():
    (s,) = tokenize_episodes([ep()], CharTokenizer(), cfg())
    # index:          0    1   2   3   4   5    6   7   8
    # token:        BOS    a   b   x   y  EOT   c   z  EOT
    assert s.input_ids == [BOS, 10, 11, 33, 34, EOT, 12, 35, EOT]
    assert s.action_mask == [0, 0, 0, 1, 1, 1, 0, 1, 1]
    assert s.reward == [0, 0, 0, 0, 0, 0.25, 0, 0, 0.5]
    assert s.discount == [0, 0, 0, 1, 1, 0.9, 0, 1, 0]
    # x -> next decision y (logits pos 3); y -> EOT (pos 4); EOT -> z at token 7 (pos 6); z -> EOT (pos 7)
    assert s.next_state_index == [TERMINAL, TERMINAL, TERMINAL, 3, 4, 6, TERMINAL, 7, TERMINAL]
    assert s.turn_spans == [(0, 3, 6), (1, 7, 9)]
    assert s.next_input_ids is None


def test_truncated_episode_bootstraps_from_final_observation():
    turns = [Turn("env", "a"), Turn("agent", "x", 0.0), Turn("env", "bc")]
    (s,) = tokenize_episodes([ep(done=False, turns=turns)], CharTokenizer(), cfg())
    assert s.input_ids == [BOS, 10, 33, EOT, 11, 12]
    assert s.next_state_index == [TERMINAL, TERMINAL, 2, 5, TERMINAL, TERMINAL]  # T-1 = 5
    assert s.discount == [0, 0, 1, 0.9, 0, 0]


def test_consecutive_agent_turns_chain_directly():
    turns = [Turn("env", "a"), Turn("agent", "x", 0.1), Turn("agent", "y", 0.2)]
    (s,) = tokenize_episodes([ep(turns=turns)], CharTokenizer(), cfg())
    assert s.input_ids == [BOS, 10, 33, EOT, 34, EOT]
    assert s.next_state_index == [TERMINAL, TERMINAL, 2, 3, 4, TERMINAL]
    assert s.reward[3] == 0.1 and s.discount[3] == 0.9 and s.reward[5] == 0.2


def test_left_truncation_drops_whole_leading_turns():
    (s,) = tokenize_episodes([ep()], CharTokenizer(), cfg(max_length=5))
    # BOS + [c] + [z EOT] = 4 tokens; the first agent turn is dropped and not trained
    assert s.input_ids == [BOS, 12, 35, EOT]
    assert s.turn_spans == [(1, 2, 4)]
    assert s.next_state_index == [TERMINAL, TERMINAL, 2, TERMINAL]


def test_too_long_rejected_when_truncation_is_error():
    with pytest.raises(SequenceTooLongError, match="episode 'e'.*max_length 5"):
        tokenize_episodes([ep()], CharTokenizer(), cfg(max_length=5, truncation="error"))
    with pytest.raises(SequenceTooLongError):
        tokenize_episodes([ep()], CharTokenizer(), cfg(max_length=2))


def test_window_mode_one_sample_per_turn_with_next_state_sequence():
    s0, s1 = tokenize_episodes([ep()], CharTokenizer(), cfg(history_turns=1))
    assert s0.input_ids == [BOS, 10, 11, 33, 34, EOT]
    assert s0.action_mask == [0, 0, 0, 1, 1, 1]
    assert s0.next_state_index == [TERMINAL, TERMINAL, TERMINAL, 3, 4, EXTERNAL_NEXT_STATE]
    assert s0.next_input_ids == [BOS, 12]  # the H=1 turn before the next agent turn: "c"
    assert s0.reward[-1] == 0.25 and s0.discount[-1] == 0.9
    assert s1.input_ids == [BOS, 12, 35, EOT]
    assert s1.next_state_index[-1] == TERMINAL and s1.next_input_ids is None
    assert s1.turn_spans == [(1, 2, 4)]


def test_window_mode_truncated_episode_bootstraps_from_last_turns():
    turns = [Turn("env", "a"), Turn("agent", "x"), Turn("env", "bc")]
    (s,) = tokenize_episodes([ep(done=False, turns=turns)], CharTokenizer(), cfg(history_turns=2))
    assert s.next_input_ids == [BOS, 33, EOT, 11, 12]  # last two turns: agent "x" + EOT, env "bc"


def test_return_to_go_on_every_token_of_each_agent_turn():
    """--mc_lower_bound's G: turn 0 earns 0.25 + 0.9 * 0.5, turn 1 0.5; 0 off agent tokens; whole-episode
    returns even where truncation or windows cut the sequence."""
    (s,) = tokenize_episodes([ep()], CharTokenizer(), cfg())
    assert s.return_to_go == pytest.approx([0, 0, 0, 0.7, 0.7, 0.7, 0, 0.5, 0.5])
    (cut,) = tokenize_episodes([ep()], CharTokenizer(), cfg(max_length=5))
    assert cut.return_to_go == pytest.approx([0, 0, 0.5, 0.5])
    s0, s1 = tokenize_episodes([ep()], CharTokenizer(), cfg(history_turns=1))
    assert s0.return_to_go == pytest.approx([0, 0, 0, 0.7, 0.7, 0.7])
    assert s1.return_to_go == pytest.approx([0, 0, 0.5, 0.5])
    batch = TokenMDPCollator(pad_token_id=0, bos_token_id=BOS)([s0, s1])
    assert batch["return_to_go"][1].tolist() == pytest.approx([0, 0, 0.5, 0.5, 0, 0])


def test_best_logged_returns_share_the_best_return_of_each_token_prefix():
    """--mc_lower_bound best: every agent token gets the best G logged after the same prefix (state + action)."""
    good = ep()  # "ab" then "xy" earns 0.7
    poor = ep(turns=[Turn("env", "ab"), Turn("agent", "xy", 0.0), Turn("env", "c"), Turn("agent", "z", 0.0)])
    other = ep(turns=[Turn("env", "ab"), Turn("agent", "xw", 0.1)])  # shares the prefix up to "x" only
    samples = tokenize_episodes([good, poor, other], CharTokenizer(), cfg(history_turns=1))
    best_logged_returns(samples)
    by_episode = [s.return_to_go for s in samples]
    assert by_episode[2] == pytest.approx([0, 0, 0, 0.7, 0.7, 0.7])  # poor's first turn: the good one's 0.7
    assert by_episode[3] == pytest.approx([0, 0, 0.5, 0.5])  # poor's "z" after "c": good's 0.5
    assert by_episode[4] == pytest.approx([0, 0, 0, 0.7, 0.1, 0.1])  # "x" shared, then its own "w" and EOT


def test_collator_pads_and_marks_padding_terminal():
    samples = tokenize_episodes([ep(), ep(turns=[Turn("env", "a"), Turn("agent", "x", 1.0)])], CharTokenizer(),
                                cfg(history_turns=1))
    batch = TokenMDPCollator(pad_token_id=0, bos_token_id=BOS)(samples)
    assert batch["input_ids"].shape == (3, 6)
    assert batch["attention_mask"][2].tolist() == [1, 1, 1, 1, 0, 0]
    assert batch["next_state_index"][2, 4:].tolist() == [TERMINAL, TERMINAL]
    assert not batch["action_mask"][2, 4:].any()
    assert batch["next_input_ids"].tolist()[0] == [BOS, 12]


def test_context_never_drops_the_latest_turn_whole():
    from qsft.data.tokenize import SegmentEncoder, context_ids

    turns = [Turn("env", "abcdef"), Turn("agent", "x"), Turn("env", "ghijkl")]
    encode = SegmentEncoder(CharTokenizer())
    # room for everything: BOS + all turns (EOT after the agent's utterance)
    assert context_ids(turns, encode, cfg(history_turns=2)) == [BOS, 33, EOT, 16, 17, 18, 19, 20, 21]
    # 64 - 1 - 60 = 3 tokens of room: older turns go, the latest observation keeps its last 3 tokens
    assert context_ids(turns, encode, cfg(history_turns=2, reserve=60)) == [BOS, 19, 20, 21]
