"""`qsft train --algo bc` then `--algo qsft --behavior DIR`, and `--behavior cotrain`: loadable models."""

import torch

from qsft.cli import main
from qsft.data.io import save_episodes
from qsft.models.loading import build_tiny_model, load_model, load_tokenizer
from qsft.training.run import RunInfo
from tests.oracle_chain import random_episodes

COMMON = ["--model", "tiny", "--model_preset", "micro", "--history_turns", "1", "--max_length", "32",
          "--report_to", "none", "--per_device_train_batch_size", "8", "--max_steps", "6",
          "--save_strategy", "no", "--disable_tqdm", "true"]
QSFT = ["--reward_transform", "success", "--gamma", "0.9"]


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_bc_then_qsft_with_frozen_behavior_dir(tmp_path):
    data = tmp_path / "chain.jsonl"
    save_episodes(data, random_episodes(30))
    bc, q = tmp_path / "bc", tmp_path / "q"
    assert main(["train", "--algo", "bc", "--data", str(data), "--out", str(bc), *COMMON]) == 0
    before = _weights(load_model(bc))
    assert main(["train", "--algo", "qsft", "--data", str(data), "--out", str(q), "--behavior", str(bc),
                 *COMMON, *QSFT]) == 0
    info = RunInfo.load(q)
    assert info.algo == "qsft" and info.behavior_path(q).resolve() == bc.resolve()
    assert torch.equal(_weights(load_model(bc)), before)  # the behavior model stayed frozen
    model, tokenizer = load_model(q), load_tokenizer(q)
    ids = torch.tensor([[tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("p0")]])
    assert model(ids).logits.shape[-1] >= len(tokenizer)


def test_cotrain_trains_both_models_and_saves_the_behavior(tmp_path):
    data = tmp_path / "chain.jsonl"
    save_episodes(data, random_episodes(30))
    out = tmp_path / "co"
    assert main(["train", "--algo", "qsft", "--data", str(data), "--out", str(out), "--behavior", "cotrain",
                 "--q_init", "behavior", *COMMON, *QSFT]) == 0
    info = RunInfo.load(out)
    assert info.behavior_model == "behavior"
    q_model, behavior = load_model(out), load_model(out / "behavior")
    # both started from the same tiny initialisation (seed 42) and both moved, by different losses
    start = _weights(build_tiny_model(load_tokenizer(out), "micro", 64, seed=42))
    assert start.shape == _weights(behavior).shape
    assert not torch.allclose(_weights(behavior), start) and not torch.allclose(_weights(q_model), start)
    assert not torch.equal(_weights(q_model), _weights(behavior))


def test_callbacks_reach_the_trainer_of_the_algorithm(tmp_path):
    """`train(callbacks=...)`: hooks see the model being trained (Q-SFT: the Q-model, not the behavior SFT)."""
    from transformers import TrainerCallback

    from qsft.training.run import train

    class Seen(TrainerCallback):
        def __init__(self):
            self.steps, self.models = [], set()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.steps.append(state.global_step)
            self.models.add(id(model))

    overrides = {"model_preset": "micro", "history_turns": 1, "max_length": 32, "report_to": "none",
                 "per_device_train_batch_size": 8, "max_steps": 3, "save_strategy": "no", "disable_tqdm": True,
                 "use_cpu": True}
    seen = Seen()
    out = train("qsft", random_episodes(20), "tiny", tmp_path / "q",
                {**overrides, "behavior_max_steps": 2, "reward_transform": "success", "gamma": 0.9}, callbacks=[seen])
    assert seen.steps == [1, 2, 3] and len(seen.models) == 1  # three Q-SFT steps; the 2 behavior steps unseen
    assert (out / "behavior").is_dir()


