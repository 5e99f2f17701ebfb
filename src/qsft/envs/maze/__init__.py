"""LMRL-Gym's maze (`maze`, `maze-po`): `env.py` the environment, `policies.py` its scripted behavior."""
