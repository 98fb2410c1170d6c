"""Data checks: bad training folders each get a model or a one-line error, never a traceback, and a
finished training run is never lost (docs/training.md, "Bad training folders").

Each test trains through the real CLI on generated pictures, tiny (32 px, one epoch a stage), and
checks what a user would see: the exit status, the lines printed, the files written.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, draw_image
from PIL import Image

from whatsthat.cli import main

pytestmark = pytest.mark.slow
FAST = ["--size", "32", "--head-epochs", "1", "--top-epochs", "1", "--no-progress"]


def two_classes(root: Path, n: int = 30, make=lambda kind, i: draw_image(kind, 64, seed=i), suffix=".jpg") -> Path:
    for kind in ("red", "blue"):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            make(kind, i).save(root / kind / f"{kind}_{i:03d}{suffix}")
    return root


def train_cli(data: Path, out: Path, capsys, *extra: str) -> tuple[int, str, str]:
    rc = main(["train", str(data), "--out", str(out), *FAST, *extra])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return rc, captured.out, captured.err


def card_of(out: Path) -> dict:
    return json.loads((out / "export.card.json").read_text())


def test_identical_pictures_export_a_model_without_the_detector(tmp_path, capsys):
    data = tmp_path / "grey"
    for label in ("a", "b"):
        (data / label).mkdir(parents=True)
        for i in range(30):
            Image.new("RGB", (64, 64), (128, 128, 128)).save(data / label / f"{i}.jpg")
    out = tmp_path / "m"
    rc, _, err = train_cli(data, out, capsys)
    assert rc == 0
    card = card_of(out)
    assert card["not_sure"] is None
    assert "do not vary" in card["missing"]["not_sure"]["why"]
    assert card["missing"]["not_sure"]["command"] == f"whatsthat not-sure fit {out / 'export.pkl'} {data}"
    said = [line for line in err.splitlines() if "not-sure fit" in line]
    assert len(said) == 1 and "softmax rule" in said[0]  # once, in one line, with the command
    assert not (out / "export.ood.safetensors").exists()
    # the page serves it: the model process loads the torch-only artifact and answers by the softmax rule
    from whatsthat.model.verdict import decide
    from whatsthat.web.app import model_card_html
    from whatsthat.web.modelprocess import load_predictor

    predictor = load_predictor(out / "export.pkl")
    assert predictor.backend == "artifact"
    (ranked, score), = predictor.score([Image.new("RGB", (64, 64), (128, 128, 128))])
    assert score is None and decide(ranked, card, score).kind in ("sure", "ambiguous")
    assert "no class reaches" in model_card_html(card, card["classes"], card["threshold"])


def test_48px_grayscale_only(tmp_path, capsys):
    data = two_classes(tmp_path / "grey48", make=lambda kind, i: draw_image(kind, 48, seed=i).convert("L").resize((48, 48)))
    rc, out, _ = train_cli(data, tmp_path / "m", capsys)
    assert rc == 0 and card_of(tmp_path / "m")["classes"] == ["blue", "red"]
    assert out.strip().splitlines()[-1].startswith("verdict:")


def test_cmyk_jpegs_and_16_bit_pngs(tmp_path, capsys):
    from whatsthat.training.data import make_dataloaders

    data = tmp_path / "modes"
    for kind in ("red", "blue"):
        (data / kind).mkdir(parents=True)
        for i in range(30):
            im = draw_image(kind, 64, seed=i)
            if i % 2:
                im.convert("CMYK").save(data / kind / f"{i}.jpg")
            else:  # real 16-bit values: 0-255 scaled to 0-65535
                grey = np.asarray(im.convert("L"), dtype=np.uint16) * 257
                Image.fromarray(grey).save(data / kind / f"{i}.png")
    # what training sees of a 16-bit picture: its greys, not a white square (PIL's convert clips at 255)
    dls = make_dataloaders(data, size=32, bs=8)
    pngs = [i for i, f in enumerate(dls.train_ds.items) if f.suffix == ".png"]
    pixels = np.asarray(dls.train_ds[pngs[0]][0])
    assert pixels.mean() < 240 and (pixels == 255).mean() < 0.9
    rc, _, _ = train_cli(data, tmp_path / "m", capsys)
    assert rc == 0 and card_of(tmp_path / "m")["dataset"]["n_images"] == 60


def test_fifty_classes_of_three_pictures(tmp_path, capsys):
    data = tmp_path / "many"
    for c in range(50):
        (data / f"c{c:02d}").mkdir(parents=True)
        for i in range(3):
            draw_image(("red", "blue", "green")[c % 3], 48, seed=10 * c + i).save(data / f"c{c:02d}" / f"{i}.jpg")
    rc, out, _ = train_cli(data, tmp_path / "m", capsys)
    assert rc == 0 and len(card_of(tmp_path / "m")["classes"]) == 50
    assert out.strip().splitlines()[-1].startswith("verdict:")


def test_nested_sub_folders_inside_a_class(tmp_path, capsys):
    data = two_classes(tmp_path / "nested")
    (data / "red" / "closeups").mkdir()
    for i in range(5):
        draw_image("red", 64, seed=100 + i).save(data / "red" / "closeups" / f"c{i}.jpg")
    rc, _, err = train_cli(data, tmp_path / "m", capsys)
    assert rc == 0
    assert card_of(tmp_path / "m")["classes"] == ["blue", "red"]  # not a class "closeups"
    assert "5 picture(s) in sub-folders of red/ are left out" in err


def test_symlink_loop(tmp_path, capsys):
    data = two_classes(tmp_path / "loop")
    os.symlink("..", data / "red" / "again")  # red/again/red/again/... for ever
    rc, _, err = train_cli(data, tmp_path / "m", capsys)
    assert rc == 0
    assert card_of(tmp_path / "m")["dataset"]["n_images"] == 60  # each picture once
    assert "sub-folders of red/ are left out" in err


def test_an_empty_class_folder_beside_full_ones(tmp_path, capsys):
    data = two_classes(tmp_path / "empty")
    (data / "green").mkdir()
    rc, _, err = train_cli(data, tmp_path / "m", capsys)
    assert rc == 0 and card_of(tmp_path / "m")["classes"] == ["blue", "red"]
    assert "green/ in" in err and "has no pictures" in err


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` unwritable, also for root (CI runs as root, for whom mode bits do not count): chattr +i."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    proc = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot make a folder read-only for root here (chattr: {proc.stderr.strip()})")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_read_only_output_folder_fails_before_training(tmp_path, capsys):
    data = two_classes(tmp_path / "d")
    out = tmp_path / "ro"
    out.mkdir()
    with read_only(out):
        t0 = time.monotonic()
        rc = main(["train", str(data), "--out", str(out), *FAST])
        took = time.monotonic() - t0
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"whatsthat train: error: cannot write into the output folder {out}")
    assert "training" not in err and took < 30  # said before any epoch, not after them
    assert list(out.iterdir()) == []


def previous_set(out: Path) -> dict[str, bytes]:
    """A stand-in for an earlier export: every file of the set, with contents to compare."""
    out.mkdir(parents=True, exist_ok=True)
    names = ["export.pkl", "export.card.json", "export.ood.safetensors", "export.safetensors", "export.serving.json"]
    for name in names:
        (out / name).write_bytes(f"previous {name}".encode())
    return {name: (out / name).read_bytes() for name in names}


def test_a_full_disk_keeps_the_previous_export(tmp_path, capsys, monkeypatch):
    from fastai.learner import Learner

    data = two_classes(tmp_path / "d")
    out = tmp_path / "m"
    before = previous_set(out)

    def full(self, fname="export.pkl", **kwargs):
        Path(fname).write_bytes(b"half a mod")  # what a full disk leaves: a cut-short file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(fname))

    monkeypatch.setattr(Learner, "export", full)
    rc, _, err = train_cli(data, out, capsys)
    assert rc == 1
    last = err.strip().splitlines()[-1]
    assert "could not write the trained model" in last and "the disk is full" in last and "unchanged" in last
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing else left behind either


def test_a_failing_step_after_the_epochs_keeps_the_model(tmp_path, capsys, monkeypatch):
    import whatsthat.training.train

    def broken(*args, **kwargs):
        raise RuntimeError("simulated failure while writing the serving artifact")

    monkeypatch.setattr(whatsthat.training.train, "write_artifact", broken)
    data = two_classes(tmp_path / "d")
    out = tmp_path / "m"
    previous_set(out)
    rc, _, err = train_cli(data, out, capsys)
    assert rc == 0
    card = card_of(out)
    assert card["missing"]["serving_artifact"]["command"] == f"whatsthat artifact {out / 'export.pkl'}"
    assert "whatsthat artifact" in err
    # the new model with its detector; the old artifact is gone rather than paired with the new model
    assert (out / "export.pkl").read_bytes() != b"previous export.pkl"
    assert (out / "export.ood.safetensors").read_bytes() != b"previous export.ood.safetensors"
    assert not (out / "export.safetensors").exists() and not (out / "export.serving.json").exists()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_during_the_top_stage_keeps_the_previous_export(tmp_path, sig):
    data = two_classes(tmp_path / "d")
    out = tmp_path / "m"
    before = previous_set(out)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "whatsthat.cli", "train", str(data), "--out", str(out), "--size", "32",
           "--head-epochs", "1", "--top-epochs", "200", "--no-progress"]
    # Ctrl-C's default, whatever this run inherited: a shell without job control starts a background job
    # (`make test &`, `nohup ... &`) with SIGINT ignored, and Python then installs no KeyboardInterrupt for it
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    lines = []
    deadline = time.monotonic() + 240
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("[top] epoch"):
            proc.send_signal(sig)
            break
        assert time.monotonic() < deadline, "".join(lines)
    rest, err_rest = proc.communicate(timeout=60)
    err = "".join(lines) + err_rest
    assert any(line.startswith("[top] epoch") for line in lines), "".join(lines)
    assert proc.returncode == (130 if sig == signal.SIGINT else 143), err
    assert "Traceback" not in err + rest
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no new file, no staging folder left


def test_ctrl_c_while_the_set_is_written_keeps_the_previous_export(tmp_path, capsys, monkeypatch):
    # the last moment an interrupt can come: after the new export.pkl and detector exist, before the set
    # is complete. A new export.pkl beside the old serving artifact would serve the old model.
    import whatsthat.model.artifact
    import whatsthat.training.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(whatsthat.model.artifact, "write_artifact", interrupted)
    monkeypatch.setattr(whatsthat.training.train, "write_artifact", interrupted, raising=False)
    data = two_classes(tmp_path / "d")
    out = tmp_path / "m"
    before = previous_set(out)
    rc, _, err = train_cli(data, out, capsys)
    assert rc == 130 and err.strip().splitlines()[-1] == "whatsthat train: interrupted"
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
