"""`whatsthat flags pull|stats|delete` against real databases (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from conftest import draw_image, image_bytes

from whatsthat.cli import main
from whatsthat.dataset.manifest import FIELDS, read_manifest
from whatsthat.flags.pull import NONE_FOLDER, pull_flags
from whatsthat.flags.stats import stats_of
from whatsthat.flags.store import NONE_OF_THESE, Caps, Flag, open_store
from whatsthat.images import sha256

CLASSES = ["grizzly", "black", "teddy"]


def jpeg(seed: int) -> bytes:
    return image_bytes(draw_image("blue", 200, seed=seed), "JPEG", quality=85)


def add(url: str, label: str, answer: str, *, photo: bytes | None = None, when: dt.datetime | None = None,
        text: str = "") -> int:
    ranked = [(answer, 0.8)] + [(c, 0.1) for c in CLASSES if c != answer]
    with open_store(url, classes=CLASSES, caps=Caps(per_client_per_minute=1000)) as store:
        return store.add(Flag("fp-1", ranked, 0.25, label, text, photo, "client"), now=when)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_pull_writes_a_folder_per_label_with_provenance_and_only_new_flags_again(db_url, tmp_path, capsys):
    p1, p2, p3 = jpeg(1), jpeg(2), jpeg(3)
    a = add(db_url, "grizzly", "teddy", photo=p1, text="my dog, actually no")
    add(db_url, "black", "grizzly")  # no consent: no photo, nothing to pull
    b = add(db_url, NONE_OF_THESE, "black", photo=p2)
    out = tmp_path / "flagged"

    rc, text, err = cli(capsys, "flags", "pull", "--db", db_url, str(out))
    assert rc == 0, err
    assert "pulled 2 new flagged photo(s)" in text
    assert (out / f"grizzly/flag-{a}.jpg").read_bytes() == p1
    assert (out / f"{NONE_FOLDER}/flag-{b}.jpg").read_bytes() == p2
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")) == \
        sorted([f"grizzly/flag-{a}.jpg", f"{NONE_FOLDER}/flag-{b}.jpg"])
    rows = {r["file"]: r for r in read_manifest(out)}
    row = rows[f"grizzly/flag-{a}.jpg"]
    assert set(FIELDS) <= set(row)
    assert (row["url"], row["label"], row["backend"], row["status"], row["flag_id"], row["flag_model"],
            row["flag_answer"], row["flag_text"]) == \
        (f"flag:{a}", "grizzly", "flag", "ok", str(a), "fp-1", "teddy", "my dog, actually no")
    assert row["sha256"] == sha256(p1) and len(row["phash"]) == 16 and row["fetched_at"].startswith("20")
    assert json.loads(row["flag_ranked"])[0] == ["teddy", 0.8] and float(row["flag_ood_score"]) == 0.25
    assert rows[f"{NONE_FOLDER}/flag-{b}.jpg"]["label"] == NONE_OF_THESE

    # again: nothing new; then one more flag: only it comes
    rc, text, _ = cli(capsys, "flags", "pull", "--db", db_url, str(out))
    assert rc == 0 and "no new flagged photos" in text and "2 pulled before" in text
    c = add(db_url, "teddy", "grizzly", photo=p3)
    assert pull_flags(db_url, out).added == {"teddy": 1}
    assert len(read_manifest(out)) == 3 and (out / f"teddy/flag-{c}.jpg").read_bytes() == p3


def test_stats_counts_confusions_and_none_of_these_by_week(db_url, capsys):
    mon = dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)  # ISO week 48
    add(db_url, "grizzly", "teddy", when=mon)
    add(db_url, "grizzly", "teddy", when=mon, photo=jpeg(4))
    add(db_url, "black", "grizzly", when=mon)
    add(db_url, NONE_OF_THESE, "teddy", when=mon + dt.timedelta(days=7))  # week 49
    add(db_url, NONE_OF_THESE, "black", when=mon + dt.timedelta(days=8))
    add(db_url, "teddy", "grizzly", when=mon + dt.timedelta(days=9))
    s = stats_of(db_url)
    assert (s.total, s.with_photo) == (6, 1)
    assert s.said == {"grizzly": 2, "black": 1, NONE_OF_THESE: 2, "teddy": 1}
    assert s.confusions.most_common(1) == [(("teddy", "grizzly"), 2)]
    assert (s.none_weeks["2026-W48"], s.weeks["2026-W48"], s.none_weeks["2026-W49"], s.weeks["2026-W49"]) == (0, 3, 2, 3)
    rc, text, _ = cli(capsys, "flags", "stats", "--db", db_url)
    assert rc == 0
    assert "6 flag(s)" in text and "teddy -> grizzly: 2" in text and "2026-W49      2 of 3" in text
    grizzly = next(line for line in text.splitlines() if line.startswith("grizzly "))
    assert grizzly.split() == ["grizzly", "2", "1", "2"]  # visitors said, with photo, model answered


def test_delete_before_removes_old_flags_and_their_photos(db_url, capsys):
    add(db_url, "grizzly", "teddy", photo=jpeg(5), when=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    add(db_url, "black", "teddy", photo=jpeg(6))
    rc, text, _ = cli(capsys, "flags", "delete", "--db", db_url, "--before", "2026-06-01")
    assert rc == 0 and "deleted 1 flag(s) stored before 2026-06-01T00:00:00Z" in text and "1 left" in text
    with open_store(db_url) as store:
        assert [r.label for r in store.rows()] == ["black"]


def test_the_db_defaults_to_database_url_then_the_default_file(tmp_path, monkeypatch, capsys, isolated_home):
    url = f"sqlite:///{tmp_path / 'env.db'}"
    add(url, "grizzly", "teddy")
    monkeypatch.setenv("DATABASE_URL", url)
    rc, text, _ = cli(capsys, "flags", "stats")
    assert rc == 0 and text.startswith(f"1 flag(s) in {url}")
    monkeypatch.delenv("DATABASE_URL")
    rc, _, err = cli(capsys, "flags", "stats")
    assert rc == 1 and f"no flags database at {isolated_home}/.local/share/whatsthat/flags.db" in err
    assert not (isolated_home / ".local/share/whatsthat/flags.db").exists()  # reading creates nothing


@pytest.mark.parametrize("args, words", [
    (["flags", "stats", "--db", "mysql://me@host/db"], "is not a database URL whatsthat can use"),
    (["flags", "stats", "--db", "postgresql://me:pw@/db?host=/nonexistent&connect_timeout=2"],
     "cannot connect to the flags database postgresql://me:***@/db"),
])
def test_bad_databases_and_arguments_get_a_clear_message(tmp_path, capsys, args, words):
    rc, _, err = cli(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert rc == 1 and words in err and "Traceback" not in err


def test_an_empty_database_says_so(db_url, tmp_path, capsys):
    open_store(db_url).close()
    assert cli(capsys, "flags", "stats", "--db", db_url)[1].startswith("no flags yet in")
    rc, text, _ = cli(capsys, "flags", "pull", "--db", db_url, str(tmp_path / "out"))
    assert rc == 0 and "no new flagged photos" in text and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, words", [
    (["flags", "delete", "--before", "last tuesday"], "expected a date like 2026-12-01"),
    (["flags", "delete"], "the following arguments are required: --before"),
    (["flags", "pull"], "the following arguments are required: OUT"),
    (["flags", "stats", "somewhere"], "unrecognized arguments: somewhere"),
    (["flags"], "the following arguments are required: ACTION"),
])
def test_bad_arguments_are_usage_errors(capsys, args, words):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and words in capsys.readouterr().err
