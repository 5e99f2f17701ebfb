"""LoRA Q-SFT: three adapters on one frozen base train correctly, resume exactly, save loadable runs,
and cost about one base model of memory instead of three."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2Config, GPT2LMHeadModel

from qsft.data.tiny_tokenizer import build_tiny_tokenizer
from qsft.models.loading import build_tiny_model, ensure_dummy_token
from qsft.models.lora import (
    BEHAVIOR_ADAPTER,
    Q_ADAPTER,
    TARGET_ADAPTER,
    adapter_parameters,
    add_q_and_target_adapters,
    wrap_with_behavior_adapter,
)
from qsft.models.run_models import load_run_models
from qsft.training import QSFTConfig, QSFTTrainer
from qsft.training.data import qsft_dataset
from qsft.training.run import RunInfo, train
from tests.oracle_chain import random_episodes

pytest.importorskip("peft")

RUN = {"lora": True, "lora_r": 4, "lora_target_modules": "c_attn,c_proj", "max_steps": 4, "behavior_max_steps": 3,
       "per_device_train_batch_size": 8, "save_steps": 2, "learning_rate": 1e-2, "tau": 0.5, "report_to": "none",
       "use_cpu": True, "model_preset": "micro", "max_length": 32, "history_turns": 1, "reward_transform": "success",
       "gamma": 0.9, "disable_tqdm": True, "logging_steps": 1, "seed": 0}


@pytest.fixture(scope="module")
def episodes():
    return random_episodes(12, seed=0)


def _config(tmp_path, **overrides) -> QSFTConfig:
    fields = {k: v for k, v in RUN.items() if k not in ("behavior_max_steps", "model_preset")}
    fields.update(save_strategy="no", loss_variant="dummy", **overrides)
    return QSFTConfig(output_dir=str(tmp_path / "out"), **fields)


def _lora_setup(base, trained_behavior: bool = True):
    model = wrap_with_behavior_adapter(base, r=4, alpha=8, dropout=0.0, target_modules=["c_attn", "c_proj"])
    if trained_behavior:  # stands in for the SFT phase: a behavior adapter that differs from the base
        with torch.no_grad():
            for param in adapter_parameters(model, BEHAVIOR_ADAPTER).values():
                param.normal_(0, 0.05)
    add_q_and_target_adapters(model, q_from_behavior=True)
    return model


def _names(model, adapter: str) -> set[str]:
    ids = {id(p) for p in adapter_parameters(model, adapter).values()}
    return {name for name, p in model.named_parameters() if id(p) in ids}


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_q_phase_trains_only_the_q_adapter_and_polyak_moves_the_target(tmp_path, episodes):
    tokenizer = build_tiny_tokenizer([t.text for ep in episodes for t in ep.turns])
    base = build_tiny_model(tokenizer, "micro", 64, seed=0)
    dummy = ensure_dummy_token(tokenizer, base, "[DUMMY]")
    model = _lora_setup(base)
    before = _snapshot(model)
    config = _config(tmp_path)
    dataset, _ = qsft_dataset(episodes, tokenizer, config, dummy)
    trainer = QSFTTrainer(model, None, config, dataset, tokenizer, dummy_token_id=dummy)
    trainer.train()

    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == RUN["max_steps"] and all(math.isfinite(x) for x in losses)
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in adapter_parameters(model, Q_ADAPTER).values()}

    after = _snapshot(model)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == _names(model, Q_ADAPTER) | _names(model, TARGET_ADAPTER)  # base, behavior untouched
    q_now, target_now = adapter_parameters(model, Q_ADAPTER), adapter_parameters(model, TARGET_ADAPTER)
    assert any(not torch.equal(q_now[k], target_now[k]) for k in q_now)  # target lags behind (Polyak)


def _unique_bytes(*modules) -> int:
    storages = {}
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(storages.values())


def _module(view_or_model):
    return getattr(view_or_model, "model", view_or_model)  # LoRA views run the shared PeftModel


def test_lora_costs_about_one_base_model_where_full_costs_three(tmp_path, episodes):
    tokenizer = build_tiny_tokenizer([t.text for ep in episodes for t in ep.turns])
    config_kwargs = dict(vocab_size=len(tokenizer), n_positions=64, n_embd=256, n_layer=2, n_head=4,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    dummy = ensure_dummy_token(tokenizer, None, "[DUMMY]")
    config_kwargs["vocab_size"] = len(tokenizer)
    one_base = _unique_bytes(GPT2LMHeadModel(GPT2Config(**config_kwargs)))
    config = _config(tmp_path)
    dataset, _ = qsft_dataset(episodes, tokenizer, config, dummy)

    def total(trainer) -> int:
        return _unique_bytes(*(_module(m) for m in (trainer.model, trainer.behavior_model, trainer.target_model)))

    full = QSFTTrainer(GPT2LMHeadModel(GPT2Config(**config_kwargs)), GPT2LMHeadModel(GPT2Config(**config_kwargs)),
                       config, dataset, tokenizer, dummy_token_id=dummy)
    lora = QSFTTrainer(_lora_setup(GPT2LMHeadModel(GPT2Config(**config_kwargs))), None, config, dataset, tokenizer,
                       dummy_token_id=dummy)
    assert total(full) >= 2.9 * one_base
    assert total(lora) < 1.3 * one_base
    trainable = sum(p.numel() * p.element_size() for p in lora.model.parameters() if p.requires_grad)
    assert trainable < 0.1 * one_base  # optimizer state follows the Q adapter only


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, episodes):
    root = tmp_path_factory.mktemp("lora")
    out = train("qsft", episodes, "tiny", root / "run", RUN)
    return root, out


def test_lora_run_saves_adapters_on_a_saved_base_and_loads_back(lora_run):
    _, out = lora_run
    info = RunInfo.load(out)
    assert info.lora and info.base_model == "base" and info.behavior_model == "behavior"
    for folder in (out, out / "behavior"):
        assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    assert (out / "behavior" / "qsft.json").is_file() and (out / "base" / "model.safetensors").is_file()

    from peft import PeftModel

    from qsft.models.loading import load_model

    q_model, behavior = load_run_models(out)
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        unmerged = PeftModel.from_pretrained(load_model(out / "base"), str(out)).eval()
        base_logits = load_model(out / "base")(input_ids=ids).logits
        q_logits, behavior_logits = q_model(input_ids=ids).logits, behavior(input_ids=ids).logits
        assert torch.allclose(q_logits, unmerged(input_ids=ids).logits, atol=1e-5)
        # plain load_model on the adapter folders (what decoding does) rebuilds the same models
        assert torch.allclose(load_model(out)(input_ids=ids).logits, q_logits, atol=1e-6)
        assert torch.allclose(load_model(out / "behavior")(input_ids=ids).logits, behavior_logits, atol=1e-6)
    # both adapters trained: neither model is the base, and they differ from each other
    assert not torch.allclose(q_logits, base_logits, atol=1e-4)
    assert not torch.allclose(behavior_logits, base_logits, atol=1e-4)
    assert not torch.allclose(q_logits, behavior_logits, atol=1e-4)


def test_lora_run_resumes_exactly_from_a_checkpoint(lora_run, episodes):
    root, out = lora_run
    # what a run killed right after checkpoint-2 leaves on disk: base, finished behavior, checkpoint-2
    killed = root / "killed"
    for part in ("base", "behavior", "checkpoint-2"):
        shutil.copytree(out / part, killed / part)
    train("qsft", episodes, "tiny", killed, dict(RUN, resume_from_checkpoint="auto"))
    resumed, uninterrupted = (load_file(str(d / "adapter_model.safetensors")) for d in (killed, out))
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        assert torch.allclose(resumed[name], uninterrupted[name], atol=1e-6), name
    target = "checkpoint-4/target/adapter_model.safetensors"
    resumed_target, target_uninterrupted = load_file(str(killed / target)), load_file(str(out / target))
    for name in resumed_target:
        assert torch.allclose(resumed_target[name], target_uninterrupted[name], atol=1e-6), name
