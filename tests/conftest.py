"""Shared fixtures: every user path redirected to tmp, generated images, the optional shared bears."""

from __future__ import annotations

import importlib.util
import io
import os
import random
import secrets
import threading
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
SHARED_BEARS = ROOT.parent / "shared" / "datasets" / "bears"
CHROMIUM = Path("/usr/bin/chromium")  # Debian's; never `playwright install`
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


USER_DIRS = [  # every place a tool might write user state, relative to a fake home
    ("HOME", ""),
    ("XDG_CACHE_HOME", ".cache"),
    ("XDG_CONFIG_HOME", ".config"),
    ("XDG_DATA_HOME", ".local/share"),
    ("JUPYTER_CONFIG_DIR", ".jupyter"),
    ("JUPYTER_DATA_DIR", ".local/share/jupyter"),
    ("JUPYTER_RUNTIME_DIR", ".local/share/jupyter/runtime"),
    ("IPYTHONDIR", ".ipython"),
    ("MPLCONFIGDIR", ".config/matplotlib"),
    ("TORCH_HOME", ".cache/torch"),
]


def isolated_env(home: Path) -> dict[str, str]:
    """Environment variables that point every user directory into `home` (created here)."""
    env = {}
    for var, sub in USER_DIRS:
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    env["MPLBACKEND"] = "Agg"
    # Jupyter kernels must find this interpreter's kernelspec, not one from the real home
    env["JUPYTER_PLATFORM_DIRS"] = "1"
    return env


@pytest.fixture(autouse=True)
def isolated_home(tmp_path_factory, monkeypatch):
    """Nothing a test runs may write into the user's home, Jupyter or torch dirs."""
    home = tmp_path_factory.mktemp("home")
    for var, value in isolated_env(home).items():
        monkeypatch.setenv(var, value)
    return home


def edit(path: Path, old: str, new: str) -> None:
    """Replace `old` (which must be there) with `new` in the text file `path`: a broken copy of a real file."""
    text = path.read_text()
    assert old in text, (old, path)
    path.write_text(text.replace(old, new))


def draw_image(kind: str, size: int = 64, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A generated picture whose class is visible: 'red' circles vs 'blue' squares vs 'green' bars."""
    rng = random.Random(f"{kind}-{seed}")
    bg = tuple(rng.randint(180, 255) for _ in range(3))
    im = Image.new("RGB", (size + rng.randint(0, size // 2), size), bg)
    d = ImageDraw.Draw(im)
    w, h = im.size
    for _ in range(3):
        x, y = rng.randint(0, w - 16), rng.randint(0, h - 16)
        r = rng.randint(8, max(9, size // 3))
        if kind == "red":
            d.ellipse([x, y, x + r, y + r], fill=(rng.randint(180, 255), rng.randint(0, 60), rng.randint(0, 60)))
        elif kind == "blue":
            d.rectangle([x, y, x + r, y + r], fill=(rng.randint(0, 60), rng.randint(0, 60), rng.randint(180, 255)))
        else:
            d.rectangle([x, 0, x + r // 3, h], fill=(rng.randint(0, 60), rng.randint(160, 255), rng.randint(0, 60)))
    return im.convert(mode) if mode != "RGB" else im


def image_bytes(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def make_dataset(tmp_path):
    """make_dataset(n_per_class, classes) -> folder-per-class dir of generated JPEGs."""

    def make(n: int = 12, classes: tuple[str, ...] = ("red", "blue"), size: int = 64, root: Path | None = None) -> Path:
        root = root or tmp_path / "dataset"
        for c in classes:
            (root / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                draw_image(c, size, seed=i).save(root / c / f"{c}_{i:03d}.jpg", quality=90)
        return root

    return make


@pytest.fixture
def shared_bears() -> Path:
    """The 480 shared bear photos; the test is skipped on a clone without ../shared."""
    if not SHARED_BEARS.is_dir():
        pytest.skip(f"{SHARED_BEARS} is absent")
    return SHARED_BEARS


def pytest_collection_modifyitems(config, items):
    # Keep CPU threads modest: 2-core CI machine, and torch's default oversubscribes with workers.
    os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def tiny_training(tmp_path_factory):
    """A real model trained for a few seconds on generated red/blue images (random init): the TrainResult.

    Session-scoped fixtures are set up outside the per-test isolated home, so it isolates its own.
    """
    from whatsthat.training.train import train

    root = tmp_path_factory.mktemp("tiny")
    data = root / "data"
    for c in ("red", "blue"):
        (data / c).mkdir(parents=True)
        for i in range(16):
            draw_image(c, 64, seed=i).save(data / c / f"{c}_{i:03d}.jpg", quality=90)
    with pytest.MonkeyPatch.context() as mp:
        for var in ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "TORCH_HOME"):
            mp.setenv(var, str(root / "home"))
        return train(data, root / "model", arch="resnet18", pretrained=False, epochs=2, freeze_epochs=0,
                     size=64, bs=8, echo=lambda s: None)


@pytest.fixture(scope="module")
def chromium() -> Path:
    """Debian's Chromium for Playwright: skipped when absent, except on CI (CI=true), where that is a failure."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (Debian's chromium package)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright Python package (pip install -e '.[dev]')")
    if missing:
        # `make test` and CI require them: a skipped browser test would hide a broken page
        if os.environ.get("CI") == "true" or os.environ.get("WHATSTHAT_BROWSER_TESTS") == "required":
            pytest.fail("browser tests need " + " and ".join(missing))
        pytest.skip("needs " + " and ".join(missing))
    return CHROMIUM


