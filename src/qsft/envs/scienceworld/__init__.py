"""ScienceWorld tasks (`sciworld-find-living-thing`, `sciworld-lifespan-longest-lived`): `env.py` plays them on the
real engine, `policies.py` the scripted behavior."""
