"""Two-process DDP on CPU (torchrun, gloo): both ranks end identical, the loss equals a 1-process run
with the same global batch, and only rank 0 writes the run directory.

`accelerate launch --cpu` runs a single process (its CPU multi-process mode needs MPI), so the
processes are started with `torch.distributed.run`; the Trainer's accelerate state then sees
WORLD_SIZE=2 and uses gloo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qsft.data.io import save_episodes
from qsft.training.run import RunInfo, train
from tests.training.test_cli_oracle import chain_transitions

REPO = Path(__file__).resolve().parents[2]
WORKER = "tests.training.ddp_worker"
# 16 sequences: one global batch of 16 is the whole dataset, so both runs see the same batches
# whatever order their samplers draw in
OVERRIDES = {"max_steps": 4, "logging_steps": 1, "save_strategy": "no", "learning_rate": 1e-3, "tau": 0.1,
             "report_to": "none", "disable_tqdm": True, "use_cpu": True, "model_preset": "micro", "max_length": 32,
             "history_turns": 1, "reward_transform": "success", "gamma": 0.9, "seed": 0}


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))


def _run(launcher: list[str], data: Path, behavior: Path, out: Path, record: Path, batch: int) -> None:
    overrides = json.dumps(dict(OVERRIDES, per_device_train_batch_size=batch))
    done = subprocess.run([*launcher, "-m", WORKER, str(data), str(behavior), str(out), str(record), overrides],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data = root / "chain.jsonl"
    save_episodes(data, chain_transitions(copies=2))
    behavior = train("bc", data, "tiny", root / "behavior",
                     {k: v for k, v in OVERRIDES.items() if k not in ("tau", "reward_transform", "gamma")}
                     | {"max_steps": 20, "learning_rate": 3e-3, "per_device_train_batch_size": 16})
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    _run(torchrun, data, behavior, root / "ddp", root / "ddp_record", batch=8)
    _run([sys.executable], data, behavior, root / "single", root / "single_record", batch=16)
    records = {name: torch.load(root / f"{name}.pt") for name in ("ddp_record.rank0", "ddp_record.rank1",
                                                                   "single_record.rank0")}
    return root, records


def test_both_ranks_end_with_identical_weights(runs):
    _, records = runs
    rank0, rank1 = records["ddp_record.rank0"], records["ddp_record.rank1"]
    assert rank0["weights"].keys() == rank1["weights"].keys()
    for name, tensor in rank0["weights"].items():
        assert torch.equal(tensor, rank1["weights"][name]), name


def test_loss_matches_one_process_with_the_same_global_batch(runs):
    _, records = runs
    ddp, single = records["ddp_record.rank0"]["losses"], records["single_record.rank0"]["losses"]
    assert len(ddp) == len(single) == OVERRIDES["max_steps"]
    assert ddp[0] == pytest.approx(single[0], rel=1e-5)
    assert ddp == pytest.approx(single, rel=1e-4)  # later steps: gradients averaged over ranks = full batch
    assert records["ddp_record.rank1"]["losses"] == ddp  # logged losses are gathered over both ranks
    ddp_weights, single_weights = records["ddp_record.rank0"]["weights"], records["single_record.rank0"]["weights"]
    moved = max((ddp_weights[k] - single_weights[k]).abs().max().item() for k in ddp_weights)
    assert moved < 1e-4


def test_only_rank_zero_writes_the_run_directory(runs):
    root, records = runs
    assert records["ddp_record.rank1"]["writes"] == []
    assert any(path.endswith("qsft.json") for path in records["ddp_record.rank0"]["writes"])
    assert (root / "ddp" / "model.safetensors").is_file()
    assert RunInfo.load(root / "ddp").algo == "qsft"
