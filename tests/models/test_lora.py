"""LoRA adapter plumbing: three adapters on one base, forward passes through any of them, copies."""

import pytest
import torch

from qsft.data.tiny_tokenizer import build_tiny_tokenizer
from qsft.models.loading import build_tiny_model
from qsft.models.lora import (
    BEHAVIOR_ADAPTER,
    Q_ADAPTER,
    TARGET_ADAPTER,
    AdapterView,
    adapter_forward,
    adapter_pairs,
    adapter_parameters,
    add_q_and_target_adapters,
    copy_adapter,
    wrap_with_behavior_adapter,
)
from qsft.models.target import polyak_update

pytest.importorskip("peft")


@pytest.fixture
def model():
    tokenizer = build_tiny_tokenizer(["go left", "go right", "stop"])
    base = build_tiny_model(tokenizer, "micro", 32, seed=0)
    peft_model = wrap_with_behavior_adapter(base, r=4, alpha=8, dropout=0.0, target_modules=["c_attn", "c_proj"])
    with torch.no_grad():  # a trained-looking behavior adapter (fresh LoRA B is zero: adapter = base)
        for param in adapter_parameters(peft_model, BEHAVIOR_ADAPTER).values():
            param.normal_(0, 0.5)
    add_q_and_target_adapters(peft_model, q_from_behavior=False)
    return peft_model


def _logits(model, adapter=None):
    ids = torch.tensor([[1, 5, 6, 7]])
    if adapter is None:
        return model(input_ids=ids).logits
    with adapter_forward(model, adapter):
        return model(input_ids=ids).logits


def test_only_the_q_adapter_is_trainable(model):
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, p in model.named_parameters()
                         if any(p is q for q in adapter_parameters(model, Q_ADAPTER).values())}
    assert model.active_adapter == Q_ADAPTER


def test_adapter_forward_switches_adapter_and_restores_state(model):
    model.train()
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    q_logits, behavior_logits = _logits(model, Q_ADAPTER), _logits(model, BEHAVIOR_ADAPTER)
    assert not torch.allclose(q_logits, behavior_logits)  # fresh Q adapter = base; behavior is not
    with model.disable_adapter():
        assert torch.allclose(model(input_ids=torch.tensor([[1, 5, 6, 7]])).logits, q_logits)
    # afterwards: same active adapter, same trainable set, back in training mode
    assert model.active_adapter == Q_ADAPTER and model.training
    assert flags == {name: p.requires_grad for name, p in model.named_parameters()}
    assert torch.equal(_logits(model), q_logits)


def test_gradients_reach_only_the_q_adapter_after_other_adapter_passes(model):
    with torch.no_grad():
        AdapterView(model, BEHAVIOR_ADAPTER)(input_ids=torch.tensor([[1, 5, 6]]))
        AdapterView(model, TARGET_ADAPTER)(input_ids=torch.tensor([[1, 5, 6]]))
    _logits(model).sum().backward()
    q_params = {id(p) for p in adapter_parameters(model, Q_ADAPTER).values()}
    with_grad = {id(p) for p in model.parameters() if p.grad is not None}
    assert with_grad and with_grad <= q_params


def test_copies_and_polyak_work_adapter_to_adapter(model):
    copy_adapter(model, BEHAVIOR_ADAPTER, Q_ADAPTER)
    assert torch.allclose(_logits(model, Q_ADAPTER), _logits(model, BEHAVIOR_ADAPTER))
    before = {k: p.detach().clone() for k, p in adapter_parameters(model, TARGET_ADAPTER).items()}
    polyak_update(*adapter_pairs(model, TARGET_ADAPTER, Q_ADAPTER), tau=0.25)
    q = adapter_parameters(model, Q_ADAPTER)
    for key, param in adapter_parameters(model, TARGET_ADAPTER).items():
        assert torch.allclose(param, 0.75 * before[key] + 0.25 * q[key])


def test_missing_adapter_is_a_clear_error(model):
    from qsft.errors import ConfigError

    with pytest.raises(ConfigError, match="no LoRA adapter named 'nope'"):
        adapter_parameters(model, "nope")
