"""Deployment files: check them before `git push heroku`.

A dyno serves the page from the torch-only artifact (export.safetensors + export.serving.json), so it
installs requirements.txt: the serving lock that `make lock` writes from requirements/serve.in, with
CPU-only torch and no fastai or torchvision. `check_deploy` says what is out of step: requirements that
are unpinned, pull a GPU torch or training libraries the dyno does not use (or lack fastai where only a
bare export.pkl can serve), an environment that drifted from its lock, a Procfile that would not start
the model process, a model whose artifact, card and export.pkl disagree.
"""

from __future__ import annotations

import re
import shlex
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from whatsthat.errors import WhatsthatError

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# Only needed on a dyno that must unpickle export.pkl (no serving artifact): each costs slug and memory.
TRAINING_LIBS = ("fastai", "torchvision")
# Parts of the torch wheel that neither `import torch` nor serving ever touch: C++ test programs, C++
# headers, build tools (about 50 MB of the compressed slug). Heroku's Python buildpack runs
# bin/post_compile after `pip install`, which calls prune_torch; `make serve-env` does the same, so the
# tests run on what is deployed. torch_shm_manager stays: torch.multiprocessing starts it.
TORCH_KEEP_BIN = ("torch_shm_manager",)
TORCH_PRUNE_DIRS = ("test", "include")


def torch_pruned(relative: str) -> bool:
    """Whether `relative` (a path inside the torch package, '/'-separated) is left out of a serving install."""
    top, _, rest = relative.partition("/")
    if top in TORCH_PRUNE_DIRS:
        return True
    return top == "bin" and bool(rest) and rest not in TORCH_KEEP_BIN


def prune_torch(torch_dir: str | Path | None = None) -> int:
    """Delete the pruned parts of an installed torch (default: the one this Python imports); bytes freed."""
    import importlib.util
    import shutil

    if torch_dir is None:
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.origin is None:
            raise WhatsthatError("torch is not installed here: nothing to prune")
        torch_dir = Path(spec.origin).parent
    torch_dir = Path(torch_dir)
    doomed = [torch_dir / name for name in TORCH_PRUNE_DIRS]
    if (torch_dir / "bin").is_dir():
        doomed += [p for p in (torch_dir / "bin").iterdir() if p.name not in TORCH_KEEP_BIN]
    freed = 0
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            freed += sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() or f.is_symlink())
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            freed += path.lstat().st_size
            path.unlink()
    return freed


