"""`whatsthat flags pull`: the flagged photos (those kept with consent) out of the database, into a folder.

Layout of the folder, the same as a gathered dataset's so the cleaner and `train` read it alike::

    OUT/<visitor label>/flag-<id>.jpg   one folder per label the visitors gave ("none of these": none-of-these/)
    OUT/manifest.csv                    a provenance row per photo: the dataset manifest's columns, plus the
                                        flag's id, the model's fingerprint and its answer

Each row's url is ``flag:<id>``, its backend ``flag`` and its fetched_at the time of the flag. Pulling
again adds only flags newer than those already in the folder; flags without a photo stay in the
database (they count in `whatsthat flags stats`).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from whatsthat.atomic import atomic_write
from whatsthat.dataset.config import check_label
from whatsthat.dataset.manifest import FIELDS, append_manifest, read_manifest
from whatsthat.errors import WhatsthatError
from whatsthat.flags.store import NONE_OF_THESE, FlagStore, StoredFlag, describe_url, open_store
from whatsthat.images import ImageError, load_image, phash, sha256

NONE_FOLDER = "none-of-these"  # NONE_OF_THESE as a folder name (a label is a plain folder name)
BACKEND = "flag"
URL_PREFIX = "flag:"
# the columns a pulled row adds to the dataset manifest's
FLAG_FIELDS = ("flag_id", "flag_model", "flag_answer", "flag_ranked", "flag_ood_score", "flag_text")
PAGE = 200  # flags read from the database at a time: photos are up to 200 KB each


def folder_of(label: str) -> str:
    """The folder a visitor label's photos go in."""
    return NONE_FOLDER if label == NONE_OF_THESE else label


def label_of(folder: str) -> str:
    """The visitor label a pulled folder holds (folder_of's inverse)."""
    return NONE_OF_THESE if folder == NONE_FOLDER else folder


@dataclass
class PullReport:
    """What a pull wrote: photos per visitor label, and what it left out and why."""

    out: Path
    source: str
    added: Counter = field(default_factory=Counter)  # folder -> photos written
    already: int = 0  # flags pulled before (in the manifest)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        n = sum(self.added.values())
        head = f"pulled {n} new flagged photo(s) from {self.source} into {self.out}"
        if not n:
            head = (f"no new flagged photos in {self.source}" +
                    (f" ({self.already} pulled before, in {self.out})" if self.already else
                     " (flags are kept with a photo only when the visitor agreed)"))
        lines = [head] + [f"  {folder}/  {k}" for folder, k in sorted(self.added.items())]
        lines += [f"  skipped {s}" for s in self.skipped]
        if n:
            lines.append(f"  (look at them in the cleaner: train.ipynb, \"Flagged by visitors\", on {self.out})")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


def pulled_ids(out: str | Path) -> set[int]:
    """The flag ids already in pulled folder `out` (from its manifest)."""
    ids = set()
    for row in read_manifest(out):
        if row.get("backend") == BACKEND and row.get("url", "").startswith(URL_PREFIX):
            try:
                ids.add(int(row["url"][len(URL_PREFIX):]))
            except ValueError:
                raise WhatsthatError(f"{out}/manifest.csv: {row['url']!r} is not a flag's url") from None
    return ids


def _row(flag: StoredFlag, file: str, data: bytes, width: int, height: int, ph: str) -> dict[str, str]:
    row = dict.fromkeys(FIELDS, "")
    row.update(url=f"{URL_PREFIX}{flag.id}", query="", label=flag.label, file=file, sha256=sha256(data),
               phash=ph, width=str(width), height=str(height), status="ok", backend=BACKEND,
               fetched_at=flag.time.isoformat(timespec="seconds"))
    row.update(flag_id=str(flag.id), flag_model=flag.model, flag_answer=flag.answer,
               flag_ranked=json.dumps(flag.ranked), flag_ood_score="" if flag.ood_score is None else repr(flag.ood_score),
               flag_text=flag.text)
    return row


def pull(store: FlagStore, out: str | Path, *, source: str = "") -> PullReport:
    """Write the photos of flags not yet in `out` as `out/<label>/flag-<id>.jpg`, each with its manifest row."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise WhatsthatError(f"{out} is a file; pull into a folder")
    report = PullReport(out, source or store.dialect)
    done = pulled_ids(out)
    report.already = len(done)
    after = max(done, default=0)  # ids only grow, and are given in commit order (the store's write lock)
    while True:
        page = store.rows(after=after, with_photo_only=True, limit=PAGE)
        if not page:
            break
        rows = []
        for flag in page:
            after = flag.id
            folder = folder_of(flag.label)
            try:
                check_label(folder)
            except WhatsthatError:
                report.skipped.append(f"flag {flag.id}: its label {flag.label!r} cannot be a folder name")
                continue
            try:
                im = load_image(flag.photo or b"")
            except ImageError as e:  # the store checked it on the way in; a hand-edited database might not
                report.skipped.append(f"flag {flag.id}: its photo cannot be read ({e})")
                continue
            file = f"{folder}/flag-{flag.id}.jpg"
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(out / file, flag.photo or b"")
            rows.append(_row(flag, file, flag.photo or b"", im.width, im.height, phash(im)))
            report.added[folder] += 1
        if rows:
            append_manifest(out, rows)  # after the photos: a crash in between only rewrites them next time
    return report


def pull_flags(url: str | None, out: str | Path) -> PullReport:
    """`pull` from the database at `url` (None: the default SQLite file), which must exist already."""
    with open_store(url, create=False) as store:
        return pull(store, out, source=describe_url(url))


@dataclass(frozen=True)
class PulledFlag:
    """A flagged photo in a pulled folder, with what its manifest row says."""

    path: Path  # absolute
    flag_id: int
    label: str  # the visitor's label (NONE_OF_THESE included)
    answer: str  # the model's top answer
    probability: float | None  # the model's probability for it
    text: str
    model: str
    time: str

    @property
    def none_of_these(self) -> bool:
        return self.label == NONE_OF_THESE


def pulled(out: str | Path) -> list[PulledFlag]:
    """The flagged photos in pulled folder `out` that are still there, in flag order."""
    out = Path(out).resolve()
    if not out.is_dir():
        raise WhatsthatError(f"no pulled flags at {out}: make it with `whatsthat flags pull {out}`")
    found = []
    for row in read_manifest(out):
        if row.get("backend") != BACKEND or row.get("status") != "ok" or not (out / row["file"]).is_file():
            continue
        try:
            ranked = json.loads(row.get("flag_ranked") or "[]")
            top = float(ranked[0][1]) if ranked else None
            found.append(PulledFlag(out / row["file"], int(row["flag_id"]), row["label"], row.get("flag_answer", ""),
                                    top, row.get("flag_text", ""), row.get("flag_model", ""), row["fetched_at"]))
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise WhatsthatError(f"{out}/manifest.csv: the row for {row.get('file')} is not a pulled flag's ({e})") from e
    return sorted(found, key=lambda f: f.flag_id)
