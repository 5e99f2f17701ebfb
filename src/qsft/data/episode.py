"""Episode records: the one data format every part of qsft speaks.

An episode is an alternating list of turns: environment text (`role="env"`, never trained on)
and agent utterances (`role="agent"`, each carrying a scalar reward). It ends terminally
(`done=True`) or truncated (`done=False`, the last turn is an `env` turn: the bootstrap state).

Two agent turns in a row are allowed: the second is the next decision after the first, with
no observation in between (the first turn's reward is paid and discounted as usual).

An env turn may carry an `image` (vision-language models, docs/vlm.md): in a file, a path relative to
the dataset file or an inline `data:image/png;base64,...` URI; in memory (rollouts), also an RGB array
or PIL image. Images are not part of a turn's equality (arrays do not compare as booleans).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["env", "agent"]
ROLES = ("env", "agent")


@dataclass(frozen=True)
class Turn:
    role: Role
    text: str
    reward: float = 0.0
    image: Any = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        if self.role == "agent":
            return {"role": self.role, "text": self.text, "reward": self.reward}
        if self.image is not None:
            from qsft.data.images import image_reference  # Pillow only when there are images

            return {"role": self.role, "text": self.text, "image": image_reference(self.image)}
        return {"role": self.role, "text": self.text}


@dataclass(frozen=True)
class Episode:
    id: str
    turns: tuple[Turn, ...]
    done: bool = True
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def agent_turns(self) -> list[Turn]:
        return [turn for turn in self.turns if turn.role == "agent"]

    @property
    def rewards(self) -> list[float]:
        """Reward of each agent turn, in order."""
        return [turn.reward for turn in self.agent_turns]

    @property
    def total_return(self) -> float:
        """Undiscounted sum of agent-turn rewards (the quantity evaluation tables report)."""
        return float(sum(self.rewards))

    def with_rewards(self, rewards: list[float]) -> Episode:
        """A copy whose agent turns carry `rewards` (one per agent turn, in order)."""
        it = iter(rewards)
        turns = tuple(Turn(t.role, t.text, float(next(it))) if t.role == "agent" else t for t in self.turns)
        return Episode(self.id, turns, self.done, dict(self.meta))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "turns": [t.to_dict() for t in self.turns], "done": self.done}
        if self.meta:
            out["meta"] = self.meta
        return out
