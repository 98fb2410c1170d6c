"""The local channel between visitors' kernels and the one model process: wire format and client.

Standard library only, because this is what every visitor's kernel imports (no torch, no numpy).

Transport: `multiprocessing.connection` over a Unix socket in a private (0700) directory, with an
authkey: the connection starts with an HMAC challenge both ways, so only processes given the key
(through the environment, from `whatsthat serve` or the Binder start script) can talk to the model,
and nothing outside the machine can reach it at all.

Messages are never pickled (Connection.send/recv would unpickle whatever arrives): each message is
one JSON header frame followed by `header["blobs"]` raw byte frames (uploads, thumbnails).

    request  {"op": "info"}                                          -> {"ok", "classes", "card", "threshold", "backend", ...}
    request  {"op": "classify", "names": [...], "thumb_side": 192, "photo_side": 0 | 512} + one blob per file
             -> {"ok", "results": [{"name", "ranked", "ood_score", "error", "reason", "thumbnail": i | -1,
                 "photo": i | -1}]} + thumbnails and photos (a photo only where "photo_side" asked for one)
    request  {"op": "flag", "kernel", "ranked", "ood_score", "label", "text"} + one blob (the photo, with consent) or none
             -> {"ok", "sent": true, "id"} | {"ok", "sent": false, "refused": sentence} | {"ok", "sent": false, "down": true}
    request  {"op": "client", "kernel", "address"}  (from the server: which client a page kernel belongs to) -> {"ok"}
    failure  {"ok": false, "error": "..."}  (the request was refused; the connection stays usable)
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection
from typing import Any

from whatsthat.errors import WhatsthatError
from whatsthat.flags.rules import MAX_PHOTO_SIDE

ENV_SOCKET = "WHATSTHAT_MODEL_SOCKET"
ENV_AUTHKEY = "WHATSTHAT_MODEL_AUTHKEY"  # hex
MAX_HEADER = 1 << 20
MAX_FILES = 12  # images per click and per request: bounds the CPU one visitor can take from a shared server
THUMB_SIDE = 192  # px, the longer side of the thumbnail sent back with each answer
# px, the longer side of the copy of each photo a page keeps while visitors' flags are on: what a flag
# sends with the visitor's consent (issue 33). The model process makes it from the picture it decoded
# anyway, so a kernel never decodes an upload and never keeps one (64 MiB at most) after the click.
PHOTO_SIDE = MAX_PHOTO_SIDE
# Visitors' flags (`whatsthat serve --flags`, whatsthat.web.flagdesk): the model process reads the store's
# URL and the per-server secret of the client hash; kernels only read whether flags are on, never the URL.
ENV_FLAGS = "WHATSTHAT_FLAGS"  # "on" in the kernels' environment when the page offers the flag control
ENV_FLAGS_URL = "WHATSTHAT_FLAGS_URL"  # the model process's store: sqlite:///PATH or postgresql://...
ENV_FLAG_SECRET = "WHATSTHAT_FLAG_SECRET"  # hex; the key of the client hash (random per server when unset)
MAX_BLOB = 80 << 20  # above the 64 MiB websocket limit: whatever reached the kernel fits
CONNECT_WAIT = 90.0  # s a kernel waits for the model process: a cold start loads torch and the model
REQUEST_TIMEOUT = 120.0  # s for one click's images (12 at most, some of them 100-megapixel photos)
# s for the authkey handshake once the socket accepts: a healthy process answers in milliseconds, but
# a hung one (stopped, deadlocked) still accepts connections into its backlog and never answers
HANDSHAKE_TIMEOUT = 10.0

log = logging.getLogger("whatsthat.web.protocol")


class ModelUnavailable(WhatsthatError):
    """The model process could not be reached (not started, still loading, or restarting)."""


class ModelLost(WhatsthatError):
    """The model process went away while it worked on this request (it is being restarted)."""


def send_message(conn: Connection, header: dict, blobs: Sequence[bytes] = ()) -> None:
    header = {**header, "blobs": len(blobs)}
    conn.send_bytes(json.dumps(header, separators=(",", ":")).encode("utf-8"))
    for blob in blobs:
        conn.send_bytes(blob)


def recv_message(conn: Connection, max_blob: int = MAX_BLOB) -> tuple[dict, list[bytes]]:
    """One message; OSError/EOFError when the peer is gone, WhatsthatError when it is malformed."""
    raw = conn.recv_bytes(MAX_HEADER)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WhatsthatError(f"malformed message header: {e}") from e
    if not isinstance(header, dict) or not isinstance(header.get("blobs", 0), int):
        raise WhatsthatError("malformed message header: not an object with a blob count")
    blobs = [conn.recv_bytes(max_blob) for _ in range(header.get("blobs", 0))]
    return header, blobs


def channel_from_env(env: dict[str, str] | None = None, socket_var: str = ENV_SOCKET,
                     key_var: str = ENV_AUTHKEY) -> tuple[str, bytes] | None:  # fmt: skip
    """(socket path, authkey) from the environment `whatsthat serve` set, or None outside it.

    The model process's channel by default; `whatsthat.web.kernelfactory` names its own variables.
    """
    env = os.environ if env is None else env
    path, key = env.get(socket_var), env.get(key_var)
    if not path or not key:
        return None
    try:
        return path, bytes.fromhex(key)
    except ValueError:
        raise WhatsthatError(f"{key_var} is not hex") from None


class ModelClient:
    """A kernel's connection to the model process; reconnects after the process was restarted.

    A request that was sent and then lost its answer is NOT resent: the upload itself may be what
    killed the process, and resending it would kill the restarted one too. The visitor gets
    ModelLost (a friendly message) and the next click reconnects.
    """

    def __init__(self, path: str, authkey: bytes, *, connect_wait: float = CONNECT_WAIT,
                 request_timeout: float = REQUEST_TIMEOUT, handshake_timeout: float = HANDSHAKE_TIMEOUT) -> None:  # fmt: skip
        self.path, self.authkey = path, authkey
        self.connect_wait, self.request_timeout = connect_wait, request_timeout
        self.handshake_timeout = handshake_timeout
        self._conn: Connection | None = None
        self._lock = threading.Lock()  # one request at a time on the one connection
        self.info: dict[str, Any] = {}

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **kwargs: Any) -> ModelClient | None:
        found = channel_from_env(env)
        return None if found is None else cls(*found, **kwargs)

    def _connect(self) -> Connection:
        deadline = time.monotonic() + self.connect_wait
        delay = 0.05
        while True:
            try:
                return self._handshake()
            except AuthenticationError as e:  # the wrong key: waiting would not help
                raise ModelUnavailable(f"the model process refused this kernel's key ({e})") from None
            # not (yet) listening, or it died during the handshake: starting or restarting
            except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, BrokenPipeError, EOFError) as e:
                if time.monotonic() + delay > deadline:
                    why = getattr(e, "strerror", None) or type(e).__name__
                    raise ModelUnavailable(f"the model process is not answering at {self.path} ({why})") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _handshake(self) -> Connection:
        """`Client(...)` with a time limit: it has none of its own, and a hung process would hang the page.

        The handshake runs in a helper thread; on time-out that thread is left blocked on the dead socket
        (it ends when the supervisor restarts the process and the socket closes) and the visitor gets
        ModelUnavailable instead of a page that never answers.
        """
        done: dict[str, Any] = {}

        def attempt() -> None:
            try:
                done["conn"] = Client(self.path, family="AF_UNIX", authkey=self.authkey)
            except Exception as e:  # handed to the caller's thread below, re-raised there
                done["error"] = e

        worker = threading.Thread(target=attempt, daemon=True, name="model-handshake")
        worker.start()
        worker.join(self.handshake_timeout)
        if worker.is_alive():
            raise ModelUnavailable(f"the model process at {self.path} accepted the connection but did not "
                                   f"complete the handshake within {self.handshake_timeout:.0f}s (hung?)")  # fmt: skip
        if "error" in done:
            raise done["error"]
        return done["conn"]

    def _usable(self) -> Connection:
        conn = self._conn
        # a peer that closed shows as "readable" (EOF): that connection belongs to a dead process
        if conn is not None:
            try:
                stale = conn.poll(0)
            except (OSError, EOFError):
                stale = True
            if stale:
                log.info("model process connection closed; reconnecting")
                self.close()
                conn = None
        if conn is None:
            conn = self._conn = self._connect()
        return conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except OSError as e:
                log.debug("closing the model connection: %s", e)
            self._conn = None

    def request(self, header: dict, blobs: Sequence[bytes] = ()) -> tuple[dict, list[bytes]]:
        """Send one request and wait for its answer; raises ModelUnavailable, ModelLost or WhatsthatError."""
        with self._lock:
            conn = self._usable()
            try:
                send_message(conn, header, blobs)
            except (BrokenPipeError, ConnectionResetError):
                # the process died between requests, before reading this one: safe to send it again
                self.close()
                conn = self._usable()
                send_message(conn, header, blobs)
            try:
                if not conn.poll(self.request_timeout):
                    self.close()  # its late answer must not be read as the next request's
                    raise ModelLost(f"the model did not answer within {self.request_timeout:.0f}s")
                reply, out = recv_message(conn)
            except (EOFError, OSError) as e:
                self.close()
                raise ModelLost(f"the model process stopped during the request ({type(e).__name__})") from None
        if not reply.get("ok"):
            raise WhatsthatError(str(reply.get("error") or "the model refused the request"))
        return reply, out

    def load_info(self) -> dict[str, Any]:
        """Classes, card and threshold of the served model (waits for the process to be ready)."""
        reply, _ = self.request({"op": "info"})
        self.info = reply
        return reply

    def classify_files(self, files: Sequence[tuple[str, bytes]], thumb_side: int, photo_side: int = 0) -> list[dict]:
        """Per file: name, ranked [(label, prob)], ood_score, error, reason, thumbnail (JPEG bytes or b""),
        and photo (a JPEG of at most `photo_side` px, or b""; none unless `photo_side` is given)."""
        header = {"op": "classify", "names": [name for name, _ in files], "thumb_side": int(thumb_side)}
        if photo_side:
            header["photo_side"] = int(photo_side)
        reply, blobs = self.request(header, [data for _, data in files])
        results = reply.get("results")
        if not isinstance(results, list) or len(results) != len(files):
            raise WhatsthatError("the model process answered with the wrong number of results")
        for r in results:
            for key in ("thumbnail", "photo"):
                i = r.get(key, -1)
                r[key] = blobs[i] if isinstance(i, int) and 0 <= i < len(blobs) else b""
            r["ranked"] = [(str(label), float(p)) for label, p in r.get("ranked") or []]
        return results

    def flag(self, kernel: str, ranked: Sequence[tuple[str, float]], ood_score: float | None, label: str,
             text: str = "", photo: bytes | None = None) -> dict:  # fmt: skip
        """Send a visitor's flag; the reply says "sent" (with "id"), else "refused" (a sentence) or "down"."""
        header = {"op": "flag", "kernel": str(kernel), "ranked": [[str(c), float(p)] for c, p in ranked],
                  "ood_score": None if ood_score is None else float(ood_score), "label": str(label), "text": str(text)}  # fmt: skip
        reply, _ = self.request(header, [photo] if photo else [])
        return reply

    def tell_client(self, kernel: str, address: str) -> None:
        """Tell the model process which client address page kernel `kernel` serves (the server's side)."""
        self.request({"op": "client", "kernel": str(kernel), "address": str(address)})
