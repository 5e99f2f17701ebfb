"""Episodes -> token-level MDP (DESIGN §1.1).

Every agent token is a decision. Per token t (aligned with `input_ids`, 0-based):
* inside an utterance: reward 0, discount 1, next state = logits position t (it predicts t+1);
* last token of agent turn k (the end-of-turn token we append): reward r_k and
  - next agent turn in this sequence starting at token s': next state = logits position s'-1, discount gamma;
  - episode ended terminally: next_state_index -1, discount 0;
  - truncated: bootstrap from the state after the final observation, logits position T-1;
  - `history_turns` windows: next_state_index -2, the state is the end of `next_input_ids`.

Sequences start with a BOS token, so the first agent token always has a state to read.

Two modes. Full history (`history_turns=None`): one sequence per episode, trained on every agent
turn; an episode longer than `max_length` is cut from the left at turn boundaries (dropped agent
turns are not trained) or rejected. Windowed (`history_turns=H`): one sample per agent turn whose
context is the H turns before it, and whose bootstrap state is a second short sequence holding the
H turns before the next agent turn — exactly what the decoder sees when it acts, so long episodes
of Markov environments (maze, chess) stay short.

Images (vision-language models): an env turn with an image is encoded as the VLM processor's
placeholder tokens for one image followed by its text; each sample lists the images whose
placeholders it holds (`images`, `next_images`, in order), which the collator turns into pixel values.
"""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass, field, replace

from qsft.data.episode import Episode, Turn
from qsft.data.rewards import partial_returns
from qsft.errors import ConfigError, EpisodeFormatError, SequenceTooLongError

TERMINAL = -1
EXTERNAL_NEXT_STATE = -2
TRUNCATION_MODES = ("left", "error")


@dataclass
class TokenMDPConfig:
    gamma: float
    max_length: int
    bos_token_id: int
    eot_token_id: int
    truncation: str = "left"
    history_turns: int | None = None
    # tokens kept free after every state's context for the agent's reply (end-of-turn included), in
    # training, bootstrapping and decoding alike; None: the longest agent turn of the data tokenized
    reserve: int | None = None

    def __post_init__(self) -> None:
        if self.truncation not in TRUNCATION_MODES:
            raise ConfigError(f"truncation must be one of {TRUNCATION_MODES}, got {self.truncation!r}")
        if self.history_turns is not None and self.history_turns < 0:
            raise ConfigError(f"history_turns must be >= 0 or None, got {self.history_turns}")
        if self.reserve is not None and self.reserve < 1:
            raise ConfigError(f"reserve (reply tokens) must be >= 1, got {self.reserve}")


@dataclass
class TokenizedEpisode:
    """One training sequence of the token MDP (a whole episode, or one agent turn in window mode)."""

    episode_id: str
    input_ids: list[int]
    action_mask: list[int]
    reward: list[float]
    discount: list[float]
    next_state_index: list[int]
    next_input_ids: list[int] | None = None
    # (agent turn number within the episode, first token, end token exclusive) of each trained turn
    turn_spans: list[tuple[int, int, int]] = field(default_factory=list)
    # image references whose placeholders appear in input_ids / next_input_ids, in order (VLMs only)
    images: list = field(default_factory=list)
    next_images: list = field(default_factory=list)
    # every token of agent turn k: the turn's discounted return-to-go sum_{j>=k} gamma^(j-k) r_j (0 elsewhere),
    # the Monte-Carlo lower bound of `--mc_lower_bound`
    return_to_go: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


class SegmentEncoder:
    """Encodes turn texts with any HF tokenizer (no special tokens), caching repeated texts.

    `vision` (a `qsft.data.images.VisionInputs`) is given for vision-language models: turns with an
    image then start with the processor's placeholder tokens for it.
    """

    def __init__(self, tokenizer, vision=None) -> None:
        self.tokenizer = tokenizer
        self.vision = vision
        self._cache: dict[str, list[int]] = {}

    def __call__(self, text: str) -> list[int]:
        ids = self._cache.get(text)
        if ids is None:
            ids = list(self.tokenizer.encode(text, add_special_tokens=False))
            if len(self._cache) < 200_000:
                self._cache[text] = ids
        return ids

    def turn(self, turn: Turn, episode_id: str = "") -> list[int]:
        """The tokens of one turn's content: image placeholder (if any) + text."""
        ids = self(turn.text)
        if self.vision is None:
            if turn.image is not None:
                raise ConfigError(f"episode {episode_id!r} has images but the model is text-only; use a "
                                  "vision-language model (with --model tiny a tiny VLM is built for image data)")
            return ids
        if self.vision.image_token_id in ids:
            raise EpisodeFormatError(f"turn text {turn.text[:40]!r} contains the image placeholder token",
                                     episode_id=episode_id)
        return ids if turn.image is None else self.vision.placeholder + ids


