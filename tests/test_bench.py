"""`qsft bench` engine end to end on a tiny budget: everything lands in the results folder; resumable."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from qsft.bench import BenchSettings, run_bench
from qsft.cli import main
from qsft.configs import env_defaults

TINY = {"model_preset": "micro", "max_length": 64, "per_device_train_batch_size": 8, "report_to": "none"}


def test_bench_writes_results_folder_and_reuses_finished_runs(tmp_path):
    settings = BenchSettings(env="maze", algos=["qsft", "bc"], seeds=1, episodes=12, eval_episodes=3, budget=2,
                             overrides=TINY)
    logs: list[str] = []
    results = run_bench(settings, tmp_path, progress=False, log=logs.append)
    assert sorted(r.config["method"] for r in results) == ["bc", "qsft"]
    for name in ("report.md", "report.png", "bench.json", "data/maze.jsonl", "data/maze.jsonl.stats.json",
                 "runs/bc-seed0/results.json", "runs/qsft-seed0/results.json", "runs/qsft-seed0/qsft.json"):
        assert (tmp_path / name).is_file(), name
    info = json.loads((tmp_path / "runs/qsft-seed0/qsft.json").read_text())
    # maze.yaml's Q-SFT takes the bench's pretrained base as pi_beta (`behavior: model`), not the BC run
    assert info["behavior_model"] == str((tmp_path / "base").resolve())
    table = (tmp_path / "report.md").read_text()
    assert "| bc | maze | 1 |" in table and "| qsft | maze | 1 |" in table
    card = (tmp_path / "runs/qsft-seed0/README.md").read_text()  # a Hub model card, results included
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and "qsft" in front["tags"] and "maze" in front["tags"]
    assert "    max_steps: 2" in card and "| results.json | maze | qsft |" in card and "load_run_models" in card
    model_file = tmp_path / "runs/bc-seed0/model.safetensors"
    stamp = model_file.stat().st_mtime_ns
    logs.clear()
    run_bench(settings, tmp_path, progress=False, log=logs.append)
    assert model_file.stat().st_mtime_ns == stamp and sum("done earlier" in line for line in logs) == 3  # base too
    # a changed setting (here BC's learning rate in the YAML) retrains that method's runs only, never a stale reuse
    import qsft.bench

    def changed(env):
        defaults = env_defaults(env)
        defaults["algos"]["bc"] = {**defaults["algos"].get("bc", {}), "learning_rate": 5e-4}
        return defaults

    logs.clear()
    original = qsft.bench.env_defaults
    qsft.bench.env_defaults = changed
    try:
        run_bench(settings, tmp_path, progress=False, log=logs.append)
    finally:
        qsft.bench.env_defaults = original
    assert any(line.startswith("bc seed 0: its settings changed") for line in logs)
    assert any(line.startswith("qsft seed 0: done earlier") for line in logs)
    recorded = json.loads((tmp_path / "runs/bc-seed0/bench_settings.json").read_text())
    assert recorded["train"]["learning_rate"] == 5e-4 and model_file.stat().st_mtime_ns != stamp


def test_parallel_bench_runs_qsft_after_its_seeds_bc(tmp_path, monkeypatch):
    """An env YAML whose Q-SFT names no behavior model: each Q-SFT run takes its seed's BC run and waits for it."""
    import qsft.bench

    def without_behavior(env):
        defaults = env_defaults(env)
        defaults["algos"]["qsft"] = {k: v for k, v in defaults["algos"]["qsft"].items() if k != "behavior"}
        return defaults

    monkeypatch.setattr(qsft.bench, "env_defaults", without_behavior)
    settings = BenchSettings(env="maze", algos=["qsft", "bc"], seeds=2, episodes=12, eval_episodes=3, budget=2,
                             overrides=TINY)
    logs: list[str] = []
    results = run_bench(settings, tmp_path, progress=False, log=logs.append, jobs=2)
    assert [(r.config["method"], r.config["seed"]) for r in results] == [("bc", 1000), ("qsft", 1000),
                                                                          ("bc", 1001), ("qsft", 1001)]
    assert any("running 4 runs, 2 at a time" in line for line in logs)
    for seed in (0, 1):
        info = json.loads((tmp_path / f"runs/qsft-seed{seed}/qsft.json").read_text())
        assert info["behavior_model"].endswith(f"bc-seed{seed}")
        bc_done = (tmp_path / f"runs/bc-seed{seed}/results.json").stat().st_mtime_ns
        assert (tmp_path / f"runs/qsft-seed{seed}/model.safetensors").stat().st_mtime_ns > bc_done
    assert "| qsft | maze | 2 |" in (tmp_path / "report.md").read_text()


