"""The Dockerfile Hugging Face Spaces builds: its checks, its .dockerignore, and its commands run for real.

No Docker daemon is needed for the main test: it reads the Dockerfile and does what `docker build` and
`docker run` would, on this machine. A fresh venv stands in for the image's Python (the FROM line), the
build context is this checkout less what .dockerignore leaves out, each RUN runs in the WORKDIR with
`sh -c` (useradd excepted: it changes the image's /etc/passwd, not this machine's), and the CMD runs as
the USER, on the port Spaces sends visitors to. One difference, said where it is made: the server
listens on 127.0.0.1, not 0.0.0.0 (tests open no port beyond this machine). Where a daemon answers,
a second test builds the real image.
"""

from __future__ import annotations

import fnmatch
import html
import importlib.util
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import venv
from pathlib import Path

import psutil
import pytest
from browser_support import START_TIMEOUT, kernel_factories_of, kernels_of, model_processes_of, stop_server
from conftest import ROOT, edit, isolated_env
from model_fixture import tiny_model  # noqa: F401  (pytest fixture)

from whatsthat.errors import WhatsthatError
from whatsthat.model.files import ModelFiles
from whatsthat.web.deploy import (
    SPACE_CARD,
    SPACES_PORT,
    check_deploy,
    check_dockerfile,
    check_lfs,
    check_space_card,
    dockerfile_instructions,
    exec_form,
    read_space_card,
)
from whatsthat.web.preview import page_meta
from whatsthat.web.serve import tornado_settings, voila_settings

PY = tuple(sys.version_info[:2])
# RUN commands that set up the image's operating system, not the environment: not run on this machine.
IMAGE_ONLY = ("useradd",)
INSTALL_TIMEOUT = 900  # a fresh install of requirements.txt: a few minutes on 2 busy cores