def tokenize_episode(episode: Episode, encode: SegmentEncoder, cfg: TokenMDPConfig) -> list[TokenizedEpisode]:
    """Turn one (reward-transformed) episode into training sequences of the token MDP."""
    segments = []
    agent_number = 0
    for turn in episode.turns:
        ids = encode.turn(turn, episode.id)
        if turn.role == "agent":
            segments.append(("agent", ids + [cfg.eot_token_id], turn.reward, agent_number))
            agent_number += 1
        else:
            segments.append(("env", ids, 0.0, -1))
    if cfg.reserve is None:
        cfg = replace(cfg, reserve=max((len(seg[1]) for seg in segments if seg[0] == "agent"), default=1))
    if cfg.history_turns is None:
        samples = [_full_sequence(episode, segments, cfg)]
    else:
        samples = _windowed_samples(episode, segments, cfg)
    if encode.vision is not None:
        _attach_images(episode, samples, segments, encode.vision, windowed=cfg.history_turns is not None)
    return samples


def _attach_images(episode: Episode, samples: list[TokenizedEpisode], segments: list, vision,
                   windowed: bool) -> None:
    """Name each sample's images: truncation only drops from the left, so they are the last ones before its end."""
    where = f"episode {episode.id!r}"
    turns = list(episode.turns)
    if not windowed:
        samples[0].images = _last_images(turns, samples[0].input_ids, vision, where)
        return
    agent_positions = [k for k, seg in enumerate(segments) if seg[0] == "agent"]
    for n, (sample, k) in enumerate(zip(samples, agent_positions)):
        sample.images = _last_images(turns[:k], sample.input_ids, vision, where)
        if sample.next_input_ids is not None:
            next_k = agent_positions[n + 1] if n + 1 < len(agent_positions) else len(segments)
            sample.next_images = _last_images(turns[:next_k], sample.next_input_ids, vision, where)


def _last_images(turns: list[Turn], ids: list[int], vision, where: str) -> list:
    """The images of the last `turns` whose placeholders `ids` holds, in order."""
    count = vision.count_images(ids, where)
    if count == 0 and turns and turns[-1].image is not None:
        raise SequenceTooLongError(f"{where}: truncation dropped the image of the latest observation; raise "
                                   "max_length so that it fits")
    images = [t.image for t in turns if t.image is not None]
    return images[len(images) - count:] if count else []


def _full_sequence(episode: Episode, segments: list, cfg: TokenMDPConfig) -> TokenizedEpisode:
    first = 0
    while 1 + sum(len(s[1]) for s in segments[first:]) > cfg.max_length:
        if cfg.truncation == "error":
            raise SequenceTooLongError(
                f"{1 + sum(len(s[1]) for s in segments)} tokens exceed max_length {cfg.max_length}; "
                "raise max_length, set truncation 'left', or use history_turns", episode_id=episode.id)
        first += 1
    kept = segments[first:]
    if not any(role == "agent" for role, *_ in kept):
        raise SequenceTooLongError(
            f"even the last agent turn with what follows exceeds max_length {cfg.max_length}",
            episode_id=episode.id)
    sample = _empty_sample(episode.id)
    _append(sample, [cfg.bos_token_id], trained=False)
    starts = []
    for role, ids, _, _ in kept:
        starts.append(len(sample.input_ids))
        _append(sample, ids, trained=role == "agent")
    length = len(sample.input_ids)
    agent_positions = [k for k, seg in enumerate(kept) if seg[0] == "agent"]
    to_go = _turn_returns(segments, cfg.gamma)
    for n, k in enumerate(agent_positions):
        _, ids, reward, number = kept[k]
        start, end = starts[k], starts[k] + len(ids)
        sample.turn_spans.append((number, start, end))
        sample.return_to_go[start:end] = [to_go[number]] * (end - start)
        for t in range(start, end - 1):
            sample.next_state_index[t] = t
            sample.discount[t] = 1.0
        last = end - 1
        sample.reward[last] = reward
        if n + 1 < len(agent_positions):
            sample.next_state_index[last] = starts[agent_positions[n + 1]] - 1
            sample.discount[last] = cfg.gamma
        elif episode.done:
            sample.next_state_index[last] = TERMINAL
        else:
            sample.next_state_index[last] = length - 1
            sample.discount[last] = cfg.gamma
    return sample


