"""Q-SFT on the 5-state chain with the CLI's defaults: how close q_hat gets to Q*, step by step.

A user's flagless path (issue #16): `qsft train --algo bc --data D --model M --out BC`, then `qsft train
--algo qsft --data D --model M --out Q --behavior BC --gamma 0.9`, then `qsft score`. The same `train()`
the CLI calls runs here with a callback that scores every logged turn every `--eval-every` steps and
prints, per (state, action), the mean of `qsft score`'s q over the turns minus Q*, and the worst turn.
`--set key=value` adds Q-SFT flags (an ablation); `--bc-set` the same for BC; `--history-turns 1`
makes the context the Markov state (a flag, so not the flagless path).

    python benchmarks/chain_defaults.py --out /tmp/chain [--episodes 400] [--set tau=0.005]

Measured 2026-12-02 (tiny preset, 400 sampled episodes of <= 6 turns, 2 busy cores, BC ~3.5 min,
Q-SFT ~4.5 min): see docs/algorithm.md §5 for the table (tau 0.005 vs 0.05; whole-episode vs
Markov context).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qsft.data.io import save_episodes  # noqa: E402
from qsft.eval.score import Critic  # noqa: E402
from qsft.models.loading import load_model  # noqa: E402
from qsft.training.run import RunInfo, train  # noqa: E402
from tests.oracle_chain import GAMMA, q_star, random_episodes  # noqa: E402


class QStarProbe(TrainerCallback):
    """Every `every` steps: mean score - Q* per (state, action) over the data's turns, and the worst turn."""

    def __init__(self, episodes, behavior, every: int) -> None:
        self.episodes, self.behavior, self.every = episodes, behavior.eval(), every
        self.truth, self.curve = q_star(GAMMA), []

    def measure(self, model, tokenizer, args) -> tuple[dict, float]:
        layout = RunInfo("qsft", gamma=GAMMA, history_turns=args.history_turns, max_length=args.max_length,
                         reply_tokens=args.reply_tokens).token_mdp_config(tokenizer)
        critic = Critic.from_models(model, self.behavior, tokenizer, layout)  # `qsft score` on the training model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            scores = critic.score_episodes(self.episodes, 64)
        model.train(was_training)
        by_id, values = {ep.id: ep for ep in self.episodes}, defaultdict(list)
        for turn in scores:
            observation = [t.text for t in by_id[turn.episode_id].turns if t.role == "env"][turn.turn]
            values[(int(observation[1:]), turn.text)].append(turn.q)
        errors = {key: sum(v) / len(v) - self.truth[key] for key, v in values.items()}
        worst = max(abs(q - self.truth[key]) for key, v in values.items() for q in v)
        return errors, worst

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            errors, worst = self.measure(model, processing_class, args)
            largest = max(abs(e) for e in errors.values())
            self.curve.append((state.global_step, largest, worst))
            print(f"step {state.global_step:5d}  max |mean score - Q*| {largest:.3f}  worst turn {worst:.3f}  "
                  + " ".join(f"{s}{a}:{e:+.2f}" for (s, a), e in sorted(errors.items())), flush=True)


def parse_sets(items: list[str]) -> dict:
    import yaml

    return {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in items)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--episodes", type=int, default=400)
    parser.add_argument("--history-turns", type=int, default=None)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--set", nargs="*", default=[], help="Q-SFT flags as key=value")
    parser.add_argument("--bc-set", nargs="*", default=[], help="BC flags as key=value")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    episodes = random_episodes(args.episodes)
    data = out / "chain.jsonl"
    save_episodes(data, episodes)
    context = {} if args.history_turns is None else {"history_turns": args.history_turns}
    if not (out / "bc" / "qsft.json").is_file():
        start = time.time()
        train("bc", data, args.model, out / "bc", {**context, **parse_sets(args.bc_set)})
        print(f"bc: {time.time() - start:.0f} s")
    probe = QStarProbe(episodes, load_model(out / "bc"), args.eval_every)
    start = time.time()
    train("qsft", data, args.model, out / "qsft",
          {"behavior": str(out / "bc"), "gamma": GAMMA, **context, **parse_sets(args.set)}, callbacks=[probe])
    print(f"qsft: {time.time() - start:.0f} s; final max |mean score - Q*| {probe.curve[-1][1]:.3f}, "
          f"worst turn {probe.curve[-1][2]:.3f}")


if __name__ == "__main__":
    main()
