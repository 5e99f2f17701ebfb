"""Microsoft TextWorld games (`textworld-<task>`): `games.py` builds and caches them, `env.py` plays them,
`policies.py` the scripted behavior."""
