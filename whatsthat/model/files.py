"""The files of one exported model, and how they are written: atomically, and as one set.

A model is `export.pkl` (the pickled fastai learner) and the files beside it, each named after it:

| file                      | what                                         | written by                |
|---------------------------|----------------------------------------------|---------------------------|
| `export.card.json`        | the model card: classes, metrics, settings   | `whatsthat train`         |
| `export.ood.safetensors`  | the "not sure" detector's statistics         | train, `not-sure fit`     |
| `export.safetensors`      | the weights, for the torch-only model process | train, `whatsthat artifact` |
| `export.serving.json`     | how to rebuild that model and its input      | train, `whatsthat artifact` |

`ModelFiles` is the one place that knows these names. `StagedExport` writes a new set into a hidden
folder beside the old one and swaps it in with `commit()`, so a run that fails or is interrupted
before then leaves the previous set exactly as it was, and one that commits never leaves an old
sidecar beside a new export.pkl; `ModelFiles.copy_to` copies a whole set the same way. stdlib only: the page kernel and the model process import it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from whatsthat.atomic import atomic_write, fsync_dir, signals_deferred
from whatsthat.errors import WhatsthatError

STAGE_PREFIX = ".export-staging-"


@dataclass(frozen=True)
class ModelFiles:
    """export.pkl at `model` and the names of everything beside it (which need not exist)."""

    model: Path

    def __init__(self, model: str | Path) -> None:
        object.__setattr__(self, "model", Path(model))

    def _beside(self, suffix: str) -> Path:
        return self.model.with_name(self.model.stem + suffix)

    @property
    def card(self) -> Path:
        return self._beside(".card.json")

    @property
    def detector(self) -> Path:
        return self._beside(".ood.safetensors")

    @property
    def weights(self) -> Path:
        return self._beside(".safetensors")

    @property
    def serving(self) -> Path:
        return self._beside(".serving.json")

    @property
    def sidecars(self) -> tuple[Path, ...]:
        return (self.card, self.detector, self.weights, self.serving)

    @property
    def all(self) -> tuple[Path, ...]:
        return (self.model, *self.sidecars)

    def has_artifact(self) -> bool:
        """The torch-only serving artifact (weights + description) is there."""
        return self.weights.is_file() and self.serving.is_file()

    def exists(self) -> bool:
        """export.pkl itself, or the serving artifact (a deploy may ship only that)."""
        return self.model.is_file() or self.has_artifact()

    def read_card(self) -> dict:
        """The model card, or {} when there is none; a clear error when it is not JSON."""
        if not self.card.is_file():
            return {}
        try:
            return json.loads(self.card.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise WhatsthatError(f"model card {self.card} is unreadable: {e}") from e

    def write_card(self, card: dict) -> Path:
        atomic_write(self.card, json.dumps(card, indent=2) + "\n")
        return self.card

    def copy_to(self, folder: str | Path) -> ModelFiles:
        """Copy this model's whole set (export.pkl and every file beside it that exists) into `folder`.

        The copy keeps the names and is written as one set, through StagedExport: the set already in
        `folder` is replaced whole (a file beside it that this model lacks is removed, so an old
        detector never pairs with this model), or, when the copy fails, left exactly as it was.
        Copying a model into its own folder changes nothing. Returns the copy's files.
        """
        folder = Path(folder)
        if not self.exists():
            raise WhatsthatError(f"model file not found: {self.model}")
        if folder.exists() and not folder.is_dir():
            raise WhatsthatError(f"{folder} is a file: a model is copied into a folder")
        target = ModelFiles(folder / self.model.name)
        if folder.resolve() == self.model.parent.resolve():
            return target
        try:
            with StagedExport(target) as staged:
                for source, staged_path in zip(self.all, staged.files.all, strict=True):
                    if source.is_file():
                        shutil.copyfile(source, staged_path)
                staged.commit()
        except OSError as e:
            raise WhatsthatError(f"could not copy {self.model} and its files into {folder}: {e.strerror or e}; "
                                 "the model there is unchanged") from None
        return target


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StagedExport:
    """A new set of model files, written beside `target` and swapped in as a whole by `commit()`.

        with StagedExport(ModelFiles(out / "export.pkl")) as staged:
            learn.export(staged.files.model)       # write whatever the new set has
            ...
            staged.commit()                          # the new set replaces the old, sidecars included

    Leaving the block without `commit()` (an error, Ctrl-C, SIGTERM turned into an exception) removes
    the staged files and leaves `target`'s set as it was. `commit()` holds SIGINT and SIGTERM while it
    renames, and removes any old sidecar the new set has not got, so an old detector or serving
    artifact never pairs with the new model.
    """

    def __init__(self, target: ModelFiles) -> None:
        self.target = target
        self.folder: Path | None = None
        self.files: ModelFiles = target
        self.committed: list[Path] = []

    def __enter__(self) -> StagedExport:
        parent = self.target.model.parent
        parent.mkdir(parents=True, exist_ok=True)
        for old in parent.glob(STAGE_PREFIX + "*"):  # left by a run that was killed (SIGKILL, power cut)
            pid = old.name[len(STAGE_PREFIX):].split("-", 1)[0]
            if old.is_dir() and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)
        self.folder = Path(tempfile.mkdtemp(dir=parent, prefix=f"{STAGE_PREFIX}{os.getpid()}-"))
        self.files = ModelFiles(self.folder / self.target.model.name)
        return self

    def commit(self) -> list[Path]:
        """Move the staged files into place and remove the target's files the new set lacks."""
        if self.folder is None:
            raise RuntimeError("StagedExport.commit() outside its `with` block")
        done = []
        with signals_deferred():
            # sidecars first, export.pkl last: whatever reads the folder meanwhile sees the old model
            for new, final in zip(reversed(self.files.all), reversed(self.target.all), strict=True):
                if new.is_file():
                    os.replace(new, final)
                    done.append(final)
                elif final.is_file():
                    final.unlink()
            fsync_dir(self.target.model.parent)
        self.committed = done
        return done

    def __exit__(self, *exc: object) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def check_writable(folder: Path) -> None:
    """Say in one line, before any slow work, when nothing can be written into `folder`."""
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as e:
        raise WhatsthatError(f"cannot write into the output folder {folder}: {e.strerror or e}") from None
