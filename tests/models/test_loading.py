"""Embedding resizing for the dummy token: deterministic, so resumed runs and DDP ranks agree."""

import torch

from qsft.data.tiny_tokenizer import build_tiny_tokenizer
from qsft.models.loading import build_tiny_model, ensure_dummy_token, resize_embeddings


def _model():
    tokenizer = build_tiny_tokenizer(["go left", "go right"])
    return build_tiny_model(tokenizer, "micro", 32, seed=0), tokenizer


def test_new_rows_are_the_mean_of_the_old_rows_whatever_the_rng_state():
    rows = []
    for seed in (1, 2):
        model, _ = _model()
        old = model.get_input_embeddings().weight.detach().clone()
        torch.manual_seed(seed)
        state = torch.random.get_rng_state()
        resize_embeddings(model, old.shape[0] + 2)
        assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is not consumed
        weight = model.get_input_embeddings().weight
        assert torch.equal(weight[: old.shape[0]], old)
        assert torch.allclose(weight[old.shape[0]:], old.mean(0).expand(2, -1))
        assert model.get_output_embeddings().weight.shape[0] == old.shape[0] + 2  # tied head follows
        rows.append(weight[old.shape[0]:].detach().clone())
    assert torch.equal(rows[0], rows[1])


def test_new_dummy_token_is_added_once_and_the_model_grows_with_it():
    model, tokenizer = _model()
    vocab = len(tokenizer)
    dummy = ensure_dummy_token(tokenizer, model, "<|qsft_dummy|>")
    assert dummy == vocab and ensure_dummy_token(tokenizer, model, "<|qsft_dummy|>") == dummy
    assert model.get_input_embeddings().weight.shape[0] == vocab + 1
