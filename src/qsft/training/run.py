"""`train()`: the one call behind `qsft train`, `qsft bench` and `qsft demo`.

Output directory layout (everything `qsft eval` needs):
    OUT/model.safetensors, config.json, tokenizer files   the trained model (from_pretrained)
    OUT/qsft.json                                         decoding-time facts (see RunInfo)
    OUT/behavior/                                         behavior model trained in-run (Q-SFT)
    OUT/checkpoint-N/                                     Trainer checkpoints (+ target/)
    OUT/runs/                                             TensorBoard logs

With `lora` the models are adapters (`qsft.models.lora`): OUT/adapter_model.safetensors +
adapter_config.json is the Q adapter, OUT/behavior/ the behavior adapter, and the frozen base
is OUT/base/ (a tiny or token-resized base) or the `--model` directory (`RunInfo.base_model`).
`qsft.models.run_models.load_run_models(OUT)` rebuilds the Q-model and behavior model of any run.

Vision-language models (docs/vlm.md): episodes with images and `--model tiny` build a tiny LLaVA; a
`--model` directory with a `processor_config.json` is loaded as a VLM. Its processor is saved in OUT
(and OUT/behavior) beside the tokenizer, which is how `qsft eval` knows to feed it images.

Only the main process writes OUT files (`should_save`); the others wait where they must read them.
"""

from __future__ import annotations

import copy
import os
import shutil
import warnings
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Any

from accelerate import PartialState
from transformers import TrainerCallback, set_seed

from qsft.algorithms.qsft import DUMMY_VARIANTS
from qsft.data.collate import TokenMDPCollator
from qsft.data.episode import Episode
from qsft.data.images import VisionInputs, has_images, load_image
from qsft.data.io import data_sidecar
from qsft.data.support import DataSupport
from qsft.data.tiny_tokenizer import build_tiny_tokenizer
from qsft.errors import ConfigError
from qsft.model_card import write_model_card
from qsft.models.behavior_cache import (
    CACHE_FILE,
    BehaviorCachedDataset,
    behavior_cache_for,
    load_behavior_cache,
)
from qsft.models.loading import (
    bos_token_id,
    build_tiny_model,
    check_model_dir,
    ensure_dummy_token,
    freshly_initialised,
    load_model,
    load_tokenizer,
    resize_embeddings,
)
from qsft.models.lora import (
    BEHAVIOR_ADAPTER,
    Q_ADAPTER,
    add_q_and_target_adapters,
    is_lora_model,
    load_adapter_into,
    load_behavior_adapter,
    save_adapter,
    wrap_with_behavior_adapter,
)
from qsft.models.vlm import build_tiny_vlm, load_vision
from qsft.run_info import RUN_FILE, RunInfo
from qsft.training.bc import BCTrainer
from qsft.training.checkpoints import latest_complete_checkpoint
from qsft.training.config import BCConfig, FilteredBCConfig, PretrainConfig, QSFTConfig
from qsft.training.data import (
    Episodes,
    check_rewards,
    data_support,
    load_training_episodes,
    qsft_dataset,
    select_top_episodes,
    sft_dataset,
    tiny_tokenizer_texts,
)
from qsft.training.ilql import ILQLConfig, MCConfig, train_ilql
from qsft.training.pretrain import PretrainTrainer, transition_windows
from qsft.training.qsft_trainer import QSFTTrainer

ALGORITHMS = ("bc", "filtered_bc", "qsft", "ilql", "mc")  # the methods `qsft bench` compares
PRETRAIN = "pretrain"  # not a policy: a base model for the methods (`qsft pretrain`)
CONFIG_CLASSES = {"bc": BCConfig, "filtered_bc": FilteredBCConfig, "qsft": QSFTConfig, "ilql": ILQLConfig,
                  "mc": MCConfig, PRETRAIN: PretrainConfig}
