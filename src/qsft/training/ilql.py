"""ILQL baseline (Snell et al. 2022): config, LM + Q/V heads model, trainer, policy loading.

Same data pipeline as Q-SFT (reward transform into [0, 1], token MDP, collator) and the same
trainer base; the math is `qsft.algorithms.ilql`. The heads are linear on the LM's last hidden
states and share its trunk (all four losses train it, as in trlx). Decoding uses the *target*
Q heads, as trlx does: they are the smoothed estimate the V head was regressed towards.

Run directory: the base LM via `save_pretrained` (loads as a plain HF model = the BC-trained
behavior head) plus `ilql_heads.safetensors` (q1, q2, v and the target q1, q2; beta in the
metadata). Checkpoints have the same layout, so the target heads travel with every checkpoint.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import TrainerCallback
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.trainer import TRAINING_ARGS_NAME

from qsft.algorithms.ilql import decoding_logits, ilql_loss, mc_loss, mc_returns
from qsft.data.collate import TokenMDPDataset
from qsft.data.episode import Episode
from qsft.data.rewards import RewardReport, apply_reward_transform, returns_to_go
from qsft.data.tokenize import tokenize_episodes
from qsft.errors import ConfigError, ModelLoadError
from qsft.models.loading import load_model
from qsft.models.target import polyak_update
from qsft.training.base import OfflineRLTrainer
from qsft.training.config import BootstrappedConfig
from qsft.training.data import qsft_dataset, resolve_reply_tokens, token_mdp_config

HEADS_FILE = "ilql_heads.safetensors"


@dataclass
class HeadsConfig(BootstrappedConfig):
    """Fields of the methods with ILQL's Q/V heads (ILQL, MC): loss weights and the decoding beta."""

    cql_weight: float = field(default=0.1, metadata={"help": "Weight of the CQL term (logsumexp Q - Q(a))."})
    bc_weight: float = field(default=1.0, metadata={
        "help": "Weight of the LM head's cross-entropy (trlx awac_scale)."})
    beta: float = field(default=1.0, metadata={
        "help": "Decoding: logits = log pi_beta + beta * (Q - V); 0 is BC. Stored with the heads."})
    behavior: str | None = field(default=None, metadata={
        "help": "pi_beta at decoding: empty = the run's own LM head (trained by bc_weight on the shared trunk, "
                "as trlx); 'model' = the --model dir itself, frozen (a `qsft pretrain` base already predicts the "
                "logged actions; LMRL-Gym's ILQL also decodes with a separate BC model), or a model dir. "
                "Pair it with bc_weight 0 so the trunk serves the values alone."})

    def __post_init__(self) -> None:
        if self.cql_weight < 0 or self.bc_weight < 0:
            raise ConfigError(f"cql_weight and bc_weight must be >= 0, got {self.cql_weight}, {self.bc_weight}")
        if self.beta < 0:
            raise ConfigError(f"beta must be >= 0, got {self.beta}")
        super().__post_init__()


@dataclass
class ILQLConfig(HeadsConfig):
    """ILQL (Snell et al. 2022) with trlx's defaults; rewards transformed into [0, 1] like Q-SFT's."""

    tau_expectile: float = field(default=0.7, metadata={
        "help": "Expectile of the V regression: 0.5 = mean of Q under the data, -> 1 = max."})

    def __post_init__(self) -> None:
        if not 0 < self.tau_expectile < 1:
            raise ConfigError(f"tau_expectile must be in (0, 1), got {self.tau_expectile}")
        super().__post_init__()


@dataclass
class MCConfig(HeadsConfig):
    """MC returns (LMRL-Gym's "MC"): ILQL's heads regressed on each token's discounted Monte-Carlo return.

    Every logged episode counts as ended: its observed (transformed) return is its return, so
    `episode_return` pays truncated episodes their partial return here (there is nothing to bootstrap).
    """


class QHeads(nn.Module):
    """Two Q heads over the vocabulary (double Q: the min of two estimates curbs overestimation)."""

    def __init__(self, hidden_size: int, vocab_size: int) -> None:
        super().__init__()
        self.q1 = nn.Linear(hidden_size, vocab_size)
        self.q2 = nn.Linear(hidden_size, vocab_size)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # [B, T, H] -> 2 x [B, T, V]
        return self.q1(hidden), self.q2(hidden)


