"""Behavior cache: pi_beta at every next state of a dataset, computed once (the behavior model is frozen).

The Bellman target (DESIGN §1.3) reads pi_beta only at the states it bootstraps from, and only
on the support S(s) = {a : pi_beta(a|s) > support_threshold}. So instead of a behavior forward
pass per training step, one pass over the dataset stores, per next state, the support's k most
likely token ids with their log-probs (sparse; `qsft.algorithms.qsft.max_ratio_sparse` reads
them), plus log pi_beta(x_t|x_<t) of every agent token (for the q_hat diagnostic).

Exact whenever a state's support has at most k actions: the max then runs over the same set as
the live computation. A state whose support is larger keeps its k most likely actions (the max
is then taken over those only); such states are counted (`overflow_states`) and reported.

Which states: the logits positions `next_state_index >= 0` of each sample and, in window mode,
the last position of its `next_input_ids` (stored with position `EXTERNAL_NEXT_STATE`).

The file (safetensors, written atomically) is keyed by a hash of the behavior weights, the
tokenized data, the threshold, k and the excluded (dummy) token: a cache built for anything
else is never used (`behavior_cache_for` rebuilds it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from torch.utils.data import Dataset

from qsft.data.collate import BehaviorRows, CachedSample
from qsft.data.tokenize import EXTERNAL_NEXT_STATE, TokenizedEpisode
from qsft.errors import QSFTError
from qsft.io import atomic_open

CACHE_FILE = "behavior_cache.safetensors"
FORMAT_VERSION = "1"
NEG_INF = float("-inf")


class BehaviorCacheError(QSFTError):
    """A behavior cache that is stale (other model, data or settings) or does not fit the dataset."""


@dataclass
class BehaviorCache:
    """Sparse pi_beta at every next state of a dataset; rows of sample i are `state_offsets[i]:[i+1]`."""

    key: str
    k: int
    support_threshold: float
    exclude_token_id: int | None
    state_offsets: torch.Tensor  # [N + 1] long
    state_index: torch.Tensor  # [S] long: logits position, or EXTERNAL_NEXT_STATE
    support_ids: torch.Tensor  # [S, W] long, W = min(k, largest support); padding ids 0
    support_logprobs: torch.Tensor  # [S, W] float32 log pi_beta; -inf padding
    support_size: torch.Tensor  # [S] long, |S(s)| before truncation to k
    missing_mass: torch.Tensor  # [S] float32, pi_beta mass of support actions beyond the k stored
    token_offsets: torch.Tensor  # [N + 1] long
    action_logprobs: torch.Tensor  # [sum T] float32 log pi_beta(x_t | x_<t) on agent tokens, else 0

    def __len__(self) -> int:
        return len(self.state_offsets) - 1

    @property
    def overflow_states(self) -> int:
        """States whose support has more than k actions (their value is over the k most likely only)."""
        return int((self.support_size > self.k).sum())

    def stats(self) -> dict[str, float]:
        states = int(self.state_index.numel())
        return {"states": states, "k": self.k, "overflow_states": self.overflow_states,
                "overflow_fraction": self.overflow_states / max(states, 1),
                "max_support_size": int(self.support_size.max()) if states else 0,
                "max_missing_mass": float(self.missing_mass.max()) if states else 0.0}

    def rows(self, index: int) -> BehaviorRows:
        s = slice(int(self.state_offsets[index]), int(self.state_offsets[index + 1]))
        t = slice(int(self.token_offsets[index]), int(self.token_offsets[index + 1]))
        return BehaviorRows(self.state_index[s], self.support_ids[s], self.support_logprobs[s],
                            self.action_logprobs[t])


class BehaviorCachedDataset(Dataset):
    """A token-MDP dataset whose items carry their behavior-cache rows (what `TokenMDPCollator` batches)."""

    def __init__(self, samples: list[TokenizedEpisode], cache: BehaviorCache) -> None:
        validate_behavior_cache(cache, samples)
        self.samples, self.cache = samples, cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> CachedSample:
        return CachedSample(self.samples[index], self.cache.rows(index))


def state_positions(sample: TokenizedEpisode) -> list[int]:
    """The states the target reads for this sample: sorted logits positions, then EXTERNAL_NEXT_STATE if any."""
    positions = sorted({i for i in sample.next_state_index if i >= 0})
    if EXTERNAL_NEXT_STATE in sample.next_state_index:
        positions.append(EXTERNAL_NEXT_STATE)
    return positions


def cache_key(behavior_model: torch.nn.Module, samples: list[TokenizedEpisode], support_threshold: float,
              k: int, exclude_token_id: int | None) -> str:
    """sha256 of everything the cached values depend on: weights, tokens, state layout, threshold, k, exclusion."""
    digest = hashlib.sha256()
    digest.update(json.dumps([FORMAT_VERSION, type(behavior_model).__name__, repr(float(support_threshold)), k,
                              exclude_token_id]).encode())
    for name, tensor in sorted(behavior_model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    for sample in samples:
        for values in (sample.input_ids, sample.action_mask, sample.next_state_index, sample.next_input_ids or []):
            digest.update(np.asarray(values, dtype=np.int64).tobytes())
            digest.update(b"|")
    return digest.hexdigest()


def logits_at(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor,
              pixel_values: torch.Tensor | None = None) -> torch.Tensor:
    """Logits at the True positions of `keep` [B, T], row-major: [N, V]; only those rows reach the LM head."""
    images = {} if pixel_values is None else {"pixel_values": pixel_values}
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep,
                       **images).logits
        if logits.dim() == 2 and logits.shape[0] == int(keep.sum()):
            return logits
    except TypeError:  # a model without transformers' `logits_to_keep`
        pass
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **images).logits[keep]


def _pad(rows: list[list[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.tensor([r + [fill] * (length - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows], dtype=torch.long)
    return ids, mask


def _support(logprobs: torch.Tensor, log_threshold: float, k: int, exclude_token_id: int | None):
    """Top-k of the support of each row of log pi_beta [n, V]: ids, log-probs (-inf padding), size, missing mass."""
    outside = logprobs <= log_threshold
    if exclude_token_id is not None:
        outside[:, exclude_token_id] = True
    masked = logprobs.masked_fill(outside, NEG_INF)
    top, ids = masked.topk(min(k, masked.shape[-1]), dim=-1)
    size = (~outside).sum(-1)
    support_mass = masked.exp().sum(-1)
    missing = torch.where(size > k, (support_mass - top.exp().sum(-1)).clamp(min=0), torch.zeros_like(support_mass))
    return ids.masked_fill(~torch.isfinite(top), 0), top, size, missing


@torch.no_grad()
def build_behavior_cache(behavior_model, samples: list[TokenizedEpisode], support_threshold: float = 1e-4,
                         k: int = 128, exclude_token_id: int | None = None, batch_size: int = 8,
                         pad_token_id: int = 0, chunk_size: int = 256, key: str | None = None) -> BehaviorCache:
    """One no-grad pass of the behavior model over `samples` (sorted by length, so batches pad little)."""
    if k < 1:
        raise BehaviorCacheError(f"behavior cache k must be >= 1, got {k}")
    if any(getattr(s, "images", None) or getattr(s, "next_images", None) for s in samples):
        raise BehaviorCacheError("the behavior cache does not cover image inputs (VLMs); set behavior_cache false")
    key = key or cache_key(behavior_model, samples, support_threshold, k, exclude_token_id)
    device = next(behavior_model.parameters()).device
    was_training = behavior_model.training
    behavior_model.eval()
    log_threshold = float(np.log(support_threshold)) if support_threshold > 0 else NEG_INF
    positions = [state_positions(s) for s in samples]
    per_sample: list[dict[str, torch.Tensor]] = [{} for _ in samples]
    order = sorted(range(len(samples)), key=lambda i: len(samples[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        ids, mask = _pad([samples[i].input_ids for i in batch], pad_token_id)
        # rows through the LM head: the decision of every agent token (position t - 1) and every state
        keep = torch.zeros_like(mask, dtype=torch.bool)
        for row, i in enumerate(batch):
            agent = torch.tensor(samples[i].action_mask[1:], dtype=torch.bool)
            keep[row, :len(agent)] |= agent
            keep[row, [p for p in positions[i] if p >= 0]] = True
        logits = logits_at(behavior_model, ids.to(device), mask.to(device), keep.to(device))  # [N, V]
        rows_b, rows_p = keep.nonzero(as_tuple=True)
        row_of = torch.full(keep.shape, -1, dtype=torch.long)
        row_of[rows_b, rows_p] = torch.arange(len(rows_b))
        next_token = ids[rows_b, (rows_p + 1).clamp(max=ids.shape[1] - 1)]
        logp_action, support = torch.empty(len(rows_b)), []
        for c in range(0, logits.shape[0], chunk_size):
            logp = F.log_softmax(logits[c:c + chunk_size].float(), dim=-1)  # [n, V]
            logp_action[c:c + chunk_size] = logp.gather(1, next_token[c:c + chunk_size, None].to(device))[:, 0].cpu()
            support.append([value.cpu() for value in _support(logp, log_threshold, k, exclude_token_id)])
        support = [torch.cat(values) for values in zip(*support)] if support else [torch.zeros(0, 1)] * 4
        external = _external_support(behavior_model, [samples[i] for i in batch], pad_token_id, device,
                                     log_threshold, k, exclude_token_id)
        for row, i in enumerate(batch):
            picks = row_of[row, [p for p in positions[i] if p >= 0]]
            entry = [value[picks] for value in support]
            if positions[i] and positions[i][-1] == EXTERNAL_NEXT_STATE:
                entry = [torch.cat([mine, theirs[row:row + 1]]) for mine, theirs in zip(entry, external)]
            taken = torch.zeros(len(samples[i]))  # 0 off agent tokens
            agent = torch.tensor(samples[i].action_mask, dtype=torch.bool)
            agent[0] = False
            taken[agent] = logp_action[row_of[row, agent.nonzero()[:, 0] - 1]]  # decided at position t - 1
            per_sample[i] = dict(zip(("ids", "logprobs", "size", "missing"), entry), action_logprobs=taken)
    behavior_model.train(was_training)
    return _assemble(key, k, support_threshold, exclude_token_id, positions, per_sample, samples)


def _external_support(behavior_model, samples: list[TokenizedEpisode], pad_token_id: int, device,
                      log_threshold: float, k: int, exclude_token_id: int | None) -> list[torch.Tensor]:
    """Support rows at the last position of each sample's `next_input_ids` (a placeholder row when it has none)."""
    nexts = [s.next_input_ids or [pad_token_id] for s in samples]
    ids, mask = _pad(nexts, pad_token_id)
    keep = torch.zeros_like(mask, dtype=torch.bool)
    keep[torch.arange(len(nexts)), mask.sum(1) - 1] = True
    logits = logits_at(behavior_model, ids.to(device), mask.to(device), keep.to(device))  # [B, V]
    logp = F.log_softmax(logits.float(), dim=-1)
    return [value.cpu() for value in _support(logp, log_threshold, k, exclude_token_id)]


