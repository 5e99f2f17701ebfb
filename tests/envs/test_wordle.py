import random

import numpy as np
import pytest

from qsft.envs import make
from qsft.envs.wordle.env import Guess, WordleEnv, WordleVocabulary, feedback
from qsft.envs.wordle.solver import WordleSolver, decode_feedback, encode_feedback, feedback_table
from qsft.errors import EnvError


@pytest.mark.parametrize("guess, answer, expected", [
    ("crane", "crane", "ggggg"),
    ("babes", "abbey", "yyggb"),   # the second b is green, so the first b only gets the other copy
    ("kebab", "abbey", "bygyy"),   # two b's in the guess, two in the answer (one green, one yellow)
    ("abbey", "babes", "yyggb"),
    ("speed", "abide", "bbyby"),   # one e in the answer: only the first unmatched e is yellow
    ("eerie", "there", "ybybg"),
    ("llama", "hello", "yybbb"),
    ("array", "radar", "yyygb"),   # both r's of the guess find an r
])
def test_feedback_repeated_letters(guess, answer, expected):
    assert feedback(guess, answer) == expected


def slow_feedback(guess, answer):
    """Obvious reference: mark greens, then walk left to right consuming unmatched answer letters."""
    pool = [a for g, a in zip(guess, answer) if g != a]
    out = []
    for g, a in zip(guess, answer):
        if g == a:
            out.append("g")
        elif g in pool:
            pool.remove(g)
            out.append("y")
        else:
            out.append("b")
    return "".join(out)


def test_vectorised_table_matches_reference():
    vocab = WordleVocabulary.default()
    rng = random.Random(0)
    guesses = rng.sample(vocab.guesses, 150) + ["kebab", "babes", "llama", "eerie"]
    answers = rng.sample(vocab.answers, 60) + ["abbey", "there"]
    table = feedback_table(guesses, answers)
    for i, g in enumerate(guesses):
        for j, a in enumerate(answers):
            assert decode_feedback(int(table[i, j])) == slow_feedback(g, a) == feedback(g, a)
    assert encode_feedback("ggggg") == 242 and decode_feedback(encode_feedback("bygyb")) == "bygyb"


def test_word_lists():
    vocab = WordleVocabulary.default()
    assert 300 <= len(vocab.answers) <= 600 and 1500 <= len(vocab.guesses) <= 3000
    assert set(vocab.answers) <= vocab.guess_set
    assert len(set(vocab.guesses)) == len(vocab.guesses)
    assert all(len(w) == 5 and w.isalpha() and w.islower() for w in vocab.guesses)
    with pytest.raises(EnvError, match="also be a valid guess"):
        WordleVocabulary(("crane",), ("slate",))


def test_episode_text_rewards_and_success():
    env = make("wordle")
    assert env.reset(3) == "Wordle:\n"
    env.answer = "abbey"
    obs, reward, done, info = env.step("kebab")
    assert (obs, reward, done, info["invalid"]) == ("k e b a b\nb y g y y\n", -1.0, False, False)
    obs, reward, done, info = env.step("A B B E Y")
    assert (obs, reward, done, info["success"]) == ("a b b e y\ng g g g g\n", 0.0, True, True)


def test_invalid_guess_costs_a_turn_and_six_misses_fail():
    env = make("wordle")
    env.reset(0)
    env.answer = "crane"
    obs, reward, done, info = env.step("xyzzy")
    assert (obs, reward, done, info["invalid"]) == ("x y z z y\n\n", -1.0, False, True)
    assert env.step("toolongword")[0] == "t o o l o n g w o r d\n\n"
    for _ in range(3):
        assert env.step("slate")[2] is False
    obs, reward, done, info = env.step("slate")
    assert (reward, done, info["success"], info["truncated"]) == (-1.0, True, False, False)
    assert [g.feedback is None for g in env.history] == [True, True, False, False, False, False]


def test_reset_is_deterministic_and_varies():
    env = WordleEnv()
    answers = [env.answer_for_seed(s) for s in range(50)]
    assert answers == [env.answer_for_seed(s) for s in range(50)] and len(set(answers)) > 30
    env.reset(11)
    assert env.answer == answers[11]


def test_candidates_filter_by_feedback():
    solver = WordleSolver.for_vocabulary(WordleVocabulary.default())
    history = [Guess("crane", feedback("crane", "bench")), Guess("zzzzz", None)]
    words = {solver.vocabulary.answers[i] for i in solver.candidates(history)}
    assert "bench" in words and len(words) < len(solver.vocabulary.answers) / 10
    assert words == {w for w in solver.vocabulary.answers if feedback("crane", w) == feedback("crane", "bench")}


def test_solver_solves_sample_within_six_and_fast():
    import time

    vocab = WordleVocabulary.default()
    solver = WordleSolver.for_vocabulary(vocab)
    sample = random.Random(1).sample(vocab.answers, 30)
    start = time.perf_counter()
    lengths = [len(solver.play(answer)) for answer in sample]
    per_episode = (time.perf_counter() - start) / len(sample)
    assert all(solver.play(a)[-1] == a for a in sample) and max(lengths) <= 6
    print(f"solver: mean {np.mean(lengths):.2f} guesses, {per_episode * 1000:.1f} ms per episode")
    env = make("wordle")
    env.reset(5)
    assert env.optimal_return() == -(len(solver.play(env.answer)) - 1)
