"""Decoding: turning a trained run into a policy that writes agent utterances.

* `extraction` — policy-extraction rules (DESIGN §1.5) as `transformers.LogitsProcessor`s;
* `generation` — batched generation with one KV cache per model, stopping at end-of-turn;
* `policy`     — `load_policy(run_dir, mode, beta)`: the model(s) and rule of a trained run.

Import from the submodules; this package imports nothing so that `qsft --help` stays fast.
"""
