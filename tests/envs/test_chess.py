import random

import chess
import pytest

from qsft.envs import make, make_policy
from qsft.envs.chess import stockfish
from qsft.envs.chess.env import ChessEndgameEnv, parse_move, random_endgame, spaced_fen
from qsft.envs.generate import generate_episodes, run_episode
from qsft.errors import EnvError


def _stockfish_available() -> bool:
    try:
        stockfish.find_stockfish()
    except EnvError:
        return False
    return True


needs_stockfish = pytest.mark.skipif(not _stockfish_available(),
                                     reason="Stockfish is not installed (scripts/setup.sh installs it)")


def env_at(fen: str) -> ChessEndgameEnv:
    env = make("chess-kq")
    env.reset(0)
    env.board = chess.Board(fen)
    return env


def test_observation_is_spaced_fen():
    board = chess.Board("k7/2K5/8/8/8/8/8/1Q6 w - - 0 1")
    assert spaced_fen(board) == " ".join("k7/2K5/8/8/8/8/8/1Q6 w - - 0 1") + "\n"
    assert make("chess-kr").reset(3).endswith(" w   -   -   0   1\n")


def test_parse_move_accepts_san_uci_and_spaces_only_for_legal_moves():
    board = chess.Board("k7/2K5/8/8/8/8/8/1Q6 w - - 0 1")
    assert parse_move(board, "Qb6") == chess.Move.from_uci("b1b6")
    assert parse_move(board, "b1b6") == parse_move(board, " Q b 6 ") == parse_move(board, "B1B6")
    for bad in ("Qc3", "Kb8", "b1c3", "e2e4", "--", "0000", "", "move up", "Ka8"):
        assert parse_move(board, bad) is None, bad


def test_random_starts_are_legal_and_deterministic():
    for pieces in ("Q", "R", "QR", "RR"):
        for seed in range(200):
            board = random_endgame(pieces, random.Random(seed))
            assert board.is_valid() and board.turn == chess.WHITE and board.outcome() is None
            assert not board.was_into_check() and len(board.piece_map()) == 2 + len(pieces)
    env = make("chess-endgames")
    fens = [env.reset(seed) for seed in range(30)]
    assert fens == [env.reset(seed) for seed in range(30)] and len(set(fens)) == 30
    assert {len(env.board_for_seed(seed).piece_map()) for seed in range(30)} == {3, 4}  # the mix


def test_illegal_move_costs_one_and_keeps_the_board():
    env = env_at("k7/2K5/8/8/8/8/8/1Q6 w - - 0 1")
    before = env.board.fen()
    obs, reward, done, info = env.step("Qh9")
    assert (reward, done, info["invalid"], env.board.fen()) == (-1.0, False, True, before)
    assert obs == spaced_fen(env.board)


def test_stalemate_is_a_draw():
    env = env_at("k7/2K5/8/8/8/8/8/1Q6 w - - 0 1")
    obs, reward, done, info = env.step("Qb6")
    assert (reward, done, info["success"], info["termination"]) == (0.0, True, False, "stalemate")


def test_checkmate_pays_one():
    env = env_at("7k/8/6K1/8/8/8/8/Q7 w - - 0 1")
    obs, reward, done, info = env.step("Qa8#")
    assert (reward, done, info["success"], info["termination"]) == (1.0, True, True, "checkmate")


@needs_stockfish
def test_opponent_replies_and_captures_a_hanging_rook():
    env = env_at("8/8/8/8/8/8/1k6/R6K w - - 0 1")
    env.name = "chess-kr"
    obs, reward, done, info = env.step("Kh2")  # leaves the rook en prise: Stockfish takes it
    assert info["opponent_move"] == "Kxa1"
    assert (reward, done, info["success"], info["termination"]) == (0.0, True, False, "insufficient_material")


