"""Wordle solver: greedy expected information gain over a cached feedback table.

`feedback_table(guesses, answers)[g, a]` is the feedback of guess g against answer a, encoded
base 3 (b=0, y=1, g=2; letter i weighs 3**i; 242 = all green). With it, filtering the answers
consistent with the history and scoring every guess by the entropy of the feedback it would
produce are a few numpy operations, so a whole solver episode takes milliseconds.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from qsft.envs.wordle.env import MAX_GUESSES, WORD_LENGTH, Guess, WordleVocabulary, feedback

N_PATTERNS = 3**WORD_LENGTH
ALL_GREEN = N_PATTERNS - 1
FEEDBACK_DIGIT = {"b": 0, "y": 1, "g": 2}


def encode_feedback(text: str) -> int:
    return sum(FEEDBACK_DIGIT[ch] * 3**i for i, ch in enumerate(text))


def decode_feedback(code: int) -> str:
    return "".join("byg"[(code // 3**i) % 3] for i in range(WORD_LENGTH))


def _letters(words: Sequence[str]) -> np.ndarray:
    return (np.frombuffer("".join(words).encode("ascii"), dtype=np.uint8).reshape(-1, WORD_LENGTH)
            - ord("a")).astype(np.intp)


def feedback_table(guesses: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """[G, A] uint8 feedback codes; same rules as `wordle.feedback` (greens, then counted yellows)."""
    g, a = _letters(guesses), _letters(answers)  # [G, 5], [A, 5]
    n_g, n_a = len(g), len(a)
    green = g[:, None, :] == a[None, :, :]  # [G, A, 5]
    # Copies of each letter in the answer not already matched by a green: [G, A, 26].
    unmatched = np.zeros((n_g, n_a, 26), dtype=np.int8)
    answer_ids = np.arange(n_a)
    for i in range(WORD_LENGTH):
        unmatched[:, answer_ids, a[:, i]] += ~green[:, :, i]
    codes = np.zeros((n_g, n_a), dtype=np.int64)
    rows, cols = np.arange(n_g)[:, None], answer_ids[None, :]
    for i in range(WORD_LENGTH):
        letter = g[:, i][:, None]  # [G, 1]
        yellow = ~green[:, :, i] & (unmatched[rows, cols, letter] > 0)  # [G, A]
        unmatched[rows, cols, letter] -= yellow
        codes += (2 * green[:, :, i] + yellow) * 3**i
    return codes.astype(np.uint8)


class WordleSolver:
    """Candidate filtering and the greedy max-entropy guess for one vocabulary."""

    def __init__(self, vocabulary: WordleVocabulary) -> None:
        self.vocabulary = vocabulary
        self.guess_index = {word: i for i, word in enumerate(vocabulary.guesses)}
        self.table = feedback_table(vocabulary.guesses, vocabulary.answers)  # [G, A]
        self.answer_guess_index = np.array([self.guess_index[w] for w in vocabulary.answers])
        self._offsets = (np.arange(len(vocabulary.guesses)) * N_PATTERNS)[:, None]  # [G, 1]
        self._solver_returns: dict[str, float] = {}

    @staticmethod
    @functools.lru_cache(maxsize=4)
    def for_vocabulary(vocabulary: WordleVocabulary) -> WordleSolver:
        """One solver (and one feedback table) per vocabulary per process."""
        return WordleSolver(vocabulary)

    def candidates(self, history: Sequence[Guess]) -> np.ndarray:
        """Indices of the answers consistent with every valid guess's feedback so far."""
        mask = np.ones(len(self.vocabulary.answers), dtype=bool)
        for guess in history:
            if guess.feedback is not None:
                mask &= self.table[self.guess_index[guess.word]] == encode_feedback(guess.feedback)
        return np.flatnonzero(mask)

    def best_guess(self, candidates: np.ndarray) -> str:
        """The guess whose feedback over the candidates has the largest entropy.

        Ties go to a guess that could itself be the answer (it may win right away), then to the
        earlier word, so the solver is deterministic.
        """
        answers = self.vocabulary.answers
        if len(candidates) == 0:
            raise ValueError("no answer is consistent with the feedback (was it computed for another answer list?)")
        if len(candidates) <= 2:
            return answers[candidates[0]]
        if len(candidates) == len(answers):
            return self._opening_guess()
        return self._max_entropy_guess(candidates)

    @functools.cache  # noqa: B019 - one solver per vocabulary lives for the whole process anyway
    def _opening_guess(self) -> str:
        return self._max_entropy_guess(np.arange(len(self.vocabulary.answers)))

    def _max_entropy_guess(self, candidates: np.ndarray) -> str:
        n = len(candidates)
        codes = self.table[:, candidates].astype(np.int64) + self._offsets  # [G, n]
        counts = np.bincount(codes.ravel(), minlength=len(self._offsets) * N_PATTERNS)
        counts = counts.reshape(-1, N_PATTERNS).astype(np.float64)  # [G, 243]
        # H = log n - (1/n) sum_k c_k log c_k  (entropy of the feedback partition)
        with np.errstate(divide="ignore", invalid="ignore"):
            c_log_c = np.where(counts > 0, counts * np.log(counts), 0.0)
        entropy = np.log(n) - c_log_c.sum(axis=1) / n  # [G]
        is_candidate = np.zeros(len(entropy), dtype=bool)
        is_candidate[self.answer_guess_index[candidates]] = True
        best = np.flatnonzero(entropy >= entropy.max() - 1e-9)
        preferred = best[is_candidate[best]]
        return self.vocabulary.guesses[int(preferred[0] if len(preferred) else best[0])]

    def next_guess(self, history: Sequence[Guess]) -> str:
        return self.best_guess(self.candidates(history))

    def play(self, answer: str) -> list[str]:
        """The solver's guesses against `answer` (stops when solved or after 6 guesses)."""
        history: list[Guess] = []
        while len(history) < MAX_GUESSES:
            word = self.next_guess(history)
            history.append(Guess(word, feedback(word, answer)))
            if word == answer:
                break
        return [guess.word for guess in history]

    def solver_return(self, answer: str) -> float:
        """Environment return of the solver's game: -1 per guess except a solving last one."""
        if answer not in self._solver_returns:
            guesses = self.play(answer)
            solved = guesses[-1] == answer
            self._solver_returns[answer] = -float(len(guesses) - 1 if solved else len(guesses))
        return self._solver_returns[answer]
