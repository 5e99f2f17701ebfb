"""Chess endgames against Stockfish: white (the agent) has K+Q, K+R, K+Q+R or K+R+R vs a lone king.

Start positions are random legal placements drawn from the seed: white to move, black not in
check, the game not already over. Every such position is a forced win for white, so the optimal
return is +1 everywhere.

Text, as in LMRL-Gym: the observation is the FEN with every character separated by a space,
then "\\n" ("8 / 8 / ... w   -   -   0   1\\n"); the action is a move in SAN ("Qd7+") or UCI
("d1d7"); spaces inside the move are ignored. Black's reply (Stockfish at `opponent_depth`) is
already made when the next observation arrives.

Rewards: +1 when white mates (the episode ends, success); 0 for an ordinary move and for a draw
(stalemate, insufficient material after black captures, a position occurring a third time:
the episode ends); -1 if white is mated (impossible here, kept for completeness); -1 for an
illegal or unparseable move, which leaves the board unchanged and the episode running (as in
LMRL-Gym, so returns of a bad agent go below -1). At most 50 white moves (illegal attempts count).

`legal_moves=True` (`--env-arg legal_moves=true`, off by default): the observation also lists white's legal
moves in SAN, sorted, on a second line ("legal: Kb2 Qd7+ ...\n"), as agent benchmarks that list admissible
commands do (ALFWorld, TextWorld). The FEN line is unchanged, so the default variant's text is a prefix of it.
"""

from __future__ import annotations

import random

import chess

from qsft.envs.base import StepResult, TextEnv
from qsft.envs.chess import stockfish
from qsft.errors import EnvError

# White's pieces besides the king, per endgame name.
ENDGAMES: dict[str, tuple[str, ...]] = {
    "kq": ("Q",), "kr": ("R",), "kqr": ("QR",), "krr": ("RR",), "endgames": ("Q", "R", "QR", "RR"),
}
DEFAULT_OPPONENT_DEPTH = 4


def random_endgame(pieces: str, rng: random.Random) -> chess.Board:
    """White king + `pieces` vs black king on random squares; legal, white to move, black not in check."""
    while True:
        board = chess.Board(None)
        squares = rng.sample(chess.SQUARES, 2 + len(pieces))
        board.set_piece_at(squares[0], chess.Piece(chess.KING, chess.WHITE))
        board.set_piece_at(squares[1], chess.Piece(chess.KING, chess.BLACK))
        for square, symbol in zip(squares[2:], pieces):
            board.set_piece_at(square, chess.Piece.from_symbol(symbol))
        board.turn = chess.WHITE
        # is_valid() rejects adjacent kings and a black king in check (the side not to move).
        if board.is_valid() and board.outcome() is None:
            return board


def spaced_fen(board: chess.Board) -> str:
    return " ".join(board.fen()) + "\n"


def legal_moves_line(board: chess.Board) -> str:
    """White's legal moves in SAN, sorted: the `legal_moves` variant's second observation line."""
    return "legal: " + " ".join(sorted(board.san(m) for m in board.legal_moves)) + "\n"


def game_outcome(board: chess.Board) -> chess.Outcome | None:
    """How the game ended, or None. A threefold repetition that actually happened ends it.

    Not `board.outcome(claim_draw=True)`: that also reports a draw when the side to move merely
    *could* claim one with its next move, which would end games the winning side is still playing.
    """
    outcome = board.outcome()
    if outcome is None and board.is_repetition(3):
        return chess.Outcome(chess.Termination.THREEFOLD_REPETITION, None)
    return outcome


def parse_move(board: chess.Board, action: str) -> chess.Move | None:
    """The legal move `action` names in SAN or UCI, else None."""
    text = "".join(action.split())
    if not text:
        return None
    for parse in (board.parse_san, lambda t: board.parse_uci(t.lower())):
        try:
            move = parse(text)
        except ValueError:  # python-chess's invalid / illegal / ambiguous move errors
            continue
        if move and move in board.legal_moves:  # a null move ("--", "0000") is falsy
            return move
    return None


class ChessEndgameEnv(TextEnv):
    """Mate a lone black king, defended by Stockfish."""

    max_turns = 50
    reward_range = (-1.0, 1.0)
    # LMRL-Gym's endgame anchor; illegal moves can take a return below it.
    min_return = -1.0
    default_reward_transform = "episode_return:-1:1"
    default_gamma = 0.99
    default_beta = 8.0
    history_turns = 1  # the FEN is a Markov state
    action_hint = "a legal move for white in SAN (e.g. Qd7+) or UCI (e.g. d1d7)"

    WIN_REWARD = 1.0
    LOSS_REWARD = -1.0
    ILLEGAL_MOVE_REWARD = -1.0

    def __init__(self, endgame: str = "kq", opponent_depth: int = DEFAULT_OPPONENT_DEPTH,
                 max_turns: int = 50, legal_moves: bool = False) -> None:
        super().__init__()
        if endgame not in ENDGAMES:
            raise EnvError(f"unknown chess endgame {endgame!r}; known: {', '.join(ENDGAMES)}")
        if opponent_depth < 1:
            raise EnvError(f"opponent_depth must be >= 1, got {opponent_depth}")
        self.name = f"chess-{endgame}"
        self.endgame = endgame
        self.opponent_depth = opponent_depth
        self.max_turns = max_turns
        self.legal_moves = bool(legal_moves)
        self.board = chess.Board(None)

    def observation(self) -> str:
        """The spaced FEN, plus the legal moves in the `legal_moves` variant (while the game runs)."""
        text = spaced_fen(self.board)
        if self.legal_moves and game_outcome(self.board) is None:
            text += legal_moves_line(self.board)
        return text

    def board_for_seed(self, seed: int | None) -> chess.Board:
        rng = random.Random(seed)
        return random_endgame(rng.choice(ENDGAMES[self.endgame]), rng)

    def optimal_return(self, seed: int | None = None) -> float:
        return self.WIN_REWARD

    def _reset(self, seed: int | None) -> str:
        self.board = self.board_for_seed(seed)
        return self.observation()

    def _step(self, action: str) -> StepResult:
        move = parse_move(self.board, action)
        if move is None:
            return self.observation(), self.ILLEGAL_MOVE_REWARD, False, {"invalid": True}
        info: dict = {"invalid": False, "move": self.board.san(move)}
        self.board.push(move)
        if game_outcome(self.board) is None:
            reply = stockfish.best_move(self.board, self.opponent_depth)
            info["opponent_move"] = self.board.san(reply)
            self.board.push(reply)
        outcome = game_outcome(self.board)
        if outcome is None:
            return self.observation(), 0.0, False, info
        info["termination"] = outcome.termination.name.lower()
        info["success"] = outcome.winner == chess.WHITE
        reward = {chess.WHITE: self.WIN_REWARD, chess.BLACK: self.LOSS_REWARD, None: 0.0}[outcome.winner]
        return self.observation(), reward, True, info