@pytest.fixture(scope="module")
def playwright_api(chromium):
    """Playwright's sync API for a test module (its device profiles: `playwright_api.devices`)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright_api, chromium):
    """One headless Chromium per test module."""
    b = playwright_api.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (tests/pgserver.py): Debian's, on a Unix socket, never as root.

    Skipped where PostgreSQL is not installed, except under `make test`/CI (WHATSTHAT_POSTGRES_TESTS=required
    or CI=true), where that is a failure.
    """
    from pgserver import PostgresServer, find_bin

    bindir = find_bin()
    if bindir is None:
        if os.environ.get("CI") == "true" or os.environ.get("WHATSTHAT_POSTGRES_TESTS") == "required":
            pytest.fail("these tests need PostgreSQL (initdb, pg_ctl); `bash .ci/ensure-postgres` installs it")
        pytest.skip("needs PostgreSQL (initdb, pg_ctl): sudo apt-get install postgresql")
    server = PostgresServer(bindir)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A URL to an empty flags database: a SQLite file, then a fresh database on the `postgres` server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'flags.db'}"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def model_server(tmp_path):
    """start(predictor, path=None, key=None, flags=None) -> (socket path, key): a model process's server loop
    (whatsthat.web.modelprocess.serve_forever) in a thread, on a Unix socket in tmp_path by default.

    Each is stopped as the test ends, as SIGTERM stops a model process: its listener closed and its socket
    file removed while tmp_path still exists (a listener left open tried to unlink it at exit, after pytest
    had removed the folder: one traceback per test).
    """
    from whatsthat.web.modelprocess import serve_forever

    started: list[tuple[threading.Event, threading.Thread]] = []

    def start(predictor, path=None, key=None, flags=None) -> tuple[str, bytes]:
        path, key = str(path or tmp_path / "model.sock"), key or secrets.token_bytes(32)
        ready, stop = threading.Event(), threading.Event()
        thread = threading.Thread(target=serve_forever, args=(predictor, path, key, ready.set, stop.wait),
                                  kwargs={"flags": flags}, daemon=True, name="model-server")  # fmt: skip
        thread.start()
        started.append((stop, thread))
        assert ready.wait(10), "the model server did not start"
        return path, key

    yield start
    for stop, _ in started:
        stop.set()
    for _, thread in started:
        thread.join(30)
        assert not thread.is_alive(), "a model server did not stop within 30 s"
