"""Clean a dataset safely: apply delete/relabel decisions reversibly, journal them, undo them.

Rules (see docs/cleaning.md):

* Nothing is ever unlinked here except by `empty_trash`. A deletion moves the file to
  ``<root>/.trash/<batch>/<label>/<name>``; a relabel moves it to ``<root>/<new label>/<name>``.
  Neither ever replaces an existing file: a taken name gets a ``-1``, ``-2``... suffix.
* Every action is appended to ``<root>/.journal.jsonl`` (one JSON record per action, with its
  batch id and the manifest rows it changes) and fsynced *before* any file moves, and a
  ``commit`` record follows once the batch is complete. A batch interrupted by a crash is
  rolled back by `undo`, which moves each file back from wherever it got to.
* A batch is validated as a whole before anything moves: a decision about a file that no longer
  exists, or whose bytes differ from those seen when the decision was made (``sha256``), refuses
  the whole batch. A decision the journal shows was already applied is skipped with a note, so
  applying the same decisions twice changes nothing.
* Conflicting decisions about one file in one batch: ``keep`` yields to any other action,
  ``delete`` wins over ``relabel`` (deleting is the conservative choice and undo restores it), and
  two different relabel targets refuse the batch.
* `undo` reverts the latest batch not yet undone (call again to go further back), or a given
  batch when no later batch touched its files; it restores files and manifest rows exactly.
* An ``add`` brings a picture from outside the dataset in (a visitor's flagged photo, pulled by
  `whatsthat flags pull`): it is *copied* to ``<root>/<label>/<name>`` (never replacing a file) with a
  manifest row carrying the provenance its own folder's manifest gave it. Its undo removes that copy
  and its row: the bytes are still in the folder it came from (checked; when they are not, the copy
  goes to the trash instead). The same bytes already in the dataset are not added twice.

This module is the engine only and knows nothing of Jupyter: the notebook widget that makes the
decisions (`whatsthat.cleaning.cleaner.Cleaner`) and the CLI (`whatsthat clean|undo|trash|journal`) both call it.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import errno
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from whatsthat.atomic import atomic_open, atomic_write
from whatsthat.dataset.config import check_label
from whatsthat.dataset.manifest import manifest_path, read_manifest, write_manifest
from whatsthat.errors import WhatsthatError

try:  # POSIX only: without it (Windows) two concurrent cleaners are simply not prevented
    import fcntl
except ImportError:  # pragma: no cover - exercised on Windows only
    fcntl = None  # type: ignore[assignment]

TRASH_DIR = ".trash"
JOURNAL_NAME = ".journal.jsonl"
ACTIONS = ("keep", "delete", "relabel", "add")
KEEP, DELETE = "<Keep>", "<Delete>"  # the values of fastai's per-image dropdowns
JOURNAL_VERSION = 1
TRASHED_REASON = "cleaned"


class StaleDecisionError(WhatsthatError):
    """A batch refused before anything moved; `problems` lists each refused decision."""

    def __init__(self, problems: list[str], paths: list[str]):
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        super().__init__(f"{len(problems)} decision(s) refused, nothing was changed:\n  {shown}")
        self.problems, self.paths = problems, paths


# --- decisions ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What to do with one image: `path` is `<label>/<file>` relative to the dataset root.

    For ``add``, `path` is a picture outside the dataset (absolute) and `label` the folder it joins.

    `sha256` is the content seen when the decision was made; when given, the decision is refused
    if the file's bytes changed since.
    """

    path: str
    action: str = "keep"
    label: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path).as_posix() if isinstance(self.path, Path) else str(self.path))
        if self.action not in ACTIONS:
            raise WhatsthatError(f"{self.path}: unknown action {self.action!r} (use keep, delete, relabel or add)")
        if self.action in ("relabel", "add") and not self.label:
            raise WhatsthatError(f"{self.path}: {self.action} needs the " + ("new label" if self.action == "relabel" else "label"))
        if self.action == "add" and not Path(self.path).is_absolute():
            raise WhatsthatError(f"{self.path}: add takes the absolute path of a picture outside the dataset")

    @classmethod
    def from_value(cls, path: str | Path, value: str, sha256: str | None = None) -> Decision:
        """A decision from a fastai cleaner dropdown value: '<Keep>', '<Delete>' or a label."""
        if value == KEEP:
            return cls(path, "keep", sha256=sha256)
        if value == DELETE:
            return cls(path, "delete", sha256=sha256)
        return cls(path, "relabel", label=value, sha256=sha256)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Decision:
        """A decision from a mapping with keys path, action, and optional label, sha256, note.

        `note` (a person's reason, e.g. "plush toy") is allowed so hand-written files can say why;
        it is not used.
        """
        unknown = set(d) - {"path", "action", "label", "sha256", "note"}
        if unknown:
            raise WhatsthatError(f"decision {d!r}: unknown field(s) {', '.join(sorted(unknown))}")
        if not d.get("path"):
            raise WhatsthatError(f"decision {d!r}: missing path")
        if not d.get("action"):
            raise WhatsthatError(f"decision for {d['path']}: missing action (keep, delete or relabel)")
        return cls(str(d["path"]), str(d["action"]), d.get("label") or None, d.get("sha256") or None)

    def to_dict(self) -> dict[str, str | None]:
        return {"path": self.path, "action": self.action, "label": self.label, "sha256": self.sha256}

    def describe(self) -> str:
        if self.action == "relabel":
            return f"{self.path} -> {self.label}"
        if self.action == "add":
            return f"add {self.path} as {self.label}"
        return f"{self.path}: {self.action}"


