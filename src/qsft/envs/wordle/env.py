"""Wordle as a text environment, in LMRL-Gym's format.

The first observation is "Wordle:\\n". The agent answers with a 5-letter word ("crane"; spaced
letters "c r a n e" and any letter case are accepted). The environment echoes the guess as
spaced letters and adds the feedback line, b(lack) / y(ellow) / g(reen) per letter:

    c r a n e
    b y b b g

Repeated letters follow the real game: greens are matched first, then each remaining letter is
yellow only while the answer still has unmatched copies of it (answer "abbey", guess "kebab" ->
"b y g y y").

Rewards: -1 for every guess that does not solve the puzzle, 0 for the solving guess (the episode
ends, success); after 6 guesses the episode ends as a failure, so returns lie in [-6, 0].
A guess that is not a 5-letter word of the guess vocabulary is invalid: it is echoed with an
empty feedback line ("x y z z y\\n\\n"), costs -1 like any wrong guess, and uses up one of the six
guesses (so an agent cannot stall, and the return bounds stay [-6, 0]).

Word lists live in `envs/wordle/data/`: `wordle_answers.txt` (497 common words, the hidden answers) and
`wordle_guesses.txt` (2,672 words accepted as guesses, a superset of the answers).
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources

from qsft.envs.base import StepResult, TextEnv
from qsft.errors import EnvError

WORD_LENGTH = 5
MAX_GUESSES = 6
# Echoes of garbage guesses are cut here so one bad utterance cannot bloat the transcript.
MAX_ECHO_CHARS = 20


def feedback(guess: str, answer: str) -> str:
    """Wordle feedback as a string of 'b', 'y', 'g' (greens first, then yellows by remaining count)."""
    result = ["b"] * len(guess)
    unmatched: Counter[str] = Counter()
    for i, (g, a) in enumerate(zip(guess, answer)):
        if g == a:
            result[i] = "g"
        else:
            unmatched[a] += 1
    for i, g in enumerate(guess):
        if result[i] != "g" and unmatched[g] > 0:
            result[i] = "y"
            unmatched[g] -= 1
    return "".join(result)


def spaced(text: str) -> str:
    return " ".join(text)


def normalize_guess(action: str) -> str:
    """Lower-case the utterance and drop all whitespace ("C R A N E" -> "crane")."""
    return "".join(action.lower().split())


def _read_words(filename: str) -> tuple[str, ...]:
    text = resources.files("qsft.envs.wordle").joinpath("data").joinpath(filename).read_text(encoding="utf-8")
    words = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return tuple(words)


@dataclass(frozen=True)
class WordleVocabulary:
    """Hidden answers and accepted guesses (answers are always accepted as guesses)."""

    answers: tuple[str, ...]
    guesses: tuple[str, ...]
    guess_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bad = [w for w in self.answers + self.guesses
               if len(w) != WORD_LENGTH or not w.isascii() or not w.isalpha() or not w.islower()]
        if bad:
            raise EnvError(f"wordle words must be {WORD_LENGTH} lowercase ASCII letters; bad: {bad[:5]}")
        if not self.answers:
            raise EnvError("wordle needs at least one answer word")
        missing = sorted(set(self.answers) - set(self.guesses))
        if missing:
            raise EnvError(f"every wordle answer must also be a valid guess; missing from guesses: {missing[:5]}")
        object.__setattr__(self, "guess_set", frozenset(self.guesses))

    @staticmethod
    @functools.lru_cache(maxsize=1)
    def default() -> WordleVocabulary:
        return WordleVocabulary(_read_words("wordle_answers.txt"), _read_words("wordle_guesses.txt"))


@dataclass(frozen=True)
class Guess:
    """One guess as the agent may observe it: the word and its feedback (None when invalid)."""

    word: str
    feedback: str | None


class WordleEnv(TextEnv):
    """Guess the hidden 5-letter word in at most 6 tries."""

    name = "wordle"
    max_turns = MAX_GUESSES
    reward_range = (-1.0, 0.0)
    min_return = -float(MAX_GUESSES)
    default_reward_transform = "episode_return:-6:0"
    default_gamma = 0.99
    default_beta = 4.0
    history_turns = None  # the feedback of every earlier guess is needed to act well
    action_hint = "a 5-letter English word, e.g. crane (spaced letters like 'c r a n e' also work)"

    WRONG_GUESS_REWARD = -1.0
    SOLVED_REWARD = 0.0

    def __init__(self, vocabulary: WordleVocabulary | None = None) -> None:
        super().__init__()
        self.vocabulary = vocabulary or WordleVocabulary.default()
        # The hidden word. Scripted policies must not read it: they act on `history` only.
        self.answer = self.vocabulary.answers[0]
        self.history: list[Guess] = []

    def answer_for_seed(self, seed: int | None) -> str:
        return random.Random(seed).choice(self.vocabulary.answers)

    def optimal_return(self, seed: int | None = None) -> float:
        """Return of the reference solver (greedy expected information gain) on this answer.

        Only luck can do better than a strong solver in Wordle (a first guess is right with
        probability 1/|answers|), so the solver's return is the 100-point anchor of the
        normalised score; the hard upper bound 0 would make 100 unreachable.
        """
        from qsft.envs.wordle.solver import WordleSolver

        answer = self.answer if seed is None else self.answer_for_seed(seed)
        return WordleSolver.for_vocabulary(self.vocabulary).solver_return(answer)

    def _reset(self, seed: int | None) -> str:
        self.answer = self.answer_for_seed(seed)
        self.history = []
        return "Wordle:\n"

    def _step(self, action: str) -> StepResult:
        word = normalize_guess(action)
        out_of_guesses = len(self.history) + 1 >= MAX_GUESSES
        if len(word) != WORD_LENGTH or word not in self.vocabulary.guess_set:
            self.history.append(Guess(word, None))
            observation = spaced(word[:MAX_ECHO_CHARS]) + "\n\n"
            return observation, self.WRONG_GUESS_REWARD, out_of_guesses, {"invalid": True}
        result = feedback(word, self.answer)
        self.history.append(Guess(word, result))
        observation = f"{spaced(word)}\n{spaced(result)}\n"
        if word == self.answer:
            return observation, self.SOLVED_REWARD, True, {"invalid": False, "success": True}
        return observation, self.WRONG_GUESS_REWARD, out_of_guesses, {"invalid": False}
