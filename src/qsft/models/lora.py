"""LoRA sharing: the Q-model, behavior model and target network as three adapters on ONE frozen base.

Q-SFT needs three copies of the LM (DESIGN §1.2). With `--lora true` they are three LoRA adapters
of one `peft.PeftModel`: "behavior" (trained first by SFT, then frozen), "q_model" (the only one
with gradients while Q-SFT trains) and "target" (moved toward "q_model" by Polyak/hard copies,
parameter by parameter). Memory is one base model plus three small adapters.

A forward pass through another adapter goes through `adapter_forward`, which switches peft's
active adapter without changing which parameters are trainable, and runs in eval mode (no
dropout), like the frozen full-size behavior/target models of a non-LoRA run.

peft is optional (the `dev` extra installs it): it is imported only when LoRA is used.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from qsft.errors import ConfigError, ModelLoadError

Q_ADAPTER, BEHAVIOR_ADAPTER, TARGET_ADAPTER = "q_model", "behavior", "target"
ADAPTER_WEIGHTS, ADAPTER_CONFIG = "adapter_model.safetensors", "adapter_config.json"


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("--lora needs the peft package: pip install peft (or install qsft with the dev extra)") from None
    return peft


def is_lora_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "base_model")


def wrap_with_behavior_adapter(base, r: int, alpha: float, dropout: float, target_modules: list[str] | str):
    """`base` frozen inside a PeftModel whose only adapter, "behavior", is fresh (LoRA B = 0: equals the base)."""
    peft = _peft()
    from transformers.pytorch_utils import Conv1D

    # GPT-2's projections are Conv1D layers that store weights transposed (peft's fan_in_fan_out)
    transposed = any(isinstance(module, Conv1D) for module in base.modules())
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                             fan_in_fan_out=transposed, task_type="CAUSAL_LM", bias="none")
    try:
        return peft.get_peft_model(base, config, adapter_name=BEHAVIOR_ADAPTER)
    except ValueError as err:  # e.g. target modules that this architecture does not have
        raise ConfigError(f"cannot add LoRA adapters to this model: {err}") from None


def add_q_and_target_adapters(model, q_from_behavior: bool) -> None:
    """Add "q_model" (a copy of "behavior", or fresh = the base model) and "target" (a copy of "q_model")."""
    config = copy.deepcopy(model.peft_config[BEHAVIOR_ADAPTER])
    for name in (Q_ADAPTER, TARGET_ADAPTER):
        if name not in model.peft_config:
            model.add_adapter(name, copy.deepcopy(config))
    if q_from_behavior:
        copy_adapter(model, BEHAVIOR_ADAPTER, Q_ADAPTER)
    copy_adapter(model, Q_ADAPTER, TARGET_ADAPTER)
    model.set_adapter(Q_ADAPTER)  # also makes "q_model" the only adapter with requires_grad


def adapter_parameters(model, name: str) -> dict[str, torch.nn.Parameter]:
    """The parameters of adapter `name`, keyed by module path + layer name (identical across adapters).

    Found through the tuner layers' `adapter_layer_names`, not by parsing parameter names, so a
    module that happens to share the adapter's name cannot be mistaken for it.
    """
    params: dict[str, torch.nn.Parameter] = {}
    for module_name, module in model.named_modules():
        for layer_name in getattr(module, "adapter_layer_names", ()):
            container = getattr(module, layer_name, None)
            if container is None or name not in container:
                continue
            entry = container[name]
            named = entry.named_parameters() if isinstance(entry, torch.nn.Module) else [("", entry)]
            for param_name, param in named:
                params[".".join(p for p in (module_name, layer_name, param_name) if p)] = param
    if not params:
        raise ConfigError(f"the model has no LoRA adapter named {name!r}")
    return params


def adapter_pairs(model, target: str, source: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Matching parameter lists of two adapters (for Polyak / hard updates)."""
    dst, src = adapter_parameters(model, target), adapter_parameters(model, source)
    return [dst[k] for k in dst], [src[k] for k in dst]


