"""Serve the app notebook with Voila, beside one supervised model process: one place for the flags.

`serve()` starts the model process (`whatsthat.web.modelprocess.Supervisor`: torch and the model, once
per server) and runs Voila in its own process; Voila starts one thin kernel per page view (widgets
only: it sends uploads to the model process). The kernels reach the model through environment
variables Voila passes on.

- kernel culling is always on: a kernel idle for `cull_idle_timeout` seconds is shut down, even
  with a tab still open (`cull_connected`), because closed phones and crashed tabs never say goodbye;
- preheating keeps `pool_size` kernels that have already run the notebook, so a visitor waits for
  neither Python nor ipywidgets to start;
- sources are stripped and tracebacks are never sent to visitors;
- the kernels are `whatsthat.web.pagekernel` (ipykernel without its debugger, 8 MB less per visitor):
  `serve()` writes a `python3` kernelspec that starts it into a private dir put first on JUPYTER_PATH,
  so the notebook keeps its ordinary kernelspec for Jupyter and Binder;
- the kernels are forked from one process that has imported them (`whatsthat.web.kernelfactory`): a
  new page's kernel starts without importing anything, and kernels share the imported modules' memory;
- only as many kernels start as fit in the memory budget, at most `per_client` per client address, and
  a kernel whose page never opens its websocket is shut down `join_timeout` seconds after its HTML was
  sent (`whatsthat.web.kernelpool`); beyond that a visitor gets a small busy page (HTTP 503);
- visitors' flags ("Wrong? Tell us what it is", issue 33) are off unless `flags` says `on` or gives a
  database URL (`flags_url`); then the model process writes them (`whatsthat.web.flagdesk`) and the
  kernels show the control (`whatsthat.web.flagform`);
- the page is Voila's `lab` template plus link-preview tags and a "went to sleep" banner (the
  `whatsthat` template in whatsthat/web/templates, put on JUPYTER_PATH), and SIGTERM stops it gracefully
  (`whatsthat.web.voilaapp`).

`whatsthat serve` calls `serve()`, and the Procfile is `procfile_line()`, which runs `whatsthat serve`
itself, so Heroku gets the same supervisor and flags as a local run (tests keep them in sync).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from whatsthat.errors import WhatsthatError
from whatsthat.model.files import ModelFiles
from whatsthat.web.admission import JOIN_TIMEOUT, PER_CLIENT, trust_forwarded_default
from whatsthat.web.kernelfactory import PROVISIONER as KERNEL_PROVISIONER
from whatsthat.web.kernelfactory import KernelFactory
from whatsthat.web.kernelfactory import unsupported as kernel_factory_unsupported
from whatsthat.web.modelprocess import Supervisor, setup_logging
from whatsthat.web.pagekernel import mark_not_importable
from whatsthat.web.preview import meta_tags, page_meta
from whatsthat.web.protocol import ENV_FLAGS

log = logging.getLogger("whatsthat.web.serve")

DEFAULT_PORT = 8866
CULL_IDLE_TIMEOUT = 600  # seconds; a visitor thinking for 10 minutes reloads the page, a leak lasts forever
CULL_INTERVAL = 60
POOL_SIZE = 1  # one warm kernel: the next visitor gets a page at once; a thin kernel costs ~60 MB
IOPUB_TIMEOUT = 60  # seconds Voila waits for the app's output after its cell has run (nbclient's default: 4)
# One upload (all its files) travels in one websocket message. Tornado's default limit, 10 MiB, is
# smaller than many phone photos, and a bigger message drops the connection: the page stops working.
# 64 MiB lets several photos through and lets images.load_image refuse the oversized ones politely.
MAX_UPLOAD_MB = 64
REPO_NOTEBOOK = Path(__file__).resolve().parents[2] / "app.ipynb"
# Jupyter data dir holding voila/templates/whatsthat: Voila's lab template with link-preview tags and the banner
TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE = "whatsthat"
# Optional modules the server stack would import without needing them. Every Jupyter server start
# imports jsonschema's format checkers (jupyter_events validates its events with them), and jsonschema
# imports the backend of each format it finds installed. rfc3987_syntax, which jupyter-events' own
# requirements (`jsonschema[format-nongpl]`) install, compiles ~35 Earley grammars when imported:
# most of the time that importing Voila takes, on every cold start (docs/performance.md, "Cold start";
# jupyter-server/jupyter_server#1559). It checks only the "iri" and "iri-reference"
# formats, which no Jupyter, Voila or whatsthat schema uses (tests/test_deploy.py checks the
# installed schemas), and jsonschema already treats it as optional: when it cannot be imported,
# those two formats go unchecked. A None in sys.modules is the import system's documented way to
# say "not importable"; nothing of the module or of jsonschema is changed.
UNNEEDED_OPTIONAL_MODULES = ("rfc3987_syntax",)
FLAG_SCHEMES = ("sqlite", "postgresql", "postgres")  # what whatsthat.flags.store opens


def flags_url(value: str | None, environ: dict[str, str] | None = None) -> str | None:
    """`whatsthat serve --flags VALUE` as the store's URL, or None for off.

    - off (the default): no flag control on the page, nothing stored;
    - on: $DATABASE_URL where it is set (Heroku Postgres sets it: a dyno's disk is wiped at every
      restart), else the flags store's default SQLite file, the very file `whatsthat flags pull` and
      `whatsthat flags stats` read when given no --db, so a local `make app` needs no URL passed around;
    - a URL: sqlite:///PATH (a relative PATH is taken from the current folder) or postgresql://...
    """
    env = os.environ if environ is None else environ
    text = (value or "off").strip()
    if text.lower() == "off":
        return None
    if text.lower() == "on":
        if env.get("DATABASE_URL"):
            return env["DATABASE_URL"]
        from whatsthat.flags.store import default_path  # the store's own default, one place for it

        return f"sqlite:///{default_path()}"  # an absolute path after sqlite:/// (four slashes in all)
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in FLAG_SCHEMES:
        raise WhatsthatError(f"--flags takes off, on or a database URL (sqlite:///PATH, postgresql://USER@HOST/DB), "
                             f"not {text.split('@')[-1]!r}")  # fmt: skip
    if scheme.lower() == "sqlite":
        if not rest.startswith("/") or not rest[1:].strip("/"):
            raise WhatsthatError(f"--flags {text!r}: a SQLite URL is sqlite:///PATH (e.g. sqlite:///flags.db)")
        # sqlite:///flags.db is relative to this folder, sqlite:////srv/flags.db absolute: made absolute here,
        # since the model process does not run in this folder
        return f"sqlite:///{Path(rest[1:]).resolve()}"
    return text


def tornado_settings(max_upload_mb: int = MAX_UPLOAD_MB, frame_ancestors: str = "") -> dict[str, Any]:
    """Tornado settings for the web server, Voila's own or (on Binder) Jupyter Server's.

    - `websocket_max_message_size`: one upload travels in one websocket message (see MAX_UPLOAD_MB);
    - `compress_response`: gzip the ~5 MB of JavaScript every new visitor fetches. Jupyter Server
      honours it; Voila applies these settings after tornado has read this one, so `whatsthat serve`
      runs `whatsthat.web.voilaapp.PageVoila`, which passes them to tornado's constructor;
    - `frame_ancestors`: sites that may show the page in a frame, besides its own (Jupyter Server's
      default policy is `frame-ancestors 'self'`, which it replaces). A Hugging Face Space's page shows
      the app in a frame from https://huggingface.co.
    """
    settings: dict[str, Any] = {"websocket_max_message_size": int(max_upload_mb) * 2**20, "compress_response": True}
    if frame_ancestors:
        if not re.fullmatch(r"[\w.:/*' -]+", frame_ancestors):
            raise WhatsthatError(f"--frame-ancestors takes sites separated by spaces (e.g. https://huggingface.co), "
                                 f"not {frame_ancestors!r}")
        settings["headers"] = {"Content-Security-Policy": f"frame-ancestors 'self' {frame_ancestors}"}
    return settings


def voila_settings(
    notebook: str | Path = "app.ipynb",
    port: int | str = DEFAULT_PORT,
    host: str = "127.0.0.1",
    model: str | Path | None = None,
    *,
    examples: str | Path | None = None,
    cull_idle_timeout: int = CULL_IDLE_TIMEOUT,
    cull_interval: int = CULL_INTERVAL,
    cull_connected: bool = True,
    preheat: bool = True,
    pool_size: int = POOL_SIZE,
    max_upload_mb: int = MAX_UPLOAD_MB,
    kernel_path: str | Path | None = None,
    memory_mb: float | None = None,
    per_client: int = PER_CLIENT,
    join_timeout: float = JOIN_TIMEOUT,
    trust_forwarded_for: bool | None = None,
    public_url: str | None = None,
    frame_ancestors: str = "",
    meta: dict[str, Any] | None = None,
    flags: bool = False,
    extra_args: Sequence[str] = (),
) -> tuple[dict[str, str], list[str]]:
    """(environment, Voila's arguments) that serve `notebook`: the one place for the flags.

    `port` may be a string such as "$PORT" (for a Procfile). The model and examples reach the kernel
    through the environment, which Voila passes on to every kernel it starts. `memory_mb` None: the
    container's limit, else 512 MB. `trust_forwarded_for` None: only on a Heroku dyno. `public_url` None:
    Heroku's app address where dyno metadata gives it, else none (link previews then carry paths).
    `meta`: what link previews show (`whatsthat.web.preview.page_meta`). `flags`: the page shows the flag
    control (the store's URL goes to the model process only, `Supervisor(flags_url=...)`).
    """
    if cull_idle_timeout <= 0 or cull_interval <= 0:
        raise WhatsthatError("kernel culling must stay on: cull_idle_timeout and cull_interval must be positive")
    if preheat and pool_size < 1:
        raise WhatsthatError("preheating needs a pool size of at least 1 (or turn preheating off)")
    if memory_mb is not None and memory_mb <= 0:
        raise WhatsthatError(f"the memory budget must be positive, not {memory_mb} MB")
    if per_client < 0 or join_timeout <= 0:
        raise WhatsthatError("per_client must be 0 (no cap) or more, and join_timeout positive")
    if trust_forwarded_for is None:
        trust_forwarded_for = trust_forwarded_default()
    if public_url is None:
        public_url = heroku_url()
    meta = meta or page_meta({})
    env = {"MPLBACKEND": "Agg"}  # no GUI backend on a server; kernels inherit it
    # the page kernelspec first (before the user's, the venv's and ipykernel's own python3 spec), then the template
    paths = [*([str(kernel_path)] if kernel_path is not None else []), str(TEMPLATES)]
    env["JUPYTER_PATH"] = os.pathsep.join([*paths, *filter(None, [os.environ.get("JUPYTER_PATH")])])
    # what the template shows in link previews; the title through Voila's own (the notebook's name otherwise)
    resources = {"whatsthat": {**meta, "tags": meta_tags(meta, public_url or "/")}, "metadata": {"name": meta["title"]}}
    if model is not None:
        env["WHATSTHAT_MODEL"] = str(model)
    if examples is not None:
        env["WHATSTHAT_EXAMPLES"] = str(examples)
    if flags:
        env[ENV_FLAGS] = "on"  # the kernels show the flag control; the store's URL goes to the model process only
    args = [
        f"--port={port}",
        f"--Voila.ip={host}",
        "--no-browser",
        "--strip_sources=True",
        "--show_tracebacks=False",
        # nbclient waits 4 s after a cell's reply for its output, then drops it with a warning ("Timeout
        # waiting for IOPub output"). app.ipynb's one output is the whole app, so a kernel slowed by a crowd
        # (ten pages at once on 2 cores, in CI) served an empty page. Waiting costs nothing when it is on time.
        f"--VoilaExecutor.iopub_timeout={IOPUB_TIMEOUT}",
        f"--MappingKernelManager.cull_idle_timeout={int(cull_idle_timeout)}",
        f"--MappingKernelManager.cull_interval={int(cull_interval)}",
        f"--MappingKernelManager.cull_connected={cull_connected}",
        # culling that spares a kernel Voila just handed from its pool to a page still loading
        "--VoilaConfiguration.multi_kernel_manager_class=whatsthat.web.kernelpool.PageKernelManager",
        # a Python literal, which traitlets evaluates (key=value pairs would reach tornado as strings,
        # and JSON's `true` is not a Python literal)
        "--Voila.tornado_settings=" + repr(tornado_settings(max_upload_mb, frame_ancestors)),
        f"--template={TEMPLATE}",
        "--VoilaConfiguration.resources=" + repr(resources),
        # admission control (whatsthat.web.kernelpool); PageVoila's options are ignored by Voila alone
        f"--PageKernelManager.memory_mb={float(memory_mb or 0)}",
        f"--PageKernelManager.per_client={int(per_client)}",
        f"--PageKernelManager.join_timeout={float(join_timeout)}",
        f"--PageVoila.trust_forwarded_for={bool(trust_forwarded_for)}",
        f"--PageVoila.public_url={public_url or ''}",
        f"--PageKernelManager.flags={bool(flags)}",  # it tells the model process which client each kernel serves
    ]
    if preheat:
        args += ["--preheat_kernel=True", f"--pool_size={int(pool_size)}"]
    return env, [*args, *extra_args, str(notebook)]


def heroku_url(environ: dict[str, str] | None = None) -> str:
    """https://APP.herokuapp.com/ where Heroku's dyno metadata names the app, else "".

    Heroku sets HEROKU_APP_DEFAULT_DOMAIN_NAME once `heroku labs:enable runtime-dyno-metadata` is on.
    """
    env = os.environ if environ is None else environ
    domain = env.get("HEROKU_APP_DEFAULT_DOMAIN_NAME", "").strip().strip("/")
    return f"https://{domain}/" if domain else ""


def voila_command(
    notebook: str | Path = "app.ipynb",
    port: int | str = DEFAULT_PORT,
    host: str = "127.0.0.1",
    model: str | Path | None = None,
    *,
    voila: Sequence[str] | None = None,
    **settings: Any,
) -> list[str]:
    """`voila_settings` as one command line: `env MPLBACKEND=Agg [WHATSTHAT_MODEL=...] voila ... NOTEBOOK`.

    For running Voila as a program of its own (the benchmark's "before", docs); `voila` is the program
    (default: this interpreter's `python -m voila`). `whatsthat serve` runs Voila in-process instead.
    """
    env, args = voila_settings(notebook, port, host, model, **settings)
    program = list(voila) if voila is not None else [sys.executable, "-m", "voila"]
    return ["env", *(f"{k}={v}" for k, v in env.items()), *program, *args]


def write_page_kernelspec(root: str | Path, python: str | None = None, *, forked: bool = False) -> Path:
    """Write `root/kernels/python3/kernel.json` starting `whatsthat.web.pagekernel`; returns `root` (for JUPYTER_PATH).

    Named `python3` because that is the kernel app.ipynb asks for; Voila's kernel manager takes the
    first `python3` it finds on JUPYTER_PATH. `forked`: kernels are forked by the kernel factory
    (`whatsthat.web.kernelfactory`), which runs the same module; its provisioner falls back to this
    command when the factory is not there.
    """
    spec_dir = Path(root) / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    metadata: dict[str, Any] = {"debugger": False}
    if forked:
        metadata["kernel_provisioner"] = {"provisioner_name": KERNEL_PROVISIONER}
    spec = {
        "argv": [python or sys.executable, "-m", "whatsthat.web.pagekernel", "-f", "{connection_file}"],
        "display_name": "Python 3 (whatsthat page, no debugger)",
        "language": "python",
        "metadata": metadata,
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
    return Path(root)


def provisioner_registered(name: str = KERNEL_PROVISIONER) -> bool:
    """Whether Jupyter can find the kernel provisioner `name` (an entry point of an installed package)."""
    return any(e.name == name for e in entry_points(group="jupyter_client.kernel_provisioners"))


def procfile_line(notebook: str = "app.ipynb", model: str = "export.pkl") -> str:
    """The Procfile's web process: `whatsthat serve` on Heroku's $PORT and all interfaces.

    Running `whatsthat serve` (not Voila itself) gives the dyno the same model process, supervisor
    and Voila flags as a local run.
    """
    # shlex.quote would quote $PORT and stop the shell from expanding it
    return f"web: whatsthat serve --host=0.0.0.0 --port=$PORT --model={shlex.quote(model)} --notebook={shlex.quote(notebook)}"


def model_exists(model: str | Path) -> bool:
    """export.pkl itself, or the serving artifact written beside it (a deploy may ship only that)."""
    return ModelFiles(model).exists()


def find_notebook(notebook: str | Path | None = None) -> Path:
    """`notebook`, else ./app.ipynb, else the checkout's app.ipynb; a clear error when none exists."""
    candidates = [Path(notebook)] if notebook is not None else [Path("app.ipynb"), REPO_NOTEBOOK]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise WhatsthatError(
        f"app notebook not found: {candidates[0]} (run from the whatsthat checkout or pass --notebook)"
    )


def serve(
    model: str | Path = "export.pkl",
    *,
    port: int = DEFAULT_PORT,
    host: str = "127.0.0.1",
    notebook: str | Path | None = None,
    examples: str | Path | None = None,
    kernel_factory: bool = True,
    flags: str | None = None,
    voila_args: Sequence[str] = (),
    echo: Callable[[str], None] | None = None,
    **page: Any,
) -> int:
    """Run the model process and Voila on `notebook` until interrupted; returns Voila's exit code.

    The model path is made absolute (the kernel runs in the notebook's folder). A missing model
    or notebook raises WhatsthatError before anything starts. `kernel_factory=False` starts each
    kernel as a process of its own instead of forking it (see `whatsthat.web.kernelfactory`). `flags`:
    off (default), on or a database URL (`flags_url`). `page`: `voila_settings`' keyword options (culling,
    preheating, admission, link previews), which keeps their one list and their defaults.
    """
    store = flags_url(flags)  # a bad value stops here, before anything starts
    nb = find_notebook(notebook)
    model_path = Path(model).resolve()
    if not model_exists(model_path):
        raise WhatsthatError(f"model file not found: {model_path} (train one with `whatsthat train`, or pass --model)")
    echo = echo or (lambda s: print(s, file=sys.stderr))
    try:
        meta = page_meta(ModelFiles(model_path).read_card())
    except WhatsthatError as e:  # the page still works; the model process will say what is wrong
        echo(f"link previews will not name the classes: {e}")
        meta = page_meta({})
    examples_path = Path(examples).resolve() if examples is not None else None
    if kernel_factory and not provisioner_registered():
        # Jupyter would refuse to start any kernel whose spec names a provisioner it cannot find
        echo(f"kernel factory off: the {KERNEL_PROVISIONER!r} kernel provisioner is not registered in this "
             "environment (whatsthat runs from source, not installed: `pip install .` registers it)")  # fmt: skip
        kernel_factory = False
    if kernel_factory and (why := kernel_factory_unsupported()):
        echo(f"kernel factory off: {why}; each kernel starts as a process of its own")
        kernel_factory = False
    shown = "localhost" if host in ("127.0.0.1", "0.0.0.0") else host
    if store is not None:
        from whatsthat.flags.store import describe_url

        echo(f"visitors' flags on: stored in {describe_url(store)}")
        if os.environ.get("DYNO") and store.startswith("sqlite"):
            echo("warning: a Heroku dyno's disk is wiped at every restart, and the flags with it: add Heroku "
                 "Postgres (it sets DATABASE_URL) to keep them (docs/deploy.md)")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="whatsthat-kernels-") as kernels:
        env, args = voila_settings(
            nb.name,
            port,
            host,
            model_path,
            examples=examples_path,
            kernel_path=write_page_kernelspec(kernels, forked=kernel_factory),
            meta=meta,
            flags=store is not None,
            extra_args=voila_args,
            **page,
        )
        echo(f"serving {nb} with {model_path} at http://{shown}:{port}/ (Ctrl-C stops)")
        # the kernel's cwd is the notebook's folder, as in Voila; the model process runs beside Voila
        return run_voila_beside_model(model_path, env, args, cwd=nb.parent, kernel_factory=kernel_factory,
                                      flags_url=store)  # fmt: skip


def skip_unneeded_imports(names: Sequence[str] = UNNEEDED_OPTIONAL_MODULES) -> list[str]:
    """Mark `names` not importable in this process, unless already imported; returns those marked.

    For the server process only, before it imports Voila (see UNNEEDED_OPTIONAL_MODULES for why).
    """
    return mark_not_importable(names)


@contextlib.contextmanager
def beside_model(model: Path, kernel_factory: bool = False,
                 flags_url: str | None = None) -> Iterator[tuple[dict[str, str], Callable[[], None]]]:  # fmt: skip
    """The supervised model process (and the kernel factory) for as long as the page runs.

    Yields the environment the page's server passes on to its kernels (the channel to the model
    process, the factory's socket), and `stop_restarting`, for the stop signal: Heroku signals every
    process of the dyno at once, so nothing may restart then. Both ways of serving the page use it:
    `whatsthat serve` (Heroku, local: Voila in this process) and `run_beside_model` (Binder: Jupyter
    as a child).
    """
    with Supervisor(model, flags_url=flags_url) as sup, (KernelFactory() if kernel_factory else contextlib.nullcontext()) as factory:

        def stop_restarting() -> None:
            sup.stop_restarting()
            if factory is not None:
                factory.stop_restarting()

        yield {**sup.env(), **(factory.env() if factory is not None else {})}, stop_restarting


def on_stop_signals(handler: Callable[[int, Any], None]) -> dict[int, Any]:
    """Call `handler` on SIGTERM (Heroku's stop) and SIGHUP; returns the handlers it replaced."""
    return {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}


def run_voila_beside_model(model: Path, env: dict[str, str], args: Sequence[str], *, cwd: Path,
                           kernel_factory: bool = True, flags_url: str | None = None) -> int:  # fmt: skip
    """Voila in this process, beside the model process (and the kernel factory); returns when Voila stops.

    In-process rather than as a child: a supervisor process of its own costs a Python interpreter
    (docs/serving.md) on a 512 MB dyno, for what a thread does. SIGTERM (Heroku's stop, which it sends
    to every process of the dyno at once, and gives 30 s) stops gracefully: no new page, the
    classifications in flight finish (`PageVoila.stop_gracefully`), then Voila stops its loop and shuts
    its kernels down, and the model process and the factory stop after. A second SIGTERM, or Ctrl-C,
    stops at once.
    """
    # The model process and the factory start first: they import torch and ipykernel while this
    # process imports Voila, instead of after it.
    with beside_model(model, kernel_factory, flags_url) as (side_env, stop_restarting):
        skip_unneeded_imports()
        from whatsthat.web.voilaapp import PageVoila  # the server stack: imported only to serve

        # Voila passes its environment on to every kernel (the factory's provisioner leaves its own out)
        os.environ.update({**env, **side_env})
        os.chdir(cwd)
        app = PageVoila.instance()
        app.initialize(list(args))
        voila_stop = signal.getsignal(signal.SIGTERM)  # installed by initialize: stops the loop

        stopping = False

        def stop(signum: int, frame: Any) -> None:
            nonlocal stopping
            stop_restarting()
            if not stopping:
                stopping = True
                app.stop_gracefully()
            elif callable(voila_stop):
                voila_stop(signum, frame)

        on_stop_signals(stop)
        app.start()
    return 0


def run_beside_model(model: str | Path, argv: Sequence[str], *, cwd: str | Path | None = None,
                     env: dict[str, str] | None = None) -> int:  # fmt: skip
    """Run `argv` (Jupyter on Binder) as a child beside the model process; returns its exit code.

    The child gets the channel's environment, so every kernel it starts can reach the model. SIGTERM
    and Ctrl-C are passed on to the child (its kernels shut down); the model process stops after it.
    """
    with beside_model(Path(model)) as (side_env, stop_restarting):
        child = subprocess.Popen(list(argv), cwd=cwd, env={**(env if env is not None else os.environ), **side_env})

        def forward(signum: int, _frame: object) -> None:
            stop_restarting()
            if child.poll() is None:
                child.send_signal(signum)

        previous = on_stop_signals(forward)
        try:
            while True:
                try:
                    return child.wait()
                except KeyboardInterrupt:
                    forward(signal.SIGINT, None)
                    try:
                        return child.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        child.kill()
                        return child.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def run_main(argv: Sequence[str] | None = None) -> int:
    """`python -m whatsthat.web.serve --model M -- COMMAND...`: the Binder start script's way in."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m whatsthat.web.serve",
                                 description="run COMMAND with a supervised model process beside it")  # fmt: skip
    ap.add_argument("--model", default=os.environ.get("WHATSTHAT_MODEL", "export.pkl"))
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the command to run after --")
    setup_logging()
    if not ModelFiles(args.model).exists():
        log.error("model %s not found: running %s without a model process (kernels load the model themselves)",
                  args.model, command[0])  # fmt: skip
        os.execvp(command[0], command)
    return run_beside_model(args.model, command)


if __name__ == "__main__":
    sys.exit(run_main())
