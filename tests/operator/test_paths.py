"""The DailyDialog archive ships in the repository, so a plain clone runs the demo and the tests."""

import shutil
import subprocess
import zipfile

import pytest

from llama_operator import paths
from llama_operator.local.demo import tinymodel


def test_the_archive_is_in_the_repository(monkeypatch):
    monkeypatch.delenv(tinymodel.DAILYDIALOG_ZIP_ENV, raising=False)
    found = tinymodel.dailydialog_zip()
    assert found == paths.REPO_ROOT / "data" / "dailydialog" / "daily-dialog.txt.zip" == paths.dailydialog_zip()
    assert found.is_relative_to(paths.REPO_ROOT)  # nothing beside the checkout is needed
    with zipfile.ZipFile(found) as archive:
        names = set(archive.namelist())
    assert {"daily-dialog.txt/dataset_dict.json", "daily-dialog.txt/train/state.json",
            "daily-dialog.txt/test/state.json"} <= names
    assert (found.parent / "README.md").is_file(), "data/dailydialog/README.md gives source and licence"


def test_the_environment_still_overrides(monkeypatch, tmp_path):
    copy = tmp_path / "dd.zip"
    shutil.copyfile(paths.dailydialog_zip(), copy)
    monkeypatch.setenv(tinymodel.DAILYDIALOG_ZIP_ENV, str(copy))
    assert tinymodel.dailydialog_zip() == copy
    monkeypatch.setenv(tinymodel.DAILYDIALOG_ZIP_ENV, str(tmp_path / "missing.zip"))
    with pytest.raises(FileNotFoundError, match="LLAMA_OPERATOR_DAILYDIALOG_ZIP") as exc:
        tinymodel.dailydialog_zip()
    assert "data/dailydialog/daily-dialog.txt.zip" in str(exc.value)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_keeps_the_archive():
    out = subprocess.run(["git", "check-ignore", "-q", str(paths.dailydialog_zip())], cwd=paths.REPO_ROOT,
                         capture_output=True, check=False)
    if out.returncode == 128:
        pytest.skip("not a git checkout")
    assert out.returncode == 1, "data/dailydialog/daily-dialog.txt.zip must not be git-ignored"
