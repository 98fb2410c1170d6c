"""The dataset manifest: one CSV row per image attempt, so every file on disk has a provenance.

Layout of a dataset root::

    <root>/<label>/<name>.jpg     the images (one folder per label)
    <root>/manifest.csv           where each came from, its hashes, and why others were dropped

Anything starting with '.' (``.trash/``, ``.journal.jsonl``, temp files) is not a label or an image.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path

from whatsthat.atomic import atomic_open
from whatsthat.errors import WhatsthatError

MANIFEST_NAME = "manifest.csv"
FIELDS = (
    "url",
    "query",
    "label",
    "file",
    "sha256",
    "phash",
    "width",
    "height",
    "status",
    "reason",
    "backend",
    "fetched_at",
)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})


def manifest_path(root: str | Path) -> Path:
    """Where the manifest of dataset `root` lives."""
    return Path(root) / MANIFEST_NAME


def read_manifest(root: str | Path) -> list[dict[str, str]]:
    """All rows of `<root>/manifest.csv` as dicts of strings; [] when there is no manifest yet."""
    path = manifest_path(root)
    try:
        f = path.open(newline="", encoding="utf-8")
    except FileNotFoundError:
        return []
    except OSError as e:
        raise WhatsthatError(f"cannot read {path}: {e.strerror or e}") from e
    with f:
        reader = csv.DictReader(f)
        try:
            header = reader.fieldnames
            if header is None:
                return []  # an empty file: a run interrupted before its first write
            missing = [c for c in FIELDS if c not in header]
            if missing:
                raise WhatsthatError(
                    f"{path} is not a whatsthat manifest: missing column(s) {', '.join(missing)} "
                    f"(expected {','.join(FIELDS)})"
                )
            rows = []
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise WhatsthatError(
                        f"{path}, line {reader.line_num}: wrong number of fields (expected {len(header)})"
                    )
                rows.append(row)
        except (csv.Error, UnicodeDecodeError) as e:
            raise WhatsthatError(f"{path} is malformed (line {reader.line_num}): {e}") from e
    return rows


def _fieldnames(rows: list[Mapping[str, str]]) -> list[str]:
    # Columns another module may have added are kept, after ours, rather than silently dropped.
    names = list(FIELDS)
    for row in rows:
        names.extend(k for k in row if k not in names)
    return names


def write_manifest(root: str | Path, rows: Iterable[Mapping[str, object]]) -> Path:
    """Replace `<root>/manifest.csv` with `rows` atomically (temp file + os.replace); returns its path."""
    path = manifest_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows]
    fieldnames = _fieldnames(rows)
    with atomic_open(path, newline="") as f:  # flushed to disk: a crash must not leave an empty manifest
        writer = csv.DictWriter(f, fieldnames=fieldnames, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


def append_manifest(root: str | Path, rows: Iterable[Mapping[str, object]]) -> Path:
    """Add `rows` to the manifest (read + rewrite atomically, so a crash never leaves half a row)."""
    return write_manifest(root, [*read_manifest(root), *rows])


def label_dirs(root: str | Path) -> list[Path]:
    """The label folders of dataset `root`, sorted; dot-folders (.trash, ...) are not labels."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def list_images(root: str | Path) -> list[Path]:
    """Image files directly inside the label folders of `root`, sorted by label then name."""
    return [p for d in label_dirs(root) for p in sorted(d.iterdir()) if _is_image_file(p)]


def label_counts(root: str | Path) -> dict[str, int]:
    """Number of image files per label folder (empty label folders count 0), sorted by label."""
    return {d.name: sum(1 for p in d.iterdir() if _is_image_file(p)) for d in label_dirs(root)}
