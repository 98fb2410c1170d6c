"""Deployment files (requirements, Procfile, runtime) and the Voila command that serves the app."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT
from model_fixture import tiny_model  # noqa: F401  (pytest fixture)

from whatsthat import serve as servemod
from whatsthat.deploy import (
    CPU_INDEX,
    check_deploy,
    check_lock,
    check_procfile,
    check_python_version,
    check_requirements,
    installed_version,
    requirements_lines,
)
from whatsthat.errors import WhatsthatError
from whatsthat.serve import find_notebook, procfile_line, serve, voila_command

DEPLOY_FILES = ["requirements.txt", "Procfile", "runtime.txt", ".python-version", "app.ipynb", "pyproject.toml"]
PY = "{}.{}".format(*sys.version_info[:2])


@pytest.fixture
def repo_copy(tmp_path):
    """The repository's deployment files copied into tmp (plus a README so `pip install .` could work)."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in DEPLOY_FILES:
        shutil.copy(ROOT / name, root / name)
    (root / "README.md").write_text("# whatsthat\n")
    return root


@pytest.fixture
def deployable(repo_copy, tiny_model):  # noqa: F811
    shutil.copy(tiny_model, repo_copy / "export.pkl")
    shutil.copy(tiny_model.with_name("export.card.json"), repo_copy / "export.card.json")
    return repo_copy


def edit(path, old, new):
    text = path.read_text()
    assert old in text, (old, path)
    path.write_text(text.replace(old, new))


# -- the real repository's files --


def test_requirements_txt_is_what_requirements_lines_generates():
    assert (ROOT / "requirements.txt").read_text().splitlines() == requirements_lines()


def test_real_requirements_pin_installed_versions_and_cpu_torch():
    problems = check_requirements(ROOT / "requirements.txt")
    assert [p for p in problems if "README" not in p] == []  # README.md: see test_real_repo_passes_...
    text = (ROOT / "requirements.txt").read_text()
    assert f"--extra-index-url {CPU_INDEX}" in text
    torch = installed_version("torch").split("+")[0]
    assert f"torch=={torch}+cpu" in text.splitlines()
    for name in ("fastai", "fastcore", "pillow", "ipywidgets", "voila", "efficientnet-lite-pytorch"):
        assert f"{name}=={installed_version(name)}" in text.splitlines()


def test_real_procfile_is_serves_procfile_line():
    assert (ROOT / "Procfile").read_text() == procfile_line() + "\n"
    assert check_procfile(ROOT) == []


def test_real_runtime_matches_this_python():
    assert check_python_version(ROOT) == []
    assert (ROOT / "runtime.txt").read_text().strip() == "python-" + ".".join(map(str, sys.version_info[:3]))
    assert (ROOT / ".python-version").read_text().strip() == PY


def test_binder_server_allows_the_same_upload_size_as_voila():
    config = json.loads((ROOT / ".jupyter" / "jupyter_server_config.json").read_text())
    assert config["ServerApp"]["tornado_settings"]["websocket_max_message_size"] == servemod.MAX_UPLOAD_MB * 2**20


def test_binder_and_heroku_docs_exist():
    text = (ROOT / "README.md").read_text()
    assert "urlpath=voila/render/app.ipynb" in text
    assert "git push heroku" in text


@pytest.mark.slow
def test_real_repo_passes_with_a_loadable_model(tiny_model):  # noqa: F811
    # also catches a pyproject `readme` that is not committed: `pip install .` fails on the server
    assert check_deploy(ROOT, model=tiny_model) == []


@pytest.mark.slow
def test_shipped_model_passes_deploy_check_when_present():
    if not (ROOT / "export.pkl").is_file():
        pytest.skip("export.pkl has not been trained yet")
    assert check_deploy(ROOT) == []


# -- broken copies --


@pytest.mark.slow
def test_copy_is_deployable(deployable):
    assert check_deploy(deployable) == []


@pytest.mark.parametrize(
    "old,new,expect",
    [
        ("fastai==", "fastai==0.0.1\n# fastai==", "fastai==0.0.1 but"),
        ("torch==", "torch==1.0.0+cpu\n# ", "torch==1.0.0+cpu but"),
        ("+cpu\ntorchvision", "\ntorchvision", "not the CPU build"),
        (f"--extra-index-url {CPU_INDEX}", "", "+cpu builds need"),
        ("voila==", "voila>=0.5\n# ", "'voila>=0.5' is not pinned"),
        (".  # whatsthat", "# whatsthat", "does not install whatsthat"),
        ("numpy==", "surely-not-installed-pkg==1.0\nnumpy==", "not installed here"),
    ],
)
def test_broken_requirements(repo_copy, old, new, expect):
    edit(repo_copy / "requirements.txt", old, new)
    problems = check_requirements(repo_copy / "requirements.txt")
    assert any(expect in p for p in problems), problems


def test_missing_requirements(repo_copy):
    (repo_copy / "requirements.txt").unlink()
    assert any("requirements.txt is missing" in p for p in check_requirements(repo_copy / "requirements.txt"))


