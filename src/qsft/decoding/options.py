"""Names and defaults of the decoding options (torch-free, so the CLI parser loads fast)."""

MODES = ("p_theta", "beta", "beta_ratio", "q_greedy", "bc", "advantage")
# Modes that read the behavior model beside the Q-model (DESIGN §1.5).
TWO_MODEL_MODES = ("beta", "beta_ratio", "q_greedy", "advantage")
DEFAULT_MODE = "beta"
# Cap on the tokens of one agent utterance (end-of-turn token included).
DEFAULT_MAX_NEW_TOKENS = 32
