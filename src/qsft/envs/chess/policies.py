"""Scripted chess policies for white: Stockfish at a fixed depth, random legal moves, and mixes."""

from __future__ import annotations

import random
from dataclasses import dataclass

from qsft.envs.base import TextEnv
from qsft.envs.chess import stockfish
from qsft.envs.chess.env import ChessEndgameEnv
from qsft.envs.policies import Policy, PolicyFamily
from qsft.errors import ConfigError, EnvError

# Depth of `optimal`: deep enough to mate every endgame here well inside 50 moves.
OPTIMAL_DEPTH = 12
# Depth of the good side of `epsilon` / `mixture`: still mates reliably, at a fraction of the cost.
BEHAVIOR_DEPTH = 8


def _chess(env: TextEnv) -> ChessEndgameEnv:
    if not isinstance(env, ChessEndgameEnv):
        raise EnvError(f"chess policies need a ChessEndgameEnv, got {type(env).__name__}")
    return env


@dataclass
class StockfishPolicy(Policy):
    """Stockfish's best move at `depth`, written in SAN."""

    depth: int

    def act(self, env: TextEnv, rng: random.Random) -> str:
        board = _chess(env).board
        return board.san(stockfish.best_move(board, self.depth))

    @property
    def label(self) -> str:
        return f"stockfish:{self.depth}"


class ChessRandomPolicy(Policy):
    """A uniformly random legal move, written in SAN."""

    def act(self, env: TextEnv, rng: random.Random) -> str:
        board = _chess(env).board
        # Sorted so the choice depends only on the position and the rng, not on generation order.
        moves = sorted(board.legal_moves, key=lambda move: move.uci())
        return board.san(rng.choice(moves))


def _stockfish(arg: float | None) -> Policy:
    if arg is None or arg != int(arg) or not 1 <= arg <= 30:
        raise ConfigError("policy spec 'stockfish:D' needs a whole depth D between 1 and 30, e.g. stockfish:8")
    return StockfishPolicy(int(arg))


CHESS_POLICIES = PolicyFamily(
    optimal=lambda: StockfishPolicy(OPTIMAL_DEPTH),
    random=ChessRandomPolicy,
    good=lambda: StockfishPolicy(BEHAVIOR_DEPTH),
    poor=ChessRandomPolicy,
    default_spec="epsilon:0.5",
    extra={"stockfish": _stockfish},
    extra_help={"stockfish": "stockfish:D"},
)