def test_missing_readme_breaks_pip_install(repo_copy):
    (repo_copy / "README.md").unlink()
    assert any("README.md" in p for p in check_requirements(repo_copy / "requirements.txt"))


@pytest.mark.parametrize(
    "old,new,expect",
    [
        ("app.ipynb", "other.ipynb", "other.ipynb, which does not exist"),
        (" app.ipynb", "", "names no notebook"),
        ("--port=$PORT", "--port=8866", "$PORT"),
        ("0.0.0.0", "127.0.0.1", "all interfaces"),
        ("--MappingKernelManager.cull_idle_timeout=600", "", "cull idle kernels"),
        ("cull_idle_timeout=600", "cull_idle_timeout=0", "cull idle kernels"),
        ("web:", "worker:", "exactly one 'web:' line"),
        ("'--Voila.tornado_settings={\"websocket_max_message_size\":67108864}' ", "", "10 MiB websocket limit"),
    ],
)
def test_broken_procfile(repo_copy, old, new, expect):
    edit(repo_copy / "Procfile", old, new)
    problems = check_procfile(repo_copy)
    assert any(expect in p for p in problems), problems


def test_missing_procfile(repo_copy):
    (repo_copy / "Procfile").unlink()
    assert "Procfile is missing" in check_procfile(repo_copy)[0]


@pytest.mark.parametrize(
    "name,text,expect",
    [
        ("runtime.txt", "python-2.7.18", "runtime.txt says python-2.7.18"),
        ("runtime.txt", "3.11", "expected e.g. python-"),
        (".python-version", "3.9", ".python-version says 3.9"),
    ],
)
def test_broken_python_version(repo_copy, name, text, expect):
    (repo_copy / name).write_text(text + "\n")
    problems = check_python_version(repo_copy)
    assert any(expect in p for p in problems), problems


def test_runtime_compares_major_minor_only(repo_copy):
    (repo_copy / "runtime.txt").write_text(f"python-{PY}.999\n")
    assert check_python_version(repo_copy) == []
    (repo_copy / "runtime.txt").unlink()
    assert "runtime.txt is missing" in check_python_version(repo_copy)[0]


def test_missing_model(repo_copy):
    problems = check_deploy(repo_copy)
    assert problems == ["export.pkl is missing: train it (`whatsthat train`) and commit it; the app serves it"]


def test_corrupt_model(repo_copy):
    (repo_copy / "export.pkl").write_bytes(b"not a pickle at all")
    [problem] = check_deploy(repo_copy)
    assert problem.startswith("export.pkl does not load")


def test_lfs_pointer_model(repo_copy):
    (repo_copy / "export.pkl").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n")
    [problem] = check_deploy(repo_copy)
    assert "git lfs pull" in problem


@pytest.mark.slow
def test_model_without_card(deployable):
    (deployable / "export.card.json").unlink()
    assert check_deploy(deployable) == ["export.card.json is missing beside export.pkl: the page shows no model card"]


@pytest.mark.slow
def test_card_from_another_training(deployable):
    card = json.loads((deployable / "export.card.json").read_text())
    card["classes"] = ["grizzly", "black", "teddy"]
    (deployable / "export.card.json").write_text(json.dumps(card))
    [problem] = check_deploy(deployable)
    assert "different trainings" in problem


def test_not_a_folder(tmp_path):
    with pytest.raises(WhatsthatError, match="not a folder"):
        check_deploy(tmp_path / "nope")


# -- the Voila command --


def test_voila_command_flags():
    cmd = voila_command("app.ipynb", 9999, "127.0.0.1", "/m/export.pkl", cull_idle_timeout=300, cull_interval=30)
    assert cmd[:4] == ["env", "MPLBACKEND=Agg", "WHATSTHAT_MODEL=/m/export.pkl", sys.executable]
    assert cmd[-1] == "app.ipynb"
    for flag in [
        "--port=9999",
        "--Voila.ip=127.0.0.1",
        "--no-browser",
        "--strip_sources=True",
        "--show_tracebacks=False",
        "--MappingKernelManager.cull_idle_timeout=300",
        "--MappingKernelManager.cull_interval=30",
        "--MappingKernelManager.cull_connected=True",
        "--preheat_kernel=True",
        "--pool_size=1",
        '--Voila.tornado_settings={"websocket_max_message_size":67108864}',
    ]:
        assert flag in cmd
    no_preheat = voila_command(preheat=False, voila=["voila"])
    assert not any("preheat" in a or "pool_size" in a for a in no_preheat)
    assert "voila" in no_preheat and "WHATSTHAT_MODEL" not in " ".join(no_preheat)


