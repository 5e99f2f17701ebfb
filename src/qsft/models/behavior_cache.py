"""Behavior cache: pi_beta at every next state of a dataset, computed once (the behavior model is frozen).

The Bellman target (DESIGN §1.3) reads pi_beta only at the states it bootstraps from, and only
on the support S(s) = {a : pi_beta(a|s) > support_threshold}. So instead of a behavior forward
pass per training step, one pass over the dataset stores, per next state, its whole support: the
token ids with their log-probs (sparse; `qsft.algorithms.qsft.max_ratio_sparse` reads them), plus
log pi_beta(x_t|x_<t) of every agent token (for the q_hat diagnostic).

Always exact: the cached value runs over the same set S(s) as the live computation. Supports
differ in size from state to state (each has fewer than 1 / support_threshold actions), so they
are stored ragged: flat ids and log-probs, and per state its offset into them.

Which states: the logits positions `next_state_index >= 0` of each sample and, in window mode,
the last position of its `next_input_ids` (stored with position `EXTERNAL_NEXT_STATE`).

The file (safetensors, written atomically) is keyed by a hash of the behavior weights, the
tokenized data, the threshold and the excluded (dummy) token: a cache built for anything else is
never used (`behavior_cache_for` rebuilds it).
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
from qsft.data.support import DataSupport
from qsft.data.tokenize import EXTERNAL_NEXT_STATE, TokenizedEpisode
from qsft.errors import QSFTError
from qsft.io import atomic_open

CACHE_FILE = "behavior_cache.safetensors"
FORMAT_VERSION = "2"  # 2: whole supports, ragged (1 kept the k most likely actions per state)
NEG_INF = float("-inf")


class BehaviorCacheError(QSFTError):
    """A behavior cache that is stale (other model, data or settings) or does not fit the dataset."""


@dataclass
class BehaviorCache:
    """Sparse pi_beta at every next state of a dataset, ragged.

    The states of sample i are `state_offsets[i]:[i+1]`; the support of state j is entries
    `support_offsets[j]:[j+1]` of `support_ids` / `support_logprobs`.
    """

    key: str
    support_threshold: float
    exclude_token_id: int | None
    state_offsets: torch.Tensor  # [N + 1] long
    state_index: torch.Tensor  # [S] long: logits position, or EXTERNAL_NEXT_STATE
    support_offsets: torch.Tensor  # [S + 1] long
    support_ids: torch.Tensor  # [E] long, E = sum over states of |S(s)|
    support_logprobs: torch.Tensor  # [E] float32 log pi_beta
    token_offsets: torch.Tensor  # [N + 1] long
    action_logprobs: torch.Tensor  # [sum T] float32 log pi_beta(x_t | x_<t) on agent tokens, else 0

    def __len__(self) -> int:
        return len(self.state_offsets) - 1

    @property
    def support_size(self) -> torch.Tensor:  # [S] long, |S(s)|
        return self.support_offsets.diff()

    def stats(self) -> dict[str, float]:
        sizes = self.support_size
        states = int(sizes.numel())
        return {"states": states, "support_entries": int(sizes.sum()),
                "max_support_size": int(sizes.max()) if states else 0,
                "mean_support_size": float(sizes.float().mean()) if states else 0.0}

    def rows(self, index: int) -> BehaviorRows:
        """Sample `index`'s rows, its supports padded to the widest of them (at least 1): ids 0, log-probs -inf."""
        first, last = int(self.state_offsets[index]), int(self.state_offsets[index + 1])
        offsets = self.support_offsets[first:last + 1]  # [S_i + 1]
        sizes = offsets.diff()
        width = max(1, int(sizes.max())) if len(sizes) else 1
        inside = torch.arange(width) < sizes[:, None]  # [S_i, W]
        ids = torch.zeros(inside.shape, dtype=torch.long)
        logprobs = torch.full(inside.shape, NEG_INF)
        entries = slice(int(offsets[0]), int(offsets[-1]))  # this sample's supports are contiguous, row-major
        ids[inside], logprobs[inside] = self.support_ids[entries], self.support_logprobs[entries]
        t = slice(int(self.token_offsets[index]), int(self.token_offsets[index + 1]))
        return BehaviorRows(self.state_index[first:last], ids, logprobs, self.action_logprobs[t])


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
              exclude_token_id: int | None, data_support: DataSupport | None = None) -> str:
    """sha256 of everything the cached values depend on: weights, tokens, state layout, threshold, exclusion,
    data support."""
    digest = hashlib.sha256()
    digest.update(json.dumps([FORMAT_VERSION, type(behavior_model).__name__, repr(float(support_threshold)),
                              exclude_token_id, data_support.digest() if data_support else None]).encode())
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
    """Logits at the True positions of `keep` [B, T], row-major: [N, V]; only those rows reach the LM head.

    A model whose `logits_to_keep` is missing, or only takes an int (raises on the [B, T] mask, or
    returns another shape), gets a full forward pass instead, indexed by `keep`.
    """
    images = {} if pixel_values is None else {"pixel_values": pixel_values}
    try:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep,
                       **images).logits
        if logits.dim() == 2 and logits.shape[0] == int(keep.sum()):
            return logits
    except (TypeError, IndexError, RuntimeError, ValueError):
        pass
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **images).logits[keep]


