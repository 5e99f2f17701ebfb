"""qsft: Q-SFT, offline Q-learning for language models as weighted supervised fine-tuning."""
__version__ = "0.1.0"