def test_bench_cli_rejects_unknown_algorithm(capsys):
    assert main(["bench", "--env", "maze", "--algos", "bc,magic"]) == 2
    assert "unknown algorithm(s) magic" in capsys.readouterr().err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_parallel_workers_die_with_a_killed_bench(tmp_path):
    # the bench's own worker set-up, in a pool whose parent is then SIGKILLed (no chance to clean up)
    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing, os, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from qsft.bench import _worker_init\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'),\n"
        "                               initializer=_worker_init, initargs=(1, os.getpid()))\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 120)\n"
        "    time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(worker):
        time.sleep(0.2)
    assert not _alive(worker)


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return status != "Z"  # a zombie has exited


def test_bench_pretrains_one_base_that_every_method_starts_from(tmp_path):
    settings = BenchSettings(env="maze", algos=["bc", "qsft", "mc"], seeds=1, episodes=12, eval_episodes=2,
                             budget=2, overrides=TINY, pretrain_steps=3)
    logs: list[str] = []
    run_bench(settings, tmp_path, progress=False, log=logs.append)
    base = tmp_path / "base"
    assert (base / "config.json").is_file() and (base / "pretrain_time.json").is_file()
    assert json.loads((base / "qsft.json").read_text())["algo"] == "pretrain"
    starts = [line for line in logs if line.startswith("training ")]
    assert len(starts) == 3 and all(f"from {base}" in line for line in starts)
    assert "qsft pretrain" in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "bench.json").read_text())["settings"]["pretrain_steps"] == 3
    logs.clear()
    run_bench(settings, tmp_path, progress=False, log=logs.append)
    assert any("pretrained base: done earlier" in line for line in logs)


def test_pretraining_reads_the_dataset_plus_the_yaml_corpus_and_the_methods_the_dataset_alone(tmp_path, monkeypatch):
    import qsft.bench
    from qsft.bench import CORPUS_SEED_OFFSET
    from qsft.data.io import load_episodes

    def with_corpus(env):
        defaults = env_defaults(env)
        defaults["pretrain"] = {**defaults.get("pretrain", {}), "corpus": {"episodes": 5, "policy": "optimal"}}
        return defaults

    monkeypatch.setattr(qsft.bench, "env_defaults", with_corpus)
    settings = BenchSettings(env="maze", algos=["bc"], seeds=1, episodes=12, eval_episodes=2, budget=2,
                             overrides=TINY, pretrain_steps=2, data_seed=3)
    logs: list[str] = []
    run_bench(settings, tmp_path, progress=False, log=logs.append)
    data, corpus, read = (tmp_path / "data" / name for name in ("maze.jsonl", "maze-corpus.jsonl", "maze-pretrain.jsonl"))
    stats = json.loads((tmp_path / "data" / "maze-corpus.jsonl.stats.json").read_text())
    assert stats["seed"] == 3 + CORPUS_SEED_OFFSET and stats["policy"] == "optimal" and stats["optimal_rate"] == 1.0
    ids = [ep.id for ep in load_episodes(read)]
    assert ids == [ep.id for ep in load_episodes(data)] + [ep.id for ep in load_episodes(corpus)]
    assert len(ids) == 17 and len(set(ids)) == 17
    assert json.loads((tmp_path / "base" / "qsft.json").read_text())["data"] == str(read)
    assert json.loads((tmp_path / "runs" / "bc-seed0" / "qsft.json").read_text())["data"] == str(data)
    assert any("pretraining corpus of 5 maze episodes [optimal]" in line for line in logs)

    # a later bench asking for another corpus regenerates it rather than reusing the old one
    shutil.rmtree(tmp_path / "base")
    monkeypatch.setattr(qsft.bench, "env_defaults", lambda env: {
        **env_defaults(env), "pretrain": {"corpus": {"episodes": 4, "policy": "optimal"}}})
    logs.clear()
    run_bench(settings, tmp_path, progress=False, log=logs.append)
    assert any("pretraining corpus of 4 maze episodes" in line for line in logs)
    assert len(load_episodes(read)) == 16


