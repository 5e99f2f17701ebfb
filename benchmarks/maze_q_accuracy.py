"""How well a maze Q-SFT run's values match the exact Q*: a quality benchmark, not a test.

For every free cell of the maze and every move, reads p_theta(a|s) / pi_beta(a|s) at the state the
decoder would see there and compares it with Q*(s, a) = gamma ** distance(next cell) (the `success`
reward transform: 1 on reaching the goal). Prints the mean of both, their correlation, how often the
greedy move in Q_hat (over moves pi_beta gives more than the run's support threshold) is a shortest-path move, and how many cells get
exactly the same move probabilities (Q-model and behavior model, the move tokens wherever they sit in
the vocabulary) as another cell: the model ignoring the position digits.

Score a trained run:

    python benchmarks/maze_q_accuracy.py RUN_DIR [--gamma 0.95] [--verbose]

The one-token-per-observation ablation (`--tabular`, issue #17): every distinct observation text is
added to the tiny tokenizer as one token, so the maze is exactly tabular for a model trained from
scratch (no representation to learn). Generates `--episodes` LMRL-style episodes, trains BC and then
Q-SFT with `configs/maze.yaml`'s settings (`--set`/`--bc-set` key=value override them; `--steps`
sets the Q-SFT budget) and prints the accuracy above every `--eval-every` Q-SFT steps: the curve of
the fit itself, representation aside.

    python benchmarks/maze_q_accuracy.py --tabular --out /tmp/tab [--steps 4000] [--set bootstrap=max]

The same pipeline on the real text maze (`--text`): the base is `qsft pretrain` on the data's
transitions (`--pretrain-steps`, `--pretrain-set`; the tiny word tokenizer with action tokens), so the
curve shows the fit once the model has to read the position from its digits.

    python benchmarks/maze_q_accuracy.py --text --out /tmp/text [--pretrain-steps 2000] [--steps 2400]

What each bootstrap operator converges to with no fitting error at all (`--oracle DATA.jsonl`): exact
value iteration on the maze with pi_beta = the data's move frequencies, for each operator, expectile and
support threshold: the ceiling of corr and greedy-optimal cells that training can reach.

    python benchmarks/maze_q_accuracy.py --oracle /tmp/text/maze.jsonl
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qsft.algorithms.qsft import support_value  # noqa: E402
from qsft.bench import env_defaults  # noqa: E402
from qsft.data.episode import Turn  # noqa: E402
from qsft.data.io import load_episodes, save_episodes  # noqa: E402
from qsft.data.rewards import apply_reward_transform, partial_returns  # noqa: E402
from qsft.data.tiny_tokenizer import build_tiny_tokenizer  # noqa: E402
from qsft.data.tokenize import SegmentEncoder, context_ids  # noqa: E402
from qsft.envs.generate import generate_episodes  # noqa: E402
from qsft.envs.maze.env import MOVES, MazeEnv, describe_walls  # noqa: E402
from qsft.models.loading import build_tiny_model, load_model, load_tokenizer  # noqa: E402
from qsft.training.run import RunInfo, train  # noqa: E402


@dataclass
class Accuracy:
    cells: int
    mean_q_hat: float
    mean_q_star: float
    corr: float
    greedy_optimal: int
    aliased: int
    rows: list
    behavior_error: float | None = None  # mean |log pi_beta / data frequency| over moves the data shows > 1%
    # cell pairs with the same wall sentence (they differ in the position digits only), and how many of them
    # the Q-model / behavior model cannot tell apart at the decision token: last hidden states' cosine
    # distance < BLIND_DISTANCE (attention no longer reads the digit that differs)
    same_wall_pairs: int = 0
    blind_pairs: tuple[int, int] = (0, 0)

    def line(self) -> str:
        fit = "" if self.behavior_error is None else f"  mean |log pi_beta/freq| {self.behavior_error:.3f}"
        return (f"cells {self.cells}  mean q_hat {self.mean_q_hat:.3f}  mean Q* {self.mean_q_star:.3f}  "
                f"corr {self.corr:.3f}  greedy-in-q_hat optimal at {self.greedy_optimal}/{self.cells}  "
                f"cells sharing identical outputs with another cell: {self.aliased}/{self.cells}{fit}  "
                f"position-blind same-wall pairs (q / behavior): {self.blind_pairs[0]} / {self.blind_pairs[1]} "
                f"of {self.same_wall_pairs}")


BLIND_DISTANCE = 1e-4


def decision_state(model, ids: torch.Tensor) -> torch.Tensor:
    """The last layer's hidden state at the decision token (the context's last position)."""
    return model(ids, output_hidden_states=True).hidden_states[-1][0, -1].float()


def blind_pairs(states: dict, walls: dict) -> tuple[int, int]:
    """(same-wall cell pairs, those whose decision states are closer than BLIND_DISTANCE in cosine distance)."""
    pairs = [(a, b) for a, b in itertools.combinations(sorted(states), 2) if walls[a] == walls[b]]
    blind = sum(1 - float(torch.nn.functional.cosine_similarity(states[a], states[b], 0)) < BLIND_DISTANCE
                for a, b in pairs)
    return len(pairs), blind


def move_frequencies(episodes) -> dict:
    """{(observation text, move): share of that observation's turns taking the move} in the data."""
    counts, totals = {}, {}
    for ep in episodes:
        for obs, act in zip(ep.turns, ep.turns[1:]):
            if obs.role == "env" and act.role == "agent":
                counts[(obs.text, act.text)] = counts.get((obs.text, act.text), 0) + 1
                totals[obs.text] = totals.get(obs.text, 0) + 1
    return {key: n / totals[key[0]] for key, n in counts.items()}


def logged_returns(episodes, gamma: float) -> dict:
    """{(observation text, move): tensor of every discounted return-to-go logged after it} (`success` rewards:
    the targets' floor under `--mc_lower_bound`)."""
    out: dict = {}
    transformed, _ = apply_reward_transform(episodes, "success", gamma)
    for ep in transformed:
        turns = list(ep.turns)
        agent = [k for k, t in enumerate(turns) if t.role == "agent"]
        for k, g in zip(agent, partial_returns(ep.rewards, gamma)):
            if k > 0 and turns[k - 1].role == "env":
                out.setdefault((turns[k - 1].text, turns[k].text), []).append(g)
    return {key: torch.tensor(gs, dtype=torch.float64) for key, gs in out.items()}


def measure(q_model, behavior_model, tokenizer, layout_cfg, gamma: float, frequencies: dict | None = None,
            support_threshold: float = 0.01) -> Accuracy:
    """Q_hat = p_theta / pi_beta of every move at every non-goal cell, against Q* = gamma ** distance.

    `frequencies` (from `move_frequencies`): also how far pi_beta is from the data's move frequencies,
    which is where an exactly fitted behavior model would sit in a tabular maze. The greedy move is taken
    over the moves with pi_beta > `support_threshold` (the run's: what its bootstrap and decoding see).
    """
    env = MazeEnv(partially_observed=False)
    layout, encode = env.layout, SegmentEncoder(tokenizer)
    move_ids = {move: tokenizer.encode(move, add_special_tokens=False)[0] for move in MOVES}
    index = torch.tensor(list(move_ids.values()))
    rows, outputs, behavior_errors = [], {}, []
    q_states, b_states, walls = {}, {}, {}
    for cell in layout.free_cells:
        if cell == layout.goal:
            continue
        env.reset(0)
        env.position = cell
        ids = torch.tensor([context_ids([Turn("env", env.describe())], encode, layout_cfg)])
        with torch.no_grad():
            log_q = torch.log_softmax(q_model(ids).logits[0, -1].float(), -1)
            log_b = torch.log_softmax(behavior_model(ids).logits[0, -1].float(), -1)[: log_q.shape[0]]
            q_states[cell], b_states[cell] = decision_state(q_model, ids), decision_state(behavior_model, ids)
        walls[cell] = describe_walls(layout.walls_around(cell))
        outputs[cell] = tuple(round(float(v), 4) for v in torch.cat([log_q[index].exp(), log_b[index].exp()]))
        for move, token in move_ids.items():
            share = (frequencies or {}).get((env.describe(), move), 0.0)
            if share > 0.01:
                behavior_errors.append(abs(float(log_b[token]) - math.log(share)))
            nxt = layout.move(cell, move)
            rows.append((cell, move, float((log_q[token] - log_b[token]).exp()), float(log_b[token].exp()),
                         gamma ** layout.distance[nxt], layout.distance[cell], layout.distance[nxt]))
    q_hat, q_star = [r[2] for r in rows], [r[4] for r in rows]
    cells = sorted({r[0] for r in rows})
    greedy_ok = 0
    for cell in cells:
        here = [r for r in rows if r[0] == cell]
        supported = [r for r in here if r[3] > support_threshold] or here
        best = max(supported, key=lambda r: r[2])
        greedy_ok += best[6] < best[5]
    aliased = sum(1 for c in cells if sum(outputs[c] == outputs[o] for o in cells) > 1)
    corr = statistics.correlation(q_hat, q_star) if len(set(q_hat)) > 1 else 0.0
    pairs, q_blind = blind_pairs(q_states, walls)
    _, b_blind = blind_pairs(b_states, walls)
    return Accuracy(len(cells), statistics.fmean(q_hat), statistics.fmean(q_star), corr, greedy_ok, aliased, rows,
                    statistics.fmean(behavior_errors) if behavior_errors else None, pairs, (q_blind, b_blind))


def score_run(run: str, gamma: float, verbose: bool) -> None:
    from qsft.decoding.policy import load_policy

    policy = load_policy(run, "beta", 1.0)
    result = measure(policy.models.model, policy.models.behavior_model, policy.tokenizer,
                     policy.token_mdp_config(), gamma, support_threshold=policy.run_info.support_threshold)
    print(result.line())
    if verbose:
        for cell, move, qh, pi, qs, _, _ in result.rows:
            print(f"{cell} {move:<10} q_hat {qh:.3f}  pi_beta {pi:.3f}  Q* {qs:.3f}")


class AccuracyProbe(TrainerCallback):
    """Every `every` Q-SFT steps (and at the end): `measure` on the training model."""

    def __init__(self, behavior_model, gamma: float, every: int, frequencies: dict | None = None) -> None:
        # None: a co-trained behavior model, read from the running QSFTTrainer at each measurement
        self.behavior, self.gamma, self.every, self.curve = behavior_model, gamma, every, []
        self.frequencies = frequencies
        self.start = time.time()

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.every and state.global_step != state.max_steps:
            return
        layout = RunInfo("qsft", gamma=self.gamma, history_turns=args.history_turns, max_length=args.max_length,
                         reply_tokens=args.reply_tokens).token_mdp_config(processing_class)
        behavior = self.behavior if self.behavior is not None else _running_trainer().behavior_model
        modes = model.training, behavior.training
        model.eval(), behavior.eval()
        result = measure(model, behavior, processing_class, layout, self.gamma, self.frequencies,
                         args.support_threshold)
        model.train(modes[0]), behavior.train(modes[1])
        self.curve.append((state.global_step, result))
        print(f"\nstep {state.global_step:5d} ({time.time() - self.start:4.0f} s)  {result.line()}", flush=True)


def _running_trainer():
    """The QSFTTrainer whose training loop called the probe (callbacks are not handed the trainer)."""
    from qsft.training.qsft_trainer import QSFTTrainer

    frame = sys._getframe()
    while frame is not None:
        if isinstance(frame.f_locals.get("self"), QSFTTrainer):
            return frame.f_locals["self"]
        frame = frame.f_back
    raise RuntimeError("no QSFTTrainer on the call stack")


def parse_sets(items: list[str]) -> dict:
    return {key: yaml.safe_load(value) for key, value in (item.split("=", 1) for item in items)}


def tabular_base(episodes, out: Path, config: dict) -> Path:
    """A from-scratch tiny model whose tokenizer holds every observation text as one token."""
    texts = [t.text for ep in episodes for t in ep.turns]
    actions = [t.text for ep in episodes for t in ep.agent_turns]
    tokenizer = build_tiny_tokenizer(texts, action_texts=actions)
    observations = sorted({t.text for ep in episodes for t in ep.turns if t.role == "env"})
    tokenizer.add_tokens(observations)
    for text in observations[:3]:
        assert len(tokenizer.encode(text, add_special_tokens=False)) == 1, text
    model = build_tiny_model(tokenizer, config.get("model_preset", "tiny"), max(64, config["max_length"]), seed=0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    print(f"tabular base: {len(observations)} observation tokens, vocabulary {len(tokenizer)}")
    return out


def text_base(data: Path, out: Path, common: dict, steps: int, sets: dict, episodes, gamma: float) -> Path:
    """`qsft pretrain` on the data's transitions (one window per move: observation, move, next observation)."""
    start = time.time()
    config = {**common, "history_turns": 1, "max_steps": steps, "lr_scheduler_type": "linear", **sets}
    train("pretrain", str(data), "tiny", out, config)
    model = load_model(out)
    tokenizer = load_tokenizer(out)
    layout = RunInfo("qsft", gamma=gamma, history_turns=1, max_length=common["max_length"]).token_mdp_config(tokenizer)
    model.eval()
    result = measure(model, model, tokenizer, layout, gamma, move_frequencies(episodes), 0.0)
    print(f"pretrain: {time.time() - start:.0f} s; its move distribution: aliased cells {result.aliased}/"
          f"{result.cells}, mean |log p/freq| {result.behavior_error:.3f}", flush=True)
    return out


def run_tabular(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    defaults = env_defaults("maze")
    common = {k: v for k, v in defaults["train"].items() if k not in ("model_preset", "action_tokens")}
    qsft = {**common, **defaults["algos"]["qsft"], "max_steps": args.steps, **parse_sets(args.set)}
    gamma = float(qsft.get("gamma", 0.95))
    data = out / "maze.jsonl"
    if not data.is_file():
        save_episodes(data, generate_episodes("maze", defaults["data"]["policy"], args.episodes, args.data_seed))
    episodes_path = str(data)
    episodes = load_episodes(data)
    base = out / ("pretrained" if args.text else "base")
    if not (base / "config.json").is_file():
        if args.text:
            text_base(data, base, {**common, "action_tokens": True}, args.pretrain_steps,
                      parse_sets(args.pretrain_set), episodes, gamma)
        else:
            tabular_base(episodes, base, defaults["train"])
    bc_dir = out / args.bc_name
    if not (bc_dir / "qsft.json").is_file() and qsft.get("behavior") != "cotrain":
        start = time.time()
        train("bc", episodes_path, str(base), bc_dir, {**common, **parse_sets(args.bc_set)})
        print(f"bc: {time.time() - start:.0f} s", flush=True)
    qsft.setdefault("behavior", str(bc_dir))
    frozen = qsft["behavior"] != "cotrain"
    probe = AccuracyProbe(load_model(qsft["behavior"]) if frozen else None, gamma, args.eval_every,
                          move_frequencies(episodes))
    start = time.time()
    train("qsft", episodes_path, str(base), out / args.name, qsft, callbacks=[probe])
    print(f"qsft: {time.time() - start:.0f} s")


def oracle_values(frequencies: dict, gamma: float, operator: str, expectile: float, threshold: float,
                  sweeps: int = 400, returns: dict | None = None, floor: str = "return") -> dict:
    """{(cell, move): Q} from value iteration with `support_value` over the data's move frequencies; with
    `returns` (`logged_returns`) each target is floored as `--mc_lower_bound` does: the mean over the logged G
    of max(bootstrap, G) (floor 'return', the expected soft label) or max(bootstrap, best G) ('best')."""
    env = MazeEnv(partially_observed=False)
    layout = env.layout
    cells = [c for c in layout.free_cells if c != layout.goal]
    rows, floors = [], []
    for cell in cells:
        env.reset(0)
        env.position = cell
        rows.append([frequencies.get((env.describe(), m), 0.0) for m in MOVES])
        floors.append([(returns or {}).get((env.describe(), m)) for m in MOVES])
    weights = torch.tensor(rows, dtype=torch.float64)  # [cells, moves]
    index = {cell: i for i, cell in enumerate(cells)}
    nxt = torch.tensor([[index.get(layout.move(c, m), -1) for m in MOVES] for c in cells])  # -1: the goal
    q = torch.ones_like(weights)
    for _ in range(sweeps):  # gamma ** 400 < 1e-8
        log_ratio = q.log().masked_fill(weights <= threshold, -math.inf)
        value = support_value(log_ratio, weights.clamp_min(1e-30).log(), operator, expectile)
        q = torch.where(nxt < 0, torch.ones_like(q), gamma * value[nxt.clamp_min(0)])
        if returns is not None:
            q = torch.tensor([[float((g.max() if floor == "best" else g).clamp_min(float(q[i, j])).mean())
                               if g is not None else float(q[i, j])
                               for j, g in enumerate(row)] for i, row in enumerate(floors)], dtype=q.dtype)
    return {(c, m): float(q[i, j]) for i, c in enumerate(cells) for j, m in enumerate(MOVES)}


def run_oracle(data: str, gamma: float) -> None:
    episodes = load_episodes(data)
    frequencies, returns = move_frequencies(episodes), logged_returns(episodes, gamma)
    env = MazeEnv(partially_observed=False)
    layout = env.layout
    for threshold, floor in ((0.01, None), (0.001, None), (0.001, "return"), (0.001, "best")):
        for operator, expectile in (("max", 1.0), ("expectile", 0.7), ("expectile", 0.9), ("expectile", 0.99),
                                    ("expectile_uniform", 0.7), ("expectile_uniform", 0.9)):
            q = oracle_values(frequencies, gamma, operator, expectile, threshold,
                              returns=returns if floor else None, floor=floor or "return")
            keys = list(q)
            q_star = [gamma ** layout.distance[layout.move(c, m)] for c, m in keys]
            greedy = 0
            for cell in {c for c, _ in keys}:
                env.reset(0)
                env.position = cell
                support = [m for m in MOVES if frequencies.get((env.describe(), m), 0.0) > threshold]
                greedy += max(support, key=lambda m: q[cell, m]) in layout.optimal_moves(cell)
            label = (operator if operator == "max" else f"{operator} {expectile}") + (f" +{floor}" if floor else "")
            print(f"threshold {threshold:<6} {label:<30} mean Q {statistics.fmean(q.values()):.3f} (Q* "
                  f"{statistics.fmean(q_star):.3f})  corr {statistics.correlation([q[k] for k in keys], q_star):.3f}"
                  f"  greedy optimal {greedy}/{len({c for c, _ in keys})}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="A Q-SFT run directory trained on `maze` (score it).")
    parser.add_argument("--gamma", type=float, default=0.95, help="Discount of Q* (use the run's).")
    parser.add_argument("--verbose", action="store_true", help="Print every (cell, move).")
    parser.add_argument("--oracle", metavar="DATA", help="Exact value iteration per operator on this maze data.")
    parser.add_argument("--tabular", action="store_true", help="Train the one-token-per-observation ablation.")
    parser.add_argument("--text", action="store_true", help="The same on the text maze from a pretrained base.")
    parser.add_argument("--pretrain-steps", type=int, default=2000, help="--text: `qsft pretrain` steps.")
    parser.add_argument("--pretrain-set", nargs="*", default=[], help="--text: pretraining settings key=value.")
    parser.add_argument("--out", help="--tabular/--text: folder for data, base model and runs (reused when present).")
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=800, help="--tabular: Q-SFT steps.")
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--set", nargs="*", default=[], help="--tabular: Q-SFT settings as key=value.")
    parser.add_argument("--bc-set", nargs="*", default=[], help="--tabular: BC settings as key=value.")
    parser.add_argument("--name", default="qsft", help="--tabular: Q-SFT run folder under --out.")
    parser.add_argument("--bc-name", default="bc", help="--tabular: BC run folder under --out (reused).")
    args = parser.parse_args()
    if args.oracle:
        run_oracle(args.oracle, args.gamma)
    elif args.tabular or args.text:
        if not args.out:
            parser.error("--tabular and --text need --out")
        run_tabular(args)
    elif args.run:
        score_run(args.run, args.gamma, args.verbose)
    else:
        parser.error("give a RUN_DIR or --tabular --out DIR")


if __name__ == "__main__":
    main()
