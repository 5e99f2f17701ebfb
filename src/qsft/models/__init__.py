"""Loading any HF causal LM (or a tiny one from a preset), special tokens, target networks."""