def dockerignore_patterns(root: Path = ROOT) -> list[str]:
    lines = (root / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [ln.strip().lstrip("/") for ln in lines if ln.strip() and not ln.startswith("#")]


def dockerignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's `patterns` leave `relative` (a path in the build context) out.

    The part of Docker's rules this project's .dockerignore uses: a pattern matches the path or a folder
    above it, and a leading `**/` matches at any depth (the top included). No `!` exceptions.
    """
    parts = relative.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        assert not pattern.startswith("!"), "the test's matcher has no `!` exceptions"
        candidates = [pattern, pattern.removeprefix("**/")]
        for prefix in prefixes:
            if any(fnmatch.fnmatchcase(prefix, c) for c in candidates):
                return True
            if pattern.startswith("**/") and any(fnmatch.fnmatchcase(prefix, "*/" + c) for c in candidates[1:]):
                return True
    return False


# -- checks (fast) --


def test_the_repositorys_dockerfile_passes_the_spaces_checks():
    assert check_dockerfile(ROOT, version=PY) == []


def test_the_dockerfile_builds_from_the_python_that_made_the_model():
    runtime = (ROOT / "runtime.txt").read_text().strip().removeprefix("python-")
    base = dict(dockerfile_instructions((ROOT / "Dockerfile").read_text()))["FROM"]
    assert base.startswith(f"python:{runtime}"), (base, runtime)


@pytest.fixture
def space(tmp_path):
    """A Space's files: this repository's Dockerfile, requirements, notebook, and a README with the card."""
    for name in ("Dockerfile", "requirements.txt", "app.ipynb", "runtime.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "README.md").write_text(SPACE_CARD + "# my classifier\n")
    return tmp_path


@pytest.mark.parametrize(
    "old,new,expect",
    [
        ("FROM python:3.11.7-slim", "FROM python:3.12-slim", "made with Python 3.11"),
        ("FROM python:3.11.7-slim", "FROM ubuntu:24.04", "official python:3.11"),
        ("-r requirements.txt", "torch voila", "does not `pip install -r requirements.txt`"),
        ("-r requirements.txt && ", "-r requirements.txt torch && ", "installs 'torch' without a version"),
        ("USER user\n", "", "runs the page as root"),
        ("USER user\n", "USER user\nUSER 0\n", "runs the page as root"),
        ('"--port=7860"', '"--port=8866"', "sends visitors to 7860"),
        ('"--host=0.0.0.0", ', "", "--host=0.0.0.0"),
        ('"--notebook=app.ipynb"', '"--notebook=page.ipynb"', "page.ipynb, which does not exist"),
        ('CMD ["whatsthat", "serve", ', 'CMD ["voila", ', "not `whatsthat serve`"),
        ('CMD ["whatsthat", "serve", ', "CMD whatsthat serve #", "shell form"),
        (', "--frame-ancestors=https://huggingface.co"', "", "in a frame"),
    ],
)
def test_a_broken_dockerfile_says_what_is_wrong(space, old, new, expect):
    edit(space / "Dockerfile", old, new)
    problems = check_dockerfile(space, version=(3, 11))
    assert any(expect in p for p in problems), problems


def test_the_page_may_be_framed_by_other_sites_only_when_asked():
    assert "headers" not in tornado_settings()  # Jupyter Server's own policy: frame-ancestors 'self'
    csp = tornado_settings(frame_ancestors="https://huggingface.co")["headers"]["Content-Security-Policy"]
    assert csp == "frame-ancestors 'self' https://huggingface.co"
    with pytest.raises(WhatsthatError, match="sites separated by spaces"):
        tornado_settings(frame_ancestors="https://x; script-src *")
    _, args = voila_settings(frame_ancestors="https://huggingface.co")
    assert any("frame-ancestors 'self' https://huggingface.co" in a for a in args if a.startswith("--Voila.tornado_settings="))


def test_no_dockerfile(space):
    (space / "Dockerfile").unlink()
    assert ["Dockerfile is missing" in p for p in check_dockerfile(space)] == [True]


def test_the_port_comes_from_the_space_card(space):
    edit(space / "README.md", "app_port: 7860", "app_port: 8000")
    problems, port = check_space_card(space)
    assert (problems, port) == ([], 8000)
    assert any("sends visitors to 8000" in p for p in check_dockerfile(space, version=(3, 11), port=port))


@pytest.mark.parametrize(
    "readme,expect",
    [
        ("# whatsthat\n", "has no Space card"),
        ("---\nsdk: gradio\napp_port: 7860\n---\n", "the page needs `sdk: docker`"),
        ("---\nsdk: docker\napp_port: http\n---\n", "must be a port number"),
        ("---\nsdk: docker\n# never closed\n", "has no Space card"),
    ],
)
def test_a_missing_or_wrong_space_card(space, readme, expect):
    (space / "README.md").write_text(readme)
    problems, _ = check_space_card(space)
    assert any(expect in p for p in problems), problems


def test_the_card_shown_to_the_maintainer_is_one_spaces_accepts(space):
    (space / "README.md").write_text("# whatsthat\n")
    problems, _ = check_space_card(space)
    shown = "\n".join(line.removeprefix("    ") for line in problems[0].splitlines()[1:]) + "\n"
    assert shown == SPACE_CARD
    assert read_space_card_text(SPACE_CARD) == {"title": "whatsthat", "emoji": "🐻", "sdk": "docker", "app_port": "7860"}


def read_space_card_text(text: str) -> dict[str, str] | None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "README.md").write_text(text, encoding="utf-8")
        return read_space_card(Path(tmp) / "README.md")


def test_the_projects_readme_is_not_a_space_card():
    # GitHub would show the header as a table above the project's front page: the card lives on the Space's branch
    assert read_space_card(ROOT / "README.md") is None


def test_the_docs_command_that_adds_the_space_card_writes_the_card_deploy_check_asks_for(tmp_path):
    line = next(ln.strip() for ln in (ROOT / "docs" / "deploy.md").read_text().splitlines()
                if ln.strip().startswith("printf") and "sdk: docker" in ln)
    (tmp_path / "README.md").write_text("# whatsthat\n")
    proc = subprocess.run(["bash", "-c", line + " && mv README.tmp README.md"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "README.md").read_text(encoding="utf-8") == SPACE_CARD + "# whatsthat\n"
    assert check_space_card(tmp_path) == ([], SPACES_PORT)


def test_binary_model_files_over_a_megabyte_must_go_through_git_lfs(tmp_path):
    model = tmp_path / "export.pkl"
    model.write_bytes(b"\0" * 2_000_000)
    (tmp_path / "export.card.json").write_text("{}" + " " * 2_000_000)  # big, but text: the Hub takes it
    (tmp_path / "export.ood.safetensors").write_bytes(b"\0" * 1000)  # binary, but small
    assert ["export.pkl: binary files over 1 MB" in p for p in check_lfs(tmp_path, model)] == [True]
    (tmp_path / ".gitattributes").write_text("*.pkl filter=lfs diff=lfs merge=lfs -text\n")
    assert check_lfs(tmp_path, model) == []


@pytest.mark.slow
def test_the_spaces_target_checks_the_space_and_not_the_procfile(space, tiny_model):  # noqa: F811
    for path in ModelFiles(tiny_model).all:
        if path.is_file():
            shutil.copy(path, space / path.name)
    assert [p for p in check_deploy(space, target="heroku") if "Procfile is missing" in p]
    assert any("outside Git LFS" in p for p in check_deploy(space, target="spaces"))
    (space / ".gitattributes").write_text("export.* filter=lfs diff=lfs merge=lfs -text\n")
    assert check_deploy(space, target="spaces") == []


def test_the_dockerignore_keeps_environments_data_and_caches_out_and_the_page_in():
    patterns = dockerignore_patterns()
    for left_out in (".venv", ".venv-serve/bin/python", ".venv-phone", ".git/HEAD", "data/bears/a.jpg",
                     "datasets/x.jpg", "whatsthat/__pycache__/cli.cpython-311.pyc", "__pycache__/x.pyc",
                     ".pytest_cache/v", ".ruff_cache/x", "export.pkl", "tests/conftest.py", "train.ipynb",
                     ".ipynb_checkpoints/app.ipynb", "whatsthat.egg-info/PKG-INFO"):
        assert dockerignored(left_out, patterns), left_out
    for kept in ("app.ipynb", "export.safetensors", "export.serving.json", "export.card.json",
                 "export.ood.safetensors", "requirements.txt", "pyproject.toml", "README.md",
                 "whatsthat/cli.py", "whatsthat/web/templates/voila/templates/whatsthat/index.html.j2",
                 "bin/post_compile"):
        assert not dockerignored(kept, patterns), kept


# -- the Dockerfile's commands, run (slow) --


def listener_on(port: int) -> str | None:
    """Who listens on 127.0.0.1/0.0.0.0:`port` ("pid 123 (python)"), or None when the port is free."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return None
        except OSError:
            pass
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            try:
                return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
            except psutil.NoSuchProcess:
                continue
    return "another process"


def require_free(port: int) -> None:
    holder = listener_on(port)
    if holder is not None:
        pytest.fail(f"port {port} is taken by {holder}: the Dockerfile's CMD serves on it, as Spaces expects. "
                    f"Stop that server (a local Space or Gradio app uses {port} too) and run the test again.")


def copy_context(dest: Path, root: Path = ROOT) -> None:
    """The build context `docker build` sends: `root` less what .dockerignore leaves out."""
    patterns = dockerignore_patterns(root)
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        dirnames[:] = [d for d in dirnames if not dockerignored((rel / d).as_posix(), patterns)]
        for name in filenames:
            if not dockerignored((rel / name).as_posix(), patterns):
                (dest / rel).mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(dirpath) / name, dest / rel / name)


