"""Visitors' flags as the model process takes them: it owns the store, and nothing a visitor sends reaches it unchecked.

`whatsthat serve --flags on|URL` gives the model process a store URL (`ENV_FLAGS_URL`) and the key of
the client hash (`ENV_FLAG_SECRET`); `FlagDesk.from_env` reads both. Writes come only from here, the
server side, through `whatsthat.flags.store` (parameterised SQL, caps, rate limit); a page kernel only
sends a `flag` request over the model channel (`whatsthat.web.protocol`) and never reads flags back.

- **Opened once**, in a worker thread at the start, so a slow or stopped database delays neither the
  model's start nor a classification. A database that cannot be reached then is logged with the reason,
  and the store is opened lazily instead: each later flag tries to connect again (and is answered "down"
  while it cannot). A URL the store cannot use at all is logged, and every flag is answered "down".
- **Bounded time**: every write runs on that one worker thread (SQLite wants one writer anyway), and a
  visitor's request waits at most WAIT seconds for it. A database that hangs (a network partition) thus
  costs that visitor's flag, never the classification of anyone: classification runs on other threads
  and never touches the store. At most PENDING flags wait at once; more are answered "down" at once.
- **Who sent it**: a keyed hash of the visitor's address, never the address. The server process
  knows the address (its kernel manager, `whatsthat.web.kernelpool`, admits each page by it) and tells
  this process which kernel serves it (the `client` request); the kernel says its own id with each flag.
  A kernel this process was not told about (a restart of this process forgot it, or no admission in front)
  is hashed by its kernel id: a rate limit per page instead of per visitor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TYPE_CHECKING, Any

from whatsthat.errors import WhatsthatError
from whatsthat.web.protocol import ENV_FLAG_SECRET, ENV_FLAGS_URL

if TYPE_CHECKING:
    from whatsthat.flags.store import FlagStore

log = logging.getLogger("whatsthat.web.flagdesk")

# s a visitor's flag waits for the store before the page says "could not send": more than the store's
# own connect time-out (whatsthat.flags.store.CONNECT_TIMEOUT_S, 5 s), so a stopped database says so itself
WAIT = 8.0
PENDING = 8  # flags waiting for the store at once; more are "down" at once (the store is not keeping up)
MAX_KERNELS = 4096  # kernel -> client hash entries kept (the oldest go first: their kernels are long culled)


def model_fingerprint(card: Mapping[str, Any]) -> str:
    """The served model's fingerprint: the detector's (its head's weights) when the card has one, else a
    hash of the card itself (classes, metrics and training time tell two models apart)."""
    found = (card.get("not_sure") or {}).get("model_fingerprint") if isinstance(card.get("not_sure"), dict) else None
    if found:
        return str(found)
    return "card-" + hashlib.sha256(json.dumps(card, sort_keys=True, default=str).encode()).hexdigest()[:16]


class FlagDesk:
    """The model process's side of visitors' flags (see the module docstring)."""

    def __init__(self, url: str, secret: bytes, classes: Sequence[str], *, wait: float = WAIT,
                 pending: int = PENDING) -> None:  # fmt: skip
        from whatsthat.flags.store import describe_url

        self.url, self.secret, self.classes, self.wait = url, secret, list(classes), wait
        self.where = describe_url(url)  # for the log: without the password Heroku's DATABASE_URL carries
        self._store: FlagStore | None = None
        self._clients: OrderedDict[str, str] = OrderedDict()  # kernel id -> client hash
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(pending)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flag-store")
        self._worker.submit(self._open)

    @classmethod
    def from_env(cls, classes: Sequence[str], env: Mapping[str, str] | None = None, **kwargs: Any) -> FlagDesk | None:
        """The desk `whatsthat serve --flags` asked for, or None when flags are off."""
        env = os.environ if env is None else env
        url = env.get(ENV_FLAGS_URL, "").strip()
        if not url:
            return None
        key = env.get(ENV_FLAG_SECRET, "")
        try:
            secret = bytes.fromhex(key) if key else os.urandom(32)
        except ValueError:
            secret = key.encode()  # an operator's own secret need not be hex
        return cls(url, secret, classes, **kwargs)

    # -- the store, on the worker thread only --

    def _open(self) -> None:
        from whatsthat.flags.store import FlagStoreDown, open_store  # the driver loads here, in the model process only

        try:
            self._store = open_store(self.url, classes=self.classes)
        except FlagStoreDown as e:  # classification goes on; each flag tries to connect again
            log.error("visitors' flags: cannot reach the store %s: %s; flags are answered 'could not send' until "
                      "it can be reached (each flag tries again)", self.where, e)  # fmt: skip
            self._store = open_store(self.url, classes=self.classes, lazy=True)
        except WhatsthatError as e:  # a URL or schema the store cannot use: nothing to retry
            log.error("visitors' flags: cannot use the store %s: %s; every flag is answered 'could not send'",
                      self.where, e)  # fmt: skip
        else:
            log.info("visitors' flags on: store %s open", self.where)

    def _add(self, flag: Any) -> dict:
        from whatsthat.flags.store import FlagRefused, FlagStoreDown

        store = self._store
        if store is None:
            return {"ok": True, "sent": False, "down": True}
        try:
            row = store.add(flag)
        except FlagRefused as e:
            log.info("flag refused (%s): %s", getattr(e, "reason", "refused"), e)
            return {"ok": True, "sent": False, "refused": str(e)}
        except FlagStoreDown as e:
            log.warning("flag not stored: the store %s is down: %s", self.where, e)
            return {"ok": True, "sent": False, "down": True}
        log.info("flag %d stored (label %r, photo %s)", row, flag.label, "yes" if flag.photo else "no")
        return {"ok": True, "sent": True, "id": int(row)}

    # -- requests --

    def client_of(self, kernel: str) -> str:
        """The client hash of the visitor kernel `kernel` serves (its own id's hash when not told)."""
        from whatsthat.flags.store import client_hash

        with self._lock:
            found = self._clients.get(kernel)
        return found if found is not None else client_hash(f"kernel:{kernel}", self.secret)

    def note_client(self, kernel: str, address: str) -> None:
        """The server says which client address `kernel` serves: only its keyed hash is kept."""
        from whatsthat.flags.store import client_hash

        digest = client_hash(address, self.secret)
        with self._lock:
            self._clients[kernel] = digest
            self._clients.move_to_end(kernel)
            while len(self._clients) > MAX_KERNELS:
                self._clients.popitem(last=False)

    def handle(self, header: Mapping[str, Any], blobs: Sequence[bytes], card: Mapping[str, Any]) -> dict:
        """A `flag` or `client` request (whatsthat.web.protocol) -> its reply."""
        kernel = header.get("kernel")
        if not isinstance(kernel, str) or not kernel:
            return {"ok": False, "error": "malformed request: no kernel id"}
        if header.get("op") == "client":
            address = header.get("address")
            if not isinstance(address, str) or not address:
                return {"ok": False, "error": "malformed request: no client address"}
            self.note_client(kernel, address)
            return {"ok": True}
        flag = self._flag(header, blobs, card, kernel)
        if isinstance(flag, str):
            return {"ok": False, "error": f"malformed flag: {flag}"}
        if not self._slots.acquire(blocking=False):
            log.warning("flag not stored: %d flags already wait for the store %s", PENDING, self.where)
            return {"ok": True, "sent": False, "down": True}
        try:
            future: Future = self._worker.submit(self._add, flag)
        except RuntimeError:  # closing: the worker takes no more
            self._slots.release()
            return {"ok": True, "sent": False, "down": True}
        future.add_done_callback(lambda _f: self._slots.release())
        try:
            return future.result(timeout=self.wait)
        except FutureTimeout:
            log.warning("flag not answered: the store %s took more than %.0fs", self.where, self.wait)
            return {"ok": True, "sent": False, "down": True}
        except Exception:  # a bug in the store must cost this flag, never the model process
            log.exception("flag failed in the store %s", self.where)
            return {"ok": True, "sent": False, "down": True}

    def _flag(self, header: Mapping[str, Any], blobs: Sequence[bytes], card: Mapping[str, Any], kernel: str) -> Any:
        """The store's Flag from a request, or a string saying what is malformed (the store checks the values)."""
        from whatsthat.flags.store import Flag

        ranked, label, text, ood = header.get("ranked"), header.get("label"), header.get("text", ""), header.get("ood_score")
        if not isinstance(ranked, list) or not all(
            isinstance(r, list) and len(r) == 2 and isinstance(r[0], str) and isinstance(r[1], (int, float)) for r in ranked
        ):
            return "the model's answer must be a list of [class, probability]"
        if not isinstance(label, str) or not isinstance(text, str):
            return "label and text must be strings"
        if ood is not None and not isinstance(ood, (int, float)):
            return "the out-of-class score must be a number or null"
        if len(blobs) > 1:
            return "at most one photo per flag"
        return Flag(model=model_fingerprint(card), ranked=[(c, float(p)) for c, p in ranked],
                    ood_score=None if ood is None else float(ood), label=label, text=text,
                    photo=blobs[0] if blobs and blobs[0] else None, client=self.client_of(kernel))  # fmt: skip

    def close(self) -> None:
        """Finish the writes in flight, then close the store."""
        self._worker.shutdown(wait=True, cancel_futures=True)
        if self._store is not None:
            try:
                self._store.close()
            except WhatsthatError as e:
                log.warning("closing the flag store: %s", e)
            self._store = None
