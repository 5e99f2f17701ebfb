"""The data flow is one-way: readers of a trained run (decoding, eval, scoring) never import the training stack."""

import subprocess
import sys


def test_run_readers_import_no_training_code():
    code = ("import sys, qsft.run_info, qsft.decoding.policy, qsft.eval.evaluate, qsft.eval.score, "
            "qsft.models.run_models; bad = [m for m in sys.modules if m.startswith('qsft.training')]; "
            "sys.exit(str(bad) if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
