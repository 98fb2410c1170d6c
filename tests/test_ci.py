"""The CI scripts that `make test` runs before the suite: here, the disk check (.ci/ensure-disk).

The script reads free space from `df`; a fake `df` first on PATH plays the disks, so the check runs for
real, as make runs it, on a full disk and on a roomy one.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "ensure-disk"


@pytest.fixture
def disks(tmp_path):
    """Run the check in a repository at tmp/repo with TMPDIR at tmp/scratch; `df` answers from `mounts`."""
    repo, scratch, bin_dir = tmp_path / "repo", tmp_path / "scratch", tmp_path / "bin"
    for folder in (repo / ".ci", scratch, bin_dir):
        folder.mkdir(parents=True)
    (repo / ".ci" / "ensure-disk").write_text(SCRIPT.read_text())

    def check(mounts: dict[Path, tuple[str, int]]) -> subprocess.CompletedProcess:
        """mounts: folder -> (its mount point, MB free there)."""
        cases = "".join(f'  {folder.resolve()}*) echo "/dev/x 1 0 {mb} 0% {mount}" ;;\n'
                        for folder, (mount, mb) in mounts.items())
        (bin_dir / "df").write_text('#!/usr/bin/env bash\necho "Filesystem 1M-blocks Used Available Capacity Mounted on"\n'
                                    f'case "$(cd "${{@: -1}}" && pwd -P)" in\n{cases}esac\n')
        (bin_dir / "df").chmod(0o755)
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TMPDIR": str(scratch)}
        return subprocess.run(["bash", str(repo / ".ci" / "ensure-disk")], env=env, capture_output=True,
                              text=True, timeout=30, check=False)

    return repo, scratch, check


def test_a_fresh_clone_on_a_nearly_full_disk_is_stopped_before_installing(disks):
    repo, scratch, check = disks
    out = check({repo: ("/", 5000), scratch: ("/", 5000)})
    assert out.returncode == 1
    assert "5000 MB free, 10200 MB needed" in out.stderr  # both venvs (7000 + 1200 MB) and the tests' 2000
    assert "TMPDIR" in out.stderr and "Traceback" not in out.stderr
    assert check({repo: ("/", 10200), scratch: ("/", 10200)}).returncode == 0


def test_installed_venvs_leave_only_the_tests_room_to_find(disks):
    repo, scratch, check = disks
    for venv in (".venv", ".venv-serve"):
        (repo / venv).mkdir()
        (repo / venv / ".installed").touch()
    assert check({repo: ("/", 2000), scratch: ("/", 2000)}).returncode == 0
    out = check({repo: ("/", 1000), scratch: ("/", 1000)})
    assert out.returncode == 1 and "1000 MB free, 2000 MB needed" in out.stderr


def test_a_separate_temp_disk_is_checked_on_its_own(disks):
    repo, scratch, check = disks
    assert check({repo: ("/", 8200), scratch: ("/tmp", 2000)}).returncode == 0  # no sum across two disks
    out = check({repo: ("/", 8200), scratch: ("/tmp", 100)})
    assert out.returncode == 1
    assert "/tmp" in out.stderr and "100 MB free, 2000 MB needed" in out.stderr and "repository" not in out.stderr
