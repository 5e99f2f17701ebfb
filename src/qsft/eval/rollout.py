"""Batched rollouts: N episodes of a text environment played by a decoding policy.

`batch_size` environments step together; whenever one finishes, its slot takes the next episode
(continuous batching). Each decision's prompt is `qsft.data.tokenize.context_ids` of the
episode's turns so far — the token layout training used — and the agent's utterance ends at the
end-of-turn token (or `max_new_tokens`). Episode i uses env start seed and sampling seed derived
from (seed, i) exactly as dataset generation does, and its own `torch.Generator`, so a run is
repeatable and its per-episode results do not depend on `batch_size`.

Vision-language runs (a processor saved in the run dir, or `policy.vision`): env turns carry the
environment's `observation_image()` and each prompt's images go to the model as pixel values.
Transcripts keep the text only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qsft.data.episode import Turn
from qsft.data.images import PROCESSOR_FILE, VisionInputs
from qsft.data.tokenize import SegmentEncoder, context_ids, context_images
from qsft.decoding.generation import generate_utterances
from qsft.decoding.options import DEFAULT_MAX_NEW_TOKENS
from qsft.envs.base import TextEnv
from qsft.envs.generate import episode_seeds
from qsft.errors import ConfigError

if TYPE_CHECKING:  # loading a policy pulls in the training stack; rollouts only use its fields
    from qsft.decoding.policy import Policy



@dataclass
class EpisodeResult:
    """One evaluated episode: outcome and the full transcript (env and agent turns)."""

    index: int
    start_seed: int
    total_return: float
    success: bool
    turns: int  # agent turns taken
    invalid_actions: int
    truncated: bool
    optimal_return: float | None
    transcript: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpisodeResult:
        return cls(**data)


@dataclass
class _Slot:
    """One live episode in the batch."""

    env: TextEnv
    index: int = -1
    start_seed: int = 0
    generator: torch.Generator | None = None
    turns: list[Turn] = field(default_factory=list)
    total_return: float = 0.0
    invalid_actions: int = 0
    optimal_return: float | None = None
    with_images: bool = False

    def observe(self, text: str) -> Turn:
        return Turn("env", text, image=self.env.observation_image() if self.with_images else None)

    def start(self, index: int, seed: int, greedy: bool) -> None:
        self.index = index
        self.start_seed, sampling_seed = episode_seeds(seed, index)
        self.generator = None if greedy else torch.Generator().manual_seed(sampling_seed)
        self.turns = [self.observe(self.env.reset(self.start_seed))]
        self.total_return, self.invalid_actions = 0.0, 0
        self.optimal_return = self.env.optimal_return()


def turn_token_budget(policy: Policy, max_new_tokens: int) -> int:
    """Tokens an utterance may use: at most half the context, so the prompt keeps the other half."""
    return max(1, min(max_new_tokens, policy.run_info.max_length // 2))


def policy_vision(policy: Policy) -> VisionInputs | None:
    """The image processor of a vision-language policy (`policy.vision`, or saved in its run dir), else None."""
    vision = getattr(policy, "vision", None)
    if vision is None and (Path(policy.run_dir) / PROCESSOR_FILE).is_file():
        from qsft.models.vlm import load_vision

        vision = load_vision(policy.run_dir, policy.tokenizer)
    return vision


def rollout(policy: Policy, make_env: Callable[[], TextEnv], episodes: int, seed: int = 0,
            batch_size: int = 16, greedy: bool = False, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
            progress: Callable[[int], None] | None = None) -> list[EpisodeResult]:
    """Play `episodes` episodes, `batch_size` at a time; results are ordered by episode index.

    `progress(n)` is called with the number of episodes finished so far.
    """
    if episodes < 1:
        raise ConfigError(f"the number of episodes must be at least 1, got {episodes}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    budget = turn_token_budget(policy, max_new_tokens)
    vision = policy_vision(policy)
    encode = policy.encoder() if vision is None else SegmentEncoder(policy.tokenizer, vision)
    layout = policy.token_mdp_config()
    if layout.reserve is None:  # a run from before reply_tokens was recorded: reserve the generation budget
        layout = replace(layout, reserve=budget)
    tokenizer = policy.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else policy.eot_token_id
    envs: list[TextEnv] = []
    results: list[EpisodeResult] = []
    try:
        envs.extend(make_env() for _ in range(min(batch_size, episodes)))
        if vision is not None and not all(hasattr(env, "observation_image") for env in envs):
            raise ConfigError(f"{policy.run_dir} is a vision-language run, but {envs[0].name} renders no images "
                              "(no observation_image())")
        slots = [_Slot(env, with_images=vision is not None) for env in envs]
        for index, slot in enumerate(slots):
            slot.start(index, seed, greedy)
        next_index = len(slots)
        while slots:
            prompts = [context_ids(slot.turns, encode, layout) for slot in slots]
            generators = None if greedy else [slot.generator for slot in slots]
            pixel_values = None
            if vision is not None:
                pixel_values = vision.pixel_values([image for slot, prompt in zip(slots, prompts)
                                                    for image in context_images(slot.turns, prompt, encode)])
            # the prompt is the trained state (reply_tokens kept free); the reply may use the rest of max_length
            room = max(layout.reserve, layout.max_length - max(len(p) for p in prompts))
            utterances = generate_utterances(policy.models, prompts, policy.eot_token_id, pad_id, min(budget, room),
                                             greedy, generators, policy.device, pixel_values,
                                             suppress_token_ids=[vision.image_token_id] if vision else None)
            still_running = []
            for slot, ids in zip(slots, utterances):
                if ids and ids[-1] == policy.eot_token_id:
                    ids = ids[:-1]
                action = tokenizer.decode(ids)
                observation, reward, done, info = slot.env.step(action)
                slot.turns.append(Turn("agent", action, reward))
                slot.total_return += reward
                slot.invalid_actions += bool(info.get("invalid", False))
                if not done:
                    slot.turns.append(slot.observe(observation))
                    still_running.append(slot)
                    continue
                results.append(_finish(slot, info))
                if progress is not None:
                    progress(len(results))
                if next_index < episodes:
                    slot.start(next_index, seed, greedy)
                    next_index += 1
                    still_running.append(slot)
            slots = still_running
    finally:
        for env in envs:
            env.close()
    return sorted(results, key=lambda r: r.index)


def _finish(slot: _Slot, info: dict[str, Any]) -> EpisodeResult:
    return EpisodeResult(
        index=slot.index, start_seed=slot.start_seed, total_return=slot.total_return,
        success=bool(info.get("success", False)), turns=sum(t.role == "agent" for t in slot.turns),
        invalid_actions=slot.invalid_actions, truncated=bool(info.get("truncated", False)),
        optimal_return=slot.optimal_return, transcript=[replace(t, image=None).to_dict() for t in slot.turns])