def _assemble(key, k, support_threshold, exclude_token_id, positions, per_sample, samples) -> BehaviorCache:
    width = 1
    for entry in per_sample:
        if len(entry["size"]):
            width = max(width, int(entry["size"].clamp(max=k).max()))
    cat = {name: torch.cat([entry[name] for entry in per_sample]) for name in per_sample[0]} if per_sample else {}
    states = sum(len(p) for p in positions)
    return BehaviorCache(
        key=key, k=k, support_threshold=float(support_threshold), exclude_token_id=exclude_token_id,
        state_offsets=torch.tensor(np.cumsum([0] + [len(p) for p in positions]), dtype=torch.long),
        state_index=torch.tensor([p for ps in positions for p in ps], dtype=torch.long),
        support_ids=cat["ids"][:, :width].long() if states else torch.zeros(0, width, dtype=torch.long),
        support_logprobs=cat["logprobs"][:, :width].float() if states else torch.zeros(0, width),
        support_size=cat["size"].long() if states else torch.zeros(0, dtype=torch.long),
        missing_mass=cat["missing"].float() if states else torch.zeros(0),
        token_offsets=torch.tensor(np.cumsum([0] + [len(s) for s in samples]), dtype=torch.long),
        action_logprobs=cat["action_logprobs"].float() if per_sample else torch.zeros(0))