@dataclass
class ILQLOutputWithPast(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus the heads (set only with `return_heads=True`)."""

    q1: torch.Tensor | None = None  # [B, T, V]
    q2: torch.Tensor | None = None  # [B, T, V]
    target_q1: torch.Tensor | None = None  # [B, T, V] no grad
    target_q2: torch.Tensor | None = None  # [B, T, V] no grad
    values: torch.Tensor | None = None  # [B, T]


class ILQLModel(nn.Module):
    """A Hugging Face causal LM with ILQL's Q1/Q2 (+ targets) and V heads.

    Steps exactly like a causal LM (`past_key_values`/`cache`, `position_ids`, `use_cache`);
    `.logits` are the ILQL policy's when `decode` is True, the LM head's otherwise.
    """

    main_input_name = "input_ids"

    def __init__(self, base: nn.Module, beta: float = 1.0) -> None:
        super().__init__()
        self.base = base
        vocab_size, hidden_size = base.get_output_embeddings().weight.shape  # the width the LM's logits have
        self.q = QHeads(hidden_size, vocab_size)
        self.target_q = copy.deepcopy(self.q).requires_grad_(False)
        self.v = nn.Linear(hidden_size, 1)
        self.beta = beta
        self.decode = False
        # decode mode: logits are beta * (Q - V) alone, to be added to a separate behavior model's log pi_beta
        self.advantage_only = False

    @property
    def config(self):
        return self.base.config

    @property
    def device(self) -> torch.device:
        return self.v.weight.device

    def gradient_checkpointing_enable(self, **kwargs) -> None:  # what Trainer calls with --gradient_checkpointing
        self.base.gradient_checkpointing_enable(**kwargs)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, past_key_values=None, use_cache: bool | None = None,
                return_heads: bool = False, **kwargs) -> ILQLOutputWithPast:
        kwargs.pop("output_hidden_states", None)
        kwargs.pop("return_dict", None)
        cache = kwargs.pop("cache", None) if past_key_values is None else past_key_values
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                        use_cache=use_cache, output_hidden_states=True, return_dict=True, **kwargs)
        if not (self.decode or return_heads):
            return ILQLOutputWithPast(logits=out.logits, cache=out.cache)
        hidden = out.hidden_states[-1].to(self.v.weight.dtype)  # [B, T, H] after the final norm
        values = self.v(hidden).squeeze(-1)  # [B, T]
        with torch.no_grad():
            target_q1, target_q2 = self.target_q(hidden.detach())
        if self.decode:
            lm_logits = torch.zeros_like(out.logits) if self.advantage_only else out.logits
            return ILQLOutputWithPast(logits=decoding_logits(lm_logits, target_q1, target_q2, values, self.beta),
                                      cache=out.cache)
        q1, q2 = self.q(hidden)
        return ILQLOutputWithPast(logits=out.logits, cache=out.cache, q1=q1, q2=q2,
                                  target_q1=target_q1, target_q2=target_q2, values=values)

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """target_q <- (1 - tau) target_q + tau q (Polyak, once per optimizer step)."""
        polyak_update(self.target_q, self.q, tau)

    def heads_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("base.")}

    def save_pretrained(self, save_directory: str | Path) -> None:
        """The LM by its own `save_pretrained` (from_pretrained-loadable), the heads beside it, atomically."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.base.save_pretrained(str(folder))
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.heads_state_dict().items()}
        tmp = folder / f".{HEADS_FILE}.tmp"
        save_file(tensors, str(tmp), metadata={"format": "pt", "beta": repr(float(self.beta))})
        os.replace(tmp, folder / HEADS_FILE)

    def load_heads(self, folder: str | Path) -> float:
        """Load q, target_q and v from `folder`; returns the beta stored with them."""
        path = Path(folder) / HEADS_FILE
        if not path.is_file():
            raise ModelLoadError(f"{folder} has no {HEADS_FILE}: not an ILQL run or checkpoint "
                                 "(train one with --algo ilql)")
        with safe_open(str(path), framework="pt", device=str(self.device)) as handle:
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
            beta = float(handle.metadata().get("beta", 1.0))
        expected = self.heads_state_dict()
        if set(tensors) != set(expected) or any(tensors[k].shape != expected[k].shape for k in expected):
            raise ModelLoadError(f"{path} does not fit this model (heads for another LM or vocabulary size?)")
        self.load_state_dict(tensors, strict=False)
        return beta

    def load_pretrained_weights(self, folder: str | Path) -> None:
        """Restore the LM and the heads in place (resume: the optimizer keeps pointing at these parameters)."""
        self.base.load_state_dict(load_model(folder).state_dict())  # from_pretrained handles shards and ties
        self.load_heads(folder)


