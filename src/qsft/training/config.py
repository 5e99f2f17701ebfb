"""Configs: dataclasses extending `transformers.TrainingArguments` (TRL-style), one per method.

Defaults follow the paper's table (DESIGN §1.4): gamma 0.99, lr 1e-4, batch 128; except Polyak tau 0.05
(paper 0.005), because the target must move through every token of a path within the default 1,000 steps
(docs/algorithm.md §5, measured on the 5-state chain).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from qsft.algorithms.qsft import BOOTSTRAP_OPERATORS, LOSS_VARIANTS
from qsft.data.rewards import parse_spec
from qsft.data.support import SUPPORT_MODES
from qsft.data.tokenize import TRUNCATION_MODES
from qsft.errors import ConfigError

DATA_BACKENDS = ("auto", "memory", "arrow")


@dataclass
class OfflineRLConfig(TrainingArguments):
    """Fields every offline-RL method shares: how episodes become token-MDP sequences."""

    output_dir: str = field(default="qsft-run", metadata={"help": "Where the model, qsft.json and logs go."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (paper: 1e-4)."})
    per_device_train_batch_size: int = field(
        default=128, metadata={"help": "Sequences per device per step (paper: 128; lower it if memory is short)."})
    max_steps: int = field(default=1000, metadata={"help": "Optimizer steps to train for."})
    logging_steps: float = field(default=10, metadata={"help": "Log metrics every N steps."})
    save_strategy: str = field(default="steps", metadata={"help": "Checkpoint strategy: steps, epoch or no."})
    save_steps: float = field(default=500, metadata={"help": "Save a checkpoint every N steps."})
    report_to: str | list[str] | None = field(
        default="tensorboard", metadata={"help": "Loggers: tensorboard (logs under OUT/runs), wandb, all, none."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep every token-MDP field (leave False)."})
    max_length: int = field(default=512, metadata={"help": "Longest token sequence; see truncation."})
    reply_tokens: int | None = field(default=None, metadata={
        "help": "Tokens kept free after every state's context for the agent's reply (end-of-turn included), in "
                "training, bootstrapping and decoding alike; default: the data's longest agent turn."})
    truncation: str = field(default="left", metadata={
        "help": "Episodes over max_length: 'left' drops whole leading turns, 'error' rejects them."})
    history_turns: int | None = field(default=None, metadata={
        "help": "Context = the last N turns before each agent turn (one sample per turn); default: whole episode."})
    tokenizer_level: str = field(default="word", metadata={
        "help": "Tiny model only: build a 'word' or 'char' level tokenizer from the dataset text."})
    action_tokens: bool = field(default=False, metadata={
        "help": "Tiny model only: make every distinct agent utterance one token (short action horizons)."})
    model_preset: str = field(default="tiny", metadata={"help": "Tiny model preset when --model tiny: tiny, micro, small."})
    data_backend: str = field(default="auto", metadata={
        "help": "How episodes are held: 'memory' (Python lists), 'arrow' (memory-mapped Arrow tables made by cached "
                "multi-process datasets.map, read batch by batch: for data that does not fit in memory; bc, "
                "filtered_bc, qsft; text only) or 'auto' (arrow for data files of 64 MB or more)."})
    data_num_proc: int | None = field(default=None, metadata={
        "help": "Worker processes of the arrow backend's passes (default: every CPU core)."})
    data_cache_dir: str | None = field(default=None, metadata={
        "help": "Where the arrow backend caches its tables (default: the datasets cache, HF_DATASETS_CACHE/qsft)."})

    def __post_init__(self) -> None:
        if self.data_backend not in DATA_BACKENDS:
            raise ConfigError(f"data_backend must be one of {DATA_BACKENDS}, got {self.data_backend!r}")
        if self.data_num_proc is not None and self.data_num_proc < 1:
            raise ConfigError(f"data_num_proc must be >= 1, got {self.data_num_proc}")
        if self.truncation not in TRUNCATION_MODES:
            raise ConfigError(f"truncation must be one of {TRUNCATION_MODES}, got {self.truncation!r}")
        if self.max_length < 4:
            raise ConfigError(f"max_length must be at least 4, got {self.max_length}")
        if self.history_turns is not None and self.history_turns < 0:
            raise ConfigError(f"history_turns must be >= 0, got {self.history_turns}")
        if self.reply_tokens is not None and not 1 <= self.reply_tokens < self.max_length:
            raise ConfigError(f"reply_tokens must be in [1, max_length), got {self.reply_tokens}")
        super().__post_init__()


@dataclass
class BCConfig(OfflineRLConfig):
    """Behavior cloning: cross-entropy on agent tokens (also how the behavior model is trained)."""


@dataclass
class PretrainConfig(OfflineRLConfig):
    """Causal-LM training on the transcripts, every token (domain-adaptive pretraining; `qsft pretrain`).

    Default: one sequence per episode (an episode longer than max_length keeps its last turns). With
    `history_turns` N: one sequence per agent turn, its last N turns, the move and the observation it
    leads to (`qsft.training.pretrain.transition_windows`), so long episodes are learnt whole.
    """


@dataclass
class FilteredBCConfig(BCConfig):
    """Behavior cloning on the episodes with the top `top` fraction of returns."""

    top: float = field(default=0.1, metadata={"help": "Fraction of episodes kept, by return (0 < top <= 1)."})

    def __post_init__(self) -> None:
        if not 0 < self.top <= 1:
            raise ConfigError(f"top must be in (0, 1], got {self.top}")
        super().__post_init__()


@dataclass
class BootstrappedConfig(OfflineRLConfig):
    """Fields of the value-learning methods (Q-SFT, ILQL): discount, Polyak rate, reward transform."""

    gamma: float = field(default=0.99, metadata={"help": "Discount per agent turn, in (0, 1]."})
    tau: float = field(default=0.05, metadata={
        "help": "Polyak rate: target <- (1 - tau) target + tau theta (paper: 0.005; 0.05 lets values cross a "
                "path of tokens within 1,000 steps, docs/algorithm.md §5)."})
    reward_transform: str = field(default="episode_return", metadata={
        "help": "none | scale[:RMAX] | episode_return[:LO:HI] | success (rewards into [0, 1])."})

    def __post_init__(self) -> None:
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma}")
        if not 0 < self.tau <= 1:
            raise ConfigError(f"tau must be in (0, 1], got {self.tau}")
        parse_spec(self.reward_transform)
        super().__post_init__()


@dataclass
class QSFTConfig(BootstrappedConfig):
    """Q-SFT (Hong et al. 2024): Q-learning as weighted cross-entropy on an unchanged LM."""

    target_update: str = field(default="polyak", metadata={"help": "Target network update: 'polyak' or 'hard'."})
    target_update_steps: int = field(default=100, metadata={"help": "With target_update=hard: copy every N steps."})
    target_dtype: str = field(default="float32", metadata={
        "help": "Target network storage and compute dtype: 'float32', or 'bfloat16' (half the memory of the copy; "
                "Polyak updates round stochastically so that small steps are not lost). Full fine-tuning only."})
    support_threshold: float = field(default=1e-4, metadata={
        "help": "Actions with pi_beta <= threshold are left out of the max in the Bellman target."})
    support: str = field(default="data", metadata={
        "help": "Support of the bootstrap: 'data' (default: pi_beta > threshold AND the data shows that agent token "
                "after the state's last token; qsft.data.support) or 'behavior' (pi_beta > threshold alone, the paper)."})
    bootstrap: str = field(default="max", metadata={
        "help": "V(s') in the Bellman target: 'max' of p_target/pi_beta over the support (paper) or its "
                "'expectile' under pi_beta (in-support soft max; see --expectile), or 'expectile_uniform' (the same "
                "expectile with every supported action weighted equally: rare supported moves count fully)."})
    expectile: float = field(default=0.9, metadata={
        "help": "With --bootstrap expectile: tau in (0, 1]; 1 is the max, 0.5 the behavior's mean (SARSA)."})
    loss_variant: str = field(default="dummy", metadata={
        "help": "'dummy' (default: a reserved token takes 1 - y; unbiased), 'support' (the dummy variant whose label "
                "also keeps the target's probabilities on the other supported tokens: Q_hat no longer inherits the "
                "behavior model's fit errors, and the label noise vanishes at the fixed point; docs/algorithm.md "
                "§2a) or 'uniform' (paper Eq. 3; biased upward by up to (1 - E[Q]) / ((V - 1) support_threshold))."})
    support_reweight_cap: float = field(default=0.0, metadata={
        "help": "loss_variant 'support': weight each decision by (1/|support|) / pi_beta(a|s), capped here, so rare "
                "supported moves are fitted as fast as common ones (same fixed point; 0 = off)."})
    q_start_value: float | None = field(default=None, metadata={
        "help": "loss_variant 'support': first fit Q_hat to this value on every supported token for q_start_steps "
                "steps (then copy it to the target): a pessimistic start, so values rise from below along the "
                "data's paths (value iteration from 0 is exact within d sweeps at distance d) instead of decaying "
                "from the ratio-1 start. Default: off."})
    q_start_steps: int = field(default=200, metadata={"help": "Steps of the q_start_value fit (part of max_steps)."})
    mc_lower_bound: str = field(default="none", metadata={
        "help": "Floor each Bellman target at a logged discounted return-to-go G, y = max(r + gamma V(s'), G): "
                "'return' (the sample's own G), 'best' (the best G logged after the same token prefix, i.e. the same "
                "state and action) or 'none'. In deterministic environments G <= Q*, so Q* stays the max "
                "operator's fixed point while values reach far states without one bootstrap per turn "
                "(docs/algorithm.md §3, Monte-Carlo floors); in stochastic ones lucky returns bias the values upward."})
    dummy_token: str = field(default="[DUMMY]", metadata={"help": "Reserved token of the dummy variant."})
    behavior: str | None = field(default=None, metadata={
        "help": "Behavior model: a trained model dir (frozen), 'model' (the --model dir itself, frozen: a base from "
                "`qsft pretrain` already predicts the logged actions), 'cotrain', or empty to train it first by SFT. "
                "ilql / mc: a dir or 'model' is pi_beta at decoding instead of the run's own LM head."})
    behavior_max_steps: int | None = field(default=None, metadata={
        "help": "SFT steps for the behavior model trained first (default: max_steps)."})
    q_init: str = field(default="model", metadata={
        "help": "Initialise the Q-model from the 'behavior' model's weights or from the base 'model'."})
    lora: bool = field(default=False, metadata={
        "help": "Q-model, behavior model and target as three LoRA adapters on one frozen base (needs peft)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={
        "help": "Dropout on the LoRA path while an adapter trains (behavior/target passes run without it)."})
    lora_target_modules: str = field(default="all-linear", metadata={
        "help": "Comma-separated module names to adapt (GPT-2: c_attn,c_proj,c_fc), or 'all-linear'."})
    behavior_cache: bool | None = field(default=None, metadata={
        "help": "Compute pi_beta at every next state once (OUT/behavior_cache.safetensors) instead of a behavior "
                "forward pass per step; default: on for a frozen full-weight text behavior model when the run reads "
                "at least one epoch (max_steps x batch >= samples), off otherwise."})

    def __post_init__(self) -> None:
        if self.target_update not in ("polyak", "hard"):
            raise ConfigError(f"target_update must be 'polyak' or 'hard', got {self.target_update!r}")
        if self.target_update_steps < 1:
            raise ConfigError(f"target_update_steps must be >= 1, got {self.target_update_steps}")
        if self.target_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"target_dtype must be 'float32' or 'bfloat16', got {self.target_dtype!r}")
        if not 0 <= self.support_threshold < 1:
            raise ConfigError(f"support_threshold must be in [0, 1), got {self.support_threshold}")
        if self.support not in SUPPORT_MODES:
            raise ConfigError(f"support must be one of {SUPPORT_MODES}, got {self.support!r}")
        if self.bootstrap not in BOOTSTRAP_OPERATORS:
            raise ConfigError(f"bootstrap must be one of {BOOTSTRAP_OPERATORS}, got {self.bootstrap!r}")
        if not 0 < self.expectile <= 1:
            raise ConfigError(f"expectile must be in (0, 1], got {self.expectile}")
        if self.loss_variant not in LOSS_VARIANTS:
            raise ConfigError(f"loss_variant must be one of {LOSS_VARIANTS}, got {self.loss_variant!r}")
        if self.support_reweight_cap < 0 or (self.support_reweight_cap and self.loss_variant != "support"):
            raise ConfigError(f"support_reweight_cap must be >= 0 and needs loss_variant 'support', got "
                              f"{self.support_reweight_cap} with {self.loss_variant!r}")
        if self.q_start_value is not None and (not 0 <= self.q_start_value <= 1 or self.loss_variant != "support"
                                               or self.q_start_steps < 1):
            raise ConfigError(f"q_start_value must be in [0, 1], with loss_variant 'support' and q_start_steps >= 1; "
                              f"got {self.q_start_value}, {self.loss_variant!r}, {self.q_start_steps}")
        if self.mc_lower_bound not in ("none", "return", "best"):
            raise ConfigError(f"mc_lower_bound must be 'none', 'return' or 'best', got {self.mc_lower_bound!r}")
        if self.q_init not in ("behavior", "model"):
            raise ConfigError(f"q_init must be 'behavior' or 'model', got {self.q_init!r}")
        if self.lora and self.target_dtype != "float32":
            raise ConfigError("target_dtype applies to full fine-tuning: with lora the target is a small adapter")
        if self.lora and self.behavior == "cotrain":
            raise ConfigError("lora cannot co-train the behavior model: leave --behavior empty (trained first) "
                              "or give a behavior adapter directory")
        if self.behavior_cache and self.loss_variant == "support":
            raise ConfigError("loss_variant 'support' reads pi_beta at every decision, which the behavior cache "
                              "does not hold: set behavior_cache false")
        if self.behavior_cache and (self.lora or self.behavior == "cotrain"):
            raise ConfigError("behavior_cache needs a frozen full-weight behavior model: not with lora or "
                              "behavior 'cotrain'")
        if self.lora_r < 1:
            raise ConfigError(f"lora_r must be >= 1, got {self.lora_r}")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        super().__post_init__()

    def lora_modules(self) -> list[str] | str:
        """`lora_target_modules` as peft wants it: 'all-linear' or a list of module names."""
        if self.lora_target_modules.strip() == "all-linear":
            return "all-linear"
        names = [name.strip() for name in self.lora_target_modules.split(",") if name.strip()]
        if not names:
            raise ConfigError("lora_target_modules is empty: give module names (e.g. c_attn,c_proj) or 'all-linear'")
        return names