def save_decisions(path: str | Path, decisions: Iterable[Decision], root: str | Path | None = None) -> Path:
    """Write decisions as JSON (or CSV when `path` ends in .csv), atomically; returns the path."""
    path = Path(path)
    decisions = list(decisions)
    if path.suffix.lower() == ".csv":
        lines = [["path", "action", "label", "sha256"]] + [[d.path, d.action, d.label or "", d.sha256 or ""]
                                                           for d in decisions]  # fmt: skip
        with atomic_open(path, newline="") as f:
            csv.writer(f).writerows(lines)
    else:
        doc = {"whatsthat": "decisions", "version": 1, "root": str(Path(root).resolve()) if root else None,
               "created": _now(), "decisions": [d.to_dict() for d in decisions]}  # fmt: skip
        atomic_write(path, json.dumps(doc, indent=1) + "\n")
    return path


def load_decisions(path: str | Path) -> list[Decision]:
    """Decisions from a JSON file (a list, or {"decisions": [...]}) or a CSV with a path,action[,label,sha256] header."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise WhatsthatError(f"cannot read decisions file {path}: {e.strerror or e}") from e
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise WhatsthatError(f"{path}: a decisions CSV needs a header with at least path,action[,label,sha256]")
        items: list[Any] = list(reader)
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise WhatsthatError(f"{path} is not valid JSON: {e}") from e
        items = doc.get("decisions") if isinstance(doc, dict) else doc
        if not isinstance(items, list):
            raise WhatsthatError(f"{path}: expected a list of decisions or an object with a \"decisions\" list")
    out = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise WhatsthatError(f"{path}: decision {i} is not an object: {item!r}")
        try:
            out.append(Decision.from_dict(item))
        except WhatsthatError as e:
            raise WhatsthatError(f"{path}: decision {i}: {e}") from None
    return out


# --- reports --------------------------------------------------------------------------------------


@dataclass
class ApplyReport:
    """What `apply_decisions` did (or, with dry_run, would do); paths are root-relative."""

    root: Path
    batch: str | None
    trashed: list[tuple[str, str]] = field(default_factory=list)  # (was, now in .trash)
    relabelled: list[tuple[str, str]] = field(default_factory=list)  # (was, now)
    added: list[tuple[str, str]] = field(default_factory=list)  # (absolute source, copy in the dataset)
    kept: int = 0
    skipped: list[str] = field(default_factory=list)  # already applied earlier
    notes: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.trashed or self.relabelled or self.added) and not self.dry_run

    def summary(self) -> str:
        verb = "would move" if self.dry_run else "moved"
        if not self.trashed and not self.relabelled and not self.added:
            head = "nothing to apply" + (f" ({len(self.skipped)} decision(s) already applied)" if self.skipped else "")
        else:
            head = (f"batch {self.batch}: " if self.batch and not self.dry_run else "") + \
                   f"{verb} {len(self.trashed)} image(s) to the trash, relabelled {len(self.relabelled)}" + \
                   (f", added {len(self.added)}" if self.added else "")
        lines = [head + (f"; {self.kept} kept" if self.kept else "")]
        lines += [f"  trash    {a} -> {b}" for a, b in self.trashed]
        lines += [f"  relabel  {a} -> {b}" for a, b in self.relabelled]
        lines += [f"  add      {a} -> {b}" for a, b in self.added]
        lines += [f"  skipped  {s}" for s in self.skipped]
        lines += [f"  note     {n}" for n in self.notes]
        if self.changed:
            lines.append(f"  (undo with `whatsthat undo {self.root}`)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


@dataclass
class UndoReport:
    """What `undo` restored: (from, back to) root-relative paths, and manifest rows restored."""

    root: Path
    batch: str
    restored: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)  # added copies taken out: (copy, its source)
    manifest_rows: int = 0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"undid batch {self.batch}: restored {len(self.restored)} image(s)" +
                 (f", removed {len(self.removed)} added one(s)" if self.removed else "") +
                 f", {self.manifest_rows} manifest row(s)"]
        lines += [f"  restored {b} (from {a})" for a, b in self.restored]
        lines += [f"  removed  {a} (added from {b}, which still has it)" for a, b in self.removed]
        lines += [f"  note     {n}" for n in self.notes]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


@dataclass
class TrashItem:
    """One file in the trash: where it is, where it came from (None if no batch recorded it)."""

    path: str  # relative to the root, under .trash/
    original: str | None
    batch: str | None
    time: str | None
    size: int


@dataclass
class TrashReport:
    """What `empty_trash` deleted (or, with dry_run, would delete) and what it left."""

    deleted: list[TrashItem]
    left: list[TrashItem]
    dry_run: bool = False

    @property
    def bytes(self) -> int:
        return sum(i.size for i in self.deleted)

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        lines = [f"{verb} {len(self.deleted)} file(s), {self.bytes / 1e6:.1f} MB; {len(self.left)} left in the trash"]
        lines += [f"  {i.path} (was {i.original}, batch {i.batch})" for i in self.deleted]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


@dataclass
class Batch:
    """One applied batch as the journal tells it."""

    id: str
    time: str
    actions: list[dict] = field(default_factory=list)
    committed: bool = False
    undone: bool = False
    purged: bool = False

    @property
    def state(self) -> str:
        if self.undone:
            return "undone"
        if not self.committed:
            return "interrupted"
        return "trash emptied" if self.purged else "applied"

    def summary(self) -> str:
        n = {op: sum(a["op"] == op for a in self.actions) for op in ("trash", "relabel", "add")}
        return (f"{self.id}  {self.time}  {self.state:<13}  {n['trash']} trashed, {n['relabel']} relabelled" +
                (f", {n['add']} added" if n["add"] else ""))


# --- journal --------------------------------------------------------------------------------------


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def journal_path(root: str | Path) -> Path:
    return Path(root) / JOURNAL_NAME


def journal(root: str | Path) -> list[dict]:
    """Every record of `<root>/.journal.jsonl`, oldest first ([] when there is none).

    A torn last line (a crash while appending, before any file of that batch moved) is ignored.
    """
    path = journal_path(root)
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise WhatsthatError(f"cannot read the cleaning journal {path}: {e}") from e
    records = []
    last = len(lines) - 1  # the text after the final newline: "" unless the last append was torn
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == last:
                continue  # torn tail: written without its newline, so never fsynced as complete
            raise WhatsthatError(f"{path}, line {i + 1} is corrupt ({e}); fix or remove that line") from e
        if not isinstance(rec, dict) or "type" not in rec or "batch" not in rec:
            raise WhatsthatError(f"{path}, line {i + 1} is not a whatsthat journal record")
        records.append(rec)
    return records


def batches(root: str | Path) -> list[Batch]:
    """The batches of the journal, oldest first, with their state (applied/undone/interrupted/...)."""
    return list(_batches(journal(root)).values())


def _batches(records: list[dict]) -> dict[str, Batch]:
    out: dict[str, Batch] = {}
    for rec in records:
        b = out.setdefault(rec["batch"], Batch(rec["batch"], rec.get("time", "")))
        kind = rec["type"]
        if kind == "action":
            b.actions.append(rec)
        elif kind == "commit":
            b.committed, b.time = True, rec.get("time", b.time)
        elif kind == "undo":
            b.undone = True
        elif kind == "purge":
            b.purged = True
    return out


@contextlib.contextmanager
def _locked_journal(root: Path) -> Iterator[Any]:
    """The journal opened for appending, exclusively locked: one cleaner at a time per dataset."""
    path = journal_path(root)
    with path.open("ab") as f:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            _drop_torn_tail(path, f)
            yield f
        finally:
            if fcntl is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _drop_torn_tail(path: Path, f: Any) -> None:
    # A record torn by a crash would glue itself to the next one. Nothing moved after it (moves wait
    # for the fsync), so cut it off; a complete record that only lacks its newline gets one.
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:])
    except ValueError:
        f.truncate(start)
        return
    f.write(b"\n")


def _append(f: Any, records: list[dict]) -> None:
    """Append records in one write and fsync: they are on disk before the caller moves anything."""
    data = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records).encode()
    f.write(data)
    f.flush()
    os.fsync(f.fileno())


# --- file helpers ---------------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dataset_root(root: str | Path) -> Path:
    """`root` resolved, or a WhatsthatError when it is not a folder."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise WhatsthatError(f"dataset folder not found: {root}")
    return root


