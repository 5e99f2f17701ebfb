"""Q* oracle through the CLI (DESIGN §1.6): `qsft train --algo qsft` on a tiny GPT-2 drives
p_theta / pi_beta at every chain state to Q* (within 0.05).

The data holds every (state, action) transition of the chain once: a uniform behavior policy with
exactly balanced actions per state. Sampled episodes (`random_episodes`) are the wrong data for this
test: their per-state action frequencies are off 0.5 by sampling noise (0.47 vs 0.53 with 50
episodes), a tiny GPT-2's behavior model fits the state-independent average long before those
small differences, and p_theta / pi_beta = frequency / pi_beta * Q inherits the mismatch (errors up
to 0.15 with a perfectly fitted Q-model). With balanced data pi_beta is exact and only Q-learning
is tested.

Configuration (measured on 2 loaded CPU cores, ~20 s; max error 0.016-0.019 over seeds 0-3):
full batch (8 sequences), lr 3e-3 with the default linear decay (the end of training fits the
converged targets closely), Polyak tau 0.05 (tau 0.005 needs far more steps; hard copies every
40 steps leave 0.03-0.06), Q-model from the base weights (`q_init model`: 0.016-0.019 vs 0.024-0.032
from the behavior model), and support threshold 0.01: after 100 SFT steps unseen tokens still have
pi_beta above 1e-4, their ratio wins the max and targets clip (max error 0.35 with the default).
"""

from __future__ import annotations

import torch

from qsft.cli import main
from qsft.data.io import save_episodes
from qsft.models.loading import load_tokenizer
from qsft.models.run_models import load_run_models
from tests.oracle_chain import ACTIONS, GAMMA, GOAL, chain_transitions, q_star


def test_cli_training_recovers_q_star(tmp_path):
    data, out = tmp_path / "chain.jsonl", tmp_path / "run"
    save_episodes(data, chain_transitions())
    argv = ["train", "--algo", "qsft", "--data", str(data), "--out", str(out),
            "--model", "tiny", "--model_preset", "micro", "--history_turns", "1", "--max_length", "32",
            "--reward_transform", "success", "--gamma", str(GAMMA),
            "--per_device_train_batch_size", "8", "--learning_rate", "3e-3", "--max_steps", "800",
            "--behavior_max_steps", "100", "--tau", "0.05", "--q_init", "model", "--support_threshold", "0.01",
            "--seed", "0", "--save_strategy", "no", "--logging_steps", "100", "--report_to", "none",
            "--disable_tqdm", "true", "--use_cpu", "true"]
    assert main(argv) == 0

    q_model, behavior = load_run_models(out)
    tokenizer = load_tokenizer(out)
    truth = q_star(GAMMA)
    errors = {}
    action_ids = {action: tokenizer.encode(action, add_special_tokens=False) for action in ACTIONS}
    assert all(len(ids) == 1 for ids in action_ids.values())  # one decision per action
    with torch.no_grad():
        for state in range(GOAL):
            # the state the agent acts from: [BOS] + observation, as training encodes it
            ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer.encode(f"p{state}", add_special_tokens=False)]])
            p_theta = torch.softmax(q_model(input_ids=ids).logits[0, -1], -1)
            pi_beta = torch.softmax(behavior(input_ids=ids).logits[0, -1], -1)
            for action, (a,) in action_ids.items():
                errors[(state, action)] = float(p_theta[a] / pi_beta[a]) - truth[(state, action)]
    assert max(abs(e) for e in errors.values()) < 0.05, errors