HEAD_ALGOS = ("ilql", "mc")  # an LM with ILQL's Q/V heads
BEHAVIOR_IS_MODEL = "model"  # --behavior model: the starting model (a pretrained base) is pi_beta


def make_config(algo: str, out: str | Path, overrides: dict[str, Any] | None = None):
    """The method's config with `overrides` (YAML/flags) applied; unknown keys are one clear error."""
    if algo not in CONFIG_CLASSES:
        raise ConfigError(f"unknown algorithm {algo!r}; choose from {', '.join(ALGORITHMS)} (or {PRETRAIN})")
    cls = CONFIG_CLASSES[algo]
    overrides = dict(overrides or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s) for --algo {algo}: {', '.join(unknown)}")
    overrides["output_dir"] = str(out)
    return cls(**overrides)


def _base_model_and_tokenizer(model: str, episodes: Episodes, config):
    """(model, tokenizer, vision): `vision` is the `VisionInputs` of a VLM, None for a text LM."""
    if model == "tiny":
        texts, actions = tiny_tokenizer_texts(episodes, config.action_tokens)
        tokenizer = build_tiny_tokenizer(texts, config.tokenizer_level, action_texts=actions)
        n_positions = max(64, config.max_length)
        if _has_images(episodes):  # a tiny LLaVA sized to the data's frames
            first = next(t.image for ep in episodes for t in ep.turns if t.image is not None)
            base, vision = build_tiny_vlm(tokenizer, min(load_image(first).size), preset=config.model_preset,
                                          n_positions=n_positions, seed=config.seed)
            return base, tokenizer, vision
        return build_tiny_model(tokenizer, config.model_preset, n_positions, seed=config.seed), tokenizer, None
    tokenizer = load_tokenizer(model)
    return load_model(model), tokenizer, load_vision(model, tokenizer)


def _has_images(episodes: Episodes) -> bool:
    return isinstance(episodes, list) and has_images(episodes)  # the arrow backend reads text data only


def _collator(tokenizer, vision: VisionInputs | None):
    """None (the trainers' text default) unless the model takes images."""
    return None if vision is None else TokenMDPCollator(tokenizer.pad_token_id, bos_token_id(tokenizer), vision)


def _wait_for_everyone() -> None:
    """Barrier across DDP processes (a no-op in a single process)."""
    PartialState().wait_for_everyone()


def _save_tokenizer(tokenizer, config, folder: Path, vision: VisionInputs | None = None) -> None:
    if config.should_save:
        tokenizer.save_pretrained(str(folder))
        if vision is not None:
            vision.save(folder)


def _train_sft(model, tokenizer, episodes: Episodes, config, out: Path,
               vision: VisionInputs | None = None, callbacks: list | None = None, trainer_class=BCTrainer) -> None:
    trainer = trainer_class(model, config, sft_dataset(episodes, tokenizer, config, vision), tokenizer,
                        data_collator=_collator(tokenizer, vision), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=_resume_arg(config, out))
    if is_lora_model(model):
        if config.should_save:
            save_adapter(model, model.active_adapter, out)
    else:
        trainer.save_model(str(out))  # main process only
    _save_tokenizer(tokenizer, config, out, vision)


def _resume_arg(config, out: Path):
    """`resume_from_checkpoint`: a path, True/'auto' (newest complete checkpoint, if any) or None."""
    resume = config.resume_from_checkpoint
    if resume in (True, "true", "True", "auto"):
        return latest_complete_checkpoint(out)
    return resume or None


