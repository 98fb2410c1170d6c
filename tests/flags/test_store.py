"""The flags database against a real SQLite file and a real PostgreSQL server: no mocks."""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from conftest import draw_image, image_bytes

from whatsthat.errors import WhatsthatError
from whatsthat.flags.store import (
    MIGRATIONS,
    NONE_OF_THESE,
    SCHEMA_VERSION,
    Caps,
    Flag,
    FlagRefused,
    FlagStoreDown,
    client_hash,
    open_store,
)

CLASSES = ["grizzly", "black", "teddy"]
RANKED = [("teddy", 0.7), ("grizzly", 0.2), ("black", 0.1)]


def jpeg(side: int = 256, quality: int = 85) -> bytes:
    im = draw_image("red", side, seed=side).resize((side, side))
    return image_bytes(im, "JPEG", quality=quality)


def flag(label: str = "grizzly", **kw) -> Flag:
    return Flag(**{"model": "sha256:abc123", "ranked": RANKED, "ood_score": 1.5, "label": label, **kw})


def raw_rows(url: str) -> list[tuple]:
    """The flags and their photos as the database holds them, read past the store."""
    q = ("SELECT f.id, f.label, f.text, p.jpeg, f.photo_bytes, f.client FROM flags f "
         "LEFT JOIN flag_photos p ON p.flag_id = f.id ORDER BY f.id")
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return conn.execute(q).fetchall()
    with psycopg.connect(url) as conn:
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in conn.execute(q).fetchall()]


def test_a_flag_goes_in_and_comes_back(db_url):
    photo = jpeg()
    with open_store(db_url, classes=CLASSES) as store:
        a = store.add(flag("grizzly", text="  a brown bear  ", photo=photo, client="c1"))
        b = store.add(flag(NONE_OF_THESE, ood_score=None, client="c2"))
        rows = store.rows()
    assert [r.id for r in rows] == [a, b] and a < b
    first, second = rows
    assert (first.model, first.ranked, first.ood_score, first.label, first.text) == \
        ("sha256:abc123", RANKED, 1.5, "grizzly", "a brown bear")
    assert first.photo == photo and first.photo_bytes == len(photo) and first.client == "c1"
    assert first.answer == "teddy"
    assert abs((dt.datetime.now(dt.UTC) - first.time).total_seconds()) < 60
    assert (second.label, second.ood_score, second.photo) == (NONE_OF_THESE, None, None)


def test_no_photo_is_stored_without_consent(db_url):
    # the page passes a photo only with consent: without one, the row holds no bytes of it at all
    with open_store(db_url, classes=CLASSES) as store:
        for i in range(3):
            store.add(flag("black", client=f"c{i}"))
        store.add(flag("teddy", photo=jpeg(), client="c9"))
    rows = raw_rows(db_url)
    assert [(r[3] is None, r[4]) for r in rows[:3]] == [(True, 0)] * 3
    assert rows[3][3] is not None and rows[3][4] == len(rows[3][3])
    assert _raw_count(db_url, "flag_photos") == 1  # not one byte of the other three anywhere


def _raw_count(url: str, table: str) -> int:
    q = f"SELECT COUNT(*) FROM {table}"  # a table name written here, not input
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return conn.execute(q).fetchone()[0]
    with psycopg.connect(url) as conn:
        return conn.execute(q).fetchone()[0]


@pytest.mark.parametrize("label, reason, words", [
    ("polar", "label", "'polar' is not one of the choices (grizzly, black, teddy, none of these)"),
    ("", "label", "Please pick what it is"),
    ("   ", "label", "Please pick what it is"),
    ("grizzly\x00", "label", "control character (U+0000)"),
    ("g" * 101, "label", "at most 100"),
])
def test_malformed_labels_are_refused(db_url, label, reason, words):
    with open_store(db_url, classes=CLASSES) as store:
        store.add(flag("grizzly"))
        with pytest.raises(FlagRefused) as e:
            store.add(flag(label))
        assert e.value.reason == reason and words in str(e.value)
        assert [r.label for r in store.rows()] == ["grizzly"]


@pytest.mark.parametrize("text, words", [
    ("x" * 51, "51 characters long; at most 50"),
    ("line\nbreak", "control character (U+000A)"),
    ("evil\u202etxt.exe", "control character (U+202E)"),
    ("bell\x07", "control character (U+0007)"),
])
def test_oversized_or_control_text_is_refused(db_url, text, words):
    with open_store(db_url, classes=CLASSES) as store:
        with pytest.raises(FlagRefused) as e:
            store.add(flag(text=text))
        assert e.value.reason == "text" and words in str(e.value)
        store.add(flag(text="x" * 50 + "   "))  # exactly the limit (trailing spaces trimmed) is fine
        assert [r.text for r in store.rows()] == ["x" * 50]