TENSORS = ("state_offsets", "state_index", "support_ids", "support_logprobs", "support_size", "missing_mass",
           "token_offsets", "action_logprobs")


def save_behavior_cache(cache: BehaviorCache, path: str | Path) -> Path:
    """Write the cache as one safetensors file, atomically (temp file + rename)."""
    path = Path(path)
    tensors = {name: getattr(cache, name).contiguous() for name in TENSORS}
    tensors["support_ids"] = tensors["support_ids"].to(torch.int32)  # 4 bytes per id are plenty for vocabularies
    metadata = {"format_version": FORMAT_VERSION, "key": cache.key, "k": str(cache.k),
                "support_threshold": repr(cache.support_threshold),
                "exclude_token_id": json.dumps(cache.exclude_token_id), "stats": json.dumps(cache.stats())}
    with atomic_open(path, "wb") as handle:
        handle.write(save(tensors, metadata=metadata))
    return path


def load_behavior_cache(path: str | Path) -> BehaviorCache:
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (OSError, ValueError, SafetensorError) as err:
        raise BehaviorCacheError(f"{path}: not a readable behavior cache ({err}); delete it to rebuild") from None
    if metadata.get("format_version") != FORMAT_VERSION or set(tensors) != set(TENSORS):
        raise BehaviorCacheError(f"{path}: behavior cache of another format; delete it to rebuild")
    tensors["support_ids"] = tensors["support_ids"].long()
    return BehaviorCache(key=metadata["key"], k=int(metadata["k"]),
                         support_threshold=float(metadata["support_threshold"]),
                         exclude_token_id=json.loads(metadata["exclude_token_id"]), **tensors)


