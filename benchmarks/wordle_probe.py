"""What a Wordle model knows about the game: a diagnosis benchmark, not a test (issue #18).

At every agent turn of held-out scripted episodes, samples `--samples` guesses from the model (its plain
next-token distribution, as BC decodes and as a base model is pi_beta) plus one greedy guess, and reports per
guess number:

* `valid`: share of sampled guesses that are words of the guess list (1 - the invalid-guess rate);
* `consistent`: share consistent with all feedback so far, next to `data`, what the data's `consistent:P`
  policy gives (P + (1 - P) * consistent share of the guess list), and `uniform`, the consistent share of the
  guess list itself (a model that spells valid words but ignores the feedback);
* `answer`: share that are words of the answer list (what a model learns from the guess marginals alone);
* `greedy_ok`: how often the greedy guess is consistent.

A model that learned the rules from transcripts sits near `data` (a base or BC model) and its greedy guess is
consistent; one that ignores the feedback sits at `uniform` after the first guess.

    python benchmarks/wordle_probe.py RUN_OR_BASE_DIR [--episodes 200] [--seed 900000] [--policy consistent:0.3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qsft.data.tokenize import SegmentEncoder, context_ids  # noqa: E402
from qsft.decoding.policy import load_policy  # noqa: E402
from qsft.envs.generate import generate_episodes  # noqa: E402
from qsft.envs.wordle.env import Guess, WordleVocabulary, normalize_guess  # noqa: E402
from qsft.envs.wordle.solver import WordleSolver  # noqa: E402


def history_of(turns) -> list[Guess]:
    """The guesses and their feedback, read back from the transcript's env lines (None when invalid)."""
    history = []
    for i, turn in enumerate(turns):
        if turn.role != "agent":
            continue
        word = normalize_guess(turn.text)
        lines = turns[i + 1].text.split("\n") if i + 1 < len(turns) else []
        fb = "".join(lines[1].split()) if len(lines) > 1 and lines[1].strip() else None
        history.append(Guess(word, fb))
    return history


def probe(run_dir: str, episodes: int, seed: int, policy: str, p_consistent: float, samples: int) -> dict:
    run = load_policy(run_dir, "bc")  # a Q-SFT run's own behavior model; a base or BC run as it is
    model, tokenizer, cfg = run.models.model, run.tokenizer, run.token_mdp_config()
    vocabulary = WordleVocabulary.default()
    solver = WordleSolver.for_vocabulary(vocabulary)
    answer_set = set(vocabulary.answers)
    encode = SegmentEncoder(tokenizer)
    torch.manual_seed(seed)
    stats: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for episode in generate_episodes("wordle", policy, episodes, seed, progress=False):
        turns = list(episode.turns)
        for i, turn in enumerate(turns):
            if turn.role != "agent":
                continue
            history = history_of(turns[:i])
            consistent = {vocabulary.answers[int(c)] for c in solver.candidates(history)}
            ids = torch.tensor([context_ids(turns[:i], encode, cfg)])
            guesses = _generate(model, ids, cfg, samples, tokenizer) + _generate(model, ids, cfg, 0, tokenizer)
            sampled, greedy = guesses[:-1], guesses[-1]
            row = stats[len(history) + 1]
            row["valid"].append(statistics.fmean(g in vocabulary.guess_set for g in sampled))
            row["consistent"].append(statistics.fmean(g in consistent for g in sampled))
            share = len(consistent) / len(vocabulary.guesses)
            row["data"].append(p_consistent + (1 - p_consistent) * share)
            row["uniform"].append(share)
            row["answer"].append(statistics.fmean(g in answer_set for g in sampled))
            row["greedy_ok"].append(float(greedy in consistent))
    return stats


def _generate(model, ids: torch.Tensor, cfg, samples: int, tokenizer) -> list[str]:
    """`samples` sampled replies (0: one greedy reply), as normalised guesses."""
    with torch.no_grad():
        out = model.generate(ids.repeat(max(samples, 1), 1), attention_mask=torch.ones_like(ids).repeat(max(samples, 1), 1),
                             max_new_tokens=cfg.reserve, do_sample=samples > 0, top_p=1.0,
                             eos_token_id=cfg.eot_token_id, pad_token_id=tokenizer.pad_token_id)
    replies = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return [normalize_guess(r) for r in replies]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a Wordle run or `qsft pretrain` base directory")
    parser.add_argument("--episodes", type=int, default=200, help="held-out scripted episodes to probe")
    parser.add_argument("--seed", type=int, default=900_000, help="their seed (far from the bench's data seeds)")
    parser.add_argument("--policy", default="consistent:0.3", help="their policy (the states probed)")
    parser.add_argument("--samples", type=int, default=32, help="guesses sampled per state")
    args = parser.parse_args()
    p = float(args.policy.split(":")[1]) if args.policy.startswith("consistent:") else 0.0
    stats = probe(args.run, args.episodes, args.seed, args.policy, p, args.samples)
    keys = ["valid", "consistent", "data", "uniform", "answer", "greedy_ok"]
    print("guess  n     " + "  ".join(f"{k:>11}" for k in keys))
    everything: dict[str, list[float]] = defaultdict(list)
    for guess in sorted(stats):
        row = stats[guess]
        for k, v in row.items():
            everything[k].extend(v)
        print(f"{guess:>5} {len(row['valid']):>4}  " + "  ".join(
            f"{statistics.fmean(row[k]):>11.3f}" if row.get(k) else f"{'-':>11}" for k in keys))
    print(f"{'all':>5} {len(everything['valid']):>4}  " + "  ".join(
        f"{statistics.fmean(everything[k]):>11.3f}" if everything.get(k) else f"{'-':>11}" for k in keys))


if __name__ == "__main__":
    main()
