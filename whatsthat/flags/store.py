"""The flags database: one row per visitor's "Wrong? Tell us what it is", with caps and a rate limit.

SQLite in a file by default (stdlib sqlite3, WAL), PostgreSQL (psycopg 3) when the URL says
``postgresql://`` or ``postgres://`` (Heroku's ``DATABASE_URL``: a dyno's disk is wiped on restart).

* **Schema.** A ``schema_version`` table holds one number; `MIGRATIONS` is the ordered list of steps
  from an empty database. Opening a store applies the missing steps in one transaction (under a lock:
  two processes starting together migrate once), so a database made by an older whatsthat is brought
  up to date and one made by a newer whatsthat is refused rather than misread.
* **Safe by construction.** Parameterised SQL only; everything is validated before it is written; a
  photo is stored only when the caller passes one (the page passes one only with the visitor's
  consent), and only a JPEG of at most 512 px a side and `Caps.photo_bytes`; the client is a keyed
  hash (`client_hash`), never an address.
* **Caps.** Per photo, per (UTC) day, in total (rows and photo bytes), and per client per minute. They
  are counted in the database inside the inserting transaction (serialised by a write lock), so they
  hold across every page kernel, model process and dyno writing to it.
* **Errors.** `FlagRefused`: this flag is not accepted (its message is a sentence for the visitor).
  `FlagStoreDown`: the database cannot be reached or takes no new rows (full, over its plan's limit,
  read-only; it can still be read and cleared). Neither loses a stored row: every write is one
  transaction, rolled back whole on any error, and the store reconnects on the next call.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hmac
import json
import math
import os
import sqlite3
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from whatsthat.errors import WhatsthatError
from whatsthat.flags.rules import MAX_PHOTO_SIDE, MAX_TEXT, NONE_OF_THESE
from whatsthat.images import ImageError, load_image, sniff

MAX_LABEL = 100  # a class name (without classes given: anything a visitor might pick)
MAX_MODEL = 200  # a fingerprint
MAX_CLIENT = 128
MAX_RANKED = 1000
DB_FILE = "flags.db"
CONNECT_TIMEOUT_S = 5
# one number for every writer to lock on (PostgreSQL advisory lock): the caps are counted and the row
# inserted as one step, so two writers can never both take the last place under a cap
_PG_LOCK = 0x5748_4154_5341_47  # "WHATSAG"


class FlagRefused(WhatsthatError):
    """This flag is not stored: `str()` is a sentence a visitor can read, `.reason` a short code for the log."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class FlagStoreDown(WhatsthatError):
    """The database cannot be reached, or is full: nothing was stored, nothing stored was lost.

    `.reason` is ``"unreachable"`` or ``"full"`` (takes no new rows: its disk, its plan's limit, or set
    read-only); `str()` says why, for the log (the page says only that the flag could not be sent).
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Flag:
    """One visitor's flag, as the model process hands it over."""

    model: str  # the model's fingerprint (from its card)
    ranked: list[tuple[str, float]]  # the model's answer, best first
    ood_score: float | None  # the out-of-class score, None where the model has no detector
    label: str  # the visitor's label: a class name or NONE_OF_THESE
    text: str = ""  # at most MAX_TEXT characters
    photo: bytes | None = None  # JPEG, at most 512 px a side, ONLY with the visitor's consent
    client: str = ""  # a keyed hash of the client address, never the address


@dataclass(frozen=True)
class Caps:
    """Limits on what the database takes. A Heroku essential-0 Postgres holds 1 GB; the defaults stay well under."""

    photo_bytes: int = 200_000  # one photo: a 512 px JPEG is 30-120 KB
    per_day: int = 500  # flags per UTC day, from everyone
    total: int = 20_000  # flags in all
    per_client_per_minute: int = 5  # flags per client (hash) in any 60 seconds
    total_photo_bytes: int = 400_000_000  # photos' bytes in all