def validate_behavior_cache(cache: BehaviorCache, samples: list[TokenizedEpisode], key: str | None = None) -> None:
    """Raise `BehaviorCacheError` unless the cache was built for exactly these samples (and `key`, if given)."""
    if key is not None and cache.key != key:
        raise BehaviorCacheError("behavior cache is stale: it was built for another behavior model, dataset, "
                                 "support_threshold, k or dummy token")
    if len(cache) != len(samples):
        raise BehaviorCacheError(f"behavior cache holds {len(cache)} samples, the dataset {len(samples)}")
    expected = [p for s in samples for p in state_positions(s)]
    lengths = torch.tensor([len(s) for s in samples], dtype=torch.long)
    if cache.state_index.tolist() != expected or not torch.equal(cache.token_offsets.diff(), lengths):
        raise BehaviorCacheError("behavior cache does not match the dataset's next states (another tokenization?)")


def behavior_cache_for(path: str | Path, behavior_model, samples: list[TokenizedEpisode],
                       support_threshold: float, k: int, exclude_token_id: int | None = None,
                       batch_size: int = 8, pad_token_id: int = 0) -> tuple[BehaviorCache, bool]:
    """The cache at `path` if it was built for exactly these inputs, else a new one written there: (cache, built)."""
    key = cache_key(behavior_model, samples, support_threshold, k, exclude_token_id)
    path = Path(path)
    if path.is_file():
        try:
            cache = load_behavior_cache(path)
            validate_behavior_cache(cache, samples, key)
            return cache, False
        except BehaviorCacheError:
            pass  # stale or damaged: rebuilt below and replaced atomically
    cache = build_behavior_cache(behavior_model, samples, support_threshold, k, exclude_token_id, batch_size,
                                 pad_token_id, key=key)
    save_behavior_cache(cache, path)
    return cache, True
