"""Batched generation of agent utterances with a KV cache per model.

The only thing asked of a model is Hugging Face causal-LM forward semantics:
`model(input_ids, attention_mask, position_ids, past_key_values, use_cache) -> .logits,
.past_key_values` (transformers >= 5 names the cache `cache`; both spellings are accepted). Prompts are left-padded so every row's next token sits in the last column;
explicit `position_ids` keep GPT-2-style absolute positions equal to those of an unpadded
sequence, which is what makes a row's output independent of the rows batched with it.
Vision-language models get the prompts' images (`pixel_values`, in row order) with the first
forward only; after that the image features live in the KV cache like any other prompt token.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from qsft.decoding.extraction import TWO_MODEL_MODES, PolicyExtractionProcessor, choose_tokens


def cache_argument(model) -> str:
    """The forward keyword of the KV cache: `cache` (transformers >= 5) or `past_key_values`."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in parameters else "past_key_values"


def output_cache(output):
    """The KV cache a forward returned: `.cache` (transformers >= 5) or `.past_key_values`."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


class CachedLM:
    """One model stepping through a left-padded batch with its own KV cache.

    Calling it with the batch's full `input_ids` feeds only the columns it has not seen yet
    and returns the logits for the next token of every row ([B, V]). Two-model decoding gives
    each model its own `CachedLM`, so the behavior model never shares the Q-model's cache.
    """

    def __init__(self, model, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None = None) -> None:
        self.model = model
        self.attention_mask = attention_mask  # [B, L] 1 for real tokens, 0 for left padding
        self.pixel_values = pixel_values  # [N, 3, H, W] images of the prompts (VLMs), used once
        self.past = None
        self.seen = 0
        self.cache_name = cache_argument(model)

    def __call__(self, input_ids: torch.LongTensor) -> torch.Tensor:
        length = input_ids.shape[1]
        if length > self.attention_mask.shape[1]:
            grow = self.attention_mask.new_ones(input_ids.shape[0], length - self.attention_mask.shape[1])
            self.attention_mask = torch.cat([self.attention_mask, grow], dim=1)
        positions = (self.attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        images = {"pixel_values": self.pixel_values} if self.seen == 0 and self.pixel_values is not None else {}
        out = self.model(input_ids=input_ids[:, self.seen:], attention_mask=self.attention_mask,
                         position_ids=positions[:, self.seen:], use_cache=True, **{self.cache_name: self.past},
                         **images)
        self.past, self.seen = output_cache(out), length
        return out.logits[:, -1]

    def keep_rows(self, rows: torch.Tensor) -> None:
        """Drop finished rows from the cache so the remaining rows stop paying for them."""
        self.attention_mask = self.attention_mask[rows]
        if hasattr(self.past, "batch_select_indices"):
            self.past.batch_select_indices(rows)
        else:  # legacy tuple caches: ((key, value), ...) per layer, batch first
            self.past = tuple(tuple(t[rows] for t in layer) for layer in self.past)


@dataclass
class DecodingModels:
    """The model(s) a policy decodes with and how their logits become a policy."""

    model: object  # the Q-model, or the single model of bc / ilql modes
    behavior_model: object | None
    mode: str
    beta: float
    support_threshold: float = 1e-4
    dummy_token_id: int | None = None


def left_pad(prompts: list[list[int]], pad_token_id: int, device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, L] input_ids, [B, L] attention_mask) with each prompt right-aligned."""
    length = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for b, prompt in enumerate(prompts):
        ids[b, length - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[b, length - len(prompt):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def generate_utterances(models: DecodingModels, prompts: list[list[int]], eot_token_id: int, pad_token_id: int,
                        max_new_tokens: int, greedy: bool,
                        generators: list[torch.Generator | None] | None = None,
                        device: torch.device | str = "cpu",
                        pixel_values: torch.Tensor | None = None,
                        suppress_token_ids: list[int] | None = None) -> list[list[int]]:
    """One agent utterance per prompt: tokens up to and including EOT, or `max_new_tokens` of them.

    Rows stop independently; a finished row is removed from both KV caches. `pixel_values`: the
    images whose placeholders the prompts hold, in row order (vision-language models only);
    `suppress_token_ids` are never emitted (a VLM's image placeholder token).
    """
    input_ids, attention_mask = left_pad(prompts, pad_token_id, device)
    if pixel_values is not None:
        pixel_values = pixel_values.to(device)
    q_stream = CachedLM(models.model, attention_mask, pixel_values)
    behavior_stream = (CachedLM(models.behavior_model, attention_mask.clone(), pixel_values)
                       if models.mode in TWO_MODEL_MODES else None)
    processor = PolicyExtractionProcessor(models.mode, models.beta, models.support_threshold,
                                          models.dummy_token_id, behavior_stream)
    live = list(range(len(prompts)))  # original row of each batch row still generating
    live_generators = list(generators) if generators is not None else None
    outputs: list[list[int]] = [[] for _ in prompts]
    for _ in range(max_new_tokens):
        scores = processor(input_ids, q_stream(input_ids))
        if suppress_token_ids:
            scores[:, suppress_token_ids] = float("-inf")
        tokens = choose_tokens(scores, greedy, live_generators)
        keep = []
        for b, token in enumerate(tokens.tolist()):
            outputs[live[b]].append(token)
            if token != eot_token_id:
                keep.append(b)
        if not keep:
            break
        input_ids = torch.cat([input_ids, tokens[:, None]], dim=1)
        if len(keep) < len(live):
            rows = torch.tensor(keep, dtype=torch.long, device=input_ids.device)
            input_ids = input_ids[rows]
            for stream in (q_stream, behavior_stream):
                if stream is not None:
                    stream.keep_rows(rows)
            live = [live[b] for b in keep]
            if live_generators is not None:
                live_generators = [live_generators[b] for b in keep]
    return outputs
