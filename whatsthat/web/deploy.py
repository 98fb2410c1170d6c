"""Deployment files: check them before `git push` to Heroku or to a Hugging Face Space.

A dyno serves the page from the torch-only artifact (export.safetensors + export.serving.json), so it
installs requirements.txt: the serving lock that `make lock` writes from requirements/serve.in, with
CPU-only torch and no fastai or torchvision. `check_deploy` says what is out of step: requirements that
are unpinned, pull a GPU torch or training libraries the dyno does not use (or lack fastai where only a
bare export.pkl can serve), an environment that drifted from its lock, a Procfile that would not start
the model process, a model whose artifact, card and export.pkl disagree. A Space builds the Dockerfile,
which installs the same requirements.txt: `check_spaces` checks it, the Space card (the YAML header
Spaces reads from README.md) and that the model's binary files go through Git LFS, as the Hub requires.
"""

from __future__ import annotations

import json
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


NOT_SERVE = ("without it there is no model process (every visitor's kernel would load torch and the model) and "
             "no culling or upload limit (see whatsthat.web.serve.procfile_line)")


def serve_options(argv: list[str]) -> dict[str, str] | None:
    """{option: value} of a `whatsthat serve ...` command line (a bare flag gets ""); None if it is not one."""
    if "serve" not in argv or not any(a == "whatsthat" or a.endswith("/whatsthat") for a in argv[: argv.index("serve")]):
        return None
    opts: dict[str, str] = {}
    rest = argv[argv.index("serve") + 1 :]
    for i, a in enumerate(rest):
        if a.startswith("--") and "=" in a:
            k, v = a[2:].split("=", 1)
            opts[k] = v
        elif a.startswith("--"):
            takes_value = i + 1 < len(rest) and not rest[i + 1].startswith("--")
            opts[a[2:]] = rest[i + 1] if takes_value else ""
    return opts


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
    opts = serve_options(argv)
    if opts is None:
        return [f"Procfile's web process is not `whatsthat serve`: {NOT_SERVE}"]
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


# --- Hugging Face Spaces: the Dockerfile, the Space card, Git LFS ---------------------------------------

TARGETS = ("heroku", "spaces")
SPACES_PORT = 7860  # where Spaces sends visitors unless the Space card's app_port names another
# The YAML header Spaces reads from the top of the README.md in the Space's repository (its "card").
SPACE_CARD = "---\ntitle: whatsthat\nemoji: 🐻\nsdk: docker\napp_port: 7860\n---\n"
# The Space's page on the Hub shows the app in a frame from this site.
SPACE_FRAMER = "https://huggingface.co"
# The Hub refuses a push that holds a binary file over 1 MB outside Git LFS (or its Xet storage).
HUB_BINARY_LIMIT = 1_000_000


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, its arguments) for each instruction of a Dockerfile: comments dropped, continued lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    if pending.strip():
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def exec_form(arguments: str) -> list[str] | None:
    """A CMD or RUN in exec form (a JSON array of strings) as a list; None for the shell form."""
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None


def unpinned_installs(command: str) -> list[str]:
    """What a shell command's `pip install`s name without an exact version (requirement files and paths are fine)."""
    unpinned = []
    for part in re.split(r"&&|\|\||;", command):
        words = shlex.split(part)
        if "pip" not in [w.rsplit("/", 1)[-1] for w in words] or "install" not in words:
            continue
        args = words[words.index("install") + 1 :]
        skip = False
        for word in args:
            if skip:
                skip = False
            elif word in ("-r", "--requirement", "-c", "--constraint", "-e", "--editable", "-i", "--index-url",
                          "--extra-index-url", "-f", "--find-links", "-t", "--target", "--root-user-action"):
                skip = True
            elif not word.startswith("-") and "==" not in word and not word.startswith((".", "/")):
                unpinned.append(word)
    return unpinned


def check_dockerfile(root: Path, version: tuple[int, int] | None = None, port: int = SPACES_PORT) -> list[str]:
    """Problems with the Dockerfile Spaces builds: another Python than the model's, not the serving lock,
    run as root, not `whatsthat serve` on `port` and all interfaces."""
    path = root / "Dockerfile"
    if not path.is_file():
        return ["Dockerfile is missing: Spaces builds the image from it (copy the whatsthat repository's)"]
    major_minor = "{}.{}".format(*(version or sys.version_info[:2]))
    steps = dockerfile_instructions(path.read_text(encoding="utf-8"))
    args = {op: [a for o, a in steps if o == op] for op in ("FROM", "RUN", "USER", "CMD")}
    problems = []
    base = re.match(r"(?:docker\.io/)?(?:library/)?python:(\d+)\.(\d+)", args["FROM"][-1]) if args["FROM"] else None
    if base is None:
        problems.append(f"Dockerfile does not build FROM an official python:{major_minor} image")
    elif f"{base[1]}.{base[2]}" != major_minor:
        problems.append(f"Dockerfile builds FROM Python {base[1]}.{base[2]} but the model was made with Python {major_minor}")
    if not any(re.search(r"\bpip install\b.*(?:-r|--requirement)[ =]requirements\.txt\b", run) for run in args["RUN"]):
        problems.append("Dockerfile does not `pip install -r requirements.txt`: the image would not be the serving "
                        "environment a dyno gets (every version pinned, CPU-only torch)")
    for name in [n for run in args["RUN"] for n in unpinned_installs(run)]:
        problems.append(f"Dockerfile installs {name!r} without a version: pip would pick its own (for torch, a CUDA "
                        "build of GBs); add it to requirements/serve.in and run `make lock`")
    if not args["USER"] or args["USER"][-1].split(":")[0] in ("root", "0"):
        problems.append("Dockerfile runs the page as root: Spaces runs containers as uid 1000 "
                        "(`RUN useradd --uid 1000 user`, then `USER user` before the CMD)")
    argv = exec_form(args["CMD"][-1]) if args["CMD"] else None
    opts = serve_options(argv) if argv else None
    if not args["CMD"]:
        problems.append("Dockerfile has no CMD: the container would not start the page")
    elif argv is None:
        problems.append("Dockerfile's CMD is in shell form: write it as a JSON array, so that `whatsthat serve` itself "
                        "gets the SIGTERM of a restart and stops gracefully (a shell would not pass it on)")
    elif opts is None:
        problems.append(f"Dockerfile's CMD is not `whatsthat serve`: {NOT_SERVE}")
    else:
        if opts.get("port") != str(port):
            problems.append(f"Dockerfile's CMD serves on port {opts.get('port') or 'the default, 8866'} but Spaces "
                            f"sends visitors to {port} (the Space card's app_port): --port={port}")
        if opts.get("host") != "0.0.0.0":
            problems.append("Dockerfile's CMD does not listen on all interfaces (--host=0.0.0.0): Spaces' proxy could not reach it")
        if SPACE_FRAMER not in opts.get("frame-ancestors", "").split():
            problems.append(f"Dockerfile's CMD does not let {SPACE_FRAMER} show the page in a frame, as the Space's "
                            f"page does: it would stay empty there (--frame-ancestors={SPACE_FRAMER})")
        notebook = opts.get("notebook", "app.ipynb")
        if not (root / notebook).is_file():
            problems.append(f"Dockerfile's CMD serves {notebook}, which does not exist in {root}")
    return problems


