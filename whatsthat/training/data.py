"""The fastai DataBlock over a folder-per-class dataset.

Everything the DataBlock references is a top-level function or class of this module, because the
exported learner pickles them by import path: `export.pkl` must load wherever whatsthat is installed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastai.data.block import CategoryBlock, DataBlock
from fastai.data.core import DataLoaders
from fastai.data.transforms import image_extensions, parent_label
from fastai.vision.augment import RandomResizedCrop, aug_transforms
from fastai.vision.core import PILImage
from fastai.vision.data import ImageBlock
from fastcore.foundation import L
from numpy import ndarray
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from whatsthat.errors import WhatsthatError
from whatsthat.images import to_rgb

# the per-channel (mean, std) that Normalize uses: a backbone's pretraining statistics (whatsthat.training.backbones.Arch.stats)
Stats = tuple[Sequence[float], Sequence[float]]


def get_dataset_images(path: str | Path) -> L:
    """Image files directly inside the label folders of `path`, sorted (so every run sees the same order).

    Dot-folders and dot-files are skipped, so `.trash/` never leaks into training. Only `<label>/<file>`
    counts: a picture in a sub-folder of a label folder, or beside the label folders, would otherwise
    be labelled with *its* folder's name (fastai's parent_label), and a symlink loop inside a class
    would list the same pictures again and again. `dataset_notes` says what was left out.
    """
    return L(DatasetListing.of(path).files)


def _is_image(name: str) -> bool:
    return not name.startswith(".") and f".{name.rsplit('.', 1)[-1].lower()}" in image_extensions


@dataclass
class DatasetListing:
    """The pictures of a folder-per-class dataset, and what its layout leaves out."""

    files: list[Path]
    empty: list[str]  # label folders with no pictures of their own
    nested: dict[str, int]  # label -> pictures in its sub-folders (not used)
    loose: int  # pictures beside the label folders (not used)

    @classmethod
    def of(cls, path: str | Path) -> DatasetListing:
        path = Path(path)
        files: list[Path] = []
        empty: list[str] = []
        nested: dict[str, int] = {}
        loose = 0
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as e:
            raise WhatsthatError(f"cannot read the dataset folder {path}: {e.strerror or e}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():  # follows a symlinked label folder, once: never deeper
                own = 0
                for item in sorted(os.scandir(entry.path), key=lambda e: e.name):
                    if item.is_file() and _is_image(item.name):
                        files.append(Path(item.path))
                        own += 1
                    elif item.is_dir() and not item.name.startswith("."):
                        deeper = _count_images_below(Path(item.path))
                        if deeper:
                            nested[entry.name] = nested.get(entry.name, 0) + deeper
                if not own:
                    empty.append(entry.name)
            elif entry.is_file() and _is_image(entry.name):
                loose += 1
        return cls(files, empty, nested, loose)

    def notes(self, root: str | Path) -> list[str]:
        """One line for each thing the layout leaves out (an empty class, pictures not in a label folder)."""
        out = []
        if self.empty:
            out.append(f"note: {', '.join(f'{e}/' for e in self.empty)} in {root} "
                       f"{'has' if len(self.empty) == 1 else 'have'} no pictures: left out of the classes")
        for label, n in self.nested.items():
            out.append(f"note: {n} picture(s) in sub-folders of {label}/ are left out: whatsthat reads "
                       f"{root}/<label>/<picture>, so move them up into {label}/ to use them")
        if self.loose:
            out.append(f"note: {self.loose} picture(s) directly in {root} are left out: put each into the "
                       "folder of its label")
        return out


def _count_images_below(folder: Path) -> int:
    """Pictures anywhere below `folder`, without following symlinks (a link loop cannot recurse)."""
    n = 0
    for _, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        n += sum(_is_image(name) for name in names)
    return n


def dataset_notes(path: str | Path) -> list[str]:
    """What `get_dataset_images` leaves out of `path`, as lines to show (see DatasetListing.notes)."""
    return DatasetListing.of(path).notes(path)


class Picture(PILImage):
    """fastai's PILImage, flattened to RGB by whatsthat.images.to_rgb.

    fastai opens a file with PIL's `convert("RGB")`, which clips a 16-bit PNG's values (0-65535) to
    255: the picture trains as a white square. to_rgb scales them down, and flattens transparency
    onto white as the page does with uploads. A top-level class: the DataBlock pickles it.
    """

    @classmethod
    def create(cls, fn: Path | str | Tensor | ndarray | bytes | Image.Image, **kwargs: Any) -> Picture:
        # the annotation is fastai's own: its transforms read it to tell which inputs they apply to
        if isinstance(fn, str | Path):
            with Image.open(fn) as im:
                rgb = to_rgb(im)
                rgb = rgb.copy() if rgb is im else rgb  # a plain Image, detached from the file
            return cls(rgb)
        return super().create(fn, **kwargs)


def unreadable_images(files: Iterable[str | Path]) -> list[tuple[Path, str]]:
    """(file, why) for every file that would stop training with a decoding error.

    A file named .jpg that is an HTML page, empty or cut short would otherwise stop `train` deep inside
    fastai's DataLoader, with a traceback, after minutes of work. Each file is decoded at reduced
    size (JPEG draft mode: about half a millisecond a picture), which finds truncated files too.
    """
    bad = []
    for f in files:
        try:
            with Image.open(f) as im:
                im.draft("RGB", (32, 32))
                im.load()
        except UnidentifiedImageError:
            bad.append((Path(f), "not an image"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:  # PIL's decode errors
            bad.append((Path(f), str(e) or type(e).__name__))
    return bad


def describe_unreadable(bad: list[tuple[Path, str]], root: str | Path, limit: int = 5) -> str:
    """One line for the log: how many files are left out, the first few and why, what to do."""
    shown = "; ".join(f"{f.relative_to(root).as_posix()} ({why})" for f, why in bad[:limit])
    more = f"; and {len(bad) - limit} more" if len(bad) > limit else ""
    return (f"skipping {len(bad)} file(s) that cannot be read as pictures (left where they are: delete or "
            f"replace them): {shown}{more}")


def leave_out_unreadable(files: Iterable[str | Path], root: str | Path,
                         echo: Callable[[str], None] | None = None) -> tuple[list[Path], list[str]]:
    """(the readable files, the others' paths under `root`), saying once which were left out and why."""
    files = [Path(f) for f in files]
    bad = unreadable_images(files)
    if bad and echo:
        echo(describe_unreadable(bad, root))
    skip = {f for f, _ in bad}
    return [f for f in files if f not in skip], [f.relative_to(root).as_posix() for f, _ in bad]


class ImageFiles:
    """`get_items` for a dataset less some files (those `unreadable_images` found), by path under it.

    A top-level class because the DataBlock is pickled into export.pkl (the module docstring); the
    excluded names travel with it, a record of what the model did not see.
    """

    def __init__(self, exclude: Iterable[str] = ()) -> None:
        self.exclude = tuple(sorted(str(e) for e in exclude))

    def __call__(self, path: str | Path) -> L:
        skip = set(self.exclude)
        return L([f for f in get_dataset_images(path) if Path(f).relative_to(path).as_posix() not in skip])


class HashSplitter:
    """Put a file in the validation set when a seeded hash of its *file name* falls below valid_pct.

    Unlike a seeded RandomSplitter, the split of one file does not depend on the others: deleting or
    relabelling images while cleaning leaves every other image on its side of the split, so the
    validation error of successive cleaning rounds is measured on (nearly) the same images.
    """

    def __init__(self, valid_pct: float = 0.2, seed: int = 42):
        if not 0 < valid_pct < 1:
            raise WhatsthatError(f"valid_pct must be between 0 and 1 (exclusive), not {valid_pct}")
        self.valid_pct, self.seed = valid_pct, seed

    def is_valid(self, path: str | Path) -> bool:
        digest = hashlib.sha1(f"{self.seed}:{Path(path).name}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.valid_pct

    def __call__(self, items) -> tuple[list[int], list[int]]:
        valid = [self.is_valid(o) for o in items]
        return [i for i, v in enumerate(valid) if not v], [i for i, v in enumerate(valid) if v]


def check_dataset(path: str | Path, exclude: Iterable[str] = ()) -> dict[str, int]:
    """Count images per label; raise a clear error when the folder cannot train a classifier.

    `exclude`: paths under `path` (as ImageFiles takes them) not to count, e.g. unreadable files.
    """
    path = Path(path)
    if not path.is_dir():
        raise WhatsthatError(f"dataset folder not found: {path}")
    counts: dict[str, int] = {}
    for f in ImageFiles(exclude)(path):
        counts[parent_label(f)] = counts.get(parent_label(f), 0) + 1
    if len(counts) < 2:
        found = f"only {sorted(counts)}" if counts else "no images"
        raise WhatsthatError(
            f"{path} has {found}: a classifier needs at least two label folders with images "
            f"(layout: {path}/<label>/<image>.jpg; run `whatsthat gather` or `whatsthat import` first)"
        )
    return dict(sorted(counts.items()))


def make_datablock(size: int = 224, valid_pct: float = 0.2, seed: int = 42, stats: Stats | None = None, min_scale: float = 0.5,
                   exclude: Iterable[str] = ()) -> DataBlock:
    """The lesson-2 DataBlock: random-resized crops plus fastai's standard augmentations.

    `exclude`: files to leave out (ImageFiles); without any, the plain get_dataset_images as always.
    """
    from fastai.data.transforms import Normalize

    batch_tfms = list(aug_transforms())
    if stats is not None:
        batch_tfms.append(Normalize.from_stats(*stats))
    return DataBlock(
        blocks=(ImageBlock(cls=Picture), CategoryBlock),
        get_items=ImageFiles(exclude) if exclude else get_dataset_images,
        splitter=HashSplitter(valid_pct, seed),
        get_y=parent_label,
        item_tfms=RandomResizedCrop(size, min_scale=min_scale),
        batch_tfms=batch_tfms,
    )


def make_dataloaders(path: str | Path, size: int = 224, bs: int = 32, valid_pct: float = 0.2, seed: int = 42,
                     stats: Stats | None = None, workers: int = 0, min_scale: float = 0.5,
                     exclude: Iterable[str] = ()) -> DataLoaders:
    """DataLoaders for `path`, with checks that turn fastai's obscure failures into clear messages.

    `exclude`: paths under `path` to leave out (see ImageFiles).
    """
    check_dataset(path, exclude)
    dblock = make_datablock(size, valid_pct, seed, stats, min_scale, exclude)
    dls = dblock.dataloaders(path, bs=bs, num_workers=workers)
    if len(dls.valid_ds) == 0:
        raise WhatsthatError(f"{path}: the validation split is empty; add images or raise valid_pct ({valid_pct})")
    if len(dls.train_ds) < bs:
        # fastai drops the last partial training batch: with fewer images than bs nothing would train
        dls = dblock.dataloaders(path, bs=max(1, len(dls.train_ds) // 2), num_workers=workers)
    return dls


def dataset_fingerprint(files: list[Path], root: Path) -> str:
    """sha256 over (relative path, content) of every training file: names the exact data a model saw."""
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def label_counts(files: Iterable[str | Path]) -> dict[str, int]:
    """Pictures per label folder, from the file paths alone (no image is opened)."""
    counts: dict[str, int] = {}
    for f in files:
        counts[Path(f).parent.name] = counts.get(Path(f).parent.name, 0) + 1
    return dict(sorted(counts.items()))
