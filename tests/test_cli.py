"""The CLI end to end through its installed entry point (`whatsthat`), as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import draw_image

WHATSTHAT = Path(sys.executable).parent / "whatsthat"


def run(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(WHATSTHAT), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def test_help_lists_every_stage():
    out = run("--help").stdout
    for cmd in ("gather", "import", "train", "interpret", "predict"):
        assert cmd in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--epochs", "lots"], "expected a whole number"),
        (["train", "--valid-pct", "1.5"], "between 0 and 1"),
        (["train", "--arch", "vgg"], "invalid choice"),
        (["predict"], "required: IMAGE"),
        (["frobnicate"], "invalid choice"),
        (["serve", "--port", "99999"], "a port number from 1 to 65535"),
    ],
)
def test_bad_arguments_get_a_usage_message(args, message):
    proc = run(*args, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "nowhere"], "dataset folder not found: nowhere"),
        (["predict", "x.jpg", "--model", "missing.pkl"], "model file not found: missing.pkl"),
        (["gather"], "no categories"),
        (["gather", "Bad Label=x", "b=y"], "bad label 'Bad Label'"),
        (["gather", "only=one"], "at least two categories"),
        (["gather", "--config", "missing.toml"], "categories file not found"),
        (["interpret", "nowhere"], "dataset folder not found"),
        (["serve", "--model", "missing.pkl"], "model file not found"),
    ],
)
def test_user_errors_are_one_clear_line(tmp_path, args, message):
    proc = run(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_journal_of_a_missing_folder_is_an_error_not_an_empty_journal(tmp_path):
    proc = run("journal", "nowhere", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"dataset folder not found: {(tmp_path / 'nowhere').resolve()}" in proc.stderr


def test_a_file_where_a_folder_belongs_and_the_reverse(tmp_path, make_dataset):
    from whatsthat.images import ImageError, load_image

    data = make_dataset(n=3)
    (tmp_path / "afile").write_text("notes")
    for cmd in (["train", str(data)], ["interpret", str(data), "--model", "missing.pkl"]):
        proc = run(*cmd, "--out", str(tmp_path / "afile"), check=False)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert f"{tmp_path / 'afile'} is a file: the output must be a folder" in proc.stderr
    assert (tmp_path / "afile").read_text() == "notes"
    with pytest.raises(ImageError, match="is a folder, not an image file"):
        load_image(data)


def test_deploy_check_lists_problems_of_an_empty_folder(tmp_path):
    proc = run("deploy-check", str(tmp_path), check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "requirements.txt" in proc.stdout and "Procfile is missing" in proc.stdout


@pytest.mark.slow
def test_import_train_interpret_predict(tmp_path):
    src = tmp_path / "photos"
    for c in ("red", "blue"):
        (src / c).mkdir(parents=True)
        for i in range(14):
            draw_image(c, 72, seed=i).save(src / c / f"{i}.png")
    (src / "red" / "notes.txt").write_text("not an image")

    out = run("import", str(src), "--out", "data", "-q", cwd=tmp_path).stdout
    assert "red" in out and "blue" in out

    run("train", "data", "--arch", "resnet18", "--no-pretrained", "--epochs", "1", "--freeze-epochs", "0",
        "--size", "64", "--bs", "8", cwd=tmp_path)
    assert (tmp_path / "export.pkl").is_file() and (tmp_path / "export.card.json").is_file()

    proc = run("interpret", "data", "--top", "4", cwd=tmp_path)
    assert "precision" in proc.stdout and "accuracy" in proc.stdout
    for name in ("confusion_matrix.png", "top_losses.png", "report.json"):
        assert (tmp_path / "interpret" / name).stat().st_size > 0
    report = json.loads((tmp_path / "interpret" / "report.json").read_text())
    assert sum(map(sum, report["confusion"])) == report["n_valid"] > 0

    photo = tmp_path / "query.jpg"
    draw_image("red", 80, seed=1234).save(photo)
    result = json.loads(run("predict", str(photo), "--json", cwd=tmp_path).stdout)
    assert set(result["probabilities"]) == {"red", "blue"}
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)

    bad = tmp_path / "bad.jpg"
    bad.write_text("<html>not a picture</html>")
    proc = run("predict", str(photo), str(bad), cwd=tmp_path, check=False)
    assert proc.returncode == 1  # one image failed, the others were still classified
    assert "query.jpg:" in proc.stdout and "bad.jpg: error: this is a web page (HTML)" in proc.stderr


def test_train_defaults_to_the_measured_offline_backbone():
    """A bare `whatsthat train` uses what the benchmarks measure and what trains offline, as train() does."""
    from whatsthat.cli import build_parser
    from whatsthat.training.backbones import ARCHS
    from whatsthat.training.settings import TrainSettings

    parser = build_parser()
    args = parser.parse_args(["train", "data"])
    assert args.arch == "efficientnet_lite0" == TrainSettings().arch
    # the CLI lists its choices without importing torch; they must stay the library's
    for command in ("train", "suggest"):
        sub = next(a for a in parser._subparsers._group_actions[0].choices.values() if a.prog.endswith(f" {command}"))
        (arch_action,) = [a for a in sub._actions if a.dest == "arch"]
        assert sorted(arch_action.choices) == sorted(ARCHS), command
    assert args.head_epochs == 8 and args.top_epochs == 10 and args.epochs == 0 and args.freeze_epochs == 0
    assert args.mirrors is False is TrainSettings().mirrors


def test_train_options_default_to_the_settings_object(monkeypatch):
    """One place for the training defaults: every `whatsthat train` option named after a TrainSettings field
    defaults to it, and a bare `whatsthat train` hands train() exactly TrainSettings()."""
    import dataclasses

    from whatsthat import cli
    from whatsthat.training import train as trainmod
    from whatsthat.training.settings import TrainSettings

    args = cli.build_parser().parse_args(["train", "data"])
    defaults = TrainSettings()
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings) if hasattr(args, f.name)}
    assert len(options) >= 13 and options == {k: getattr(defaults, k) for k in options}
    assert args.no_pretrained is (not defaults.pretrained)

    class Stop(Exception):
        pass

    def fake_train(data, out, settings, **kwargs):
        seen.append((settings, kwargs))
        raise Stop

    seen: list = []
    monkeypatch.setattr(trainmod, "train", fake_train)
    for argv, expected in ((["train", "data"], defaults),
                           (["train", "data", "--epochs", "3", "--no-pretrained", "--lr", "0.01"],
                            TrainSettings(epochs=3, pretrained=False, lr=0.01))):  # fmt: skip
        with pytest.raises(Stop):
            cli.cmd_train(cli.build_parser().parse_args(argv))
        assert seen[-1] == (expected, {"progress": None})