@dataclass(frozen=True)
class StoredFlag:
    """A row of the database, as `FlagStore.rows` reads it back (for pull and stats; never for the page)."""

    id: int
    time: dt.datetime  # UTC
    model: str
    ranked: list[tuple[str, float]]
    ood_score: float | None
    label: str
    text: str
    photo: bytes | None
    client: str
    photo_bytes: int = field(default=0)

    @property
    def answer(self) -> str:
        """The model's top answer ('' when it gave none)."""
        return self.ranked[0][0] if self.ranked else ""


def client_hash(address: str, secret: bytes) -> str:
    """A keyed hash of a client address (HMAC-SHA256, 32 hex digits): counts a client, never names it."""
    if not secret:
        raise WhatsthatError("client_hash needs a secret key (without one, an address could be guessed back)")
    return hmac.new(secret, address.encode("utf-8"), "sha256").hexdigest()[:32]


def default_path() -> Path:
    """The SQLite file used when no URL is given: ``$XDG_DATA_HOME/whatsthat/flags.db`` (~/.local/share)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "whatsthat" / DB_FILE


def database_url(url: str | None = None) -> str | None:
    """The database to use: `url`, else ``$DATABASE_URL``, else None (the default SQLite file)."""
    return url or os.environ.get("DATABASE_URL") or None


def describe_url(url: str | None) -> str:
    """`url` fit to print: the password left out."""
    if url is None:
        return f"sqlite:///{default_path()}"
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


# --- the schema -------------------------------------------------------------------------------------

# Each step is a list of statements, written once for both databases: {id}, {blob} and {float} are the
# only differences. Append steps; never edit one that has shipped (a database may have run it).
MIGRATIONS: list[list[str]] = [
    [  # 1: the flags
        """CREATE TABLE flags (
            id {id},
            created TEXT NOT NULL,
            model TEXT NOT NULL,
            ranked TEXT NOT NULL,
            ood_score {float},
            label TEXT NOT NULL,
            text TEXT NOT NULL DEFAULT '',
            photo {blob},
            client TEXT NOT NULL DEFAULT ''
        )""",
    ],
    [  # 2: the photos in a table of their own, and their sizes beside the flags: the caps and stats read
        # the flags table on every flag, and in SQLite a column after a big blob is reached only by walking
        # the blob's overflow pages
        "ALTER TABLE flags ADD COLUMN photo_bytes INTEGER NOT NULL DEFAULT 0",
        "UPDATE flags SET photo_bytes = length(photo) WHERE photo IS NOT NULL",
        """CREATE TABLE flag_photos (
            flag_id {int} PRIMARY KEY REFERENCES flags (id) ON DELETE CASCADE,
            jpeg {blob} NOT NULL
        )""",
        "INSERT INTO flag_photos (flag_id, jpeg) SELECT id, photo FROM flags WHERE photo IS NOT NULL",
        "ALTER TABLE flags DROP COLUMN photo",
        "CREATE INDEX flags_client_created ON flags (client, created)",
        "CREATE INDEX flags_created ON flags (created)",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)
_DIALECT = {
    "sqlite": {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "int": "INTEGER", "blob": "BLOB", "float": "REAL"},
    "postgresql": {"id": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "int": "BIGINT", "blob": "BYTEA",
                   "float": "DOUBLE PRECISION"},
}
_COLUMNS = "f.id, f.created, f.model, f.ranked, f.ood_score, f.label, f.text, {photo}, f.client, f.photo_bytes"


def _time(t: dt.datetime) -> str:
    # fixed width, UTC: text comparison is time order, in both databases
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(s: str) -> dt.datetime:
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)


# --- validation -------------------------------------------------------------------------------------

_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def _bad_char(s: str) -> str | None:
    for ch in s:
        if unicodedata.category(ch) in ("Cc", "Cs") or ch in _BIDI:
            return f"U+{ord(ch):04X}"
    return None


def _check_words(text: str, what: str, limit: int) -> str:
    if not isinstance(text, str):
        raise FlagRefused(what, f"The {what} must be text.")
    text = text.strip()
    if len(text) > limit:
        raise FlagRefused(what, f"The {what} is {len(text)} characters long; at most {limit} please.")
    bad = _bad_char(text)
    if bad:
        raise FlagRefused(what, f"The {what} contains a control character ({bad}); please use plain words.")
    return text


def check_flag(flag: Flag, caps: Caps, classes: Sequence[str] | None = None) -> Flag:
    """`flag` validated and tidied (text stripped), or FlagRefused saying what is wrong with it."""
    label = _check_words(flag.label, "label", MAX_LABEL)
    if not label:
        raise FlagRefused("label", "Please pick what it is.")
    if classes is not None and label not in classes and label != NONE_OF_THESE:
        allowed = ", ".join([*classes, NONE_OF_THESE])
        raise FlagRefused("label", f"{label!r} is not one of the choices ({allowed}).")
    text = _check_words(flag.text, "text", MAX_TEXT)
    model = _check_words(flag.model, "model", MAX_MODEL)
    client = _check_words(flag.client, "client", MAX_CLIENT)
    try:
        ranked = [(str(c), float(p)) for c, p in flag.ranked]
    except (TypeError, ValueError) as e:
        raise FlagRefused("ranked", f"The model's answer is malformed ({e}).") from None
    if len(ranked) > MAX_RANKED or not all(math.isfinite(p) for _, p in ranked):
        raise FlagRefused("ranked", "The model's answer is malformed (too long, or not numbers).")
    ood = flag.ood_score
    if ood is not None:
        try:
            ood = float(ood)
        except (TypeError, ValueError):
            raise FlagRefused("ranked", "The out-of-class score is not a number.") from None
        if not math.isfinite(ood):
            raise FlagRefused("ranked", "The out-of-class score is not a finite number.")
    photo = flag.photo
    if photo is not None:
        photo = bytes(photo)
        if len(photo) > caps.photo_bytes:
            raise FlagRefused("photo-size", f"The photo is {len(photo) // 1000} KB; at most "
                                            f"{caps.photo_bytes // 1000} KB can be kept.")
        if sniff(photo) != "JPEG":
            raise FlagRefused("photo", "The photo must be a JPEG.")
        try:
            im = load_image(photo, max_bytes=caps.photo_bytes)
        except ImageError as e:
            raise FlagRefused("photo", f"The photo cannot be read: {e}") from None
        if max(im.size) > MAX_PHOTO_SIDE:
            raise FlagRefused("photo-size", f"The photo is {im.width}x{im.height} px; at most "
                                            f"{MAX_PHOTO_SIDE} px a side is kept.")
    return Flag(model, ranked, ood, label, text, photo, client)


# --- the databases ----------------------------------------------------------------------------------


class _Backend:
    """What differs between SQLite and PostgreSQL: connecting, locking, and what an error means."""

    dialect: str
    conn: Any = None
    # how many tables of this name the database has (0 or 1), one ? parameter
    has_table: str = ""

    def connect(self) -> None: ...
    def close(self) -> None: ...
    def sql(self, q: str) -> str:
        return q

    @contextlib.contextmanager
    def transaction(self, write: bool = True) -> Iterator[Any]:  # yields something with .execute(sql, params)
        yield None

    def down(self, e: Exception) -> FlagStoreDown | None:
        return None


class _Sqlite(_Backend):
    dialect = "sqlite"
    has_table = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?"

    def __init__(self, path: Path, create: bool):
        self.path, self.create = path, create

    def connect(self) -> None:
        if self.conn is not None:
            return
        if not self.create and not self.path.is_file():
            raise WhatsthatError(f"no flags database at {self.path}: nothing has been flagged there yet "
                                 f"(or give the right one with --db URL or DATABASE_URL)")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit (isolation_level None): transactions are the explicit BEGIN IMMEDIATE below
            conn = sqlite3.connect(self.path, timeout=CONNECT_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise FlagStoreDown("unreachable", f"cannot open the flags database {self.path}: {e}") from e
        try:
            conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
            conn.execute("PRAGMA synchronous=FULL")  # a committed flag survives a power cut
            conn.execute("PRAGMA secure_delete=ON")  # a deleted photo's bytes are overwritten, not left in free pages
            conn.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite: a photo never outlives its flag
        except sqlite3.Error as e:
            conn.close()
            raise self.down(e) or FlagStoreDown("unreachable", f"{self.path}: {e}") from e
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    @contextlib.contextmanager
    def transaction(self, write: bool = True) -> Iterator[Any]:
        self.connect()
        conn = self.conn
        # a writer takes the write lock first, so its counts and its insert are one step; a reader (WAL)
        # reads a snapshot and never holds up the page's writers
        conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK") if conn.in_transaction else None
            raise
        conn.execute("COMMIT")

    def down(self, e: Exception) -> FlagStoreDown | None:
        if not isinstance(e, sqlite3.Error):
            return None
        name = getattr(e, "sqlite_errorname", "")
        if name == "SQLITE_FULL" or "full" in str(e):
            return FlagStoreDown("full", f"the flags database {self.path} is full ({e})")
        if isinstance(e, sqlite3.OperationalError | sqlite3.DatabaseError) and not isinstance(
                e, sqlite3.IntegrityError | sqlite3.ProgrammingError):
            return FlagStoreDown("unreachable", f"the flags database {self.path} cannot be used ({e})")
        return None


class _Postgres(_Backend):
    dialect = "postgresql"
    has_table = "SELECT COUNT(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema() AND tablename = ?"

    def __init__(self, url: str):
        self.url = url

    def connect(self) -> None:
        if self.conn is not None and not self.conn.closed and not self.conn.broken:
            return
        self.close()
        import psycopg  # imported here: only a PostgreSQL store needs it

        try:
            self.conn = psycopg.connect(self.url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=True,
                                        application_name="whatsthat")
        except psycopg.Error as e:
            raise FlagStoreDown("unreachable", f"cannot connect to the flags database "
                                               f"{describe_url(self.url)}: {str(e).strip()}") from e

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):  # closing a connection the server already dropped
                self.conn.close()
            self.conn = None

    def sql(self, q: str) -> str:
        return q.replace("?", "%s")

    @contextlib.contextmanager
    def transaction(self, write: bool = True) -> Iterator[Any]:
        self.connect()
        with self.conn.transaction():
            if write:
                self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK,))
            yield self.conn

    def down(self, e: Exception) -> FlagStoreDown | None:
        import psycopg

        if not isinstance(e, psycopg.Error):
            return None
        self.close()  # whatever happened, the next call starts from a fresh connection
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if e.sqlstate in ("53100", "53200"):  # disk full, out of memory
            return FlagStoreDown("full", f"the flags database {describe_url(self.url)} is full ({text})")
        # a plan's limit: Heroku Postgres past its row or storage limit revokes INSERT and CREATE (42501); a
        # database set read-only (25006), as a full or a standby one is. Reading and deleting still work.
        if e.sqlstate == "42501":
            return FlagStoreDown("full", f"the flags database {describe_url(self.url)} takes no new rows ({text}: "
                                         "over its plan's limit? delete old flags, or upgrade the plan)")
        if e.sqlstate == "25006":
            return FlagStoreDown("full", f"the flags database {describe_url(self.url)} is read-only and takes "
                                         f"no new rows ({text})")
        if isinstance(e, psycopg.OperationalError | psycopg.InterfaceError):
            return FlagStoreDown("unreachable", f"the flags database {describe_url(self.url)} "
                                                f"cannot be reached ({text})")
        return None


def _backend(url: str | None, create: bool) -> _Backend:
    if url is None:
        return _Sqlite(default_path(), create)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("postgres", "postgresql"):
        return _Postgres(url)
    if scheme == "sqlite":
        parts = urlsplit(url)
        if parts.netloc or not parts.path or parts.path == "/":
            raise WhatsthatError(f"{url!r}: a SQLite URL is sqlite:///relative/path.db or sqlite:////absolute/path.db")
        return _Sqlite(Path(unquote(parts.path[1:])), create)
    raise WhatsthatError(f"{describe_url(url)!r} is not a database URL whatsthat can use: give "
                         f"sqlite:///PATH (a file) or postgresql://USER:PASSWORD@HOST/DB")


class FlagStore:
    """The flags database, open. Safe to share between threads (one call at a time)."""

    def __init__(self, backend: _Backend, caps: Caps, classes: Sequence[str] | None):
        self._db = backend
        self.caps = caps
        self.classes = list(classes) if classes is not None else None
        self._lock = threading.Lock()
        self._migrated = False

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._db.dialect

    @contextlib.contextmanager
    def _transaction(self, write: bool = True) -> Iterator[Any]:
        with self._lock:
            try:
                if not self._migrated:
                    self._migrate()
                with self._db.transaction(write) as conn:
                    yield _Exec(conn, self._db)
            except WhatsthatError:
                raise
            except Exception as e:
                down = self._db.down(e)
                if down is None:
                    raise
                raise down from e

    def _migrate(self) -> None:
        # read first: a schema that is up to date needs no write, and a database that takes no writes (over
        # its plan's limit, read-only) must still let the maintainer pull and delete flags
        with self._db.transaction(write=False) as conn:
            db = _Exec(conn, self._db)
            if db.execute(self._db.has_table, ("schema_version",)).fetchone()[0]:
                row = db.execute("SELECT version FROM schema_version").fetchone()
                if row is not None and row[0] == SCHEMA_VERSION:
                    self._migrated = True
                    return
        with self._db.transaction() as conn:
            db = _Exec(conn, self._db)
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if version > SCHEMA_VERSION:
                raise WhatsthatError(f"the flags database is at schema version {version}, newer than this "
                                     f"whatsthat knows ({SCHEMA_VERSION}): upgrade whatsthat to use it")
            for step in MIGRATIONS[version:]:
                for statement in step:
                    db.execute(statement.format(**_DIALECT[self._db.dialect]))
            if row is None:
                db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            elif version < SCHEMA_VERSION:
                db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))
        self._migrated = True

    def check(self) -> None:
        """Connect and bring the schema up to date now (FlagStoreDown when the database cannot be used)."""
        with self._transaction():
            pass

    def schema_version(self) -> int:
        with self._transaction(write=False) as db:
            return db.execute("SELECT version FROM schema_version").fetchone()[0]

    def add(self, flag: Flag, *, now: dt.datetime | None = None) -> int:
        """Validate `flag`, apply the caps and the rate limit, store it; returns its row id.

        FlagRefused when it is malformed or over a limit; FlagStoreDown when the database cannot take it.
        `now` is for tests of the day and minute windows.
        """
        flag = check_flag(flag, self.caps, self.classes)
        now = now or dt.datetime.now(dt.UTC)
        size = len(flag.photo) if flag.photo is not None else 0
        with self._transaction() as db:
            recent = db.execute("SELECT COUNT(*) FROM flags WHERE client = ? AND created > ?",
                                (flag.client, _time(now - dt.timedelta(minutes=1)))).fetchone()[0]
            if recent >= self.caps.per_client_per_minute:
                raise FlagRefused("rate", "You have sent several flags in the last minute; please wait a minute "
                                          "and try again.")
            midnight = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
            today = db.execute("SELECT COUNT(*) FROM flags WHERE created >= ?", (_time(midnight),)).fetchone()[0]
            if today >= self.caps.per_day:
                raise FlagRefused("day-cap", "This page has taken all the flags it can for today; thank you, "
                                             "please try again tomorrow.")
            total, stored_bytes = db.execute("SELECT COUNT(*), COALESCE(SUM(photo_bytes), 0) FROM flags").fetchone()
            if total >= self.caps.total:
                raise FlagRefused("total-cap", "This page has taken all the flags it can keep; thank you all the "
                                               "same.")
            if size and stored_bytes + size > self.caps.total_photo_bytes:
                raise FlagRefused("photo-cap", "This page keeps no more photos; send the flag without the photo, "
                                               "please.")
            row = db.execute(
                "INSERT INTO flags (created, model, ranked, ood_score, label, text, client, photo_bytes) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (_time(now), flag.model, json.dumps(flag.ranked), flag.ood_score, flag.label, flag.text,
                 flag.client, size),
            ).fetchone()
            if flag.photo is not None:
                db.execute("INSERT INTO flag_photos (flag_id, jpeg) VALUES (?, ?)", (row[0], flag.photo))
            return int(row[0])

    def rows(self, *, after: int = 0, photos: bool = True, with_photo_only: bool = False,
             limit: int | None = None) -> list[StoredFlag]:
        """Stored flags with an id above `after`, oldest first, at most `limit` of them.

        `photos=False` leaves the photo bytes out (`photo_bytes` still says whether there was one);
        `with_photo_only` reads only the flags that kept a photo.
        """
        cols = _COLUMNS.format(photo="p.jpeg" if photos else "NULL")
        join = "JOIN" if with_photo_only else "LEFT JOIN"
        tables = f"flags f {join} flag_photos p ON p.flag_id = f.id" if photos or with_photo_only else "flags f"
        with self._transaction(write=False) as db:
            got = db.execute(f"SELECT {cols} FROM {tables} WHERE f.id > ? ORDER BY f.id" + (" LIMIT ?" if limit else ""),
                             (after, limit) if limit else (after,)).fetchall()
        return [StoredFlag(int(r[0]), _parse_time(r[1]), r[2], [(c, float(p)) for c, p in json.loads(r[3])],
                           r[4], r[5], r[6], bytes(r[7]) if r[7] is not None else None, r[8], int(r[9]))
                for r in got]  # fmt: skip

    def count(self) -> int:
        with self._transaction(write=False) as db:
            return int(db.execute("SELECT COUNT(*) FROM flags").fetchone()[0])

    def delete(self, before: dt.datetime) -> int:
        """Delete every flag stored before `before` (photos included); returns how many."""
        with self._transaction() as db:  # the photos first: not left to the foreign key's cascade alone
            db.execute("DELETE FROM flag_photos WHERE flag_id IN (SELECT id FROM flags WHERE created < ?)",
                       (_time(before),))
            cur = db.execute("DELETE FROM flags WHERE created < ?", (_time(before),))
            return int(cur.rowcount)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> FlagStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Exec:
    """A connection whose SQL is written with ? placeholders, whatever the database."""

    def __init__(self, conn: Any, backend: _Backend):
        self.conn, self.backend = conn, backend

    def execute(self, q: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(self.backend.sql(q), tuple(params))


def open_store(url: str | None = None, *, caps: Caps | None = None, classes: Sequence[str] | None = None,
               create: bool = True, lazy: bool = False) -> FlagStore:
    """The flags database at `url` (None: the default SQLite file), its schema brought up to date.

    `url`: ``sqlite:///path/flags.db``, ``postgresql://...`` or ``postgres://...``. A malformed URL is a
    WhatsthatError; a database that cannot be reached is FlagStoreDown (unless `lazy`: then the first
    call connects, and every call after a failure tries again). `classes`: the labels a visitor may
    give (plus NONE_OF_THESE); None accepts any label. `create=False`: a missing SQLite file is an
    error rather than a new empty database (for reading).
    """
    store = FlagStore(_backend(url, create), caps or Caps(), classes)
    if not lazy:
        store.check()
    return store


def delete_flags(url: str | None, before: dt.datetime) -> str:
    """Delete the flags stored before `before` in the database at `url`; says how many, and how many are left."""
    with open_store(url, create=False) as store:
        n = store.delete(before)
        left = store.count()
    return (f"deleted {n} flag(s) stored before {_time(before)[:19]}Z from {describe_url(url)}, photos "
            f"included; {left} left")
