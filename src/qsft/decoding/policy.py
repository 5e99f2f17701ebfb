"""Loading a trained run as a decoding policy: the model(s), tokenizer and extraction rule.

Which models a run decodes with follows from its `qsft.json` (`RunInfo.algo`):
* `bc`, `filtered_bc` — the run's model alone, mode `bc`;
* `qsft` — the Q-model (the run dir) and the behavior model (`RunInfo.behavior_path`); mode `bc`
  decodes with the behavior model alone, `p_theta` with the Q-model alone;
* `ilql`, `mc` — `qsft.training.ilql.load_ilql_policy(run_dir, beta)` returns one model whose logits
  are already ILQL-perturbed, decoded in mode `bc`; a run trained with `--behavior` decodes in mode
  `advantage` instead: the frozen behavior model's log pi_beta plus the heads' beta (Q - V).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qsft.data.tokenize import SegmentEncoder, TokenMDPConfig
from qsft.decoding.extraction import DEFAULT_MODE, TWO_MODEL_MODES, check_mode
from qsft.decoding.generation import DecodingModels
from qsft.errors import ConfigError, ModelLoadError
from qsft.models.loading import load_model, load_tokenizer
from qsft.models.run_models import load_run_models
from qsft.run_info import RunInfo

SINGLE_MODEL_ALGOS = ("bc", "filtered_bc", "pretrain")  # pretrain: a `qsft pretrain` base, sampled as is
DEFAULT_SUPPORT_THRESHOLD = 1e-4


@dataclass
class Policy:
    """Everything a rollout needs to act: models, extraction rule and the training token layout."""

    models: DecodingModels
    tokenizer: object
    run_info: RunInfo
    run_dir: Path
    device: str = "cpu"

    @property
    def mode(self) -> str:
        return self.models.mode

    @property
    def beta(self) -> float:
        return self.models.beta

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def encoder(self) -> SegmentEncoder:
        return SegmentEncoder(self.tokenizer)

    def token_mdp_config(self) -> TokenMDPConfig:
        """The layout training used (gamma only matters for targets, not for contexts)."""
        return self.run_info.token_mdp_config(self.tokenizer)

    def describe(self) -> dict:
        return {"run": str(self.run_dir), "algo": self.run_info.algo, "mode": self.mode, "beta": self.beta,
                "support_threshold": self.models.support_threshold}


def default_mode(algo: str) -> str:
    return DEFAULT_MODE if algo == "qsft" else "bc"


def load_policy(run_dir: str | Path, mode: str | None = None, beta: float | None = None,
                device: str = "cpu", default_beta: float = 1.0) -> Policy:
    """The decoding policy of a trained run (see the module docstring for what each algo loads).

    `beta=None` takes `default_beta` (callers pass the environment's `default_beta`), except for
    ILQL runs, whose stored beta applies.
    """
    run_dir = Path(run_dir)
    info = RunInfo.load(run_dir)
    mode = check_mode(mode or default_mode(info.algo))
    requested_beta = beta
    beta = default_beta if beta is None else float(beta)
    if info.algo != "qsft" and mode != "bc":
        raise ConfigError(f"{run_dir} is a {info.algo!r} run (one model): only --decode bc applies, not {mode!r}")
    tokenizer = load_tokenizer(run_dir)
    behavior_model = None
    if info.algo in ("ilql", "mc"):  # an LM with ILQL's heads
        from qsft.training.ilql import load_ilql_policy  # optional baseline, imported only when used

        # ILQL's beta scales its own advantage; without a request the one trained with it applies.
        behavior_dir = info.behavior_path(run_dir)
        if behavior_dir is not None:  # `--behavior`: pi_beta is a separate frozen model, the heads give beta (Q - V)
            mode, behavior_model = "advantage", load_model(behavior_dir)
            model = load_ilql_policy(run_dir, requested_beta, advantage_only=True)
        else:
            model = load_ilql_policy(run_dir, requested_beta)
        beta = float(getattr(model, "beta", beta))
    elif info.algo in SINGLE_MODEL_ALGOS + ("qsft",):
        # full-size and LoRA runs alike come back as plain causal LMs
        model, behavior_model = load_run_models(run_dir)
        if info.algo == "qsft" and mode != "p_theta" and behavior_model is None:
            raise ModelLoadError(f"{run_dir}/qsft.json names no behavior model, needed by --decode {mode}")
        if info.algo == "qsft" and mode == "bc":  # the run's own behavior model: the policy beta = 0 reduces to
            model = behavior_model
        if mode not in TWO_MODEL_MODES:
            behavior_model = None
    else:
        raise ConfigError(f"{run_dir}: unknown algorithm {info.algo!r} in qsft.json")
    model = model.to(device).eval()
    if behavior_model is not None:
        behavior_model = behavior_model.to(device).eval()
    models = DecodingModels(model, behavior_model, mode, beta,
                            info.support_threshold if info.support_threshold is not None else DEFAULT_SUPPORT_THRESHOLD,
                            info.dummy_token_id)
    return Policy(models, tokenizer, info, run_dir, device)


def policy_from_models(model, tokenizer, run_info: RunInfo, behavior_model=None, mode: str | None = None,
                       beta: float = 1.0, device: str = "cpu") -> Policy:
    """A policy from models already in memory (tests, benchmarks, or a trainer's evaluation hook)."""
    mode = check_mode(mode or ("bc" if behavior_model is None else DEFAULT_MODE))
    if mode in TWO_MODEL_MODES and behavior_model is None:
        raise ConfigError(f"decoding mode {mode!r} needs a behavior model")
    threshold = run_info.support_threshold if run_info.support_threshold is not None else DEFAULT_SUPPORT_THRESHOLD
    models = DecodingModels(model.to(device).eval(),
                            behavior_model.to(device).eval() if behavior_model is not None else None,
                            mode, beta, threshold, run_info.dummy_token_id)
    return Policy(models, tokenizer, run_info, Path("."), device)

