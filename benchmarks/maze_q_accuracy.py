"""How well a maze Q-SFT run's values match the exact Q*: a quality benchmark, not a test.

For every free cell of the maze and every move, reads p_theta(a|s) / pi_beta(a|s) at the state the
decoder would see there and compares it with Q*(s, a) = gamma ** distance(next cell) (the `success`
reward transform: 1 on reaching the goal). Prints the mean of both, their correlation, how often the
greedy move in Q_hat (over moves pi_beta gives > 1%) is a shortest-path move, and how many cells get
exactly the same outputs as another cell (the model ignoring the position digits).

    python benchmarks/maze_q_accuracy.py RUN_DIR [--gamma 0.95] [--verbose]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from qsft.data.episode import Turn
from qsft.data.tokenize import context_ids
from qsft.decoding.policy import load_policy
from qsft.envs.maze import MOVES, MazeEnv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="A Q-SFT run directory trained on `maze`.")
    parser.add_argument("--gamma", type=float, default=0.95, help="Discount of Q* (use the run's).")
    parser.add_argument("--verbose", action="store_true", help="Print every (cell, move).")
    args = parser.parse_args()

    policy = load_policy(args.run, "beta", 1.0)
    env = MazeEnv(partially_observed=False)
    layout, encode, cfg = env.layout, policy.encoder(), policy.token_mdp_config()
    rows, outputs = [], {}
    for cell in layout.free_cells:
        if cell == layout.goal:
            continue
        env.reset(0)
        env.position = cell
        ids = torch.tensor([context_ids([Turn("env", env.describe())], encode, cfg)])
        with torch.no_grad():
            log_q = torch.log_softmax(policy.models.model(ids).logits[0, -1].float(), -1)
            log_b = torch.log_softmax(policy.models.behavior_model(ids).logits[0, -1].float(), -1)[: log_q.shape[0]]
        outputs[cell] = tuple(round(float(v), 4) for v in log_q.exp()[:64])
        for move in MOVES:
            token = policy.tokenizer.encode(move, add_special_tokens=False)[0]
            nxt = layout.move(cell, move)
            rows.append((cell, move, float((log_q[token] - log_b[token]).exp()), float(log_b[token].exp()),
                         args.gamma ** layout.distance[nxt], layout.distance[cell], layout.distance[nxt]))
    q_hat, q_star = [r[2] for r in rows], [r[4] for r in rows]
    cells = {r[0] for r in rows}
    greedy_ok = 0
    for cell in cells:
        here = [r for r in rows if r[0] == cell]
        supported = [r for r in here if r[3] > 0.01] or here
        best = max(supported, key=lambda r: r[2])
        greedy_ok += best[6] < best[5]
    aliased = sum(1 for c in cells if sum(outputs[c] == outputs[o] for o in cells) > 1)
    print(f"cells {len(cells)}  mean q_hat {statistics.fmean(q_hat):.3f}  mean Q* {statistics.fmean(q_star):.3f}  "
          f"corr {statistics.correlation(q_hat, q_star):.3f}  greedy-in-q_hat optimal at {greedy_ok}/{len(cells)}  "
          f"cells sharing identical outputs with another cell: {aliased}/{len(cells)}")
    if args.verbose:
        for cell, move, qh, pi, qs, _, _ in rows:
            print(f"{cell} {move:<10} q_hat {qh:.3f}  pi_beta {pi:.3f}  Q* {qs:.3f}")


if __name__ == "__main__":
    main()