_PIN_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)\s*(?:[;#].*)?$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _public(version: str) -> str:
    """'2.5.1+cpu' -> '2.5.1': the local tag names the build, not the release."""
    return version.split("+", 1)[0]


def installed_version(name: str) -> str | None:
    """The installed distribution's version, or None."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _is_serving_environment() -> bool:
    # The dev/training venv has fastai; the dyno's (and .venv-serve) has not. Only the latter must equal
    # requirements.txt: the dev venv is held to requirements/dev.lock by check_lock instead.
    return installed_version("fastai") is None


def check_requirements(path: Path, has_artifact: bool = True) -> list[str]:
    """Problems with requirements.txt: unpinned lines, a GPU torch, training libraries, a missing '.'.

    `has_artifact`: whether the model has its torch-only serving artifact. Without one the dyno must
    unpickle export.pkl, which needs fastai; with one, fastai and torchvision are dead weight.
    """
    if not path.is_file():
        return [f"{path.name} is missing: run `make lock` (it writes it from requirements/serve.in)"]
    problems = []
    pins: dict[str, str] = {}
    installs_self = False
    has_cpu_index = False
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("--extra-index-url", "--index-url", "-i ")):
            has_cpu_index = has_cpu_index or CPU_INDEX in line
            continue
        if line in (".", "-e .", "-e.") or line.startswith(("./", "-e ./")):
            installs_self = True
            continue
        if line.startswith("-"):
            continue  # other pip options (-r, --find-links, ...) are the author's business
        match = _PIN_RE.match(line)
        if not match:
            problems.append(f"{path.name}: '{line}' is not pinned with == (the server would install another version)")
            continue
        pins[_norm(match.group(1))] = match.group(2)
    torch = pins.get("torch")
    if torch is None:
        problems.append(f"{path.name}: torch is not pinned; the server would pick any version (a CUDA build of GBs)")
    elif not torch.endswith("+cpu"):
        problems.append(f"{path.name}: torch=={torch} is not the CPU build; pin torch=={_public(torch)}+cpu")
    elif not has_cpu_index:
        problems.append(f"{path.name}: +cpu builds need '--extra-index-url {CPU_INDEX}'")
    training = [name for name in TRAINING_LIBS if name in pins]
    if has_artifact and training:
        problems.append(
            f"{path.name} installs {', '.join(training)}, which serving from export.safetensors does not use "
            "(hundreds of MB of slug): keep them out of requirements/serve.in and run `make lock`"
        )
    if not has_artifact and "fastai" not in pins:
        problems.append(
            "the model has no torch-only serving artifact, and without fastai the dyno cannot load export.pkl: "
            "run `whatsthat artifact export.pkl` and commit export.safetensors + export.serving.json"
        )
    if _is_serving_environment():
        drift = [f"{name} {have or 'absent'} (pinned {want})" for name, want in pins.items()
                 if (have := installed_version(name)) is None or _public(have) != _public(want)]
        if drift:
            problems.append(f"this serving environment differs from {path.name}: {', '.join(drift[:5])}"
                            + (f" and {len(drift) - 5} more" if len(drift) > 5 else ""))
    if not installs_self:
        problems.append(f"{path.name}: does not install whatsthat itself (add a line '.')")
    else:
        problems += check_package(path.parent)
    return problems


def check_package(root: Path) -> list[str]:
    """Problems that would make `pip install .` fail on the server (no pyproject, missing readme)."""
    pyproject = root / "pyproject.toml"
    if not pyproject.is_file():
        return ["pyproject.toml is missing: the '.' requirement cannot install whatsthat"]
    try:
        project = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("project", {})
    except (OSError, tomllib.TOMLDecodeError) as e:
        return [f"pyproject.toml is unreadable: {e}"]
    readme = project.get("readme")
    if isinstance(readme, str) and not (root / readme).is_file():
        return [f"pyproject.toml names readme {readme!r}, which is missing: `pip install .` would fail"]
    return []


def check_procfile(root: Path) -> list[str]:
    """Problems with the Procfile: no `whatsthat serve` web process, missing notebook, not on $PORT/0.0.0.0.

    The web process must be `whatsthat serve` (whatsthat.web.serve.procfile_line): it starts the one model
    process and Voila with culling and the upload limit; Voila run by itself would have every kernel
    load torch and the model.
    """
    path = root / "Procfile"
    if not path.is_file():
        return ["Procfile is missing: Heroku would not know how to start the app (see whatsthat.web.serve.procfile_line)"]
    web = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("web:")]
    if len(web) != 1:
        return [f"Procfile needs exactly one 'web:' line, found {len(web)}"]
    line = web[0]
    try:
        argv = shlex.split(line[len("web:") :])
    except ValueError as e:
        return [f"Procfile's web line does not parse as a shell command: {e}"]
    if "serve" not in argv or not any(a == "whatsthat" or a.endswith("/whatsthat") for a in argv[: argv.index("serve")]):
        return [
            "Procfile's web process is not `whatsthat serve`: without it there is no model process (every visitor's "
            "kernel would load torch and the model) and no culling or upload limit (see whatsthat.web.serve.procfile_line)"
        ]
    opts: dict[str, str] = {}
    rest = argv[argv.index("serve") + 1 :]
    for i, a in enumerate(rest):
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            opts[k] = v
        elif a.startswith("--") and i + 1 < len(rest):
            opts[a[2:]] = rest[i + 1]
    problems = []
    notebook = opts.get("notebook", "app.ipynb")
    if not (root / notebook).is_file():
        problems.append(f"Procfile serves {notebook}, which does not exist in {root}")
    if opts.get("port") not in ("$PORT", "${PORT}"):
        problems.append("Procfile does not bind Heroku's $PORT (e.g. --port=$PORT)")
    if opts.get("host") != "0.0.0.0":
        problems.append("Procfile does not listen on all interfaces (--host=0.0.0.0); the router cannot reach it")
    return problems


def check_python_version(root: Path, version: tuple[int, int] | None = None) -> list[str]:
    """Problems with runtime.txt / .python-version: missing, or another major.minor than this Python."""
    major_minor = "{}.{}".format(*(version or sys.version_info[:2]))
    problems = []
    runtime = root / "runtime.txt"
    if not runtime.is_file():
        problems.append(f"runtime.txt is missing (python-{major_minor}.x): the server would pick its own Python")
    else:
        text = runtime.read_text(encoding="utf-8").strip()
        m = re.fullmatch(r"python-(\d+)\.(\d+)(?:\.\d+)?", text)
        if not m:
            problems.append(f"runtime.txt says {text!r}; expected e.g. python-{major_minor}.x")
        elif f"{m.group(1)}.{m.group(2)}" != major_minor:
            problems.append(f"runtime.txt says {text} but the model was made with Python {major_minor}")
    pv = root / ".python-version"
    if pv.is_file():
        text = pv.read_text(encoding="utf-8").strip()
        if ".".join(text.split(".")[:2]) != major_minor:
            problems.append(f".python-version says {text} but the model was made with Python {major_minor}")
    return problems


DEV_LOCK = Path("requirements") / "dev.lock"
# Libraries whose code or version is baked into export.pkl (tools/lock.py names the same ones).
MODEL_LIBS = ("torch", "torchvision", "fastai", "fastcore", "fasttransform", "efficientnet-lite-pytorch")


def read_lock(path: Path) -> dict[str, str]:
    """{normalised name: version} of a `pip freeze`-style lock file."""
    pins = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        match = _PIN_RE.match(raw.strip())
        if match:
            pins[_norm(match.group(1))] = match.group(2)
    return pins


def check_lock(root: Path, card: dict | None = None, show: int = 5) -> list[str]:
    """Drift from requirements/dev.lock: in this environment, and in the versions that made the model.

    Silent where there is no lock (a project that pip-installed whatsthat rather than cloning it).
    """
    path = root / DEV_LOCK
    if not path.is_file():
        return []
    lock = read_lock(path)
    drift = [f"{name} {have or 'absent'} (locked {want})" for name, want in lock.items()
             if (have := installed_version(name)) is None or _public(have) != _public(want)]
    problems = []
    if drift:
        more = f" and {len(drift) - show} more" if len(drift) > show else ""
        problems.append(f"this environment differs from {DEV_LOCK}: {', '.join(drift[:show])}{more}; run `make install`")
    made_with = {_norm(k): v for k, v in ((card or {}).get("versions") or {}).items()}
    stale = [f"{name} {made_with[name]} (locked {lock[name]})" for name in MODEL_LIBS
             if name in made_with and name in lock and _public(made_with[name]) != _public(lock[name])]
    if stale:
        problems.append(f"the model was made with {', '.join(stale)}: retrain it with the locked versions "
                        "(make install, then whatsthat train) and commit export.pkl with the lock")
    return problems


def check_model(model: Path) -> list[str]:
    """Problems with the model: missing, does not load, no card, or card, artifact and export.pkl disagree.

    The dyno serves the artifact; maintainers keep export.pkl. Where fastai is installed both are loaded
    and run on the same input, so an artifact left over from an earlier training is caught before a push.
    """
    import torch

    from whatsthat.model.artifact import load_serving_model
    from whatsthat.model.files import ModelFiles

    files = ModelFiles(model)
    weights, artifact = files.weights, files.has_artifact()
    if not model.is_file() and not artifact:
        return [f"{model.name} is missing: train it (`whatsthat train`) and commit it with {weights.name}; the app serves it"]
    clf = None
    if model.is_file() and not _is_serving_environment():
        from whatsthat.training.classifier import load_classifier  # fastai: only where it is installed

        try:
            clf = load_classifier(model)
        except WhatsthatError as e:
            return [f"{model.name} does not load: {e}"]
    card_path = files.card
    if not card_path.is_file():
        return [f"{card_path.name} is missing beside {model.name}: the page shows no model card"]
    try:
        card = files.read_card()
    except WhatsthatError as e:
        return [str(e)]
    if clf is not None and card.get("classes") != clf.classes:
        return [
            f"{card_path.name} lists classes {card.get('classes')} but {model.name} predicts {clf.classes}: "
            "they come from different trainings (commit both after retraining)"
        ]
    if not artifact:
        # the page still serves export.pkl through fastai, but the dyno then needs fastai installed
        return [] if clf is not None else [f"{model.name} has no serving artifact and fastai is not installed here: "
                                           "run `whatsthat artifact export.pkl` where fastai is"]
    try:
        serving = load_serving_model(model)
    except WhatsthatError as e:
        return [f"the serving artifact does not load: {e}"]
    if card.get("classes") != serving.classes:
        return [f"{card_path.name} lists classes {card.get('classes')} but {weights.name} predicts "
                f"{serving.classes}: they come from different trainings (commit both after retraining)"]
    if clf is not None:
        size = serving.description.get("image_size", [224, 224])
        x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            same = torch.allclose(clf.model(x).float(), serving.model(x).float(), atol=1e-3, rtol=0)
        if not same:
            return [f"{weights.name} is not the model in {model.name} (an older training?): "
                    "run `whatsthat artifact export.pkl` and commit both"]
    return []


def check_deploy(root: str | Path = ".", model: str | Path | None = None) -> list[str]:
    """Everything wrong with the deployment files in `root` (empty list: ready to push)."""
    from whatsthat.model.files import ModelFiles

    root = Path(root)
    if not root.is_dir():
        raise WhatsthatError(f"not a folder: {root}")
    model = Path(model) if model is not None else root / "export.pkl"
    try:
        card = ModelFiles(model).read_card()
    except WhatsthatError:
        card = {}  # check_model reports the unreadable card
    model_problems = check_model(model)
    # whether the dyno needs fastai depends on a model that loads: a missing or broken one is reported once
    artifact = ModelFiles(model).has_artifact() or bool(model_problems)
    return [
        *check_requirements(root / "requirements.txt", has_artifact=artifact),
        *check_procfile(root),
        *check_python_version(root),
        *([] if _is_serving_environment() else check_lock(root, card)),  # the dyno has no dev.lock environment
        *model_problems,
    ]
