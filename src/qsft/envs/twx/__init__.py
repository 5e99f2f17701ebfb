"""TextWorldExpress games (`twx-cookingworld`, `twx-coin`, `twx-twc`): `env.py` plays them on the real engine,
`policies.py` the scripted behavior."""