def test_without_classes_any_plain_label_goes(db_url):
    with open_store(db_url) as store:
        store.add(flag("a label the page offered"))
        with pytest.raises(FlagRefused):
            store.add(flag("tab\tlabel"))
        assert store.count() == 1


@pytest.mark.parametrize("make, reason, words", [
    (lambda: image_bytes(draw_image("red", 64), "PNG"), "photo", "must be a JPEG"),
    (lambda: jpeg(600), "photo-size", "600x600 px; at most 512 px"),
    (lambda: jpeg(256)[:-200], "photo", "cannot be read"),
    (lambda: jpeg(512, quality=100) + b"\0" * 200_000, "photo-size", "at most 200 KB"),
])
def test_photos_that_are_not_small_jpegs_are_refused(db_url, make, reason, words):
    with open_store(db_url, classes=CLASSES) as store:
        with pytest.raises(FlagRefused) as e:
            store.add(flag(photo=make()))
        assert e.value.reason == reason and words in str(e.value)
        assert store.count() == 0


def test_the_total_cap_refuses_and_keeps_what_is_stored(db_url):
    with open_store(db_url, caps=Caps(total=3), classes=CLASSES) as store:
        ids = [store.add(flag(c, client=c)) for c in CLASSES]
        with pytest.raises(FlagRefused) as e:
            store.add(flag("grizzly", client="someone else"))
        assert e.value.reason == "total-cap" and "all the flags it can keep" in str(e.value)
    with open_store(db_url) as store:  # reopened: the three are all there
        assert [(r.id, r.label) for r in store.rows()] == list(zip(ids, CLASSES, strict=True))


def test_the_day_cap_counts_from_midnight_utc(db_url):
    day = dt.datetime(2026, 12, 5, 23, 0, tzinfo=dt.UTC)
    with open_store(db_url, caps=Caps(per_day=2), classes=CLASSES) as store:
        store.add(flag(client="a"), now=day)
        store.add(flag(client="b"), now=day + dt.timedelta(minutes=10))
        with pytest.raises(FlagRefused) as e:
            store.add(flag(client="c"), now=day + dt.timedelta(minutes=20))
        assert e.value.reason == "day-cap" and "try again tomorrow" in str(e.value)
        store.add(flag(client="c"), now=day + dt.timedelta(hours=1, minutes=1))  # the next UTC day
        assert store.count() == 3


def test_the_photo_bytes_cap_refuses_photos_but_not_flags(db_url):
    photo = jpeg()
    with open_store(db_url, caps=Caps(total_photo_bytes=len(photo) * 2), classes=CLASSES) as store:
        store.add(flag(photo=photo, client="a"))
        store.add(flag(photo=photo, client="b"))
        with pytest.raises(FlagRefused) as e:
            store.add(flag(photo=photo, client="c"))
        assert e.value.reason == "photo-cap" and "without the photo" in str(e.value)
        store.add(flag(client="c"))
        assert [r.photo is not None for r in store.rows()] == [True, True, False]


def test_a_thousand_flags_in_a_minute_from_one_client(db_url):
    caps = Caps(per_client_per_minute=5, per_day=10_000, total=10_000)
    with open_store(db_url, caps=caps, classes=CLASSES) as store, \
            open_store(db_url, caps=caps, classes=CLASSES) as other_process:
        refused, start = 0, time.monotonic()
        for i in range(1000):
            # the flood comes through two connections (as from two page kernels): the limit is in the database
            try:
                (store if i % 2 else other_process).add(flag(client="flooder"))
            except FlagRefused as e:
                assert e.reason == "rate" and "wait a minute" in str(e)
                refused += 1
        flood_s = time.monotonic() - start
        assert flood_s < 60, f"1,000 flags took {flood_s:.1f} s"
        assert refused == 995
        # someone else, right after: through at once
        t = time.monotonic()
        store.add(flag(client="visitor"))
        assert time.monotonic() - t < 0.5
        # the flooder again a minute later
        store.add(flag(client="flooder"), now=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=61))
        clients = [r.client for r in store.rows()]
    assert clients.count("flooder") == 6 and clients.count("visitor") == 1


def test_the_client_hash_is_keyed_and_never_the_address():
    h = client_hash("203.0.113.7", b"secret")
    assert h == client_hash("203.0.113.7", b"secret") and len(h) == 32
    assert h != client_hash("203.0.113.7", b"other key") and h != client_hash("203.0.113.8", b"secret")
    assert "203" not in h
    with pytest.raises(WhatsthatError, match="needs a secret"):
        client_hash("203.0.113.7", b"")


