"""The dyno's environment (requirements.txt in a fresh venv, as `make serve-env` builds it): what it can do.

`make test` builds it and passes its path in WHATSTHAT_SERVE_VENV; without it these tests are skipped
with that reason (a plain `pytest` run in the dev venv).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

SERVE_VENV = os.environ.get("WHATSTHAT_SERVE_VENV")


@pytest.fixture(scope="module")
def serve_bin() -> Path:
    if not SERVE_VENV:
        pytest.skip("WHATSTHAT_SERVE_VENV is not set (make test builds .venv-serve and sets it)")
    path = Path(SERVE_VENV) / "bin"
    assert (path / "python").exists(), f"WHATSTHAT_SERVE_VENV={SERVE_VENV} is not a venv"
    return path


def run(serve_bin: Path, *args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_it_has_cpu_torch_and_no_training_stack(serve_bin):
    code = ("import importlib.util as u, torch; "
            "print(torch.__version__, torch.cuda.is_available(), [m for m in ('fastai', 'torchvision') if u.find_spec(m)])")
    proc = run(serve_bin, serve_bin / "python", "-c", code)
    assert proc.returncode == 0, proc.stderr
    version, cuda, leaked = proc.stdout.split(maxsplit=2)
    assert version.endswith("+cpu") and cuda == "False" and leaked.strip() == "[]"


def test_training_commands_say_what_to_install_instead_of_a_traceback(serve_bin, tmp_path):
    (tmp_path / "a").mkdir()
    proc = run(serve_bin, serve_bin / "whatsthat", "train", str(tmp_path))
    assert proc.returncode == 1
    assert "pip install 'whatsthat[train]'" in proc.stderr and "Traceback" not in proc.stderr


def test_deploy_check_passes_for_the_repository_in_the_dyno_environment(serve_bin, tmp_path):
    if not (ROOT / "export.safetensors").is_file():
        pytest.fail("export.safetensors is missing: the dyno has nothing to serve (whatsthat artifact export.pkl)")
    proc = run(serve_bin, serve_bin / "whatsthat", "deploy-check", str(ROOT), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
