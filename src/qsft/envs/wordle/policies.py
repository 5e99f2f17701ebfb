"""Scripted Wordle policies. They read only the observable history, never the hidden answer.

Guesses are written as spaced letters ("c r a n e"), as the environment echoes them and as LMRL-Gym's Wordle
transcripts read: a model then writes a guess letter by letter with the same tokens it reads in the feedback
lines, so a green or yellow letter is a token to copy (issue #18: with every word one token, tiny models learned
which words are answers but never which ones the feedback allows).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from qsft.envs.base import TextEnv
from qsft.envs.policies import Policy, PolicyFamily, parse_probability
from qsft.envs.wordle.env import WordleEnv, spaced
from qsft.envs.wordle.solver import WordleSolver
from qsft.errors import EnvError


def _wordle(env: TextEnv) -> WordleEnv:
    if not isinstance(env, WordleEnv):
        raise EnvError(f"wordle policies need a WordleEnv, got {type(env).__name__}")
    return env


class WordleSolverPolicy(Policy):
    """Greedy expected-information-gain solver (deterministic)."""

    def act(self, env: TextEnv, rng: random.Random) -> str:
        wordle = _wordle(env)
        return spaced(WordleSolver.for_vocabulary(wordle.vocabulary).next_guess(wordle.history))


class WordleRandomPolicy(Policy):
    """A uniformly random word of the guess vocabulary."""

    def act(self, env: TextEnv, rng: random.Random) -> str:
        return spaced(rng.choice(_wordle(env).vocabulary.guesses))


@dataclass
class WordleConsistentPolicy(Policy):
    """With probability `p_consistent` a random answer consistent with all feedback, else a random word.

    LMRL-Gym's Wordle data comes from this kind of mixture: consistent guesses make progress
    without planning for information, random words waste turns.
    """

    p_consistent: float

    def act(self, env: TextEnv, rng: random.Random) -> str:
        wordle = _wordle(env)
        if rng.random() < self.p_consistent:
            candidates = WordleSolver.for_vocabulary(wordle.vocabulary).candidates(wordle.history)
            return spaced(wordle.vocabulary.answers[int(candidates[rng.randrange(len(candidates))])])
        return spaced(rng.choice(wordle.vocabulary.guesses))


def _consistent(arg: float | None) -> Policy:
    return WordleConsistentPolicy(parse_probability("consistent", arg, default=0.5))


WORDLE_POLICIES = PolicyFamily(
    optimal=WordleSolverPolicy,
    random=WordleRandomPolicy,
    good=WordleSolverPolicy,
    poor=lambda: WordleConsistentPolicy(0.5),
    default_spec="consistent:0.3",
    extra={"consistent": _consistent},
    extra_help={"consistent": "consistent[:P]"},
)