@needs_stockfish
def test_opponent_moves_after_ordinary_move():
    env = env_at("8/8/8/4k3/8/8/8/Q3K3 w - - 0 1")
    obs, reward, done, info = env.step("Kd2")
    assert (reward, done, info["invalid"]) == (0.0, False, False)
    assert env.board.turn == chess.WHITE and len(env.board.move_stack) == 2
    assert env.board.piece_at(chess.E5) is None and info["opponent_move"].startswith("K")
    assert obs == spaced_fen(env.board)


@needs_stockfish
def test_full_strength_stockfish_mates_kq_within_move_limit():
    env = make("chess-kq")
    policy = make_policy("chess-kq", "optimal")
    for i in range(4):
        episode = run_episode(env, policy, start_seed=100 + i, policy_seed=i, episode_id=f"kq-{i}")
        assert episode.meta["success"] and episode.total_return == 1.0 == episode.meta["optimal_return"]
        assert len(episode.agent_turns) <= env.max_turns


@needs_stockfish
def test_engine_is_shared_and_generation_is_deterministic():
    first = generate_episodes("chess-kqr", "epsilon:0.5", 3, seed=7, progress=False)
    engine = stockfish._engine_for_this_process()
    second = generate_episodes("chess-kqr", "epsilon:0.5", 3, seed=7, progress=False)
    assert stockfish._engine_for_this_process() is engine
    assert [e.to_dict() for e in first] == [e.to_dict() for e in second]


def test_missing_stockfish_names_setup_script(monkeypatch):
    monkeypatch.delenv(stockfish.STOCKFISH_ENV_VAR, raising=False)
    monkeypatch.setattr(stockfish.shutil, "which", lambda name: None)
    monkeypatch.setattr(stockfish, "DEBIAN_STOCKFISH", "/nonexistent/stockfish")
    with pytest.raises(EnvError, match="scripts/setup.sh"):
        stockfish.find_stockfish()
    monkeypatch.setenv(stockfish.STOCKFISH_ENV_VAR, "/nonexistent/sf")
    with pytest.raises(EnvError, match="QSFT_STOCKFISH"):
        stockfish.find_stockfish()


def test_unknown_endgame_and_bad_depth():
    with pytest.raises(EnvError, match="known"):
        ChessEndgameEnv(endgame="kbn")
    with pytest.raises(EnvError):
        make("chess-kq", opponent_depth=0)


@needs_stockfish
def test_engine_restarts_after_dying_and_exit_does_not_hang():
    import os
    import signal
    import subprocess
    import sys

    board = chess.Board("7k/8/6K1/8/8/8/8/Q7 w - - 0 1")
    mates = set()
    for move in board.legal_moves:
        after = board.copy()
        after.push(move)
        if after.is_checkmate():
            mates.add(move)
    assert mates == {chess.Move.from_uci("a1a8"), chess.Move.from_uci("a1g7")}
    assert stockfish.best_move(board, 6) in mates
    os.kill(stockfish._engine_for_this_process().protocol.transport.get_pid(), signal.SIGKILL)
    assert stockfish.best_move(board, 6) in mates
    # SimpleEngine's I/O thread is not a daemon: without the early exit hook this would hang.
    code = ("import chess; from qsft.envs.chess import stockfish; "
            "print(stockfish.best_move(chess.Board('7k/8/6K1/8/8/8/8/Q7 w - - 0 1'), 4))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() in {"a1a8", "a1g7"}, result.stderr


def test_legal_moves_variant_lists_whites_moves_and_keeps_the_fen_line():
    plain, listed = make("chess-kq"), make("chess-kq", legal_moves=True)
    first, with_moves = plain.reset(seed=5), listed.reset(seed=5)
    assert with_moves.startswith(first)  # the default variant's text is a prefix
    fen_line, legal_line = with_moves.splitlines()
    moves = legal_line.removeprefix("legal: ").split()
    assert legal_line.startswith("legal: ") and moves == sorted(listed.board.san(m) for m in listed.board.legal_moves)
    observation, reward, done, info = listed.step(moves[0])
    assert not info["invalid"] and (done or observation.splitlines()[1].startswith("legal: "))
    observation, reward, done, info = listed.step("Zz9")
    assert info["invalid"] and reward == -1.0 and "legal: " in observation