def test_a_cotrained_behavior_is_the_bc_model_trained_alone(tmp_path):
    """`--behavior cotrain` adds the SFT loss of a second model to the Q-SFT step: on the same batches, with the
    same optimizer settings and no gradient clipping, the behavior model must end exactly where `--algo bc`
    ends (a reference run). Catches gradients that outlive their step (the Trainer zeroes the Q-model's only)."""
    from qsft.training.run import train

    episodes = random_episodes(30)
    common = {"model_preset": "micro", "history_turns": 1, "max_length": 32, "report_to": "none",
              "per_device_train_batch_size": 8, "max_steps": 12, "save_strategy": "no", "disable_tqdm": True,
              "use_cpu": True, "learning_rate": 3e-3, "lr_scheduler_type": "linear", "max_grad_norm": 0.0}
    train("bc", episodes, "tiny", tmp_path / "bc", common)
    train("qsft", episodes, "tiny", tmp_path / "co", {**common, "behavior": "cotrain", "reward_transform": "success",
                                                        "gamma": 0.9, "behavior_cache": False})
    reference, cotrained = _weights(load_model(tmp_path / "bc")), _weights(load_model(tmp_path / "co" / "behavior"))
    start = _weights(build_tiny_model(load_tokenizer(tmp_path / "bc"), "micro", 64, seed=42))
    assert not torch.allclose(reference, start)
    torch.testing.assert_close(cotrained, reference, atol=1e-5, rtol=1e-4)


def test_pessimistic_start_fits_every_supported_ratio_to_its_value_then_hands_it_to_the_target(tmp_path):
    """`q_start_value`: for the first q_start_steps the support label is pi_beta * value on every supported token,
    so Q_hat = p / pi_beta falls from the ratio-1 start (q_init behavior) to the value; at the last start step
    the target network becomes a copy of the Q-model (the bootstrap then starts from below)."""
    from transformers import TrainerCallback

    from qsft.training.run import train

    class TargetAtStep(TrainerCallback):
        def __init__(self):
            self.gap = None

        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 20:  # step 20's on_step_end (the hard copy) has run
                import sys

                from qsft.training.qsft_trainer import QSFTTrainer

                frame = sys._getframe()  # callbacks are not handed the trainer: find it on the call stack
                while not isinstance(frame.f_locals.get("self"), QSFTTrainer):
                    frame = frame.f_back
                target = _weights(frame.f_locals["self"].target_model)
                self.gap = float((target - _weights(model)).abs().max())

    episodes = random_episodes(30)
    common = {"model_preset": "micro", "history_turns": 1, "max_length": 32, "report_to": "none",
              "per_device_train_batch_size": 16, "save_strategy": "no", "disable_tqdm": True, "use_cpu": True,
              "learning_rate": 1e-2, "lr_scheduler_type": "constant"}
    train("bc", episodes, "tiny", tmp_path / "bc", {**common, "max_steps": 20})
    probe = TargetAtStep()
    train("qsft", episodes, "tiny", tmp_path / "q", {
        **common, "max_steps": 21, "behavior": str(tmp_path / "bc"), "q_init": "behavior", "tau": 0.01,
        "loss_variant": "support", "q_start_value": 0.2, "q_start_steps": 20, "support_threshold": 0.01,
        "reward_transform": "success", "gamma": 0.9, "behavior_cache": False}, callbacks=[probe])
    assert probe.gap == 0.0  # hard copy (a Polyak target at tau 0.01 would lag by far more)
    q_model, behavior, tokenizer = load_model(tmp_path / "q"), load_model(tmp_path / "bc"), load_tokenizer(tmp_path / "q")
    ratios = []
    for ep in episodes[:10]:
        ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer.encode(ep.turns[0].text, add_special_tokens=False)]])
        with torch.no_grad():
            p, b = (torch.softmax(m(ids).logits[0, -1], -1) for m in (q_model, behavior))
        inside = b > 0.05
        ratios.append(float((p[inside] / b[inside]).mean()))
    assert abs(sum(ratios) / len(ratios) - 0.2) < 0.1, ratios