def test_delete_before_a_date(db_url):
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with open_store(db_url, classes=CLASSES) as store:
        for i in range(4):
            store.add(flag(client=str(i), photo=jpeg()), now=t0 + dt.timedelta(days=i))
        assert store.delete(t0 + dt.timedelta(days=2)) == 2
        assert [r.time.day for r in store.rows()] == [3, 4]
    assert _raw_count(db_url, "flag_photos") == 2  # their photos went with them


# --- the schema and its migrations ------------------------------------------------------------------


def _raw_execute(url: str, statements: list[tuple[str, tuple]]) -> None:
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            for q, p in statements:
                conn.execute(q, p)
    else:
        with psycopg.connect(url) as conn:
            for q, p in statements:
                conn.execute(q.replace("?", "%s"), p)


def test_a_version_1_database_is_migrated_keeping_its_rows(db_url):
    from whatsthat.flags.store import _DIALECT

    dialect = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    photo = jpeg()
    # a database as whatsthat's first schema made it
    _raw_execute(db_url, [
        *[(s.format(**_DIALECT[dialect]), ()) for s in MIGRATIONS[0]],
        ("CREATE TABLE schema_version (version INTEGER NOT NULL)", ()),
        ("INSERT INTO schema_version (version) VALUES (1)", ()),
        ("INSERT INTO flags (created, model, ranked, ood_score, label, text, photo, client) "
         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
         ("2026-11-30T10:00:00.000000Z", "m1", '[["black", 0.9]]', None, "grizzly", "old", photo, "c")),
    ])
    with open_store(db_url, classes=CLASSES) as store:
        assert store.schema_version() == SCHEMA_VERSION == 2
        (old,) = store.rows()
        assert (old.label, old.text, old.photo, old.photo_bytes, old.answer) == ("grizzly", "old", photo,
                                                                                 len(photo), "black")
        store.add(flag(client="new"))
        assert store.count() == 2
    with open_store(db_url) as store:  # opening again migrates nothing twice
        assert store.schema_version() == 2 and store.count() == 2


def test_a_database_from_a_newer_whatsthat_is_refused(db_url):
    open_store(db_url).close()
    _raw_execute(db_url, [("UPDATE schema_version SET version = 99", ())])
    with pytest.raises(WhatsthatError, match="schema version 99, newer than this whatsthat knows"):
        open_store(db_url)


# --- urls and faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url, words", [
    ("mysql://u@h/db", "not a database URL whatsthat can use"),
    ("sqlite://", "a SQLite URL is sqlite:///"),
    ("flags.db", "not a database URL"),
])
def test_bad_urls_say_what_a_good_one_looks_like(url, words):
    with pytest.raises(WhatsthatError, match=words):
        open_store(url)


def test_the_password_is_never_in_a_message():
    with pytest.raises(FlagStoreDown) as e:
        open_store("postgresql://me:hunter2@/db?host=/nonexistent-socket-dir")
    assert "hunter2" not in str(e.value) and "me:***@" in str(e.value) and e.value.reason == "unreachable"


def test_reading_a_missing_sqlite_file_does_not_create_it(tmp_path):
    with pytest.raises(WhatsthatError, match="no flags database at .*nothing has been flagged"):
        open_store(f"sqlite:///{tmp_path / 'nope.db'}", create=False)
    assert not (tmp_path / "nope.db").exists()


def test_the_default_is_a_sqlite_file_in_the_user_data_folder(isolated_home):
    with open_store() as store:
        store.add(flag())
    assert (isolated_home / ".local/share/whatsthat/flags.db").is_file()


def test_a_full_sqlite_database_is_down_and_loses_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'flags.db'}"
    with open_store(url, classes=CLASSES) as store:
        ids = [store.add(flag(client=str(i), photo=jpeg())) for i in range(3)]
        pages = store._db.conn.execute("PRAGMA page_count").fetchone()[0]
        store._db.conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full from here on
        with pytest.raises(FlagStoreDown) as e:
            for i in range(50):
                store.add(flag(client=f"more{i}", photo=jpeg(400, 95)))
        assert e.value.reason == "full" and "is full" in str(e.value)
    with open_store(url) as store:
        assert [r.id for r in store.rows()][:3] == ids and all(r.photo for r in store.rows())


def test_postgresql_stopped_mid_session_then_back(postgres):
    url = postgres.new_database()
    store = open_store(url, classes=CLASSES)
    try:
        first = store.add(flag(client="a", photo=jpeg()))
        postgres.stop()
        try:
            t = time.monotonic()
            with pytest.raises(FlagStoreDown) as e:
                store.add(flag(client="b"))
            assert e.value.reason == "unreachable" and "cannot be reached" in str(e.value)
            with pytest.raises(FlagStoreDown, match="cannot connect"):  # and again: no hang, no other error
                store.add(flag(client="b"))
            assert time.monotonic() - t < 10
        finally:
            postgres.start()
        second = store.add(flag(client="b"))  # the same store reconnects
        assert [r.id for r in store.rows()] == [first, second]
        assert store.rows()[0].photo is not None
    finally:
        store.close()


