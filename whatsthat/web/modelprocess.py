"""The one model process per server, and the supervisor that keeps it running.

Voila starts a kernel per page view; if each loaded torch and the model, a 512 MB dyno would be full
before the second visitor. So the model lives here, once: visitors' kernels (`whatsthat.web.app`) send
upload bytes over the local channel of `whatsthat.web.protocol`, and this process decodes them
(`images.load_image`: byte cap, bomb guard, HEIC, draft-mode downscaling of huge JPEGs), classifies
them, and answers ranked probabilities, an out-of-class score and a small JPEG thumbnail per file,
so a kernel never holds a decoded 100-megapixel picture.

- Model: the torch-only artifact (`whatsthat.model.artifact`) when it is beside export.pkl; otherwise (a
  bare export.pkl from the course) export.pkl itself through fastai, when fastai is installed, with a
  log line saying so.
- Concurrency: one thread per connected kernel decodes its uploads in parallel (Pillow releases the
  GIL while decoding); forward passes take turns under one lock, one picture at a time, because on a
  small CPU batch 1 is the fastest per picture (bench/predict_bench.py) and two concurrent passes
  would only fight over the same cores.
- Failures: a bad upload is an error for that file only; an exception in one request is logged and
  answered as a refusal on that connection; the other kernels' connections never notice.
- Visitors' flags (`whatsthat serve --flags`): with them on, each answer also carries a copy of the
  photo of at most 512 px (what a flag keeps, with the visitor's consent), and `flag` requests are
  written by `whatsthat.web.flagdesk.FlagDesk`, which owns the store; a store that is down never
  touches classification.
- Supervision: `Supervisor` (used by `whatsthat serve` and the Binder start script) runs this module
  as a child process and restarts it when it exits, with a growing delay if it keeps failing.
- Stopping: on SIGTERM (Heroku sends it to every process of a dyno at once, 30 s before SIGKILL) it
  takes no new connection, answers the requests in flight and those the connected kernels still send
  while it drains, and exits once no request has been in flight for a moment (at most DRAIN seconds).

Heavy imports (torch, the model code) happen in `load_predictor`, so `whatsthat.web.app` can use
`classify_files` in-process (the fallback where no model process runs) without loading more than it must.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import logging
import os
import secrets
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

from whatsthat.errors import WhatsthatError
from whatsthat.model.files import ModelFiles
from whatsthat.model.verdict import DEFAULT_THRESHOLD, rank
from whatsthat.web.flagdesk import FlagDesk
from whatsthat.web.protocol import (
    ENV_AUTHKEY,
    ENV_FLAG_SECRET,
    ENV_FLAGS_URL,
    ENV_SOCKET,
    MAX_FILES,
    PHOTO_SIDE,
    THUMB_SIDE,
    ModelClient,
    ModelLost,
    ModelUnavailable,
    recv_message,
    send_message,
)
from whatsthat.web.restarter import Restarter, child_key

log = logging.getLogger("whatsthat.web.modelprocess")

LOAD_FAILED = 3  # exit code: the model could not be loaded (the supervisor waits longer before retrying)

Ranked = list[tuple[str, float]]


@dataclass
class Predictor:
    """A loaded model: `score(images)` -> [(ranked, ood_score or None)], one per picture."""

    classes: list[str]
    card: dict
    threshold: float
    backend: str  # "artifact" or "fastai"
    _score: Callable[[Sequence[Any]], list[tuple[Ranked, float | None]]]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def score(self, images: Sequence[Any]) -> list[tuple[Ranked, float | None]]:
        out: list[tuple[Ranked, float | None]] = []
        for im in images:  # batch 1, in turns: see the module docstring
            with self.lock:
                out.extend(self._score([im]))
        return out

    def predict_many(self, images: Sequence[Any]) -> list[Ranked]:
        return [ranked for ranked, _ in self.score(images)]


def load_predictor(model_path: str | Path) -> Predictor:
    """The artifact beside `model_path` when there is one, else export.pkl through fastai (logged)."""
    model_path = Path(model_path)
    card = ModelFiles(model_path).read_card()
    threshold = float(card.get("threshold", DEFAULT_THRESHOLD))
    predictor = _artifact_predictor(model_path, card, threshold) if ModelFiles(model_path).has_artifact() else _fastai_predictor(model_path)
    # one pass on a blank picture: oneDNN picks its kernels now, not on the first visitor's click
    from PIL import Image

    predictor.score([Image.new("RGB", (64, 64))])
    return predictor


def _fastai_predictor(model_path: Path) -> Predictor:
    if not model_path.is_file():
        raise WhatsthatError(f"model file not found: {model_path} (train one with `whatsthat train`)")
    try:
        import fastai  # noqa: F401  (only to tell a missing fastai from a broken export)
    except ImportError:
        raise WhatsthatError(
            f"{model_path} has no serving artifact beside it, and fastai (needed to load export.pkl itself) is not "
            f"installed here: run `whatsthat artifact {model_path}` where fastai is, and deploy the files it writes"
        ) from None
    log.warning("no serving artifact beside %s: loading export.pkl with fastai (more memory, slower start); "
                "`whatsthat artifact %s` writes the torch-only one", model_path, model_path)  # fmt: skip
    from whatsthat.training.classifier import load_classifier

    clf = load_classifier(model_path)

    def score(images: Sequence[Any]) -> list[tuple[Ranked, float | None]]:
        # with the out-of-class score when export.ood.safetensors is beside export.pkl, as for the artifact
        return clf.score_many(list(images))

    return Predictor(clf.classes, clf.card, clf.threshold, "fastai", score)


def _artifact_predictor(model_path: Path, card: dict, threshold: float) -> Predictor:
    import torch

    from whatsthat.model import detector as ood
    from whatsthat.model.artifact import load_serving_model

    sm = load_serving_model(model_path)
    detector = ood.load_detector(model_path, sm.model)
    layer = detector.layer if detector is not None else ood.DEFAULT_LAYER
    pretrained = detector.pretrained if detector is not None else None

    def score(images: Sequence[Any]) -> list[tuple[Ranked, float | None]]:
        with torch.inference_mode():
            features, logits = ood.split_forward(sm.model, sm.batch(images), layer, pretrained)
            probs = torch.softmax(logits, dim=1).tolist()
            scores = detector.score(features, logits) if detector is not None else [None] * len(probs)
        return [(rank(sm.classes, row), s) for row, s in zip(probs, scores, strict=True)]

    card = {**card, "classes": card.get("classes") or sm.classes}
    return Predictor(sm.classes, card, threshold, "artifact", score)



def classify_files(predictor: Any, files: Sequence[tuple[str, bytes]], thumb_side: int, photo_side: int = 0) -> list[dict]:
    """Decode, thumbnail and classify (name, bytes) pairs; a bad file gets an error, the others still run.

    `predictor` has `score(images)` (ranked, ood_score) or just `predict_many(images)` (ranked). Each
    result: name, ranked, ood_score, error, reason, thumbnail (JPEG bytes, b"" when there is none), and
    with `photo_side` a photo: a JPEG of at most that many px a side (what a visitor's flag may keep).
    """
    # imported here: the supervisor (`whatsthat serve`'s own process) imports this module and never decodes
    from whatsthat.images import ImageError, encode_jpeg, load_image, resize_max

    results: list[dict] = []
    good: list[tuple[dict, Any]] = []
    for name, data in files:
        result: dict = {"name": name, "ranked": [], "ood_score": None, "error": "", "reason": "", "thumbnail": b""}
        results.append(result)
        try:
            im = load_image(data)
        except ImageError as e:
            log.warning("upload %r rejected (%s, %d bytes): %s", name, e.reason, len(data), e)
            result["error"], result["reason"] = str(e), e.reason
            continue
        result["thumbnail"] = encode_jpeg(resize_max(im, thumb_side), quality=80)
        if photo_side:  # re-encoded from the pixels: no EXIF (place, camera) travels with it
            result["photo"] = encode_jpeg(resize_max(im, photo_side), quality=85)
        good.append((result, im))
    if not good:
        return results
    images = [im for _, im in good]
    try:
        if hasattr(predictor, "score"):
            scored = predictor.score(images)
        else:
            scored = [(ranked, None) for ranked in predictor.predict_many(images)]
    except WhatsthatError as e:
        log.warning("prediction refused: %s", e)
        for result, _ in good:
            result["error"], result["reason"] = str(e), "error"
        return results
    for (result, _), (ranked, ood_score) in zip(good, scored, strict=True):
        result["ranked"] = [(str(label), float(p)) for label, p in ranked]
        result["ood_score"] = None if ood_score is None else float(ood_score)
    return results


# -- the process: a listener, a thread per kernel --


class _Trimmer:
    """Hands freed heap back to the system when the last request in flight is answered.

    glibc keeps memory that decoding and forward passes free inside its arenas, so the process only
    grows: measured with the bench's photo, 10 s of visitors left it ~10-25 MB above its idle size.
    `malloc_trim(0)` returns those pages; it runs after the answer is sent, so no visitor waits for it,
    and only when no other request is being served. Absent outside glibc (musl, macOS): then a no-op.
    """

    def __init__(self) -> None:
        self._busy = 0
        self._lock = threading.Lock()
        try:
            trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):
            trim = None
        if trim is not None:
            trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
        self._trim = trim

    @contextlib.contextmanager
    def request(self) -> Iterator[None]:
        with self._lock:
            self._busy += 1
        try:
            yield
        finally:
            with self._lock:
                self._busy -= 1
                idle = self._busy == 0
            if idle:
                self.trim()

    def trim(self) -> None:
        if self._trim is not None:
            self._trim(0)

    def wait_idle(self, timeout: float, quiet: float) -> bool:
        """Wait until no request has been in flight for `quiet` seconds (False: still busy after `timeout`)."""
        deadline, idle_since = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            with self._lock:
                busy = self._busy
            if busy:
                idle_since = None
            else:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= quiet:
                    return True
            time.sleep(0.02)
        return False


_trimmer = _Trimmer()


def _handle(predictor: Predictor, header: dict, blobs: list[bytes],
            flags: FlagDesk | None = None) -> tuple[dict, list[bytes]]:  # fmt: skip
    op = header.get("op")
    if op == "info":
        return {"ok": True, "classes": predictor.classes, "card": predictor.card, "threshold": predictor.threshold,
                "backend": predictor.backend, "pid": os.getpid()}, []  # fmt: skip
    if op == "classify":
        names = header.get("names")
        if not isinstance(names, list) or len(names) != len(blobs):
            return {"ok": False, "error": "malformed request: one name per file expected"}, []
        if len(blobs) > MAX_FILES:
            return {"ok": False, "error": f"at most {MAX_FILES} images per request"}, []
        side = header.get("thumb_side", THUMB_SIDE)
        side = side if isinstance(side, int) and 16 <= side <= 1024 else THUMB_SIDE
        photo_side = PHOTO_SIDE if header.get("photo_side") and flags is not None else 0  # only while flags are on
        results = classify_files(predictor, list(zip(map(str, names), blobs, strict=True)), side, photo_side)
        out: list[bytes] = []
        for r in results:
            for key in ("thumbnail", "photo"):
                jpeg = r.pop(key, b"")
                r[key] = len(out) if jpeg else -1
                if jpeg:
                    out.append(jpeg)
        return {"ok": True, "results": results}, out
    if op in ("flag", "client"):
        if flags is None:
            return {"ok": False, "error": "visitors' flags are off on this server"}, []
        return flags.handle(header, blobs, predictor.card), []
    return {"ok": False, "error": f"unknown request {op!r}"}, []


def _serve_connection(predictor: Predictor, conn: Connection, peer: int, flags: FlagDesk | None = None) -> None:
    with conn:
        while True:
            try:
                header, blobs = recv_message(conn)
            except (EOFError, OSError):  # the kernel went away (culled, closed): normal end
                return
            except WhatsthatError as e:
                log.warning("connection %d: %s; closing it", peer, e)
                return
            t0 = time.monotonic()
            # "info" is every kernel's hello and the supervisor's health check every 30 s: not news in the log
            level = logging.DEBUG if header.get("op") == "info" else logging.INFO
            log.log(level, "request %s from connection %d: %d file(s)", header.get("op"), peer, len(blobs))
            with _trimmer.request():
                try:
                    reply, out = _handle(predictor, header, blobs, flags)
                except Exception:  # one request's failure must not end the process or other visitors' requests
                    log.exception("request %s from connection %d failed", header.get("op"), peer)
                    reply, out = {"ok": False, "error": "the classifier failed on this request"}, []
                del blobs  # the uploads are freed before the trim, not after
                try:
                    send_message(conn, reply, out)
                except OSError as e:
                    log.info("connection %d closed before its answer: %s", peer, e)
                    return
                del reply, out
            log.log(level, "answered %s for connection %d in %.3fs", header.get("op"), peer, time.monotonic() - t0)


DRAIN = 15.0  # s at most that a stopping model process keeps answering; Heroku kills it 30 s after SIGTERM
QUIET = 0.5  # s without a request in flight after which a stopping model process exits


def serve_forever(predictor: Predictor, socket_path: str | Path, authkey: bytes,
                  ready: Callable[[], None] | None = None, stop: Callable[[], None] | None = None,
                  flags: FlagDesk | None = None) -> None:  # fmt: skip
    """Accept kernels on the Unix socket, a thread per connection, for ever, or until `stop()` returns.

    `flags`: visitors' flags are on, written through this desk (it owns the store); None: off.

    Then it takes no new connection, answers what the connected kernels still ask while it drains, and
    returns once no request has been in flight for QUIET seconds (DRAIN seconds at most).
    """
    socket_path = str(socket_path)
    with contextlib.suppress(FileNotFoundError):  # a predecessor's socket file; binding needs the name free
        os.unlink(socket_path)
    old = os.umask(0o177)  # the socket file itself is owner-only, on top of the private directory
    try:
        listener = Listener(socket_path, family="AF_UNIX", authkey=authkey)
    finally:
        os.umask(old)
    log.info("model process %d ready (%s, classes %s) on %s", os.getpid(), predictor.backend, predictor.classes,
             socket_path)  # fmt: skip
    if ready is not None:
        ready()
    stopping = threading.Event()
    accepting = threading.Thread(target=_accept, args=(predictor, listener, stopping, flags), daemon=True,
                                 name="accept")  # fmt: skip
    accepting.start()
    if stop is None:
        accepting.join()
        return
    stop()
    stopping.set()
    log.info("model process %d stopping: no new connections; answering the requests in flight", os.getpid())
    if not _trimmer.wait_idle(DRAIN, QUIET):
        log.warning("model process %d stopping with requests still in flight after %.0fs", os.getpid(), DRAIN)
    listener.close()


def _accept(predictor: Predictor, listener: Listener, stopping: threading.Event, flags: FlagDesk | None) -> None:
    peer = 0
    while True:
        try:
            conn = listener.accept()
        except (AuthenticationError, EOFError, ConnectionResetError) as e:
            log.warning("refused a connection: %s", e)
            continue
        except OSError:  # the listener was closed: the process is stopping
            return
        if stopping.is_set():
            conn.close()
            continue
        peer += 1
        threading.Thread(target=_serve_connection, args=(predictor, conn, peer, flags), daemon=True,
                         name=f"kernel-{peer}").start()  # fmt: skip


def until_sigterm() -> Callable[[], None]:
    """A `stop` for `serve_forever` that returns on SIGTERM (after which a second SIGTERM ends the process at once).

    A signal may be delivered to any thread (torch's, a connection's), and Python runs its handler in the
    main thread only when that thread next runs Python code; so the main thread waits on the signal
    module's wakeup file descriptor, which the handler-to-be writes to whichever thread got the signal.
    """
    read, write = os.pipe()
    os.set_blocking(write, False)
    signal.set_wakeup_fd(write)

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, handler)

    def wait() -> None:
        while True:
            readable, _, _ = select.select([read], [], [])
            if readable and signal.SIGTERM in os.read(read, 64):
                return

    return wait


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")  # fmt: skip


def model_main(argv: Sequence[str] | None = None) -> int:
    """`python -m whatsthat.web.modelprocess --model M --socket S` (authkey in $WHATSTHAT_MODEL_AUTHKEY)."""
    ap = argparse.ArgumentParser(prog="python -m whatsthat.web.modelprocess", description="the model process")
    ap.add_argument("--model", required=True)
    ap.add_argument("--socket", required=True)
    args = ap.parse_args(argv)
    setup_logging()
    authkey = child_key(ENV_AUTHKEY, min_bytes=16)
    if authkey is None:
        log.error("%s must hold the channel's key (hex, 16 bytes or more)", ENV_AUTHKEY)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    t0 = time.monotonic()
    try:
        predictor = load_predictor(args.model)
    except WhatsthatError as e:
        log.error("cannot load the model: %s", e)
        return LOAD_FAILED
    log.info("model %s loaded in %.1fs", args.model, time.monotonic() - t0)
    flags = FlagDesk.from_env(predictor.classes)  # None when flags are off; a store that is down is logged, not fatal
    _trimmer.trim()  # what loading and the warm-up pass freed
    # until now a SIGTERM simply ended the process: nothing was in flight
    try:
        serve_forever(predictor, args.socket, authkey, stop=until_sigterm(), flags=flags)
    finally:
        if flags is not None:
            flags.close()
    return 0


# -- supervision --


PROBE_INTERVAL = 30.0  # s between health checks of a running model process
PROBE_TIMEOUT = 10.0  # s a healthy process needs, at most, to answer "info" (its own thread, no model lock)
PROBE_FAILURES = 2  # failed checks in a row before a hung process is killed (and so restarted)


class Supervisor(Restarter):
    """Runs the model process and restarts it when it exits or hangs; `env()` is what kernels need to reach it.

    The socket lives in a fresh private directory (0700); the authkey is random per supervisor and
    reaches the model process and the kernels only through their environment. A process that is alive
    but answers nothing (deadlocked, stopped) would otherwise stay forever, every visitor getting
    "unavailable": a probe asks it for "info" every `probe_interval` seconds once it has bound its socket, and
    after `probe_failures` unanswered probes in a row kills it, so the watcher restarts it.
    """

    name = "model process"
    socket_var, key_var = ENV_SOCKET, ENV_AUTHKEY

    def __init__(self, model: str | Path, *, flags_url: str | None = None, python: str | None = None, stderr: Any = None,
                 min_delay: float = 0.5, max_delay: float = 30.0, probe_interval: float = PROBE_INTERVAL,
                 probe_timeout: float = PROBE_TIMEOUT, probe_failures: int = PROBE_FAILURES) -> None:  # fmt: skip
        super().__init__(python=python, stderr=stderr, min_delay=min_delay, max_delay=max_delay,
                         dir_prefix="whatsthat-model-", socket_name="model.sock")  # fmt: skip
        self.probe_interval, self.probe_timeout, self.probe_failures = probe_interval, probe_timeout, probe_failures
        self.model = Path(model).resolve()
        self.flags_url = flags_url
        # the client hash's key: the operator's, else random per server, so it outlives model-process restarts
        self.flag_secret = os.environ.get(ENV_FLAG_SECRET) or secrets.token_hex(32)

    def command(self) -> list[str]:
        return [self.python, "-m", "whatsthat.web.modelprocess", "--model", str(self.model), "--socket", str(self.socket)]

    def child_env(self) -> dict[str, str]:
        # glibc gives each thread that allocates its own malloc arena and keeps freed memory there: with a
        # thread per kernel, ten visitors grew the process from 281 to 539 MB PSS; two arenas kept it at 348
        env = {"MALLOC_ARENA_MAX": "2", **super().child_env()}
        env.pop(ENV_FLAGS_URL, None)  # flags are this server's option, never an inherited variable's
        if self.flags_url:
            env.update({ENV_FLAGS_URL: self.flags_url, ENV_FLAG_SECRET: self.flag_secret})
        return env

    def why(self, returncode: int) -> str:
        return "could not load the model" if returncode == LOAD_FAILED else f"exited with {returncode}"

    def start(self) -> Supervisor:
        super().start()
        threading.Thread(target=self._probe, daemon=True, name="model-probe").start()
        return self

    def _answers(self, pid: int) -> bool:
        """Whether process `pid` completes a handshake and answers "info" within the probe timeout."""
        client = ModelClient(str(self.socket), self.authkey, connect_wait=self.probe_timeout,
                             request_timeout=self.probe_timeout, handshake_timeout=self.probe_timeout)  # fmt: skip
        try:
            client.load_info()
        except (ModelLost, ModelUnavailable) as e:
            log.warning("model process %d did not answer a health check: %s", pid, e)
            return False
        finally:
            client.close()
        return True

    def _listening(self) -> bool:
        """Whether the current process has bound its socket: a process still loading has not, and the
        file may still be its dead predecessor's (each process replaces it when it binds)."""
        try:
            return self.socket.stat().st_mtime >= self._spawned_at
        except FileNotFoundError:
            return False

    def _probe(self) -> None:
        failures, pid = 0, None
        while not self._stop.wait(self.probe_interval):
            proc = self.proc
            if proc is None or proc.poll() is not None or not self._listening():
                continue
            if proc.pid != pid:  # a new process: its count starts afresh
                failures, pid = 0, proc.pid
            failures = 0 if self._answers(proc.pid) else failures + 1
            if failures >= self.probe_failures and not self._stop.is_set() and proc.poll() is None:
                log.warning("model process %d is hung (%d health checks unanswered): killing it to restart it",
                            proc.pid, failures)  # fmt: skip
                proc.kill()
                failures = 0


def main(argv: Sequence[str] | None = None) -> int:
    return model_main(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