def train(algo: str, data: str | Path | list[Episode], model: str = "tiny", out: str | Path = "qsft-run",
          overrides: dict[str, Any] | None = None, env: str | None = None,
          callbacks: list[TrainerCallback] | None = None) -> Path:
    """Train `algo` on episodes from `data`, starting from `model` ('tiny' or a local HF dir); returns OUT.

    `callbacks` (transformers `TrainerCallback`s) go to the trainer of `algo` itself: for Q-SFT the
    Q-model's trainer, not the behavior model's SFT; their hooks receive the training `model`.
    """
    out = Path(out)
    config = make_config(algo, out, overrides)
    if model != "tiny":
        check_model_dir(model)  # fail before any data is read or anything is written
    set_seed(config.seed)
    episodes, backend = load_training_episodes(data, algo, config)
    sidecar = data_sidecar(data) if not isinstance(data, list) else None
    info = RunInfo(algo=algo, history_turns=config.history_turns, max_length=config.max_length,
                   data=None if isinstance(data, list) else str(Path(data).resolve()),
                   env=env or (sidecar or {}).get("env"), data_stats=sidecar)
    info.extra["data_backend"] = backend
    if backend == "arrow":
        info.extra["data_cache_dir"] = str(episodes.cache_dir)
    if _has_images(episodes) and (algo in HEAD_ALGOS or getattr(config, "lora", False)):
        raise ConfigError(f"episodes with images (vision-language models) work with bc, filtered_bc and qsft "
                          f"without lora; not with {algo if algo in HEAD_ALGOS else 'lora'}")
    if algo == "qsft" and config.behavior == BEHAVIOR_IS_MODEL:
        _behavior_dir(config, model)  # its errors come before anything is written
    if algo in HEAD_ALGOS and config.behavior:
        check_model_dir(_behavior_dir(config, model))
    out.mkdir(parents=True, exist_ok=True)

    if algo == PRETRAIN:  # every token of the transcripts; OUT is an ordinary HF model dir for --model
        if config.history_turns is not None:
            episodes, config.history_turns = transition_windows(episodes, config.history_turns), None
        base, tokenizer, vision = _base_model_and_tokenizer(model, episodes, config)
        _train_sft(base, tokenizer, episodes, config, out, vision, callbacks, trainer_class=PretrainTrainer)
    elif algo in ("bc", "filtered_bc"):
        if algo == "filtered_bc":
            episodes = select_top_episodes(episodes, config.top)
            info.extra["episodes_kept"] = len(episodes)
        base, tokenizer, vision = _base_model_and_tokenizer(model, episodes, config)
        _train_sft(base, tokenizer, episodes, config, out, vision, callbacks)
    elif algo in HEAD_ALGOS:  # LM + Q/V heads trained together from the base model (Snell et al. 2022)
        base, tokenizer, _ = _base_model_and_tokenizer(model, episodes, config)
        report = train_ilql(base, tokenizer, episodes, config, _resume_arg(config, out), callbacks)
        info.gamma, info.reward = config.gamma, report.to_dict()
        info.extra.update(beta=config.beta, cql_weight=config.cql_weight, bc_weight=config.bc_weight)
        if config.behavior:  # a frozen pi_beta for decoding (`--behavior`), not the run's own LM head
            behavior_dir = Path(_behavior_dir(config, model))
            info.behavior_model = str(behavior_dir.resolve())
        if algo == "ilql":
            info.extra.update(tau_expectile=config.tau_expectile)
    else:
        check_rewards(episodes, config)  # bad rewards are reported before the behavior model spends minutes training
        if config.lora:
            _train_qsft_lora(model, episodes, config, overrides, out, info, callbacks)
        else:
            _train_qsft(model, episodes, config, overrides, out, info, callbacks)
    info.reply_tokens = config.reply_tokens
    info.settings = changed_settings(overrides)
    if config.should_save:
        info.save(out)
        write_model_card(out)
    return out


# TrainingArguments fields that describe the machine or the log, not the training
_NOT_SETTINGS = {"output_dir", "logging_dir", "disable_tqdm", "report_to", "dataloader_num_workers",
                 "use_cpu", "local_rank", "save_strategy", "save_steps", "logging_steps", "data_backend",
                 "data_num_proc", "data_cache_dir"}