def _windowed_samples(episode: Episode, segments: list, cfg: TokenMDPConfig) -> list[TokenizedEpisode]:
    agent_positions = [k for k, seg in enumerate(segments) if seg[0] == "agent"]
    to_go = _turn_returns(segments, cfg.gamma)
    samples = []
    for n, k in enumerate(agent_positions):
        _, ids, reward, number = segments[k]
        if len(ids) > cfg.reserve:
            raise SequenceTooLongError(f"agent turn {number} has {len(ids)} tokens (end-of-turn included), more than "
                                       f"the {cfg.reserve} reserved for a reply; raise reply_tokens",
                                       episode_id=episode.id)
        context = state_context(segments, k, cfg, episode.id)
        sample = _empty_sample(episode.id)
        _append(sample, context, trained=False)
        start = len(sample.input_ids)
        _append(sample, ids, trained=True)
        end = len(sample.input_ids)
        sample.turn_spans.append((number, start, end))
        sample.return_to_go[start:end] = [to_go[number]] * (end - start)
        for t in range(start, end - 1):
            sample.next_state_index[t] = t
            sample.discount[t] = 1.0
        last = end - 1
        sample.reward[last] = reward
        if n + 1 < len(agent_positions) or not episode.done:
            next_k = agent_positions[n + 1] if n + 1 < len(agent_positions) else len(segments)
            sample.next_input_ids = state_context(segments, next_k, cfg, episode.id)
            sample.next_state_index[last] = EXTERNAL_NEXT_STATE
            sample.discount[last] = cfg.gamma
        else:
            sample.next_state_index[last] = TERMINAL
        samples.append(sample)
    return samples


def _turn_returns(segments: list, gamma: float) -> list[float]:
    """Each agent turn's discounted return-to-go over the whole episode, by agent turn number."""
    return partial_returns([seg[2] for seg in segments if seg[0] == "agent"], gamma)


def best_logged_returns(samples: list[TokenizedEpisode]) -> None:
    """Raise every agent token's `return_to_go` to the best one logged after the same token prefix (the same
    state and action in the token MDP), in place: in a deterministic environment each logged continuation is a
    plan, so their best return is still a lower bound of Q*. Samples with images keep their own returns (their
    state is not the token prefix alone)."""
    best: dict[int, float] = {}
    text_only = [s for s in samples if not s.images]
    for sample in text_only:
        for t, key in trained_prefix_keys(sample):
            best[key] = max(best.get(key, sample.return_to_go[t]), sample.return_to_go[t])
    for sample in text_only:
        for t, key in trained_prefix_keys(sample):
            sample.return_to_go[t] = best[key]


def trained_prefix_keys(sample: TokenizedEpisode) -> list[tuple[int, int]]:
    """(t, key) for every trained token t: key is a 64-bit hash (BLAKE2b) of the token prefix x_0..x_t, so a table
    of prefixes costs 8 bytes each, not a tuple of the whole context (collisions: ~n^2 / 2^65 for n prefixes)."""
    digest = hashlib.blake2b(digest_size=8)
    keys, hashed = [], 0
    for t, trained in enumerate(sample.action_mask):
        if trained:
            digest.update(array("q", sample.input_ids[hashed:t + 1]).tobytes())
            hashed = t + 1
            keys.append((t, int.from_bytes(digest.copy().digest(), "little", signed=True)))
    return keys