class TargetHeadsUpdateCallback(TrainerCallback):
    """Moves the target Q heads after every optimizer step."""

    def __init__(self, trainer: ILQLTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer.accelerator.unwrap_model(self.trainer.model).update_target(args.tau)


class ILQLTrainer(OfflineRLTrainer):
    """Trains an `ILQLModel` with `qsft.algorithms.ilql.ilql_loss` (single device or DDP)."""

    def __init__(self, model: ILQLModel, args: ILQLConfig, train_dataset, processing_class, **kwargs) -> None:
        super().__init__(model, args, train_dataset, processing_class, **kwargs)
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            raise ConfigError("ILQL trains on one device or with DDP; FSDP / DeepSpeed are not supported for it")
        self.add_callback(TargetHeadsUpdateCallback(self))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids = inputs["input_ids"]
        out = model(input_ids=ids, attention_mask=inputs["attention_mask"], use_cache=False, return_heads=True)
        external = None
        if "next_input_ids" in inputs:  # window mode: V of the separate next-state sequence (detached anyway)
            nxt, nxt_mask = inputs["next_input_ids"], inputs["next_attention_mask"]
            with torch.no_grad():
                nxt_values = self.accelerator.unwrap_model(model)(
                    input_ids=nxt, attention_mask=nxt_mask, use_cache=False, return_heads=True).values
            external = nxt_values[torch.arange(nxt.shape[0], device=nxt.device), nxt_mask.sum(1) - 1]
        result = ilql_loss(out.logits, out.q1, out.q2, out.target_q1, out.target_q2, out.values, ids,
                           inputs["action_mask"], inputs["reward"], inputs["discount"], inputs["next_state_index"],
                           external, tau=self.args.tau_expectile, cql_weight=self.args.cql_weight,
                           bc_weight=self.args.bc_weight)
        self.record("loss/q", result.loss_q)
        self.record("loss/v", result.loss_v)
        self.record("loss/cql", result.loss_cql)
        self.record("loss/bc", result.loss_bc)
        self.record("q/mean", result.mean_q)
        self.record("v/mean", result.mean_v)
        return (result.loss, out) if return_outputs else result.loss

    # --- the whole ILQLModel (LM + heads + target heads) is what a checkpoint holds ---
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if not self.args.should_save:
            return
        output_dir = output_dir or self.args.output_dir
        self.accelerator.unwrap_model(self.model).save_pretrained(output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        ilql_model = self.accelerator.unwrap_model(self.model if model is None else model)
        ilql_model.load_pretrained_weights(resume_from_checkpoint)


class MCTrainer(ILQLTrainer):
    """Trains an `ILQLModel`'s heads on Monte-Carlo returns (`qsft.algorithms.ilql.mc_loss`)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids = inputs["input_ids"]
        out = model(input_ids=ids, attention_mask=inputs["attention_mask"], use_cache=False, return_heads=True)
        returns = mc_returns(inputs["reward"], inputs["next_state_index"], inputs["action_mask"])
        result = mc_loss(out.logits, out.q1, out.q2, out.values, ids, inputs["action_mask"], returns,
                         cql_weight=self.args.cql_weight, bc_weight=self.args.bc_weight)
        for name in ("loss_q", "loss_v", "loss_cql", "loss_bc"):
            self.record(name.replace("_", "/"), getattr(result, name))
        self.record("q/mean", result.mean_q)
        self.record("v/mean", result.mean_v)
        return (result.loss, out) if return_outputs else result.loss


def mc_dataset(episodes: list[Episode], tokenizer, config: MCConfig) -> tuple[TokenMDPDataset, RewardReport]:
    """Token-MDP samples whose agent turns carry their discounted return-to-go (every episode ended)."""
    ended = [replace(ep, done=True) for ep in episodes]
    transformed, report = apply_reward_transform(ended, config.reward_transform, config.gamma)
    resolve_reply_tokens(episodes, tokenizer, config)
    samples = tokenize_episodes(returns_to_go(transformed, config.gamma), tokenizer,
                                token_mdp_config(tokenizer, config, config.gamma))
    return TokenMDPDataset(samples), report


def train_ilql(base_model: nn.Module, tokenizer, episodes: list[Episode], config: ILQLConfig | MCConfig,
               resume_from_checkpoint: str | None = None, callbacks: list | None = None) -> RewardReport:
    """Train the LM and its heads (ILQL, or MC returns for an `MCConfig`) into `config.output_dir`;
    returns the reward report."""
    if isinstance(config, MCConfig):
        (dataset, report), trainer_class = mc_dataset(episodes, tokenizer, config), MCTrainer
    else:
        (dataset, report), trainer_class = qsft_dataset(episodes, tokenizer, config, dummy_token_id=None), ILQLTrainer
    trainer = trainer_class(ILQLModel(base_model, beta=config.beta), config, dataset, tokenizer, callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.save_model(config.output_dir)
    return report


def load_ilql_policy(run_dir: str | Path, beta: float | None = None, device: str | torch.device = "cpu",
                     advantage_only: bool = False) -> ILQLModel:
    """The trained ILQL policy in decode mode (`beta` overrides the one stored with the heads).

    `advantage_only`: its logits are beta * (min(Q1, Q2) - V) without the LM head's log pi_beta, for runs
    decoded with a separate behavior model (`--behavior`; `qsft.decoding` adds that model's log pi_beta)."""
    model = ILQLModel(load_model(run_dir))
    stored_beta = model.load_heads(run_dir)
    model.beta = stored_beta if beta is None else beta
    model.decode = True
    model.advantage_only = advantage_only
    return model.to(device).eval()
