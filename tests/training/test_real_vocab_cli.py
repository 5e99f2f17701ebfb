"""Issue #16: through the CLI, a GPT-2-shaped model with a 50,257-token vocabulary scores Q* within 0.05.

The chain's actions are two tokens ("step left" / "step right", plus the end of turn); the model dir is
built from a config (tests/real_vocab.py). `qsft pretrain` (150 steps) gives the model the positions:
the behavior is uniform in every state, so BC alone never has to tell p0..p3 apart, and without the
pretraining the Q-fit leaves p0, p1 and p2 within 0.03 of each other (largest error 0.10 after 800
steps; benchmarks/real_vocab_chain.py --pretrain-steps 0). The Q-SFT defaults (dummy variant, threshold
1e-4, data support, max, tau 0.05, q_init model = the pretrained weights) are untouched.
"""

from __future__ import annotations

from tests.real_vocab import run_cli_chain


def test_50k_vocabulary_cli_scores_match_q_star(tmp_path):
    rows = run_cli_chain(tmp_path, pretrain_steps=150, bc_steps=150, qsft_steps=700)
    assert len(rows) == 16  # 8 transitions, twice
    errors = {(r["state"], r["action"]): round(r["q"] - r["q_star"], 3) for r in rows}
    assert max(abs(e) for e in errors.values()) <= 0.05, errors
    # every token of an utterance carries a value: "step" reads the better of its two continuations
    for r in rows:
        assert len(r["q_hat"]) == 3
