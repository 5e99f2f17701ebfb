"""Model and tokenizer loading: any local Hugging Face causal LM directory, or a tiny GPT-2 preset.

No hub downloads: every path is local (`local_files_only=True`), so a typo fails fast with a
clear message instead of a network timeout.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from qsft.errors import ConfigError, ModelLoadError
from qsft.models.vlm import is_vlm_dir, load_vlm

TINY_PRESETS: dict[str, dict[str, int]] = {
    # ~1.3M parameters in the transformer blocks: trains on a laptop CPU in minutes.
    "tiny": {"n_layer": 4, "n_embd": 160, "n_head": 4},
    # for unit tests: ~0.1M
    "micro": {"n_layer": 2, "n_embd": 64, "n_head": 2},
    # ~3.2M: the largest shape the tests and demo are allowed (DESIGN §3a)
    "small": {"n_layer": 4, "n_embd": 256, "n_head": 4},
}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                "pytorch_model.bin.index.json", "adapter_model.safetensors")


def build_tiny_model(tokenizer, preset: str = "tiny", n_positions: int = 512, seed: int | None = None):
    """A randomly initialised GPT-2 sized by `preset`, with the tokenizer's vocabulary and special ids."""
    if preset not in TINY_PRESETS:
        raise ConfigError(f"unknown tiny model preset {preset!r}; choose from {sorted(TINY_PRESETS)}")
    if seed is not None:
        torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **TINY_PRESETS[preset])
    return GPT2LMHeadModel(config)


def freshly_initialised(model, seed: int):
    """A model of the same architecture and vocabulary as `model`, with new random weights."""
    torch.manual_seed(seed)
    return type(model)(model.config)


def check_model_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"model directory not found: {path}")
    if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
        raise ModelLoadError(f"{path} has no config.json: not a saved Hugging Face model (save_pretrained)")
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ModelLoadError(f"{path} has a config but no weights ({', '.join(WEIGHT_FILES[:2])})")
    return path


def load_model(path: str | Path, dtype: torch.dtype | None = None):
    """`AutoModelForCausalLM.from_pretrained` on a local directory, with errors that say what is wrong."""
    path = check_model_dir(path)
    if not (path / "config.json").is_file():  # a LoRA adapter folder (check_model_dir allows no other)
        return _merged_adapter_model(path, dtype)
    if is_vlm_dir(path):  # LLaVA-style image-text-to-text models are not AutoModelForCausalLM classes
        return load_vlm(path, dtype)
    try:
        return AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"could not load a causal LM from {path}: {err}") from None


def _merged_adapter_model(path: Path, dtype: torch.dtype | None):
    """The base model named in the adapter's config with the adapter merged in (a `--lora` run's model).

    transformers' own adapter loading needs a newer peft than the one pinned here; this needs none
    of it and gives a plain causal LM.
    """
    from qsft.models.lora import ADAPTER_CONFIG, merged_model

    base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise ModelLoadError(f"{path} is a LoRA adapter whose base model {base!r} is not a local directory "
                             "(moved run? load it with qsft.models.run_models.load_run_models)")
    return merged_model(load_model(base, dtype), path)


def load_tokenizer(path: str | Path):
    """The tokenizer saved beside a model; a pad token is set to EOS when the tokenizer has none."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(Path(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"no tokenizer in {path}: {err}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ModelLoadError(f"tokenizer in {path} has no EOS token, needed as the end-of-turn token")
    return tokenizer


def bos_token_id(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def ensure_dummy_token(tokenizer, model, dummy_token: str) -> int:
    """Id of the reserved dummy token (DESIGN §1.4), added as a special token if the tokenizer lacks it.

    A dummy string that is an ordinary (non-special) token of the vocabulary would collide with
    real actions, so it is rejected.
    """
    vocab = tokenizer.get_vocab()
    if dummy_token in vocab:
        if dummy_token not in tokenizer.all_special_tokens:
            raise ConfigError(f"dummy token {dummy_token!r} is an ordinary token of this tokenizer and could "
                              "be a real action; pick a string the tokenizer does not know, e.g. '<|qsft_dummy|>'")
        return vocab[dummy_token]
    tokenizer.add_special_tokens({"additional_special_tokens": [dummy_token]})
    if model is not None:
        resize_embeddings(model, len(tokenizer))
    return tokenizer.convert_tokens_to_ids(dummy_token)


@torch.no_grad()
def resize_embeddings(model, vocab_size: int) -> None:
    """Grow the (input and output) embeddings to `vocab_size` rows, new rows = the mean of the old rows.

    Deterministic on purpose: `resize_token_embeddings` draws the new rows at random (the mean
    plus noise) from the global RNG, so the frozen behavior model of a resumed run or of another
    DDP rank would get a slightly different dummy row than the uninterrupted run, and later random
    draws would shift. Here the rows are exact and the global RNG is left untouched.
    """
    old = model.get_input_embeddings().weight.shape[0]
    if old >= vocab_size:
        return
    with torch.random.fork_rng(devices=[]):
        model.resize_token_embeddings(vocab_size, mean_resizing=False)
    matrices = [model.get_input_embeddings().weight]
    output = model.get_output_embeddings()
    if output is not None and output.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(output.weight)
    for weight in matrices:
        weight[old:] = weight[:old].mean(dim=0)
    if output is not None and getattr(output, "bias", None) is not None:
        output.bias[old:] = output.bias[:old].mean()