def offline_requirements(context: Path) -> None:
    """requirements.txt without its PyTorch CPU index line, as `tools/lock.py serve` builds .venv-serve.

    That index is not reachable from every machine (tests reach no network of their own), and pip waits
    minutes on one it cannot reach; the same pinned torch==2.13.0+cpu then comes from pip's configured
    sources, or pip fails to find it: it never picks another version.
    """
    spec = importlib.util.spec_from_file_location("lock", ROOT / "tools" / "lock.py")
    lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lock)
    path = context / "requirements.txt"
    path.write_text(lock.without_cpu_index(path.read_text(encoding="utf-8")), encoding="utf-8")


def run_as(uid: int | None, home: Path):
    """Popen keyword arguments that run a command as `uid` (when this test runs as root), with `home`."""
    if uid is None:
        return {}
    for path in [home, *home.rglob("*")]:
        os.chown(path, uid, uid)
    return {"user": uid, "group": uid, "extra_groups": []}


@pytest.mark.slow
def test_the_dockerfiles_commands_serve_the_page_on_7860(tmp_path):
    require_free(SPACES_PORT)  # before minutes of installing, and again before serving
    steps = dockerfile_instructions((ROOT / "Dockerfile").read_text(encoding="utf-8"))
    base = dict(steps)["FROM"]
    if not base.startswith("python:{}.{}".format(*PY)):
        pytest.skip(f"the image's Python is {base}; this machine's is {sys.version.split()[0]}")
    # The image's filesystem: readable by the app's user (uid 1000 on Spaces), like / in the container.
    image = Path(tempfile.mkdtemp(prefix="whatsthat-image-"))  # not in tmp_path: pytest's folders are root's only
    image.chmod(0o755)
    context = tmp_path / "context"
    context.mkdir()
    copy_context(context)
    offline_requirements(context)
    python = image / "usr" / "local"  # the fresh Python that FROM gives
    venv.create(python, with_pip=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{python / 'bin'}{os.pathsep}{env['PATH']}"
    workdir, user, cmd, port = image, None, None, None
    for op, args in steps:
        if op == "WORKDIR":
            workdir = image / args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif op == "COPY":
            *sources, dest = shlex.split(args)
            target = workdir / dest
            for src in (s for s in sources if not s.startswith("--")):
                path = context / src
                if path.is_dir():
                    shutil.copytree(path, target if src != "." else workdir, dirs_exist_ok=True)
                else:
                    (target if dest.endswith("/") else target.parent).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, target / path.name if dest.endswith("/") else target)
        elif op == "RUN":
            if shlex.split(args)[0] in IMAGE_ONLY:
                continue
            proc = subprocess.run(["sh", "-c", args], cwd=workdir, env=env, capture_output=True, text=True,
                                  timeout=INSTALL_TIMEOUT)
            assert proc.returncode == 0, f"RUN {args}\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        elif op == "ENV" and not args.startswith("HOME="):  # the user's home is the test's isolated one
            key, _, value = args.partition("=")
            env[key] = value
        elif op == "USER":
            user = args
        elif op == "EXPOSE":
            port = int(args.split("/")[0])
        elif op == "CMD":
            cmd = exec_form(args)
    assert user not in (None, "root", "0") and port == SPACES_PORT and cmd is not None, (user, port, cmd)
    assert "--host=0.0.0.0" in cmd  # what Spaces' proxy needs; here, this machine only:
    cmd = [("--host=127.0.0.1" if a == "--host=0.0.0.0" else a) for a in cmd]

    home = image / "home" / "user"
    env.update(isolated_env(home))
    env.update(USER="user", LOGNAME="user")
    require_free(SPACES_PORT)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                **run_as(1000 if os.geteuid() == 0 else None, home))
    url = f"http://127.0.0.1:{SPACES_PORT}/"
    started: set[int] = set()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        body = None
        while body is None:
            started |= {p.pid for p in kernels_of(proc) + model_processes_of(proc) + kernel_factories_of(proc)}
            if proc.poll() is not None:
                pytest.fail(f"`{shlex.join(cmd)}` exited with {proc.returncode}:\n{log.read_text(errors='replace')[-5000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"no page on {url} after {START_TIMEOUT}s:\n{log.read_text(errors='replace')[-5000:]}")
            try:
                with urllib.request.urlopen(url, timeout=10) as r:
                    body = r.read().decode("utf-8", errors="replace") if r.status == 200 else None
                    csp = r.headers.get("Content-Security-Policy", "")
            except OSError:
                time.sleep(0.5)
        # the page came from this server (not another one that took the port meanwhile) ...
        ours = {proc.pid, *(p.pid for p in psutil.Process(proc.pid).children(recursive=True))}
        listeners = {c.pid for c in psutil.net_connections(kind="tcp")
                     if c.laddr and c.laddr.port == SPACES_PORT and c.status == psutil.CONN_LISTEN}
        assert listeners and listeners <= ours, (listeners, ours)
        # ... and it is the page of the model the image ships, with the model process beside it
        card = ModelFiles(workdir / "export.pkl").read_card()
        assert f'content="{html.escape(page_meta(card)["description"], quote=True)}"' in body, body[:3000]
        assert model_processes_of(proc), log.read_text(errors="replace")[-3000:]
        assert "frame-ancestors 'self' https://huggingface.co" in csp, csp  # the Space's page may frame it
        # the serving environment the RUN built: the pinned CPU torch, no training stack
        probe = subprocess.run([str(python / "bin" / "python"), "-c",
                                "import importlib.util as u, torch; print(torch.__version__, "
                                "[m for m in ('fastai', 'torchvision') if u.find_spec(m)])"],
                               env=env, capture_output=True, text=True, timeout=120)
        assert probe.stdout.split(maxsplit=1) == ["2.13.0+cpu", "[]\n"], probe.stdout + probe.stderr
    finally:
        started |= {p.pid for p in kernels_of(proc) + model_processes_of(proc) + kernel_factories_of(proc)}
        stop_server(proc, started)
        shutil.rmtree(image, ignore_errors=True)


@pytest.mark.slow
def test_docker_builds_the_image_where_a_daemon_runs(tmp_path):
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker command here: the Dockerfile's commands are run by the test above instead")
    info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=60)
    if info.returncode != 0:
        reason = (info.stderr.strip().splitlines() or ["docker info failed"])[-1]
        pytest.skip(f"no Docker daemon here ({reason}): the Dockerfile's commands are run by the test above instead")
    tag = f"whatsthat-space-test:{os.getpid()}"
    build = subprocess.run([docker, "build", "--tag", tag, str(ROOT)], capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    try:
        inspect = subprocess.run([docker, "image", "inspect", "--format", "{{.Config.User}} {{json .Config.ExposedPorts}}",
                                  tag], capture_output=True, text=True, timeout=60)
        assert inspect.stdout.split(maxsplit=1) == ["user", '{"7860/tcp":{}}\n'], inspect.stdout + inspect.stderr
        probe = subprocess.run([docker, "run", "--rm", "--user", "1000", tag, "python", "-c",
                                "import os, torch, whatsthat; print(os.getuid(), torch.__version__)"],
                               capture_output=True, text=True, timeout=300)
        assert probe.stdout.split() == ["1000", "2.13.0+cpu"], probe.stdout + probe.stderr
    finally:
        subprocess.run([docker, "image", "rm", "--force", tag], capture_output=True, timeout=120)

