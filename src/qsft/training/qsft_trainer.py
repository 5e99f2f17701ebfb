"""QSFTTrainer: p_theta trained by the weighted cross-entropy against a Polyak/hard target network.

The Q-model is `self.model` (what the Trainer optimises and saves); the behavior model is frozen
(or co-trained with its SFT loss added); the target network lives beside them and is saved
inside every checkpoint so a resumed run continues exactly.

With LoRA (`behavior_model=None`, `model` a PeftModel from `qsft.models.lora`) the three are
adapters of one frozen base: `self.behavior_model` / `self.target_model` are views that run the
shared model through the "behavior" / "target" adapter, and only the "q_model" adapter trains.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from transformers import TrainerCallback

from qsft.algorithms.qsft import (
    DUMMY_VARIANTS,
    behavior_cloning_loss,
    max_ratio_dense,
    max_ratio_sparse,
    qsft_loss_from_values,
    soft_label_cross_entropy,
    start_labels,
)
from qsft.data.support import DataSupport
from qsft.errors import ConfigError
from qsft.models.behavior_cache import BehaviorCachedDataset, BehaviorCacheError, logits_at
from qsft.models.lora import (
    BEHAVIOR_ADAPTER,
    Q_ADAPTER,
    TARGET_ADAPTER,
    AdapterView,
    adapter_pairs,
    is_lora_model,
)
from qsft.models.target import TARGET_DTYPES, hard_update, make_target, polyak_update
from qsft.training.base import OfflineRLTrainer

TARGET_DIR, BEHAVIOR_DIR, WEIGHTS = "target", "behavior", "model.safetensors"
ROW_CHUNK = 256  # state rows per max-ratio chunk: bounds its [rows, V] temporaries (~50 MB at V = 50257)


class TargetUpdateCallback(TrainerCallback):
    """Moves the target network after every optimizer step."""

    def __init__(self, trainer: QSFTTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer.cotrain:  # the Trainer zeroes the Q-model's gradients only: without this the
            # co-trained behavior model's would add up over every step (and its SFT diverge)
            self.trainer.behavior_model.zero_grad(set_to_none=True)
        target, source = self.trainer.target_and_q_parameters()
        if args.target_update == "polyak":
            polyak_update(target, source, args.tau, generator=self.trainer.rounding)
        elif state.global_step % args.target_update_steps == 0:
            hard_update(target, source)
        if args.q_start_value is not None and state.global_step == args.q_start_steps:
            hard_update(target, source)  # the pessimistic start is over: bootstrap from it

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        # DDP averages the Q-model's gradients; a co-trained behavior model is outside the DDP
        # wrapper, so average its gradients by hand to keep the ranks identical.
        if self.trainer.cotrain and torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            for p in self.trainer.behavior_model.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= world


class QSFTTrainer(OfflineRLTrainer):
    def __init__(self, model, behavior_model, args, train_dataset, processing_class,
                 dummy_token_id: int | None = None, data_support: DataSupport | None = None, **kwargs) -> None:
        self.cotrain = args.behavior == "cotrain"
        self.lora = behavior_model is None
        if self.lora and not is_lora_model(model):
            raise ConfigError("QSFTTrainer needs a behavior model, or a LoRA model with a 'behavior' adapter")
        if self.lora and self.cotrain:
            raise ConfigError("behavior 'cotrain' is not available with --lora: train the behavior adapter first")
        super().__init__(model, args, train_dataset, processing_class, **kwargs)
        self.loss_variant = args.loss_variant
        if self.loss_variant in DUMMY_VARIANTS and dummy_token_id is None:
            raise ConfigError(f"loss_variant {self.loss_variant!r} needs the reserved token's id: add it with "
                              "qsft.models.loading.ensure_dummy_token and pass dummy_token_id (or choose 'uniform')")
        self.dummy_token_id = dummy_token_id
        self.data_support = data_support  # `--support data`: the agent tokens the data shows after each token
        if self.lora:
            self.behavior_model = AdapterView(model, BEHAVIOR_ADAPTER)
            self.target_model = AdapterView(model, TARGET_ADAPTER)
        else:
            if isinstance(train_dataset, BehaviorCachedDataset):  # every batch carries pi_beta: no behavior weights
                self.behavior_model = None
            else:
                self.behavior_model = behavior_model.to(self.args.device)
                if not self.cotrain:
                    self.behavior_model.requires_grad_(False).eval()
            dtype = TARGET_DTYPES[args.target_dtype]
            self.target_model = make_target(self.accelerator.unwrap_model(self.model), dtype).to(self.args.device)
        # stochastic rounding of a bfloat16 target's Polyak updates: its own stream, so that the
        # dtype choice leaves the training randomness (data order, dropout) unchanged
        self.rounding = torch.Generator(device=self.args.device).manual_seed(args.seed)
        self.add_callback(TargetUpdateCallback(self))

    def target_dtype(self) -> torch.dtype:
        return next(self.target_model.parameters()).dtype

    def target_and_q_parameters(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Matching parameter lists of the target network and the Q-model (what Polyak/hard updates move)."""
        q_model = self.accelerator.unwrap_model(self.model)
        if self.lora:
            return adapter_pairs(q_model, TARGET_ADAPTER, Q_ADAPTER)
        return list(self.target_model.parameters()), list(q_model.parameters())

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.cotrain and not any(
                p is q for g in optimizer.param_groups for p in g["params"] for q in self.behavior_model.parameters()):
            optimizer.add_param_group({"params": [p for p in self.behavior_model.parameters() if p.requires_grad],
                                       "weight_decay": self.args.weight_decay})
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        pixels = inputs.get("pixel_values")  # vision-language models only
        loss_behavior = behavior_live = None
        if self.cotrain:
            behavior_live = self.logits(self.behavior_model, ids, attention, pixels)
            loss_behavior = behavior_cloning_loss(behavior_live, ids, inputs["action_mask"])
        # no-grad passes first: with LoRA they switch the shared model's adapter, and the Q-model's
        # graph is then built last, with nothing changed underneath it before backward
        with torch.no_grad():
            state_values, external, behavior_logprobs, decision_rows = self.bootstrap_values(inputs, behavior_live)
        q_logits = self.logits(model, ids, attention, pixels)  # [B, T, V]
        if self.args.q_start_value is not None and self.state.global_step < self.args.q_start_steps:
            loss = self._start_loss(q_logits, ids, inputs["action_mask"], decision_rows)
            loss = loss if loss_behavior is None else loss + loss_behavior
            return (loss, q_logits) if return_outputs else loss
        out = qsft_loss_from_values(q_logits, state_values, behavior_logprobs, ids, inputs["action_mask"],
                                    inputs["reward"], inputs["discount"], inputs["next_state_index"], external,
                                    variant=self.loss_variant, dummy_token_id=self.dummy_token_id,
                                    support_threshold=self.args.support_threshold,
                                    support_reweight_cap=self.args.support_reweight_cap,
                                    lower_bound=inputs["return_to_go"] if self.args.mc_lower_bound != "none" else None,
                                    **decision_rows)
        loss = out.loss
        self.record("loss/q", out.loss.item())
        if loss_behavior is not None:
            self.record("loss/behavior", loss_behavior.item())
            loss = loss + loss_behavior
        stats = out.target_stats
        self.record("target/mean", stats.mean)
        self.record("target/min", stats.min)
        self.record("target/max", stats.max)
        self.record("target/clipped_fraction", stats.clipped_fraction)
        if self.args.mc_lower_bound != "none":
            self.record("target/floored_fraction", stats.floored_fraction)
        self.record("q_hat/mean", out.mean_q_hat)
        return (loss, q_logits) if return_outputs else loss

    def _start_loss(self, q_logits, ids, action_mask, decision_rows) -> torch.Tensor:
        """The pessimistic start (`q_start_value`): the support label with every supported Q set to the value."""
        decisions = action_mask[:, 1:].bool()
        labels = start_labels(decision_rows["decision_behavior_logits"], self.args.q_start_value,
                              self.dummy_token_id, self.args.support_threshold, decision_rows.get("decision_allowed"))
        per_token = soft_label_cross_entropy(q_logits[:, :-1][decisions], labels)
        loss = per_token.mean() if per_token.numel() else q_logits.sum() * 0.0
        self.record("loss/q_start", loss.item())
        return loss

    def bootstrap_values(self, inputs, behavior_live: torch.Tensor | None = None):
        """V(s') where the targets read it: ([B, T] at in-sequence states, [B] or None at `next_input_ids`,
        [B, T] log pi_beta of each token for the q_hat diagnostic, and for the `support` variant the
        target and behavior logits at the decisions as keyword arguments of `qsft_loss_from_values`).

        Only the state (and decision) rows go through the LM heads (`logits_to_keep`), so no [B, T, V]
        target or behavior tensor exists; with the behavior cache in the batch there is no behavior pass.
        """
        ids, attention = inputs["input_ids"], inputs["attention_mask"]
        pixels, next_pixels = inputs.get("pixel_values"), inputs.get("next_pixel_values")
        target_pixels, target_next_pixels = (x if x is None or self.lora else x.to(self.target_dtype())
                                             for x in (pixels, next_pixels))
        operator = {"operator": self.args.bootstrap, "expectile": self.args.expectile}
        threshold = self.args.support_threshold
        exclude = self.dummy_token_id if self.loss_variant in DUMMY_VARIANTS else None
        nsi = inputs["next_state_index"]
        states = torch.zeros_like(nsi, dtype=torch.bool).scatter_(1, nsi.clamp(min=0), nsi >= 0)  # [B, T]
        values = torch.zeros(ids.shape, dtype=torch.float32, device=ids.device)
        decision_rows: dict[str, torch.Tensor] = {}
        cached = "behavior_support_ids" in inputs
        if cached:
            index = inputs["behavior_state_index"]  # [B, S] sorted positions, -1 padding
            keep = torch.zeros_like(states).scatter_(1, index.clamp(min=0), index >= 0)
            if (states & ~keep).any():
                raise BehaviorCacheError("a next state of this batch is missing from the behavior cache")
            target = logits_at(self.target_model, ids, attention, keep, target_pixels)  # [N, V], N = states
            valid = index >= 0
            support_ids = inputs["behavior_support_ids"][valid]  # [N, W] whole supports, row-major as keep
            support_logprobs = inputs["behavior_support_logprobs"][valid]
            rows_b, rows_p = keep.nonzero(as_tuple=True)
            for c in range(0, target.shape[0], ROW_CHUNK):  # chunks bound the [rows, V] log-softmax
                values[rows_b[c:c + ROW_CHUNK], rows_p[c:c + ROW_CHUNK]] = max_ratio_sparse(
                    target[c:c + ROW_CHUNK], support_ids[c:c + ROW_CHUNK], support_logprobs[c:c + ROW_CHUNK],
                    **operator)
            behavior_logprobs = inputs["behavior_action_logprobs"]
        else:
            decisions = torch.zeros_like(states)
            decisions[:, :-1] = inputs["action_mask"][:, 1:].bool()  # token t is decided at position t - 1
            keep = states | decisions  # the behavior also at decisions (q_hat); the target at states only
            support_label = self.loss_variant == "support"  # ... or at decisions too, for the soft labels
            target = logits_at(self.target_model, ids, attention, keep if support_label else states, target_pixels)
            if behavior_live is not None:
                behavior = behavior_live.detach()[keep]
            else:
                behavior = logits_at(self.behavior_model, ids, attention, keep, pixels)
            if support_label:
                at_decisions = decisions[keep]
                decision_rows = {"decision_target_logits": target[at_decisions],
                                 "decision_behavior_logits": behavior[at_decisions]}
                if self.data_support is not None:
                    decision_rows["decision_allowed"] = self.data_support.allowed(ids[decisions], target.shape[-1])
                target = target[states[keep]]
            allowed = None if self.data_support is None else self.data_support.allowed(ids[states], target.shape[-1])
            values[states] = max_ratio_dense(target, behavior[states[keep]], threshold, exclude,
                                             chunk_size=ROW_CHUNK, allowed=allowed, **operator)
            rows_b, rows_p = keep.nonzero(as_tuple=True)
            taken = rows_p + 1 < ids.shape[1]  # the log-prob of the token each row predicts
            next_token = ids[rows_b[taken], rows_p[taken] + 1]
            lse = torch.cat([torch.logsumexp(behavior[c:c + ROW_CHUNK].float(), -1)
                             for c in range(0, behavior.shape[0], ROW_CHUNK)])[taken]
            behavior_logprobs = torch.zeros_like(values)
            behavior_logprobs[rows_b[taken], rows_p[taken] + 1] = (
                behavior[taken].gather(1, next_token[:, None])[:, 0].float() - lse)
        external = None
        if "next_input_ids" in inputs:
            nxt, nxt_mask = inputs["next_input_ids"], inputs["next_attention_mask"]
            last = torch.zeros_like(nxt_mask, dtype=torch.bool)
            last[torch.arange(nxt.shape[0], device=nxt.device), nxt_mask.sum(1) - 1] = True
            next_target = logits_at(self.target_model, nxt, nxt_mask, last, target_next_pixels)  # [B, V]
            if cached:
                external = max_ratio_sparse(next_target, inputs["behavior_next_support_ids"],
                                            inputs["behavior_next_support_logprobs"], **operator)
            else:
                next_behavior = logits_at(self.behavior_model, nxt, nxt_mask, last, next_pixels)
                allowed = None if self.data_support is None else self.data_support.allowed(nxt[last],
                                                                                           next_target.shape[-1])
                external = max_ratio_dense(next_target, next_behavior, threshold, exclude, allowed=allowed,
                                           **operator)
        return values, external, behavior_logprobs, decision_rows

    # --- the target (and a co-trained behavior) model travel inside every checkpoint ---
    def _save_checkpoint(self, model, trial):
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        # LoRA: the Trainer saves the PeftModel with every adapter (folder/target/ included)
        if self.args.should_save and not self.lora:
            self._save_weights(self.target_model, folder / TARGET_DIR)
            if self.cotrain:
                self._save_weights(self.behavior_model, folder / BEHAVIOR_DIR)
        super()._save_checkpoint(model, trial)  # writes trainer_state.json last: its presence = complete

    def trained_adapters(self, model) -> list[str]:
        return [Q_ADAPTER, TARGET_ADAPTER]  # the frozen behavior adapter comes from OUT/behavior

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.lora:
            return
        self._load_weights(self.target_model, Path(resume_from_checkpoint) / TARGET_DIR)
        if self.cotrain:
            self._load_weights(self.behavior_model, Path(resume_from_checkpoint) / BEHAVIOR_DIR)

    @staticmethod
    def _save_weights(module: torch.nn.Module, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{WEIGHTS}.tmp"
        save_model(module, str(tmp))  # handles tied embeddings
        os.replace(tmp, folder / WEIGHTS)

    @staticmethod
    def _load_weights(module: torch.nn.Module, folder: Path) -> None:
        load_model(module, str(folder / WEIGHTS), device=str(next(module.parameters()).device))