@torch.no_grad()
def copy_adapter(model, source: str, target: str) -> None:
    for dst, src in zip(*adapter_pairs(model, target, source), strict=True):
        dst.copy_(src)


@contextmanager
def adapter_forward(model, name: str) -> Iterator[None]:
    """Run forward passes through adapter `name`: eval mode, trainable flags and active adapter restored after.

    peft's `set_adapter` also makes the chosen adapter trainable; `inference_mode=True` avoids
    that, and the flags of the other adapters are put back afterwards so the optimizer keeps
    seeing exactly the Q adapter.
    """
    active, was_training = model.active_adapter, model.training
    trainable = [n for n in model.peft_config if any(p.requires_grad for p in adapter_parameters(model, n).values())]
    model.set_adapter(name, inference_mode=True)
    model.eval()
    try:
        yield
    finally:
        model.set_adapter(active, inference_mode=True)
        if trainable:
            model.set_requires_grad(trainable, True)
        model.train(was_training)


class AdapterView:
    """A callable that runs the shared PeftModel through one adapter: stands in for a separate model."""

    def __init__(self, model, adapter: str) -> None:
        self.model, self.adapter = model, adapter

    def __call__(self, *args, **kwargs):
        with adapter_forward(self.model, self.adapter):
            return self.model(*args, **kwargs)

    def parameters(self) -> Iterator[torch.nn.Parameter]:
        return iter(adapter_parameters(self.model, self.adapter).values())


def save_adapter(model, name: str, folder: str | Path) -> None:
    """Adapter `name` in peft's own layout (adapter_config.json + adapter_model.safetensors), loadable alone."""
    peft = _peft()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = peft.get_peft_model_state_dict(model, adapter_name=name)
    tmp = folder / f".{ADAPTER_WEIGHTS}.tmp"
    save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, folder / ADAPTER_WEIGHTS)
    config = copy.deepcopy(model.peft_config[name])
    config.inference_mode = True
    config.save_pretrained(str(folder))


def load_behavior_adapter(base, folder: str | Path):
    """`base` frozen inside a PeftModel whose "behavior" adapter is read from `folder` (and stays frozen)."""
    peft = _peft()
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file():
        raise ModelLoadError(f"{folder} is not a LoRA adapter ({ADAPTER_CONFIG} is missing); with lora, --behavior "
                             "must be the behavior/ folder of a LoRA run on the same base")
    try:
        return peft.PeftModel.from_pretrained(base, str(folder), adapter_name=BEHAVIOR_ADAPTER, is_trainable=False)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ModelLoadError(f"could not load the LoRA adapter in {folder} onto this base: {err}") from None


def load_adapter_into(model, name: str, folder: str | Path) -> None:
    """Load a folder written by `save_adapter` into the existing adapter `name` of `model`."""
    peft = _peft()
    folder = Path(folder)
    if not (folder / ADAPTER_WEIGHTS).is_file():
        raise ModelLoadError(f"{folder} holds no LoRA adapter ({ADAPTER_WEIGHTS} is missing)")
    state = load_file(str(folder / ADAPTER_WEIGHTS), device=str(next(model.parameters()).device))
    result = peft.set_peft_model_state_dict(model, state, adapter_name=name)
    missing = [k for k in result.missing_keys if f".{name}" in k]
    if result.unexpected_keys or missing:
        raise ModelLoadError(f"{folder}: adapter weights do not fit this base model "
                             f"({len(missing)} missing, {len(result.unexpected_keys)} unexpected tensors)")


def merged_model(base, adapter_dir: str | Path):
    """`base` with the adapter in `adapter_dir` merged into its weights: a plain HF model for decoding."""
    peft = _peft()
    try:
        model = peft.PeftModel.from_pretrained(base, str(adapter_dir))
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"could not load the LoRA adapter in {adapter_dir}: {err}") from None
    return model.merge_and_unload()
