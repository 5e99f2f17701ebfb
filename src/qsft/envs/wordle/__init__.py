"""Wordle: `env.py` the game, `solver.py` the consistent-guess solver, `policies.py` the scripted behavior,
`data/` the answer and guess word lists."""
