"""Deployment files (requirements, Procfile, runtime) and the Voila command that serves the app."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from conftest import ROOT, edit
from model_fixture import tiny_model  # noqa: F401  (pytest fixture)

from whatsthat.errors import WhatsthatError
from whatsthat.web import serve as servemod
from whatsthat.web.deploy import (
    CPU_INDEX,
    check_deploy,
    check_lock,
    check_procfile,
    check_python_version,
    check_requirements,
    installed_version,
)
from whatsthat.web.serve import find_notebook, procfile_line, serve, voila_command

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


MODEL_FILES = ("export.pkl", "export.card.json", "export.safetensors", "export.serving.json")


@pytest.fixture
def deployable(repo_copy, tiny_model):  # noqa: F811
    for name in MODEL_FILES:  # what a maintainer commits: the learner, its card and the serving artifact
        shutil.copy(tiny_model.with_name(name), repo_copy / name)
    return repo_copy


# -- the real repository's files --


def read_pins(path):
    return dict(line.split("==", 1) for line in path.read_text().splitlines() if "==" in line and not line.startswith("#"))


def test_real_requirements_are_the_cpu_serving_stack_without_training_libraries():
    problems = check_requirements(ROOT / "requirements.txt")
    assert [p for p in problems if "README" not in p] == []  # README.md: see test_real_repo_passes_...
    text = (ROOT / "requirements.txt").read_text()
    assert f"--extra-index-url {CPU_INDEX}" in text
    pins = {k.lower().replace("_", "-"): v for k, v in read_pins(ROOT / "requirements.txt").items()}
    assert pins["torch"].endswith("+cpu")
    for name in ("pillow", "pillow-heif", "safetensors", "ipywidgets", "voila", "efficientnet-lite-pytorch"):
        assert name in pins, name
    for name in ("fastai", "fastcore", "torchvision", "matplotlib", "pandas", "scipy", "spacy"):
        assert name not in pins, name  # serving loads the artifact: none of the training stack


def test_serving_and_dev_locks_agree_on_the_page_stack():
    # the page is developed and tested (notebook tests) with dev.lock's widgets, served with requirements.txt's
    serve = {k.lower().replace("_", "-"): v for k, v in read_pins(ROOT / "requirements.txt").items()}
    dev = {k.lower().replace("_", "-"): v for k, v in read_pins(ROOT / "requirements" / "dev.lock").items()}
    for name in ("ipywidgets", "jupyterlab-widgets", "widgetsnbextension", "voila", "jupyter-server", "pillow",
                 "pillow-heif", "safetensors", "efficientnet-lite-pytorch"):
        assert serve[name] == dev[name], name


@pytest.mark.parametrize(
    "old,new,expect",
    [
        ("torch==2.13.0+cpu", "torch==2.13.0", "not the CPU build"),
        ("torch==2.13.0+cpu", "torch>=2.1", "not pinned with =="),
        (f"--extra-index-url {CPU_INDEX}\n", "", "need '--extra-index-url"),
        ("voila==", "fastai==2.8.12\nvoila==", "does not use"),
        (".  # whatsthat", "# whatsthat", "does not install whatsthat itself"),
    ],
)
def test_broken_requirements(repo_copy, old, new, expect):
    edit(repo_copy / "requirements.txt", old, new)
    problems = check_requirements(repo_copy / "requirements.txt", has_artifact=True)
    assert any(expect in p for p in problems), problems


def test_a_bare_export_pkl_needs_fastai_on_the_dyno(repo_copy):
    problems = check_requirements(repo_copy / "requirements.txt", has_artifact=False)
    assert any("cannot load export.pkl" in p for p in problems), problems


def test_real_procfile_is_serves_procfile_line():
    assert (ROOT / "Procfile").read_text() == procfile_line() + "\n"
    assert check_procfile(ROOT) == []


def test_real_runtime_matches_this_python():
    assert check_python_version(ROOT) == []
    assert (ROOT / "runtime.txt").read_text().strip() == "python-" + ".".join(map(str, sys.version_info[:3]))
    assert (ROOT / ".python-version").read_text().strip() == PY


def test_binder_server_allows_the_same_upload_size_as_voila():
    config = json.loads((ROOT / ".jupyter" / "jupyter_server_config.json").read_text())
    assert config["ServerApp"]["tornado_settings"] == servemod.tornado_settings()  # upload size and gzip


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
        ("app.ipynb", "other.ipynb", "other.ipynb, which does not exist"),
        ("--port=$PORT", "--port=8866", "$PORT"),
        ("0.0.0.0", "127.0.0.1", "all interfaces"),
        ("web:", "worker:", "exactly one 'web:' line"),
        ("whatsthat serve --host=0.0.0.0", "voila --Voila.ip=0.0.0.0", "not `whatsthat serve`"),
        ("--model=export.pkl", "'--model=export.pkl", "does not parse"),
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
    assert problems == [
        "export.pkl is missing: train it (`whatsthat train`) and commit it with export.safetensors; the app serves it"
    ]


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


@pytest.mark.slow
def test_artifact_from_another_training(deployable, tiny_model):  # noqa: F811
    from safetensors.torch import load_file, save_file

    from whatsthat.model.artifact import artifact_paths

    weights, spec = artifact_paths(deployable / "export.pkl")
    state = {k: v + 0.5 if v.is_floating_point() else v for k, v in load_file(weights).items()}
    save_file(state, weights)
    description = json.loads(spec.read_text())
    description.pop("weights_sha256")  # as if written by hand: the logits comparison must still catch it
    spec.write_text(json.dumps(description))
    [problem] = check_deploy(deployable)
    assert "is not the model in export.pkl" in problem


@pytest.mark.slow
def test_a_deployment_without_export_pkl_serves_the_artifact(deployable):
    (deployable / "export.pkl").unlink()
    assert check_deploy(deployable) == []


def test_not_a_folder(tmp_path):
    with pytest.raises(WhatsthatError, match="not a folder"):
        check_deploy(tmp_path / "nope")


# -- the Voila command --


def test_voila_command_flags():
    cmd = voila_command("app.ipynb", 9999, "127.0.0.1", "/m/export.pkl", cull_idle_timeout=300, cull_interval=30)
    templates = str(ROOT / "whatsthat" / "web" / "templates")  # Voila finds the `whatsthat` template there
    assert cmd[:2] == ["env", "MPLBACKEND=Agg"] and cmd[2].startswith(f"JUPYTER_PATH={templates}")
    assert cmd[3:5] == ["WHATSTHAT_MODEL=/m/export.pkl", sys.executable]
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
        "--template=whatsthat",
        "--VoilaExecutor.iopub_timeout=60",  # not nbclient's 4 s: a slow kernel's app is waited for, not dropped
    ]:
        assert flag in cmd
    # the tornado settings survive traitlets' command-line parsing as a dict of the right types
    from traitlets import Dict
    from traitlets.config import Application

    class Probe(Application):
        tornado_settings = Dict(config=True)

    (setting,) = [a for a in cmd if a.startswith("--Voila.tornado_settings=")]
    probe = Probe()
    probe.parse_command_line([setting.replace("--Voila.", "--Probe.")])
    assert probe.tornado_settings == {"websocket_max_message_size": 64 * 2**20, "compress_response": True}
    # and the executor Voila renders the page with (voila/notebook_renderer.py passes it the app's config)
    # waits that long for the app's output
    import nbformat
    from voila.app import Voila
    from voila.execute import VoilaExecutor

    voila = Voila()
    voila.parse_command_line([a for a in cmd if a.startswith("--VoilaExecutor.")])
    assert VoilaExecutor(nbformat.v4.new_notebook(), config=voila.config).iopub_timeout == 60
    no_preheat = voila_command(preheat=False, voila=["voila"])
    assert not any("preheat" in a or "pool_size" in a for a in no_preheat)
    assert "voila" in no_preheat and "WHATSTHAT_MODEL" not in " ".join(no_preheat)


def test_voila_knows_every_flag_we_pass():
    help_all = subprocess.run(
        [sys.executable, "-m", "voila", "--help-all"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    from whatsthat.web.kernelpool import PageKernelManager
    from whatsthat.web.voilaapp import PageVoila

    ours = {"PageKernelManager": PageKernelManager, "PageVoila": PageVoila}  # whatsthat's own classes
    for arg in voila_command():
        if arg.startswith("--") and not arg.startswith("--MappingKernelManager."):
            # MappingKernelManager is configured through the server's kernel manager (checked live in test_browser)
            name = arg.split("=")[0]
            cls, _, trait = name[2:].partition(".")
            if cls in ours:
                assert trait in ours[cls].class_traits(config=True), name
            else:
                assert re.search(rf"^{re.escape(name)}\b", help_all, re.M), name


@pytest.mark.parametrize("kwargs", [{"cull_idle_timeout": 0}, {"cull_interval": -1}, {"pool_size": 0}])
def test_voila_command_refuses_unsafe_settings(kwargs):
    with pytest.raises(WhatsthatError):
        voila_command(**kwargs)


def test_procfile_line_keeps_port_for_the_shell():
    line = procfile_line()
    assert line.startswith("web: whatsthat serve ")  # the supervisor: model process + Voila, as locally
    assert " --port=$PORT " in line  # unquoted: the shell expands it
    assert "--host=0.0.0.0" in line and line.endswith(" --notebook=app.ipynb")


def test_procfile_parses_as_the_serve_command():
    """What Heroku runs is exactly `whatsthat serve` with these arguments: the CLI accepts them."""
    from whatsthat.cli import build_parser

    argv = procfile_line().removeprefix("web: whatsthat ").replace("$PORT", "5000").split()
    args = build_parser().parse_args(argv)
    assert (args.command, args.port, args.host, str(args.notebook)) == ("serve", 5000, "0.0.0.0", "app.ipynb")


def test_find_notebook(tmp_path, monkeypatch):
    assert find_notebook(ROOT / "app.ipynb") == (ROOT / "app.ipynb").resolve()
    monkeypatch.chdir(tmp_path)
    assert find_notebook() == (ROOT / "app.ipynb").resolve()  # from a checkout, anywhere
    with pytest.raises(WhatsthatError, match="app notebook not found"):
        find_notebook(tmp_path / "x.ipynb")


def test_serve_refuses_missing_model_before_starting(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(servemod, "run_voila_beside_model", lambda *a, **k: started.append(a))
    with pytest.raises(WhatsthatError, match="model file not found"):
        serve(tmp_path / "export.pkl")
    assert started == []


def test_serve_passes_the_page_options_on_and_refuses_bad_ones_before_starting(tmp_path, monkeypatch):
    # serve() keeps no list of its own: the options, their defaults and their checks are voila_settings'
    (tmp_path / "export.pkl").write_bytes(b"x")
    started = []
    monkeypatch.setattr(servemod, "run_voila_beside_model", lambda m, env, args, **k: started.append(args) or 0)
    with pytest.raises(WhatsthatError, match="culling must stay on"):
        serve(tmp_path / "export.pkl", echo=lambda s: None, cull_interval=0)
    assert started == []
    assert serve(tmp_path / "export.pkl", echo=lambda s: None, per_client=3, preheat=False) == 0
    [args] = started
    assert "--PageKernelManager.per_client=3" in args and "--preheat_kernel=True" not in args


def test_serve_runs_voila_in_the_notebook_folder_beside_the_model_process(tmp_path, monkeypatch):
    model = tmp_path / "export.pkl"
    model.write_bytes(b"x")
    calls = []
    def fake_run(m, env, args, *, cwd, kernel_factory, flags_url=None):
        spec = Path(env["JUPYTER_PATH"].split(os.pathsep)[0]) / "kernels" / "python3" / "kernel.json"
        calls.append((m, env, args, cwd, json.loads(spec.read_text()), kernel_factory))  # the spec exists while serving
        return 0

    monkeypatch.setattr(servemod, "run_voila_beside_model", fake_run)
    assert serve(model, port=9001, echo=lambda s: None, voila_args=["--debug"]) == 0
    [(m, env, args, cwd, spec, kernel_factory)] = calls
    assert m == model.resolve() and cwd == ROOT and args[-1] == "app.ipynb"
    assert env["WHATSTHAT_MODEL"] == str(model.resolve()) and "--port=9001" in args and "--debug" in args
    assert spec["argv"][1:3] == ["-m", "whatsthat.web.pagekernel"]
    # kernels are forked by the kernel factory, through the provisioner the package registers
    assert kernel_factory is True
    assert spec["metadata"]["kernel_provisioner"] == {"provisioner_name": "whatsthat-kernel-factory"}
    assert "whatsthat-kernel-factory" in {e.name for e in entry_points(group="jupyter_client.kernel_provisioners")}
    assert not Path(env["JUPYTER_PATH"].split(os.pathsep)[0]).exists()  # removed after serving


def test_serve_turns_the_kernel_factory_off_where_its_provisioner_is_not_registered(tmp_path, monkeypatch):
    # e.g. whatsthat run from a checkout on PYTHONPATH, not installed: Jupyter would refuse every kernel
    (tmp_path / "export.pkl").write_bytes(b"x")
    specs, said = [], []

    def fake_run(m, env, args, *, cwd, kernel_factory, flags_url=None):
        spec = Path(env["JUPYTER_PATH"].split(os.pathsep)[0]) / "kernels" / "python3" / "kernel.json"
        specs.append((json.loads(spec.read_text()), kernel_factory))
        return 0

    monkeypatch.setattr(servemod, "run_voila_beside_model", fake_run)
    monkeypatch.setattr(servemod, "provisioner_registered", lambda: False)
    assert serve(tmp_path / "export.pkl", echo=said.append) == 0
    [(spec, kernel_factory)] = specs
    assert kernel_factory is False and "kernel_provisioner" not in spec["metadata"]
    assert any("kernel factory off" in s and "pip install ." in s for s in said)
    # and where the system cannot fork and watch kernels (no pidfds: Linux before 5.3, macOS)
    specs.clear()
    monkeypatch.setattr(servemod, "provisioner_registered", lambda: True)
    monkeypatch.setattr(servemod, "kernel_factory_unsupported", lambda: "this system has no pidfd_open")
    assert serve(tmp_path / "export.pkl", echo=said.append) == 0
    [(spec, kernel_factory)] = specs
    assert kernel_factory is False and "kernel_provisioner" not in spec["metadata"]
    assert any("kernel factory off: this system has no pidfd_open" in s for s in said)


def test_serve_accepts_an_artifact_without_export_pkl(tmp_path, monkeypatch):
    (tmp_path / "export.safetensors").write_bytes(b"x")
    (tmp_path / "export.serving.json").write_text("{}")
    monkeypatch.setattr(servemod, "run_voila_beside_model", lambda m, env, args, cwd, kernel_factory, flags_url=None: 0)
    assert serve(tmp_path / "export.pkl", echo=lambda s: None) == 0


def test_the_server_imports_voila_without_the_unneeded_optional_modules():
    # in a fresh interpreter, as `whatsthat serve` does: the grammar-compiling module never loads, and
    # jsonschema keeps every format check but the two it would have provided
    code = (
        "import sys\n"
        "from whatsthat.web.serve import skip_unneeded_imports\n"
        "print(skip_unneeded_imports())\n"
        "import whatsthat.web.voilaapp\n"
        "from jsonschema import Draft7Validator\n"
        "checks = Draft7Validator.FORMAT_CHECKER.checkers\n"
        "print('rfc3987_syntax' in sys.modules and sys.modules['rfc3987_syntax'] is not None, 'lark' in sys.modules,\n"
        "      'iri' in checks, 'uri' in checks, 'date-time' in checks)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["['rfc3987_syntax']", "False False False True True"]


def test_skip_leaves_an_imported_module_alone(monkeypatch):
    import json as already

    monkeypatch.delitem(sys.modules, "whatsthat_never_imported", raising=False)
    assert servemod.skip_unneeded_imports(["json", "whatsthat_never_imported"]) == ["whatsthat_never_imported"]
    assert sys.modules["json"] is already and sys.modules["whatsthat_never_imported"] is None
    with pytest.raises(ModuleNotFoundError):
        import whatsthat_never_imported  # noqa: F401


def test_no_installed_jupyter_schema_uses_the_formats_the_skipped_module_checks():
    # what makes skipping it safe: if a Jupyter, Voila or whatsthat schema starts to use "iri" formats,
    # UNNEEDED_OPTIONAL_MODULES must drop rfc3987_syntax
    import importlib.util

    roots = [Path(importlib.util.find_spec(name).origin).parent
             for name in ("jupyter_server", "jupyter_events", "voila", "nbformat", "whatsthat")]
    schemas = [f for root in roots for pattern in ("*.json", "*.yaml", "*.yml") for f in root.rglob(pattern)]
    assert any("event_schemas" in str(f) for f in schemas)  # the scan reaches jupyter_server's events
    uses = [str(f) for f in schemas if re.search(r"""["']?format["']?\s*:\s*["']?iri""", f.read_text(errors="replace"))]
    assert uses == []


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
    for name in ("tools/lock.py", "pyproject.toml", "requirements/dev.in", "requirements/dev.lock",
                 "requirements/serve.in", "requirements.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    assert run_lock_tool(tmp_path, "check").returncode == 0
    edit(tmp_path / "pyproject.toml", '"pillow>=10.0",', '"pillow>=10.0",\n    "left-pad>=1",')
    proc = run_lock_tool(tmp_path, "check")
    assert proc.returncode == 1 and "run `make lock`" in proc.stderr and "Traceback" not in proc.stderr
    edit(tmp_path / "pyproject.toml", 'description = "', 'description = "Edited. ')
    edit(tmp_path / "pyproject.toml", '\n    "left-pad>=1",', "")
    assert run_lock_tool(tmp_path, "check").returncode == 0  # only dependency edits invalidate the lock
    edit(tmp_path / "requirements" / "serve.in", "torch==2.13.0", "torch==2.13.0\nleft-pad>=1")
    proc = run_lock_tool(tmp_path, "check")
    assert proc.returncode == 1 and "requirements/serve.in changed" in proc.stderr


# -- the dyno's torch, pruned after pip install (bin/post_compile) --


def test_prune_torch_deletes_tests_headers_and_tools_but_not_what_serving_runs(tmp_path):
    from whatsthat.web.deploy import prune_torch, torch_pruned

    torch_dir = tmp_path / "torch"
    files = {"__init__.py": 10, "lib/libtorch_cpu.so": 100, "test/atest": 30, "include/ATen/ATen.h": 20,
             "bin/test_api": 40, "bin/protoc": 5, "bin/torch_shm_manager": 7, "nn/modules/conv.py": 3}
    for name, size in files.items():
        (torch_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (torch_dir / name).write_bytes(b"x" * size)
    assert prune_torch(torch_dir) == 30 + 20 + 40 + 5
    left = sorted(p.relative_to(torch_dir).as_posix() for p in torch_dir.rglob("*") if p.is_file())
    assert left == ["__init__.py", "bin/torch_shm_manager", "lib/libtorch_cpu.so", "nn/modules/conv.py"]
    assert not (torch_dir / "test").exists() and not (torch_dir / "include").exists()
    assert [name for name in files if torch_pruned(name)] == ["test/atest", "include/ATen/ATen.h", "bin/test_api",
                                                               "bin/protoc"]


def test_heroku_runs_the_prune_after_pip_install():
    hook = ROOT / "bin" / "post_compile"
    assert hook.is_file() and hook.stat().st_mode & 0o111, "bin/post_compile must exist and be executable"
    assert "prune_torch()" in hook.read_text()
    ignored = (ROOT / ".slugignore").read_text().split()
    assert "export.pkl" in ignored and "whatsthat" not in ignored and "app.ipynb" not in ignored
