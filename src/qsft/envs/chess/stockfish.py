"""One Stockfish process per Python process, shared by every chess environment and policy.

Found via `$QSFT_STOCKFISH`, then `stockfish` on PATH, then Debian's `/usr/games/stockfish`
(not on PATH by default). Started on first use, closed at interpreter exit, restarted after a
fork (a child must not talk to its parent's engine).

Strength is a search depth, not Stockfish's "Skill Level" or a time limit: skill levels below
20 pick moves with a time-seeded random generator and time limits depend on machine load, and
either would make datasets irreproducible. With one thread and the hash cleared before every
search (`ucinewgame`, triggered by a fresh `game` key), a depth-limited search is a pure
function of the position, however many environments share the engine.
"""

from __future__ import annotations

import atexit
import os
import shutil
import threading

import chess
import chess.engine

from qsft.errors import EnvError

STOCKFISH_ENV_VAR = "QSFT_STOCKFISH"
DEBIAN_STOCKFISH = "/usr/games/stockfish"
ENGINE_OPTIONS = {"Threads": 1, "Hash": 16}

_lock = threading.Lock()
_engine: chess.engine.SimpleEngine | None = None
_engine_pid: int | None = None


def find_stockfish() -> str:
    """Path of the Stockfish binary, or EnvError saying how to install it."""
    configured = os.environ.get(STOCKFISH_ENV_VAR)
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        raise EnvError(f"${STOCKFISH_ENV_VAR}={configured!r} is not an executable file")
    for candidate in (shutil.which("stockfish"), DEBIAN_STOCKFISH):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise EnvError("Stockfish not found (chess environments need it): run scripts/setup.sh, which installs "
                   f"Debian's stockfish, or set ${STOCKFISH_ENV_VAR} to the binary")


def _start() -> chess.engine.SimpleEngine:
    path = find_stockfish()
    try:
        engine = chess.engine.SimpleEngine.popen_uci(path)
        engine.configure(ENGINE_OPTIONS)
    except (OSError, chess.engine.EngineError) as err:
        raise EnvError(f"could not start Stockfish at {path}: {err}") from None
    return engine


def _engine_for_this_process() -> chess.engine.SimpleEngine:
    global _engine, _engine_pid
    if _engine is None or _engine_pid != os.getpid():
        _engine, _engine_pid = _start(), os.getpid()
    return _engine


def _discard_engine() -> None:
    """Forget a dead engine, stopping its I/O thread (which would otherwise block interpreter exit)."""
    global _engine
    dead, _engine = _engine, None
    if dead is not None:
        dead.close()


def best_move(board: chess.Board, depth: int) -> chess.Move:
    """Stockfish's move for the side to move, searched to `depth` plies (deterministic)."""
    limit = chess.engine.Limit(depth=depth)
    with _lock:
        try:
            result = _engine_for_this_process().play(board, limit, game=object())
        except chess.engine.EngineTerminatedError:
            _discard_engine()  # it died (killed, out of memory): start a fresh one, once
            try:
                result = _engine_for_this_process().play(board, limit, game=object())
            except chess.engine.EngineTerminatedError:
                raise EnvError("Stockfish terminated unexpectedly twice in a row") from None
    if result.move is None:
        raise EnvError(f"Stockfish returned no move for {board.fen()}")
    return result.move


def close_engine() -> None:
    """Quit the shared engine (also run automatically at interpreter exit)."""
    global _engine
    with _lock:
        if _engine is not None and _engine_pid == os.getpid():
            try:
                _engine.quit()
            except (chess.engine.EngineError, OSError, TimeoutError):
                pass  # already gone; nothing left to release
        _engine = None


# SimpleEngine talks to Stockfish from a non-daemon thread, and the interpreter joins such threads
# *before* running atexit hooks: a plain atexit hook would never run and exit would hang.
# threading._register_atexit (what concurrent.futures uses) runs before that join.
_register_exit_hook = getattr(threading, "_register_atexit", atexit.register)
_register_exit_hook(close_engine)