def test_a_lazy_store_opens_without_the_database_and_connects_when_it_is_back(postgres):
    url = postgres.new_database()
    postgres.stop()
    try:
        store = open_store(url, classes=CLASSES, lazy=True)
        with pytest.raises(FlagStoreDown):
            store.add(flag())
    finally:
        postgres.start()
    assert store.add(flag()) > 0 and store.count() == 1
    store.close()


def test_two_writers_at_once_never_pass_a_cap_together(db_url):
    # the caps are counted and the row written as one step under the database's write lock: two page
    # kernels (here two connections in two threads) racing for the last places take exactly the cap
    import threading

    caps = Caps(total=25, per_client_per_minute=1000)
    stores = [open_store(db_url, caps=caps, classes=CLASSES) for _ in range(2)]
    refused: list[str] = []

    def flood(store, name):
        for i in range(20):
            try:
                store.add(flag(client=f"{name}{i}"))
            except FlagRefused as e:
                refused.append(e.reason)

    threads = [threading.Thread(target=flood, args=(s, n)) for s, n in zip(stores, "ab", strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stores[0].count() == 25 and refused == ["total-cap"] * 15
    for s in stores:
        s.close()


@contextlib.contextmanager
def owned_database(postgres) -> Iterator[tuple[psycopg.Connection, str, str, str]]:
    """(a superuser's connection, database, role, the role's URL): a new database owned by a new login role
    that is no superuser, as Heroku's DATABASE_URL user (PostgreSQL 15: no CREATE on the public schema for
    others; a superuser would also ignore limits the tests set)."""
    name, role = "t_owned_" + uuid.uuid4().hex[:8], "app_" + uuid.uuid4().hex[:8]  # made up here: no injection
    with psycopg.connect(postgres.url(), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f'CREATE DATABASE "{name}" OWNER {role}')
        yield admin, name, role, postgres.url(name).replace("postgres@", f"{role}@")


def test_as_a_database_owner_without_superuser_rights_as_on_heroku(postgres):
    with owned_database(postgres) as (admin, _, role, url), open_store(url, classes=CLASSES) as store:
        first = store.add(flag(client="a", photo=jpeg()))
        admin.execute(f"ALTER ROLE {role} CONNECTION LIMIT 0")  # no more connections for it
        try:
            store._db.close()  # the next call must connect again (as after a dyno restart)
            with pytest.raises(FlagStoreDown) as e:
                store.add(flag(client="b"))
            assert e.value.reason == "unreachable" and "too many connections" in str(e.value)
        finally:
            admin.execute(f"ALTER ROLE {role} CONNECTION LIMIT -1")
        assert [r.id for r in store.rows()] == [first]


def test_a_database_over_its_plan_takes_no_rows_but_can_still_be_read_and_cleared(postgres):
    # Heroku Postgres past its plan's row or storage limit revokes INSERT and CREATE from the app's user (and
    # PostgreSQL itself can be put read-only): a flag is then "full", never a bug; and the maintainer, after
    # a dyno restart too, can still pull the flags and delete old ones to make room
    with owned_database(postgres) as (admin, name, role, url):
        old = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        with open_store(url, classes=CLASSES) as store:
            first = store.add(flag(client="a", photo=jpeg()), now=old)
            second = store.add(flag(client="b"))
        with psycopg.connect(postgres.url(name), autocommit=True) as db:  # as Heroku does, as a superuser
            db.execute(f"REVOKE INSERT ON ALL TABLES IN SCHEMA public FROM {role}")
            db.execute(f"REVOKE CREATE ON SCHEMA public FROM {role}")
            db.execute("REVOKE CREATE ON SCHEMA public FROM pg_database_owner")
        with open_store(url, classes=CLASSES) as store:  # a fresh store: the schema is up to date, nothing to create
            with pytest.raises(FlagStoreDown) as e:
                store.add(flag(client="c"))
            assert e.value.reason == "full" and "takes no new rows" in str(e.value) and "permission denied" in str(e.value)
            assert [r.id for r in store.rows()] == [first, second]  # the maintainer can still pull them
            assert store.rows()[0].photo is not None
            assert store.delete(dt.datetime(2026, 2, 1, tzinfo=dt.UTC)) == 1  # ... and make room
            assert [r.id for r in store.rows()] == [second]
        admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        with open_store(url, classes=CLASSES) as store:
            with pytest.raises(FlagStoreDown) as e:
                store.add(flag(client="d"))
            assert e.value.reason == "full" and "read-only" in str(e.value)
            assert [r.id for r in store.rows()] == [second]
