"""Chess endgames against Stockfish (`chess-kq`, ...): `env.py`, `stockfish.py` (the engine), `policies.py`."""