def read_space_card(readme: Path) -> dict[str, str] | None:
    """The top-level `key: value` pairs of the YAML header at the top of `readme`; None where there is none."""
    lines = readme.read_text(encoding="utf-8").splitlines() if readme.is_file() else []
    if not lines or lines[0].strip() != "---":
        return None
    card = {}
    for line in lines[1:]:
        if line.strip() == "---":
            return card
        key, sep, value = line.partition(":")
        if sep and not line[:1].isspace() and not key.startswith("#"):
            card[key.strip()] = value.split(" #", 1)[0].strip().strip("'\"")
    return None  # never closed: not a header


def check_space_card(root: Path) -> tuple[list[str], int]:
    """(problems with README.md's Space card, the port Spaces will send visitors to)."""
    card = read_space_card(root / "README.md")
    if card is None:
        shown = "\n".join("    " + line for line in SPACE_CARD.splitlines())
        return [("README.md has no Space card: Spaces reads its settings from a YAML header at the top of the "
                 "README.md it is pushed. Put these lines first in that README.md (docs/deploy.md, on a branch "
                 f"for the Space):\n{shown}")], SPACES_PORT
    problems = []
    if card.get("sdk") != "docker":
        problems.append(f"README.md's Space card says sdk: {card.get('sdk') or '(nothing)'}; the page needs "
                        "`sdk: docker` (Spaces then builds the Dockerfile)")
    port = card.get("app_port", str(SPACES_PORT))
    if not port.isdigit():
        problems.append(f"README.md's Space card says app_port: {port}; it must be a port number, e.g. {SPACES_PORT}")
        port = str(SPACES_PORT)
    return problems, int(port)


def _is_binary(path: Path) -> bool:
    with path.open("rb") as f:
        return b"\0" in f.read(8000)  # git's own test


def check_lfs(root: Path, model: Path) -> list[str]:
    """Model files the Hub would refuse: binary files over 1 MB that .gitattributes does not put in Git LFS."""
    from fnmatch import fnmatch

    from whatsthat.model.files import ModelFiles

    attributes = root / ".gitattributes"
    lines = attributes.read_text(encoding="utf-8").splitlines() if attributes.is_file() else []
    lfs = [words[0] for words in map(str.split, lines) if words and "filter=lfs" in words[1:]]
    big = [p for p in ModelFiles(model).all if p.is_file() and p.stat().st_size > HUB_BINARY_LIMIT and _is_binary(p)]
    outside = [p.name for p in big if not any(fnmatch(p.name, pattern) for pattern in lfs)]
    if not outside:
        return []
    return [f"{', '.join(outside)}: binary files over 1 MB outside Git LFS, which the Hub refuses in a push: "
            f"`git lfs track {' '.join(outside)}`, then commit them with .gitattributes in a commit that has no "
            "history of them as plain files (docs/deploy.md)"]


def check_spaces(root: Path, model: Path) -> list[str]:
    """Everything Hugging Face Spaces needs beyond the serving environment: the card, the Dockerfile, LFS."""
    card_problems, port = check_space_card(root)
    return [*card_problems, *check_dockerfile(root, port=port), *check_lfs(root, model)]


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


def check_deploy(root: str | Path = ".", model: str | Path | None = None, target: str = "heroku") -> list[str]:
    """Everything wrong with the deployment files in `root` for `target` (empty list: ready to push).

    Both targets install requirements.txt and serve the same model; "heroku" starts it from the Procfile,
    "spaces" (Hugging Face) from the Dockerfile, with the Space card and Git LFS the Hub requires.
    """
    from whatsthat.model.files import ModelFiles

    if target not in TARGETS:
        raise WhatsthatError(f"unknown deploy target {target!r}: {' or '.join(TARGETS)}")
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
        *(check_procfile(root) if target == "heroku" else check_spaces(root, model)),
        *check_python_version(root),
        *([] if _is_serving_environment() else check_lock(root, card)),  # the dyno has no dev.lock environment
        *model_problems,
    ]