def test_voila_knows_every_flag_we_pass():
    help_all = subprocess.run(
        [sys.executable, "-m", "voila", "--help-all"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    for arg in voila_command():
        if arg.startswith("--") and not arg.startswith("--MappingKernelManager."):
            # MappingKernelManager is configured through the server's kernel manager (checked live in test_browser)
            name = arg.split("=")[0]
            assert re.search(rf"^{re.escape(name)}\b", help_all, re.M), name


@pytest.mark.parametrize("kwargs", [{"cull_idle_timeout": 0}, {"cull_interval": -1}, {"pool_size": 0}])
def test_voila_command_refuses_unsafe_settings(kwargs):
    with pytest.raises(WhatsthatError):
        voila_command(**kwargs)


def test_procfile_line_keeps_port_for_the_shell():
    line = procfile_line()
    assert line.startswith("web: env MPLBACKEND=Agg voila ")
    assert " --port=$PORT " in line  # unquoted: the shell expands it
    assert """'--Voila.tornado_settings={"websocket_max_message_size":67108864}'""" in line
    assert line.endswith(" app.ipynb")


def test_find_notebook(tmp_path, monkeypatch):
    assert find_notebook(ROOT / "app.ipynb") == (ROOT / "app.ipynb").resolve()
    monkeypatch.chdir(tmp_path)
    assert find_notebook() == (ROOT / "app.ipynb").resolve()  # from a checkout, anywhere
    with pytest.raises(WhatsthatError, match="app notebook not found"):
        find_notebook(tmp_path / "x.ipynb")


def test_serve_refuses_missing_model_before_starting(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(servemod.subprocess, "Popen", lambda *a, **k: started.append(a))
    with pytest.raises(WhatsthatError, match="model file not found"):
        serve(tmp_path / "export.pkl")
    assert started == []


def test_serve_runs_voila_in_the_notebook_folder(tmp_path, monkeypatch):
    model = tmp_path / "export.pkl"
    model.write_bytes(b"x")
    calls = []

    class FakePopen:
        def __init__(self, cmd, cwd):
            calls.append((cmd, cwd))

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(servemod.subprocess, "Popen", FakePopen)
    assert serve(model, port=9001, echo=lambda s: None) == 0
    [(cmd, cwd)] = calls
    assert cwd == ROOT and cmd[-1] == "app.ipynb"
    assert f"WHATSTHAT_MODEL={model.resolve()}" in cmd and "--port=9001" in cmd


# -- the lock (requirements/dev.lock) and drift from it --


def test_real_environment_and_shipped_card_match_the_lock():
    """`make install` installs the lock exactly, and the shipped model was made with the locked versions."""
    card = json.loads((ROOT / "export.card.json").read_text()) if (ROOT / "export.card.json").is_file() else {}
    assert check_lock(ROOT, card) == []


def test_lock_drift_in_this_environment_is_reported(repo_copy):
    (repo_copy / "requirements").mkdir()
    fastai = installed_version("fastai")
    (repo_copy / "requirements" / "dev.lock").write_text(f"# a lock\nnumpy==0.0.1\nfastai=={fastai}\n")
    problems = check_lock(repo_copy)
    assert len(problems) == 1
    assert "numpy " + installed_version("numpy") + " (locked 0.0.1)" in problems[0]
    assert "make install" in problems[0] and "fastai" not in problems[0]


def test_model_made_with_other_versions_than_the_lock_must_be_retrained(repo_copy):
    (repo_copy / "requirements").mkdir()
    fastcore = installed_version("fastcore")
    (repo_copy / "requirements" / "dev.lock").write_text(f"fastcore=={fastcore}\n")
    card = {"versions": {"fastcore": "1.0.0", "pillow": "1.0.0"}}  # pillow is not baked into the model
    problems = check_lock(repo_copy, card)
    assert problems == [problems[0]] and f"fastcore 1.0.0 (locked {fastcore})" in problems[0]
    assert "retrain" in problems[0] and "pillow" not in problems[0]
    assert check_lock(repo_copy, {"versions": {"fastcore": fastcore}}) == []


def test_no_lock_no_lock_problems(repo_copy):
    assert check_lock(repo_copy, {"versions": {"fastcore": "1.0.0"}}) == []


def run_lock_tool(root, *args):
    return subprocess.run([sys.executable, str(root / "tools" / "lock.py"), *args], capture_output=True, text=True)


def test_lock_is_current_with_pyproject():
    proc = run_lock_tool(ROOT, "check")
    assert proc.returncode == 0, proc.stderr


def test_lock_check_fails_when_dependencies_change_without_relocking(tmp_path):
    for name in ("tools/lock.py", "pyproject.toml", "requirements/dev.in", "requirements/dev.lock"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    assert run_lock_tool(tmp_path, "check").returncode == 0
    edit(tmp_path / "pyproject.toml", '"pillow>=10.0",', '"pillow>=10.0",\n    "left-pad>=1",')
    proc = run_lock_tool(tmp_path, "check")
    assert proc.returncode == 1 and "run `make lock`" in proc.stderr and "Traceback" not in proc.stderr
    edit(tmp_path / "pyproject.toml", 'description = "', 'description = "Edited. ')
    edit(tmp_path / "pyproject.toml", '\n    "left-pad>=1",', "")
    assert run_lock_tool(tmp_path, "check").returncode == 0  # only dependency edits invalidate the lock
