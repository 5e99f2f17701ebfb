"""Evaluation: what a trained run does in an environment and how runs compare.

* `rollout`  — batched rollouts (`rollout`, `EpisodeResult`);
* `metrics`  — summary statistics, 95% CIs, the LMRL-Gym normalised score;
* `evaluate` — `evaluate(run_dir, env_name, ...) -> EvalResult` behind `qsft eval`;
* `score`    — the Q-model as a critic of logged episodes (`qsft score`);
* `report`   — comparison tables and bar charts (`qsft report`); `plots` draws the PNGs.

Import from the submodules; this package imports nothing so that `qsft --help` stays fast.
"""