def changed_settings(overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The config fields this run set (YAML, flags, API overrides), JSON-ready, without the machine's and the
    log's. (Not a comparison with a fresh default config: building a second TrainingArguments in a
    distributed run resets the process state that `should_save` reads.)"""
    out = {}
    for name, value in sorted((overrides or {}).items()):
        if name in _NOT_SETTINGS:
            continue
        value = value.value if isinstance(value, Enum) else value
        out[name] = value if isinstance(value, (bool, int, float, str, type(None))) else str(value)
    return out


UNIFORM_BIAS_WARNING = 0.01  # warn when the uniform variant's bootstrap inflation can exceed this


def _loss_variant(config, vocab_size: int) -> str:
    """The configured variant (default 'dummy', unbiased at every vocabulary size; docs/algorithm.md §4).

    The uniform variant (paper Eq. 3) spreads (1 - y) over all V - 1 other tokens, so a support token
    with pi_beta near the threshold reads p/pi_beta inflated by up to (1 - E[Q]) / ((V - 1) threshold):
    0.20 at V = 50,257 and threshold 1e-4, compounding token by token inside an utterance.
    """
    if config.loss_variant == "uniform" and config.support_threshold > 0:
        bound = 1.0 / ((vocab_size - 1) * config.support_threshold)
        if bound > UNIFORM_BIAS_WARNING:
            warnings.warn(f"loss_variant 'uniform' with a {vocab_size}-token vocabulary and support_threshold "
                          f"{config.support_threshold:g}: a support token near the threshold reads Q inflated by up "
                          f"to {bound:.2f} (more over a multi-token utterance); the default 'dummy' variant has no "
                          "such bias (docs/algorithm.md)", stacklevel=3)
    return config.loss_variant


def _behavior_first(base, tokenizer, episodes: Episodes, config, overrides, out: Path, info: RunInfo,
                    vision: VisionInputs | None = None) -> Path:
    """Paper Algorithm 1, step 1: SFT the behavior model into OUT/behavior (skipped when a finished one is there).

    OUT/behavior/qsft.json is written last, so its presence marks a finished behavior model
    that a resumed run reuses; an unfinished one resumes from OUT/behavior/checkpoint-N.
    """
    behavior_dir = out / "behavior"
    if not (behavior_dir / RUN_FILE).is_file():
        bc_fields = {f.name for f in fields(BCConfig)}
        bc_overrides = {k: v for k, v in (overrides or {}).items() if k in bc_fields}
        bc_overrides["max_steps"] = config.behavior_max_steps or config.max_steps
        bc_config = make_config("bc", behavior_dir, bc_overrides)
        _train_sft(base, tokenizer, episodes, bc_config, behavior_dir, vision)
        if config.should_save:
            RunInfo(algo="bc", history_turns=config.history_turns, max_length=config.max_length,
                    reply_tokens=bc_config.reply_tokens, data=info.data, env=info.env,
                    data_stats=info.data_stats).save(behavior_dir)
    _wait_for_everyone()  # the other processes read what the main process just wrote
    info.behavior_model = "behavior"
    return behavior_dir


def _train_qsft(model: str, episodes: Episodes, config, overrides, out: Path, info: RunInfo,
                callbacks: list | None = None) -> None:
    """Q-SFT with three full models: behavior first, then Q-model + target from the same weights."""
    if config.behavior not in (None, "", "cotrain"):
        behavior_dir = Path(_behavior_dir(config, model))
        behavior, tokenizer = load_model(behavior_dir), load_tokenizer(behavior_dir)
        vision = load_vision(behavior_dir, tokenizer)
        base = None
        if config.q_init == "model":  # the base weights: `--model`, or a tiny model initialised afresh
            base = load_model(model) if model != "tiny" else freshly_initialised(behavior, config.seed)
        info.behavior_model = str(behavior_dir.resolve())
    else:
        base, tokenizer, vision = _base_model_and_tokenizer(model, episodes, config)
        if config.behavior == "cotrain":
            behavior = copy.deepcopy(base)
            info.behavior_model = "behavior"
        else:
            behavior = load_model(_behavior_first(copy.deepcopy(base), tokenizer, episodes, config, overrides,
                                                  out, info, vision))
    q_model = copy.deepcopy(behavior) if config.q_init == "behavior" else base

    variant = _loss_variant(config, len(tokenizer))
    dummy_id = None
    if variant in DUMMY_VARIANTS:
        dummy_id = ensure_dummy_token(tokenizer, q_model, config.dummy_token)
        resize_embeddings(behavior, len(tokenizer))
    dataset, report = qsft_dataset(episodes, tokenizer, config, dummy_id, vision=vision,
                                   best_returns=config.mc_lower_bound == "best")
    support = data_support(dataset, config) if config.support == "data" else None
    if _use_behavior_cache(config, len(dataset), vision is not None):
        dataset = _with_behavior_cache(dataset, behavior, tokenizer, config, dummy_id, out, info, support)
    trainer = QSFTTrainer(q_model, behavior, config, dataset, tokenizer, dummy_token_id=dummy_id,
                          data_support=support, data_collator=_collator(tokenizer, vision), callbacks=callbacks)
    del behavior  # the trainer holds it, unless the behavior cache made it unnecessary: then it is freed
    trainer.train(resume_from_checkpoint=_resume_arg(config, out))
    trainer.save_model(str(out))  # main process only, tokenizer included
    if vision is not None and config.should_save:
        vision.save(out)
    if config.behavior == "cotrain" and config.should_save:
        trainer.behavior_model.save_pretrained(str(out / "behavior"))
        _save_tokenizer(tokenizer, config, out / "behavior", vision)
    _record_qsft(info, config, variant, dummy_id, report)


def _behavior_dir(config, model: str) -> str:
    """The frozen behavior model's folder: `--behavior DIR`, or `--model` itself for `--behavior model` (a base
    pretrained on the same transcripts, `qsft pretrain`, already predicts the logged actions: no BC phase)."""
    if config.behavior != BEHAVIOR_IS_MODEL:
        return config.behavior
    if getattr(config, "lora", False):
        raise ConfigError("--behavior model with lora: the base itself is the behavior then; leave --behavior "
                          "empty to train a behavior adapter, or give one")
    if model == "tiny":
        raise ConfigError("--behavior model uses --model as the behavior policy: give a pretrained model dir "
                          "(e.g. from `qsft pretrain`), not 'tiny'")
    return model


def _use_behavior_cache(config, samples: int, vision: bool) -> bool:
    """`--behavior_cache` if given; by default on for a frozen text behavior model when the run reads every
    sample at least once (the cache computes pi_beta at every next state of the data up front: a run that
    sees a third of an epoch would spend more on the cache than on the behavior passes it saves)."""
    if config.behavior_cache is not None:
        return config.behavior_cache
    if config.behavior == "cotrain" or vision or config.loss_variant == "support":
        return False
    if config.max_steps is None or config.max_steps <= 0:  # epoch-based: every sample is read
        return True
    read = config.max_steps * config.per_device_train_batch_size * config.gradient_accumulation_steps
    return read * max(1, config.world_size) >= samples


def _with_behavior_cache(dataset, behavior, tokenizer, config, dummy_id: int | None, out: Path, info: RunInfo,
                         support: DataSupport | None = None):
    """The dataset with pi_beta precomputed at its next states (OUT/behavior_cache.safetensors; docs/performance.md).

    Built once by the main process and reused while the behavior model, data and threshold are
    unchanged (a resumed run skips it); the other processes wait and read the same file.
    """
    path = out / CACHE_FILE
    behavior.to(config.device)
    if config.should_save:
        cache, _ = behavior_cache_for(path, behavior, dataset.samples, config.support_threshold, dummy_id,
                                      pad_token_id=tokenizer.pad_token_id, data_support=support)
    _wait_for_everyone()
    if not config.should_save:
        cache = load_behavior_cache(path)
    info.extra["behavior_cache"] = cache.stats()
    return BehaviorCachedDataset(dataset.samples, cache)


def _record_qsft(info: RunInfo, config, variant: str, dummy_id: int | None, report) -> None:
    info.loss_variant, info.dummy_token, info.dummy_token_id = variant, config.dummy_token, dummy_id
    info.gamma, info.support_threshold, info.reward = config.gamma, config.support_threshold, report.to_dict()
    info.extra.update(support=config.support, bootstrap=config.bootstrap)


def _lora_base(model: str, episodes: Episodes, config, out: Path, variant: str):
    """The frozen base every adapter shares, with the dummy token in its vocabulary, and where it lives.

    A tiny base is random and a resized one differs from `--model`, so both are kept in OUT/base
    (written whole, then renamed into place); a resumed run reloads it, since adapters only mean
    something on the exact base they were trained on.
    """
    base_dir = out / "base"
    if base_dir.is_dir():
        return load_model(base_dir), load_tokenizer(base_dir), "base"
    base, tokenizer, _ = _base_model_and_tokenizer(model, episodes, config)
    vocab = base.get_input_embeddings().weight.shape[0]
    if variant in DUMMY_VARIANTS:
        ensure_dummy_token(tokenizer, base, config.dummy_token)
    if model != "tiny" and base.get_input_embeddings().weight.shape[0] == vocab:
        return base, tokenizer, str(Path(model).resolve())
    if config.should_save:
        partial = out / ".base.partial"
        shutil.rmtree(partial, ignore_errors=True)
        base.save_pretrained(str(partial))
        tokenizer.save_pretrained(str(partial))
        os.replace(partial, base_dir)
    return base, tokenizer, "base"


def _train_qsft_lora(model: str, episodes: Episodes, config, overrides, out: Path, info: RunInfo,
                     callbacks: list | None = None) -> None:
    """Q-SFT with one frozen base and three LoRA adapters: behavior (SFT first), q_model, target."""
    variant = config.loss_variant
    if config.behavior and model == "tiny":
        raise ConfigError("with lora and --behavior ADAPTER_DIR, --model must be the base the adapter was "
                          "trained on (a LoRA run's OUT/base), not 'tiny'")
    base, tokenizer, info.base_model = _lora_base(model, episodes, config, out, variant)
    _loss_variant(config, len(tokenizer))  # warns about the uniform variant's bias at this vocabulary size
    if config.behavior:  # a behavior adapter trained before on this base
        peft_model = load_behavior_adapter(base, config.behavior)
        info.behavior_model = str(Path(config.behavior).resolve())
    else:
        peft_model = wrap_with_behavior_adapter(base, config.lora_r, config.lora_alpha, config.lora_dropout,
                                                config.lora_modules())
        # saved adapter configs name their base, so peft/transformers can also rebuild them alone
        peft_model.peft_config[BEHAVIOR_ADAPTER].base_model_name_or_path = str(info.base_path(out).resolve())
        behavior_dir = _behavior_first(peft_model, tokenizer, episodes, config, overrides, out, info)
        load_adapter_into(peft_model, BEHAVIOR_ADAPTER, behavior_dir)  # all processes use the saved weights
    dummy_id = tokenizer.convert_tokens_to_ids(config.dummy_token) if variant in DUMMY_VARIANTS else None
    add_q_and_target_adapters(peft_model, q_from_behavior=config.q_init == "behavior")
    info.lora = True

    dataset, report = qsft_dataset(episodes, tokenizer, config, dummy_id, best_returns=config.mc_lower_bound == "best")
    support = data_support(dataset, config) if config.support == "data" else None
    trainer = QSFTTrainer(peft_model, None, config, dataset, tokenizer, dummy_token_id=dummy_id, data_support=support,
                          callbacks=callbacks)
    trainer.train(resume_from_checkpoint=_resume_arg(config, out))
    if config.should_save:
        save_adapter(peft_model, Q_ADAPTER, out)
    _save_tokenizer(tokenizer, config, out)
    _record_qsft(info, config, variant, dummy_id, report)