def check_no_dummy_token(samples: list[TokenizedEpisode], dummy_token_id: int) -> None:
    """The dummy variant's reserved token must never be a logged action."""
    for sample in samples:
        if any(m and t == dummy_token_id for t, m in zip(sample.input_ids, sample.action_mask)):
            raise ConfigError(f"episode {sample.episode_id!r}: an agent utterance contains the dummy token "
                              f"(id {dummy_token_id}); choose another --dummy_token")


def state_context(segments: list, k: int, cfg: TokenMDPConfig, episode_id: str) -> list[int]:
    """The state before segment k: BOS + the `history_turns` segments before it, cut from the left so that
    `cfg.reserve` tokens stay free for the reply.

    The one place a state's context is built: training samples, bootstrap states (`next_input_ids`) and
    decoding prompts (`context_ids`) all call it with the same `cfg`, so one state is one token sequence.
    """
    window = segments[max(0, k - cfg.history_turns):k] if cfg.history_turns is not None else segments[:k]
    budget = cfg.max_length - 1 - (cfg.reserve or 0)
    if budget < 0:
        raise SequenceTooLongError(f"max_length {cfg.max_length} leaves no room for a context after reserving "
                                   f"{cfg.reserve} reply tokens", episode_id=episode_id)
    while window and sum(len(s[1]) for s in window) > budget:
        if cfg.truncation == "error":
            raise SequenceTooLongError(f"the context before turn {k} exceeds max_length {cfg.max_length}",
                                       episode_id=episode_id)
        if len(window) == 1:
            # never drop the latest turn whole: a prompt of BOS alone carries no state at all;
            # keep its last `budget` tokens instead
            return [cfg.bos_token_id] + list(window[0][1][len(window[0][1]) - budget:] if budget else [])
        window = window[1:]
    return [cfg.bos_token_id] + [i for seg in window for i in seg[1]]


def context_ids(turns: list[Turn], encode: SegmentEncoder, cfg: TokenMDPConfig) -> list[int]:
    """The state the agent acts from after `turns`: `state_context` of the same segments training builds
    (BOS, segments, EOT after each agent utterance, `history_turns` window, left truncation keeping
    `cfg.reserve` tokens free). Used by decoding, so rollouts see exactly the trained contexts.
    """
    segments = [(t.role, encode.turn(t, "rollout") + ([cfg.eot_token_id] if t.role == "agent" else []))
                for t in turns]
    return state_context(segments, len(segments), replace(cfg, truncation="left"), "rollout")


def context_images(turns: list[Turn], ids: list[int], encode: SegmentEncoder) -> list:
    """The images whose placeholders a `context_ids` prompt holds (the last ones of `turns`), in order."""
    return [] if encode.vision is None else _last_images(turns, ids, encode.vision, "rollout context")


def _empty_sample(episode_id: str) -> TokenizedEpisode:
    return TokenizedEpisode(episode_id, [], [], [], [], [])


def _append(sample: TokenizedEpisode, ids: list[int], trained: bool) -> None:
    sample.input_ids.extend(ids)
    sample.action_mask.extend([1 if trained else 0] * len(ids))
    sample.reward.extend([0.0] * len(ids))
    sample.discount.extend([0.0] * len(ids))
    sample.next_state_index.extend([TERMINAL] * len(ids))
    sample.return_to_go.extend([0.0] * len(ids))


def longest_reply(episodes: list[Episode], encode: SegmentEncoder) -> int:
    """Tokens of the longest agent turn in `episodes`, end-of-turn token included (the default `reserve`)."""
    return max((len(encode.turn(t, ep.id)) + 1 for ep in episodes for t in ep.agent_turns), default=1)


def tokenize_episodes(episodes: list[Episode], tokenizer, cfg: TokenMDPConfig,
                      vision=None) -> list[TokenizedEpisode]:
    """Every episode's training sequences; a `reserve` of None becomes the data's `longest_reply`."""
    encode = SegmentEncoder(tokenizer, vision)
    if cfg.reserve is None:
        cfg = replace(cfg, reserve=longest_reply(episodes, encode))
    return [sample for ep in episodes for sample in tokenize_episode(ep, encode, cfg)]
