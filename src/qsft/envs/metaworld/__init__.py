"""Meta-World robot manipulation (`metaworld-pick-place`, `metaworld-push`, `metaworld-reach`): `env.py` the
Sawyer arm in MuJoCo with text observations and eight text actions, `policies.py` the scripted behavior."""