def relative_path(root: str | Path, path: str | Path) -> str:
    """`path` as `<label>/<file>` relative to dataset `root`; relative inputs are taken as root-relative."""
    root = Path(root).resolve()
    p = Path(path)
    if p.is_absolute():
        # resolve the folders, not the file: a symlinked image is still the image in this folder
        absolute = p.parent.resolve() / p.name
        if not absolute.is_relative_to(root):
            raise WhatsthatError(f"{path} is not inside the dataset {root}")
        rel = PurePosixPath(absolute.relative_to(root).as_posix())
    else:
        rel = PurePosixPath(p.as_posix())
    parts = rel.parts
    if len(parts) != 2 or any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        raise WhatsthatError(f"{path}: expected <label>/<file> relative to the dataset folder (e.g. grizzly/3f2a9c0d.jpg)")
    return str(rel)


def _free_name(folder: Path, name: str, taken: set[str], root: Path) -> Path:
    """`folder/name`, or `folder/stem-N.suffix` when that is on disk, reserved, or named in the manifest."""
    stem, suffix = os.path.splitext(name)
    candidate, n = folder / name, 0
    while candidate.exists() or candidate.is_symlink() or candidate.relative_to(root).as_posix() in taken:
        n += 1
        candidate = folder / f"{stem}-{n}{suffix}"
    return candidate


