import subprocess
import sys


def test_cli_lists_verbs_and_rejects_unknown():
    out = subprocess.run([sys.executable, "-m", "llama_operator", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "local-sagemaker" in out.stdout and "demo" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "llama_operator", "frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert "unknown verb 'frobnicate'" in bad.stderr
