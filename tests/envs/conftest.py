"""Shared fixtures of the environment tests."""

import pytest


@pytest.fixture(scope="module")
def envs(request):
    """One built env per name in the test module's NAMES, closed after the module (engines hold JVMs / simulators)."""
    from qsft.envs import make

    built = {name: make(name) for name in request.module.NAMES}
    yield built
    for env in built.values():
        env.close()