def _pad(rows: list[list[int]], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.tensor([r + [fill] * (length - len(r)) for r in rows], dtype=torch.long)
    mask = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows], dtype=torch.long)
    return ids, mask


def _support(logprobs: torch.Tensor, log_threshold: torch.Tensor, exclude_token_id: int | None,
             allowed: torch.Tensor | None = None):
    """The support of each row of log pi_beta [n, V], ragged: ids [E], log-probs [E] (row-major), sizes [n].

    `allowed` [n, V] bool: the data support of each row (`qsft.data.support`), or None for pi_beta's alone.
    """
    inside = logprobs > log_threshold  # the complement of `max_ratio_dense`'s `outside`
    if exclude_token_id is not None:
        inside[:, exclude_token_id] = False
    if allowed is not None:
        inside &= allowed.to(inside.device)
    rows, ids = inside.nonzero(as_tuple=True)
    return ids.cpu(), logprobs[rows, ids].cpu(), inside.sum(-1).cpu()


def _concat(parts: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_support` results of consecutive chunks as one: ids [E], log-probs [E], sizes [n]."""
    if not parts:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0, dtype=torch.long)
    ids, logprobs, sizes = (torch.cat(values) for values in zip(*parts))
    return ids, logprobs, sizes


@torch.no_grad()
def build_behavior_cache(behavior_model, samples: list[TokenizedEpisode], support_threshold: float = 1e-4,
                         exclude_token_id: int | None = None, batch_size: int = 8, pad_token_id: int = 0,
                         chunk_size: int = 256, key: str | None = None,
                         data_support: DataSupport | None = None) -> BehaviorCache:
    """One no-grad pass of the behavior model over `samples` (sorted by length, so batches pad little).

    `data_support` restricts every stored support to the agent tokens the data shows after the state's
    last token, exactly as the live path does (`QSFTTrainer`, `--support data`)."""
    if any(getattr(s, "images", None) or getattr(s, "next_images", None) for s in samples):
        raise BehaviorCacheError("the behavior cache does not cover image inputs (VLMs); set behavior_cache false")
    key = key or cache_key(behavior_model, samples, support_threshold, exclude_token_id, data_support)
    device = next(behavior_model.parameters()).device
    was_training = behavior_model.training
    behavior_model.eval()
    # the same float32 threshold as the live path (`max_ratio_dense`), so both take the same support
    log_threshold = torch.log(torch.tensor(support_threshold, dtype=torch.float32)).to(device)
    positions = [state_positions(s) for s in samples]
    per_sample: list[tuple[torch.Tensor, ...]] = [() for _ in samples]
    order = sorted(range(len(samples)), key=lambda i: len(samples[i]))
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        ids, mask = _pad([samples[i].input_ids for i in batch], pad_token_id)
        # rows through the LM head: every state, and the decision of every agent token (position t - 1)
        states = torch.zeros_like(mask, dtype=torch.bool)
        keep = torch.zeros_like(mask, dtype=torch.bool)
        for row, i in enumerate(batch):
            states[row, [p for p in positions[i] if p >= 0]] = True
            agent = torch.tensor(samples[i].action_mask[1:], dtype=torch.bool)
            keep[row, :len(agent)] = agent
        keep |= states
        logits = logits_at(behavior_model, ids.to(device), mask.to(device), keep.to(device))  # [N, V]
        rows_b, rows_p = keep.nonzero(as_tuple=True)
        is_state = states[rows_b, rows_p].to(device)  # [N]
        row_of = torch.full(keep.shape, -1, dtype=torch.long)
        row_of[rows_b, rows_p] = torch.arange(len(rows_b))
        next_token = ids[rows_b, (rows_p + 1).clamp(max=ids.shape[1] - 1)]
        logp_action, chunks = torch.empty(len(rows_b)), []
        last_token = ids[rows_b, rows_p]  # the state's last token (data support)
        for c in range(0, logits.shape[0], chunk_size):
            logp = F.log_softmax(logits[c:c + chunk_size].float(), dim=-1)  # [n, V]
            logp_action[c:c + chunk_size] = logp.gather(1, next_token[c:c + chunk_size, None].to(device))[:, 0].cpu()
            chunk_states = is_state[c:c + chunk_size]
            allowed = None if data_support is None else data_support.allowed(
                last_token[c:c + chunk_size][chunk_states.cpu()], logp.shape[-1])
            chunks.append(_support(logp[chunk_states], log_threshold, exclude_token_id, allowed))
        # state rows are row-major, so each sample's in-sequence states are one contiguous run of them
        support_ids, support_logprobs, sizes = _concat(chunks)  # [E], [E], [states in batch]
        offsets = F.pad(sizes.cumsum(0), (1, 0))
        first_state = F.pad(states.sum(1).cumsum(0), (1, 0))  # [B + 1]
        ext_ids, ext_logprobs, ext_sizes = _external_support(
            behavior_model, [samples[i] for i in batch], pad_token_id, device, log_threshold, exclude_token_id,
            data_support)
        ext_offsets = F.pad(ext_sizes.cumsum(0), (1, 0))
        for row, i in enumerate(batch):
            a, b = int(first_state[row]), int(first_state[row + 1])
            entries = slice(int(offsets[a]), int(offsets[b]))
            entry = [support_ids[entries], support_logprobs[entries], sizes[a:b]]
            if positions[i] and positions[i][-1] == EXTERNAL_NEXT_STATE:
                theirs = slice(int(ext_offsets[row]), int(ext_offsets[row + 1]))
                entry = [torch.cat(pair) for pair in zip(entry, (ext_ids[theirs], ext_logprobs[theirs],
                                                                  ext_sizes[row:row + 1]))]
            taken = torch.zeros(len(samples[i]))  # 0 off agent tokens
            agent = torch.tensor(samples[i].action_mask, dtype=torch.bool)
            agent[0] = False
            taken[agent] = logp_action[row_of[row, agent.nonzero()[:, 0] - 1]]  # decided at position t - 1
            per_sample[i] = (*entry, taken)
    behavior_model.train(was_training)
    return _assemble(key, support_threshold, exclude_token_id, positions, per_sample, samples)


def _external_support(behavior_model, samples: list[TokenizedEpisode], pad_token_id: int, device,
                      log_threshold: torch.Tensor, exclude_token_id: int | None,
                      data_support: DataSupport | None = None):
    """Supports at the last position of each sample's `next_input_ids` (a placeholder when it has none), ragged."""
    nexts = [s.next_input_ids or [pad_token_id] for s in samples]
    ids, mask = _pad(nexts, pad_token_id)
    keep = torch.zeros_like(mask, dtype=torch.bool)
    keep[torch.arange(len(nexts)), mask.sum(1) - 1] = True
    logits = logits_at(behavior_model, ids.to(device), mask.to(device), keep.to(device))  # [B, V]
    allowed = None if data_support is None else data_support.allowed(ids[keep], logits.shape[-1])
    return _support(F.log_softmax(logits.float(), dim=-1), log_threshold, exclude_token_id, allowed)


def _assemble(key, support_threshold, exclude_token_id, positions, per_sample, samples) -> BehaviorCache:
    ids, logprobs, sizes, action_logprobs = zip(*per_sample) if per_sample else ((), (), (), ())
    return BehaviorCache(
        key=key, support_threshold=float(support_threshold), exclude_token_id=exclude_token_id,
        state_offsets=torch.tensor(np.cumsum([0] + [len(p) for p in positions]), dtype=torch.long),
        state_index=torch.tensor([p for ps in positions for p in ps], dtype=torch.long),
        support_offsets=F.pad(torch.cat(sizes).long().cumsum(0), (1, 0)) if sizes else torch.zeros(1, dtype=torch.long),
        support_ids=torch.cat(ids).long() if ids else torch.zeros(0, dtype=torch.long),
        support_logprobs=torch.cat(logprobs).float() if logprobs else torch.zeros(0),
        token_offsets=torch.tensor(np.cumsum([0] + [len(s) for s in samples]), dtype=torch.long),
        action_logprobs=torch.cat(action_logprobs).float() if action_logprobs else torch.zeros(0))


TENSORS = ("state_offsets", "state_index", "support_offsets", "support_ids", "support_logprobs", "token_offsets",
           "action_logprobs")


def save_behavior_cache(cache: BehaviorCache, path: str | Path) -> Path:
    """Write the cache as one safetensors file, atomically (temp file + rename)."""
    path = Path(path)
    tensors = {name: getattr(cache, name).contiguous() for name in TENSORS}
    tensors["support_ids"] = tensors["support_ids"].to(torch.int32)  # 4 bytes per id are plenty for vocabularies
    metadata = {"format_version": FORMAT_VERSION, "key": cache.key,
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
    return BehaviorCache(key=metadata["key"], support_threshold=float(metadata["support_threshold"]),
                         exclude_token_id=json.loads(metadata["exclude_token_id"]), **tensors)


def validate_behavior_cache(cache: BehaviorCache, samples: list[TokenizedEpisode], key: str | None = None) -> None:
    """Raise `BehaviorCacheError` unless the cache was built for exactly these samples (and `key`, if given)."""
    if key is not None and cache.key != key:
        raise BehaviorCacheError("behavior cache is stale: it was built for another behavior model, dataset, "
                                 "support_threshold or dummy token")
    if len(cache) != len(samples):
        raise BehaviorCacheError(f"behavior cache holds {len(cache)} samples, the dataset {len(samples)}")
    expected = [p for s in samples for p in state_positions(s)]
    lengths = torch.tensor([len(s) for s in samples], dtype=torch.long)
    if cache.state_index.tolist() != expected or not torch.equal(cache.token_offsets.diff(), lengths):
        raise BehaviorCacheError("behavior cache does not match the dataset's next states (another tokenization?)")
    if (len(cache.support_offsets) != len(expected) + 1 or int(cache.support_offsets[-1]) != len(cache.support_ids)
            or len(cache.support_ids) != len(cache.support_logprobs)):
        raise BehaviorCacheError("behavior cache is damaged: its support offsets do not fit its entries; "
                                 "delete it to rebuild")


def behavior_cache_for(path: str | Path, behavior_model, samples: list[TokenizedEpisode],
                       support_threshold: float, exclude_token_id: int | None = None,
                       batch_size: int = 8, pad_token_id: int = 0,
                       data_support: DataSupport | None = None) -> tuple[BehaviorCache, bool]:
    """The cache at `path` if it was built for exactly these inputs, else a new one written there: (cache, built)."""
    key = cache_key(behavior_model, samples, support_threshold, exclude_token_id, data_support)
    path = Path(path)
    if path.is_file():
        try:
            cache = load_behavior_cache(path)
            validate_behavior_cache(cache, samples, key)
            return cache, False
        except BehaviorCacheError:
            pass  # stale or damaged: rebuilt below and replaced atomically
    cache = build_behavior_cache(behavior_model, samples, support_threshold, exclude_token_id, batch_size,
                                 pad_token_id, key=key, data_support=data_support)
    save_behavior_cache(cache, path)
    return cache, True
