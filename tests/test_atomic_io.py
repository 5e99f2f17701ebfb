"""Atomic writes: a writer killed mid-write leaves the previous file intact (reliability issue)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from qsft.data.episode import Episode, Turn
from qsft.data.io import load_episodes, save_episodes
from qsft.io import atomic_write_json

WRITER = textwrap.dedent("""
    import sys, time
    from qsft.data.episode import Episode, Turn
    from qsft.data.io import save_episodes

    def slow():
        for i in range(10**6):
            if i == 50:
                print("writing", flush=True)   # the temp file now holds a partial dataset
            if i >= 50:
                time.sleep(0.01)
            yield Episode(f"new-{i}", (Turn("env", "o"), Turn("agent", "a", 0.0)), True)

    save_episodes(sys.argv[1], slow())
""")


def test_writer_killed_mid_write_leaves_old_file_intact(tmp_path):
    path = tmp_path / "data.jsonl"
    old = [Episode(f"old-{i}", (Turn("env", "o"), Turn("agent", "a", 1.0)), True) for i in range(3)]
    save_episodes(path, old)
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.2)
        temps = [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
        assert temps, "the writer should be writing to a temp file beside the target"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert path.read_bytes() == before
    assert [ep.id for ep in load_episodes(path)] == ["old-0", "old-1", "old-2"]


def test_failed_write_removes_temp_and_keeps_old(tmp_path):
    path = tmp_path / "stats.json"
    atomic_write_json(path, {"a": 1})
    try:
        atomic_write_json(path, {"bad": object()})
    except TypeError:
        pass
    assert json.loads(path.read_text()) == {"a": 1}
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
