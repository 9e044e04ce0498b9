"""`demo --keep-running` holds the embedded default up only while the operator lives."""

from __future__ import annotations

import subprocess
import sys

from llama_operator.local.demo.demo import hold


def test_an_operator_that_dies_under_keep_running_is_said_and_fails_the_demo(tmp_path, capsys):
    operator = subprocess.Popen([sys.executable, "-c", "import sys, time; time.sleep(0.5); sys.exit(3)"])
    assert hold(operator, tmp_path / "operator.log", poll_seconds=0.1) is False
    said = capsys.readouterr().out
    assert "the operator exited with code 3" in said and str(tmp_path / "operator.log") in said
