"""Batched, KV-cached, two-model generation against a slow reference that recomputes everything."""

import torch

from qsft.data.tiny_tokenizer import build_tiny_tokenizer
from qsft.decoding.extraction import extract_policy_logits
from qsft.decoding.generation import CachedLM, DecodingModels, generate_utterances, left_pad
from qsft.models.loading import build_tiny_model


class CountingLM(torch.nn.Module):
    """A stand-in with HF causal-LM forward semantics: the next token is always last + 1 (mod V).

    Shows the seam: generation needs nothing but `forward(...) -> .logits, .past_key_values`.
    """

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.calls: list[int] = []

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True):
        self.calls.append(input_ids.shape[1])
        logits = torch.nn.functional.one_hot((input_ids + 1) % self.vocab, self.vocab).float() * 10
        seen = 0 if past_key_values is None else past_key_values[0][0].shape[2]
        cache = torch.zeros(input_ids.shape[0], 1, seen + input_ids.shape[1], 1)
        return type("Out", (), {"logits": logits, "past_key_values": ((cache, cache),)})()


def test_each_row_stops_at_its_own_eot_or_the_cap():
    lm = CountingLM(8)
    models = DecodingModels(lm, None, "bc", 1.0)
    out = generate_utterances(models, [[1, 5], [0], [1, 1, 1]], eot_token_id=2, pad_token_id=0,
                              max_new_tokens=4, greedy=True)
    assert out == [[6, 7, 0, 1], [1, 2], [2]]
    # prefill sees the padded prompt; afterwards one new column per step (the cache holds the rest)
    assert lm.calls == [3, 1, 1, 1]


class EotBias(torch.nn.Module):
    """Wraps a model and raises its end-of-turn logit (keeps the forward semantics)."""

    def __init__(self, model, eot: int, bias: float = 0.5) -> None:
        super().__init__()
        self.model, self.eot, self.bias = model, eot, bias

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=False):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         cache=past_key_values, use_cache=use_cache)
        out.logits[..., self.eot] += self.bias
        return type("Out", (), {"logits": out.logits, "past_key_values": out.cache})()


def reference_generate(q_model, behavior, prompt, eot, max_new_tokens, mode, beta, dummy):
    """One prompt, no padding, no cache: both models recompute the whole sequence every token."""
    ids = list(prompt)
    out = []
    for _ in range(max_new_tokens):
        x = torch.tensor([ids])
        q_logits = q_model(input_ids=x).logits[:, -1]
        b_logits = behavior(input_ids=x).logits[:, -1]
        token = int(extract_policy_logits(mode, q_logits, b_logits, beta, 1e-4, dummy).argmax())
        out.append(token)
        ids.append(token)
        if token == eot:
            break
    return out


@torch.no_grad()
def test_batched_cached_two_model_generation_matches_the_slow_reference():
    tokenizer = build_tiny_tokenizer(["a b c d e f g h"], "word")
    q_model = build_tiny_model(tokenizer, "micro", seed=1).eval()
    behavior = build_tiny_model(tokenizer, "micro", seed=2).eval()
    eot, dummy = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("[DUMMY]")
    # make EOT likelier so rows finish at different steps
    q_model, behavior = EotBias(q_model, eot), EotBias(behavior, eot)
    words = tokenizer.convert_tokens_to_ids(["a", " b", " c", " d", " e", " f", " g", " h"])
    bos = tokenizer.bos_token_id
    prompts = [[bos] + [words[i] for i in p] for p in ([0, 1, 2], [3], [4, 5, 6, 7, 0, 1], [1, 1], [7, 2, 4])]
    models = DecodingModels(q_model, behavior, "beta", 2.0, 1e-4, dummy)
    batched = generate_utterances(models, prompts, eot, tokenizer.pad_token_id, 10, greedy=True)
    reference = [reference_generate(q_model, behavior, p, eot, 10, "beta", 2.0, dummy) for p in prompts]
    assert batched == reference
    lengths = {len(o) for o in batched}
    assert len(lengths) > 1  # rows really did stop at different times


@torch.no_grad()
def test_cached_lm_logits_equal_unpadded_full_forward():
    tokenizer = build_tiny_tokenizer(["a b c d"], "word")
    model = build_tiny_model(tokenizer, "micro", seed=0).eval()
    a, b, c, d = tokenizer.convert_tokens_to_ids(["a", " b", " c", " d"])
    prompts = [[1, a, b], [1, c, d, a, b]]
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    stream = CachedLM(model, mask)
    first = stream(ids)
    grown = torch.cat([ids, torch.tensor([[c], [c]])], dim=1)
    second = stream(grown)
    for row, prompt in enumerate(prompts):
        full = model(input_ids=torch.tensor([prompt + [c]])).logits[0]
        assert torch.allclose(first[row], full[-2], atol=1e-5)
        assert torch.allclose(second[row], full[-1], atol=1e-5)
