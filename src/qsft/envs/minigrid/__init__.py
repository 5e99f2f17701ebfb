"""MiniGrid with image observations (`minigrid-<task>`): `env.py` the adapter, `policies.py` the scripted behavior."""