def _missing_dirs(folder: Path, root: Path, planned: set[str]) -> list[str]:
    """Folders from `root` down to `folder` that do not exist yet (outermost first), not yet planned."""
    out = []
    for d in [*reversed(folder.relative_to(root).parents[:-1]), folder.relative_to(root)]:
        key = PurePosixPath(d.as_posix()).as_posix()
        if not (root / d).is_dir() and key not in planned:
            planned.add(key)
            out.append(key)
    return out


def _move_no_replace(src: Path, dst: Path) -> None:
    """Move `src` to `dst` without ever replacing an existing `dst`."""
    try:
        # link() fails if dst exists, where rename() would silently replace it; the bytes keep a
        # name throughout (src until the unlink, dst from the link), so nothing is ever lost.
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise WhatsthatError(f"{dst} already exists; nothing was overwritten") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.EACCES):
            raise
        # a file system without hard links: check, then rename (a tiny race, but never a silent one)
        if dst.exists() or dst.is_symlink():
            raise WhatsthatError(f"{dst} already exists; nothing was overwritten") from None
        os.rename(src, dst)
        return
    os.unlink(src)


def _copy_no_replace(src: Path, dst: Path) -> None:
    """Copy `src` to `dst`, flushed to disk, without ever replacing an existing `dst`."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}-", suffix=".part")  # a dot-file: not a picture
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only, unlike every other picture
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _move_no_replace(Path(tmp), dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync_dirs(dirs: Iterable[Path]) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open folders; NTFS journals renames itself
        return
    for d in set(dirs):
        if d.is_dir():
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _rmdir_if_empty(path: Path) -> bool:
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        return True
    return False


# --- apply ----------------------------------------------------------------------------------------


@dataclass
class _Action:
    op: str  # "trash", "relabel" or "add"
    src: str  # root-relative; for "add", the absolute path it is copied from
    dst: str
    sha256: str
    size: int
    label: str | None
    dirs: list[str]
    manifest: list[dict]  # [{"index", "before", "after"}]


def _resolve_conflicts(rel: str, ds: list[Decision], notes: list[str]) -> Decision | str | None:
    """One decision for `rel` from all given for it; a str is a problem; None means keep."""
    active = [d for d in ds if d.action != "keep"]
    if not active:
        return None
    targets = sorted({d.label for d in active if d.action == "relabel" and d.label})
    deletes = [d for d in active if d.action == "delete"]
    if deletes and targets:
        notes.append(f"{rel}: both delete and relabel to {', '.join(targets)} were decided; delete wins")
        return deletes[0]
    if len(targets) > 1:
        return f"{rel}: relabelled to both {' and '.join(targets)}; decide on one"
    return active[0]


def _plan(root: Path, decisions: Sequence[Decision], state: dict[str, Batch], batch: str,
          report: ApplyReport) -> tuple[list[_Action], list[dict[str, str]] | None]:  # fmt: skip
    """Validate every decision and plan the moves; raises StaleDecisionError, moving nothing."""
    problems: list[str] = []
    bad_paths: list[str] = []
    by_path: dict[str, list[Decision]] = {}
    adds = [d for d in decisions if d.action == "add"]
    for d in decisions:
        if d.action == "add":
            continue
        try:
            by_path.setdefault(relative_path(root, d.path), []).append(d)
        except WhatsthatError as e:
            problems.append(str(e))
            bad_paths.append(d.path)

    applied: dict[str, dict] = {}  # src -> latest action of a batch still in effect
    for b in state.values():
        if b.committed and not b.undone:
            for a in b.actions:
                applied[a["src"]] = a

    has_manifest = manifest_path(root).is_file()
    rows = read_manifest(root) if has_manifest else []
    rows_of: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row.get("status") != "trashed":  # a trashed row names where a file *was*
            rows_of.setdefault(row.get("file", ""), []).append(i)
    # names a new file must not take: on-disk files are checked directly; these are the rest
    taken = {row.get("file", "") for row in rows}
    planned_dirs: set[str] = set()
    actions: list[_Action] = []

    for rel, ds in by_path.items():
        chosen = _resolve_conflicts(rel, ds, report.notes)
        if isinstance(chosen, str):
            problems.append(chosen)
            bad_paths.append(rel)
            continue
        if chosen is None:
            report.kept += 1
            continue
        expected = {d.sha256 for d in ds if d.sha256}
        if len(expected) > 1:
            problems.append(f"{rel}: decisions were made on different versions of this file")
            bad_paths.append(rel)
            continue
        src = root / rel
        if not src.is_file():
            prior = applied.get(rel)
            wanted = "trash" if chosen.action == "delete" else "relabel"
            if prior and prior["op"] == wanted and (wanted == "trash" or prior["label"] == chosen.label):
                report.skipped.append(f"{rel}: already {'deleted' if wanted == 'trash' else 'relabelled'} "
                                      f"in batch {prior['batch']} (now {prior['dst']})")
                continue
            if prior:
                where = "deleted" if prior["op"] == "trash" else f"relabelled to {prior['label']}"
                problems.append(f"{rel}: was {where} in batch {prior['batch']} (now {prior['dst']}); decide on that file")
            else:
                problems.append(f"{rel}: no longer exists (moved or deleted since the decision was made)")
            bad_paths.append(rel)
            continue
        sha = file_sha256(src)
        if expected and sha not in expected:
            problems.append(f"{rel}: its bytes changed since the decision was made; look at it again")
            bad_paths.append(rel)
            continue
        old_label, name = rel.split("/")
        if chosen.action == "relabel":
            label = str(chosen.label)
            if label == old_label:
                report.notes.append(f"{rel}: already labelled {label}; nothing to do")
                report.kept += 1
                continue
            if label in (".", "..") or label.startswith(".") or "/" in label or "\\" in label:
                problems.append(f"{rel}: {label!r} cannot be a label (it must be a plain folder name)")
                bad_paths.append(rel)
                continue
            if not (root / label).is_dir():  # an existing folder is a label already, whatever its name
                try:
                    check_label(label)
                except WhatsthatError as e:
                    problems.append(f"{rel}: {e}")
                    bad_paths.append(rel)
                    continue
                if label not in planned_dirs:
                    report.notes.append(f"new label folder {label}/ (no image had this label before)")
            dst = _free_name(root / label, name, taken, root)
        else:
            dst = _free_name(root / TRASH_DIR / batch / old_label, name, taken, root)
        dst_rel = dst.relative_to(root).as_posix()
        taken.add(dst_rel)
        if dst.name != name and chosen.action == "relabel":
            report.notes.append(f"{label}/{name} exists: {rel} becomes {dst_rel} (renamed, nothing overwritten)")
        changes = []
        for i in rows_of.get(rel, []):
            before = rows[i]
            if before.get("status") == "ok":
                after = ({**before, "status": "trashed", "reason": TRASHED_REASON} if chosen.action == "delete" else
                         {**before, "label": label, "file": dst_rel, "reason": f"relabelled from {old_label}"})
            elif chosen.action == "relabel":
                after = {**before, "file": dst_rel}  # a duplicate's reference follows the file it names
            else:
                continue
            changes.append({"index": i, "before": before, "after": after})
        if has_manifest and not any(c["before"].get("status") == "ok" for c in changes):
            report.notes.append(f"{rel} has no row in manifest.csv (a hand-made folder?): moved all the same")
        actions.append(_Action("trash" if chosen.action == "delete" else "relabel", rel, dst_rel, sha,
                               src.stat().st_size, chosen.label if chosen.action == "relabel" else None,
                               _missing_dirs(dst.parent, root, planned_dirs), changes))  # fmt: skip

    actions += _plan_adds(root, adds, state, rows, taken, planned_dirs, report, problems, bad_paths)
    if problems:
        raise StaleDecisionError(problems, bad_paths)
    new_rows = None
    if any(a.manifest for a in actions):
        new_rows = [dict(r) for r in rows]
        for a in actions:
            for c in a.manifest:
                if c["before"] is None:  # an added picture's new row, at the end
                    new_rows.append(dict(c["after"]))
                else:
                    new_rows[c["index"]] = dict(c["after"])
    return actions, new_rows


def _source_row(src: Path) -> dict[str, str] | None:
    """The manifest row its own folder gives a picture from outside (a pulled flag's provenance), if any."""
    folder = src.parent.parent
    if not manifest_path(folder).is_file():
        return None
    rel = f"{src.parent.name}/{src.name}"
    return next((r for r in read_manifest(folder) if r.get("file") == rel and r.get("status") == "ok"), None)


def _plan_adds(root: Path, adds: list[Decision], state: dict[str, Batch], rows: list[dict[str, str]],
               taken: set[str], planned_dirs: set[str], report: ApplyReport, problems: list[str],
               bad_paths: list[str]) -> list[_Action]:  # fmt: skip
    """Plan the copies of pictures from outside the dataset into it (see the module docstring)."""
    in_data = {r.get("sha256"): r.get("file") for r in rows if r.get("status") == "ok" and r.get("sha256")}
    added: dict[str, tuple[str, str]] = {}  # source -> (batch, dst) of adds still in effect
    for b in state.values():
        if b.committed and not b.undone:
            for a in b.actions:
                if a["op"] == "add":
                    added[a["src"]] = (b.id, a["dst"])
    actions, index = [], len(rows)
    for d in adds:
        src = Path(d.path)
        label = str(d.label)
        if src.is_relative_to(root):
            problems.append(f"{d.path}: already inside the dataset; relabel it instead of adding it")
            bad_paths.append(d.path)
            continue
        if not src.is_file():
            problems.append(f"{d.path}: no longer exists (moved or deleted since the decision was made)")
            bad_paths.append(d.path)
            continue
        sha = file_sha256(src)
        if d.sha256 and sha != d.sha256:
            problems.append(f"{d.path}: its bytes changed since the decision was made; look at it again")
            bad_paths.append(d.path)
            continue
        if str(src) in added:
            batch, dst = added[str(src)]
            report.skipped.append(f"{d.path}: already added in batch {batch} (now {dst})")
            continue
        if sha in in_data:
            report.skipped.append(f"{d.path}: the same picture is in the dataset already, as {in_data[sha]}")
            continue
        if not (root / label).is_dir():
            try:
                check_label(label)
            except WhatsthatError as e:
                problems.append(f"{d.path}: {e}")
                bad_paths.append(d.path)
                continue
            if label not in planned_dirs:
                report.notes.append(f"new label folder {label}/ (no image had this label before)")
        dst = _free_name(root / label, src.name, taken, root)
        dst_rel = dst.relative_to(root).as_posix()
        taken.add(dst_rel)
        in_data[sha] = dst_rel
        source = _source_row(src)
        row = {**(source or {}), "label": label, "file": dst_rel, "status": "ok", "sha256": sha}
        if source is None:
            row |= {"url": src.as_uri(), "backend": "import", "reason": ""}
        elif source.get("label") != label:
            row["reason"] = f"added as {label} (its folder said {source.get('label')})"
        actions.append(_Action("add", str(src), dst_rel, sha, src.stat().st_size, label,
                               _missing_dirs(dst.parent, root, planned_dirs),
                               [{"index": index, "before": None, "after": row}]))  # fmt: skip
        index += 1
    return actions


def _new_batch_id() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def apply_decisions(root: str | Path, decisions: Iterable[Decision], *, dry_run: bool = False) -> ApplyReport:
    """Apply delete/relabel decisions to dataset `root` as one journaled, undoable batch.

    The whole batch is validated first (StaleDecisionError, nothing moved); decisions already
    applied are skipped. With dry_run, returns what would happen and changes nothing.
    """
    root = dataset_root(root)
    decisions = list(decisions)
    batch = _new_batch_id()
    report = ApplyReport(root, batch, dry_run=dry_run)
    if dry_run:
        state = _batches(journal(root))
        actions, _ = _plan(root, decisions, state, batch, report)
        _fill(report, actions)
        return report
    with _locked_journal(root) as jf:
        state = _batches(journal(root))
        stuck = [b.id for b in state.values() if b.actions and not b.committed and not b.undone]
        if stuck:
            raise WhatsthatError(f"batch {stuck[-1]} was interrupted before it finished; roll it back with "
                                 f"`whatsthat undo {root}` (or clean.undo), then apply again")
        actions, new_rows = _plan(root, decisions, state, batch, report)
        if not actions:
            report.batch = None
            return report
        time = _now()
        _append(jf, [{"v": JOURNAL_VERSION, "type": "action", "batch": batch, "time": time, "seq": i,
                      "of": len(actions), "op": a.op, "src": a.src, "dst": a.dst, "sha256": a.sha256,
                      "size": a.size, "label": a.label, "dirs": a.dirs, "manifest": a.manifest}
                     for i, a in enumerate(actions)])  # fmt: skip
        try:
            for a in actions:
                for d in a.dirs:
                    (root / d).mkdir(exist_ok=True)
                if a.op == "add":
                    _copy_no_replace(Path(a.src), root / a.dst)
                else:
                    _move_no_replace(root / a.src, root / a.dst)
            if new_rows is not None:
                write_manifest(root, new_rows)
            _fsync_dirs([(root / a.src).parent for a in actions if a.op != "add"] +
                        [(root / a.dst).parent for a in actions])
        except (OSError, WhatsthatError) as e:
            try:
                _undo_batch(root, jf, _batches(journal(root))[batch])
            except (OSError, WhatsthatError) as e2:
                raise WhatsthatError(f"applying batch {batch} failed ({e}), and rolling it back failed too ({e2}); "
                                     f"run `whatsthat undo {root}` once the cause is fixed") from e
            raise WhatsthatError(f"applying batch {batch} failed ({e}); it was rolled back, nothing changed") from e
        _append(jf, [{"v": JOURNAL_VERSION, "type": "commit", "batch": batch, "time": _now()}])
    _fill(report, actions)
    return report


def _fill(report: ApplyReport, actions: list[_Action]) -> None:
    for a in actions:
        {"trash": report.trashed, "relabel": report.relabelled, "add": report.added}[a.op].append((a.src, a.dst))


# --- undo -----------------------------------------------------------------------------------------


def undo(root: str | Path, batch: str | None = None) -> UndoReport:
    """Revert the latest batch not yet undone (or `batch`): files go back, manifest rows too.

    Call again to undo the batch before. Refused when the batch's trash was emptied, or (for an
    explicit older batch) when a later batch still in effect moved the same files.
    """
    root = dataset_root(root)
    if not journal_path(root).is_file():
        raise WhatsthatError(f"nothing to undo: {root} has no cleaning journal ({JOURNAL_NAME})")
    with _locked_journal(root) as jf:
        state = _batches(journal(root))
        live = [b for b in state.values() if b.actions and not b.undone]
        if batch is None:
            if not live:
                raise WhatsthatError(f"nothing to undo in {root}: every batch is undone already")
            target = live[-1]
        else:
            if batch not in state or not state[batch].actions:
                known = ", ".join(b.id for b in state.values() if b.actions) or "none"
                raise WhatsthatError(f"no batch {batch!r} in {root}'s journal (batches: {known})")
            target = state[batch]
            if target.undone:
                raise WhatsthatError(f"batch {batch} was already undone")
            ids = list(state)
            touched = {p for a in target.actions for p in (a["src"], a["dst"])}
            for later in live:
                if ids.index(later.id) > ids.index(target.id) and \
                        touched & {p for a in later.actions for p in (a["src"], a["dst"])}:
                    raise WhatsthatError(f"batch {later.id} (applied later) moved some of the same files; "
                                         f"undo it first")
        if target.purged:
            raise WhatsthatError(f"batch {target.id} cannot be undone: its trash was emptied; an earlier batch can "
                             f"still be undone with --batch ID (see `whatsthat journal {root}`)")
        return _undo_batch(root, jf, target)


def _undo_batch(root: Path, jf: Any, target: Batch) -> UndoReport:
    """Move every file of `target` back and restore its manifest rows; validate all first."""
    report = UndoReport(root, target.id)
    moves, problems, copies = [], [], []
    for a in target.actions:
        src, dst = root / a["src"], root / a["dst"]
        if a["op"] == "add":
            if dst.exists() or dst.is_symlink():
                copies.append(a)  # else: never copied (the batch was interrupted) or already removed
            continue
        at_src, at_dst = src.exists() or src.is_symlink(), dst.exists() or dst.is_symlink()
        if at_dst and not at_src:
            moves.append(a)
        elif at_src and at_dst and os.path.samefile(src, dst):
            moves.append(a)  # interrupted between link and unlink: two names of one file
        elif at_src and not at_dst:
            continue  # never moved (the batch was interrupted) or already moved back
        elif at_src:
            problems.append(f"{a['src']} is taken by another file; move it away to restore {a['dst']} there")
        else:
            problems.append(f"{a['dst']} is missing (neither there nor back at {a['src']})")
    if problems:
        raise WhatsthatError(f"cannot undo batch {target.id}, nothing was changed:\n  " + "\n  ".join(problems))
    for a in reversed(moves):
        src, dst = root / a["src"], root / a["dst"]
        if src.exists() and os.path.samefile(src, dst):
            os.unlink(dst)  # the other name of the same bytes stays at src: nothing is lost
        else:
            src.parent.mkdir(parents=True, exist_ok=True)
            _move_no_replace(dst, src)
        if file_sha256(src) != a["sha256"]:
            report.notes.append(f"{a['src']} was edited after the batch; restored as it is now")
        report.restored.append((a["dst"], a["src"]))
    for a in reversed(copies):
        _remove_copy(root, a, target.id, report)
    report.manifest_rows = _restore_manifest(root, target, report)
    for a in reversed(target.actions):
        for d in reversed(a["dirs"]):
            _rmdir_if_empty(root / d)  # only folders this batch created, and only when empty
    _fsync_dirs([(root / a["src"]).parent for a in moves] + [(root / a["dst"]).parent for a in copies])
    _append(jf, [{"v": JOURNAL_VERSION, "type": "undo", "batch": target.id, "time": _now(),
                  "restored": len(report.restored)}])  # fmt: skip
    return report


def _remove_copy(root: Path, a: dict, batch: str, report: UndoReport) -> None:
    """Undo an add: the copy goes, as its source still holds the same bytes; else it goes to the trash."""
    src, dst = Path(a["src"]), root / a["dst"]
    if file_sha256(dst) == a["sha256"] and src.is_file() and file_sha256(src) == a["sha256"]:
        os.unlink(dst)  # the only unlink outside empty_trash: the same bytes stay at src
        report.removed.append((a["dst"], a["src"]))
        return
    trash = _free_name(root / TRASH_DIR / batch / dst.parent.name, dst.name, set(), root)
    trash.parent.mkdir(parents=True, exist_ok=True)
    _move_no_replace(dst, trash)
    report.notes.append(f"{a['dst']} was added from {a['src']}, which no longer holds the same bytes (or it was "
                        f"edited since): moved to {trash.relative_to(root).as_posix()} rather than deleted")
    report.removed.append((a["dst"], a["src"]))


def _same(row: dict[str, str], recorded: dict[str, str]) -> bool:
    """A manifest row as read now is the one a batch recorded: equal but for empty columns (an added picture's
    provenance columns, e.g. a flag's, stay in the file, empty for every other row)."""
    return {k: v for k, v in row.items() if v} == {k: v for k, v in recorded.items() if v}


def _restore_manifest(root: Path, target: Batch, report: UndoReport) -> int:
    changes = [c for a in reversed(target.actions) for c in reversed(a["manifest"])]
    if not changes:
        return 0
    rows = read_manifest(root)
    restored = 0
    for c in changes:
        i, before, after = c["index"], c["before"], c["after"]
        if before is None:  # an added picture's row: taken out
            j = i if i < len(rows) and _same(rows[i], after) else \
                next((k for k, r in enumerate(rows) if _same(r, after)), None)
            if j is not None:
                del rows[j]
                restored += 1
            continue
        if i < len(rows) and _same(rows[i], after):
            rows[i] = dict(before)
        elif i < len(rows) and _same(rows[i], before):
            continue  # the manifest was never written (interrupted batch)
        else:
            j = next((k for k, r in enumerate(rows) if _same(r, after)), None)
            if j is None:
                report.notes.append(f"manifest row for {before.get('file')} changed since the batch; left as it is")
                continue
            rows[j] = dict(before)
        restored += 1
    if restored:
        write_manifest(root, rows)
    return restored


# --- trash ----------------------------------------------------------------------------------------


def trash_list(root: str | Path) -> list[TrashItem]:
    """Files in `<root>/.trash`, with the original path and batch of each (None for unknown files)."""
    root = dataset_root(root)
    trash = root / TRASH_DIR
    if not trash.is_dir():
        return []
    origin: dict[str, tuple[dict, Batch]] = {}
    for b in _batches(journal(root)).values():
        if not b.undone:
            for a in b.actions:
                if a["op"] == "trash":
                    origin[a["dst"]] = (a, b)
    items = []
    for p in sorted(trash.rglob("*")):
        if p.is_file() or p.is_symlink():
            rel = p.relative_to(root).as_posix()
            a, b = origin.get(rel, (None, None))
            items.append(TrashItem(rel, a["src"] if a else None, b.id if b else None, b.time if b else None,
                                   p.lstat().st_size))  # fmt: skip
    return items


def empty_trash(root: str | Path, older_than: dt.timedelta | float | None = None, *,
                dry_run: bool = False) -> TrashReport:  # fmt: skip
    """Delete trashed images for good: the only function that removes bytes.

    Deletes the files of applied batches (older than `older_than`, a timedelta or days) and
    records it, after which those batches can no longer be undone. Files in `.trash` that no
    batch put there, and batches interrupted or undone, are left alone.
    """
    root = dataset_root(root)
    if isinstance(older_than, int | float):
        older_than = dt.timedelta(days=older_than)
    if older_than is not None and older_than < dt.timedelta(0):
        raise WhatsthatError("older_than must not be negative")
    if not (root / TRASH_DIR).is_dir() or not journal_path(root).is_file():
        return TrashReport([], trash_list(root), dry_run)
    cutoff = dt.datetime.now(dt.UTC) - older_than if older_than is not None else None
    with _locked_journal(root) as jf:
        state = _batches(journal(root))
        eligible = {b.id for b in state.values() if b.committed and not b.undone
                    and (cutoff is None or dt.datetime.fromisoformat(b.time) <= cutoff)}  # fmt: skip
        items = trash_list(root)
        doomed = [i for i in items if i.batch in eligible]
        left = [i for i in items if i.batch not in eligible]
        if dry_run or not doomed:
            return TrashReport(doomed, left, dry_run)
        trash = (root / TRASH_DIR).resolve()
        for item in doomed:
            p = root / item.path
            if not p.parent.resolve().is_relative_to(trash):
                raise WhatsthatError(f"{item.path} is not inside {trash}; refusing to delete it")
        deleted_by_batch: dict[str, list[str]] = {}
        for item in doomed:
            (root / item.path).unlink()
            deleted_by_batch.setdefault(str(item.batch), []).append(item.path)
        for bid, files in deleted_by_batch.items():
            for d in sorted({(root / f).parent for f in files}, key=lambda p: -len(p.parts)):
                _rmdir_if_empty(d)
            _rmdir_if_empty(root / TRASH_DIR / bid)
        _rmdir_if_empty(root / TRASH_DIR)
        _append(jf, [{"v": JOURNAL_VERSION, "type": "purge", "batch": bid, "time": _now(), "files": files}
                     for bid, files in deleted_by_batch.items()])  # fmt: skip
    return TrashReport(doomed, left, False)