def test_a_malformed_pretraining_corpus_is_one_error_naming_the_yaml(tmp_path, monkeypatch):
    import qsft.bench
    from qsft.errors import ConfigError

    monkeypatch.setattr(qsft.bench, "env_defaults", lambda env: {**env_defaults(env), "pretrain": {"corpus": 5}})
    settings = BenchSettings(env="maze", algos=["bc"], seeds=1, episodes=4, eval_episodes=2, budget=2,
                             overrides=TINY, pretrain_steps=2)
    with pytest.raises(ConfigError, match="maze YAML: pretrain: corpus must be a mapping"):
        run_bench(settings, tmp_path, progress=False, log=lambda message: None)


def test_pretraining_steps_come_from_the_flag_else_the_yaml_capped_at_the_budget():
    from qsft.bench import pretrain_steps

    yaml_with = {"pretrain": {"max_steps": 2000}}
    assert pretrain_steps(BenchSettings(env="maze", algos=["bc"]), yaml_with) == 2000
    assert pretrain_steps(BenchSettings(env="maze", algos=["bc"], budget=150), yaml_with) == 150  # a quick bench stays quick
    assert pretrain_steps(BenchSettings(env="maze", algos=["bc"], budget=150, pretrain_steps=500), yaml_with) == 500
    assert pretrain_steps(BenchSettings(env="maze", algos=["bc"], budget=150), {}) == 0


def test_bench_env_args_reach_generation_and_evaluation_and_guard_reused_data(tmp_path):
    from qsft.errors import ConfigError

    settings = BenchSettings(env="maze", algos=["bc"], seeds=1, episodes=6, eval_episodes=2, budget=1,
                             overrides=TINY, env_kwargs={"max_turns": 7})
    (result,) = run_bench(settings, tmp_path, progress=False, log=lambda message: None)
    assert json.loads((tmp_path / "data/maze.jsonl.stats.json").read_text())["env_kwargs"] == {"max_turns": 7}
    assert json.loads((tmp_path / "bench.json").read_text())["settings"]["env_kwargs"] == {"max_turns": 7}
    assert result.config["env_kwargs"] == {"max_turns": 7}  # evaluated on the same variant
    assert max(ep.turns for ep in result.episodes) <= 7
    with pytest.raises(ConfigError, match="generated with env args .*max_turns.* asks for \\{\\}"):
        run_bench(BenchSettings(env="maze", algos=["bc"], seeds=1, episodes=6, eval_episodes=2, budget=1,
                                overrides=TINY), tmp_path, progress=False, log=lambda message: None)


def test_bench_set_overrides_every_method_or_one_over_the_yaml(tmp_path, capsys):
    from qsft.bench import _method_overrides
    from qsft.cli.common import parse_method_sets
    from qsft.training.run import ALGORITHMS

    shared, per_algo = parse_method_sets(["learning_rate=1e-4", "qsft.bootstrap=max", "qsft.tau=0.2",
                                          "ilql.behavior=model"], ALGORITHMS)
    assert (shared, per_algo) == ({"learning_rate": 1e-4}, {"qsft": {"bootstrap": "max", "tau": 0.2},
                                                            "ilql": {"behavior": "model"}})
    settings = BenchSettings(env="maze", algos=["bc", "qsft"], overrides=shared, algo_overrides=per_algo)
    defaults = {"train": {"learning_rate": 1e-3, "max_steps": 10}, "algos": {"qsft": {"bootstrap": "expectile"}}}
    assert _method_overrides(settings, defaults, "qsft", 1) == {
        "learning_rate": 1e-4, "max_steps": 10, "bootstrap": "max", "tau": 0.2, "seed": 1}
    assert _method_overrides(settings, defaults, "bc", 0) == {"learning_rate": 1e-4, "max_steps": 10, "seed": 0}
    for bad, message in [("qsft.bootstrap", "expects \\[ALGO.\\]KEY=VALUE"), ("magic.tau=1", "unknown algorithm 'magic'"),
                         ("qsft.=1", "expects"), ("qsft.bootstrapp=max", "unknown setting\\(s\\) for qsft: bootstrapp"),
                         ("tau=0.2", "unknown setting\\(s\\) for bc: tau")]:
        assert main(["bench", "--env", "maze", "--algos", "bc,qsft", "--set", bad, "--out", str(tmp_path)]) == 2
        assert re.search(message, capsys.readouterr().err)
    assert not list(tmp_path.iterdir())  # refused before generating anything
