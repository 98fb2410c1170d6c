"""Train: DataBlock → vision_learner → fine_tune → export.pkl + a JSON model card beside it."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from fastai.callback.core import Callback
from fastai.learner import Learner, Recorder
from torch import nn

from whatsthat.atomic import atomic_path
from whatsthat.errors import WhatsthatError
from whatsthat.model.artifact import write_artifact
from whatsthat.model.files import ModelFiles, StagedExport, check_writable
from whatsthat.model.quality import Quality, majority_baseline, quality_from_report
from whatsthat.progress import epoch_line
from whatsthat.training.cached import Cache, epoch_name, fit_cached, snapshot
from whatsthat.training.cached import evaluate as cached_logits
from whatsthat.training.cpu import big_buffers_on_heap, channels_last, forward_only_valid
from whatsthat.training.data import dataset_fingerprint, label_counts
from whatsthat.training.notsure import fit_and_save
from whatsthat.training.settings import TrainSettings


@dataclass
class TrainResult:
    learn: Learner  # the live fastai Learner, for interpretation and cleaning
    model_path: Path
    card_path: Path
    card: dict
    history: list[dict] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        return self.card["metrics"]["error_rate"]

    @property
    def quality(self) -> Quality:
        """Accuracy with its 95% interval, the majority baseline and the verdict (whatsthat.model.quality)."""
        from whatsthat.model.quality import card_quality

        return card_quality(self.card)


def ensure_folder(path: Path) -> Path:
    """Create the output folder `path`, or say in one line why it cannot be one."""
    if path.exists() and not path.is_dir():
        raise WhatsthatError(f"{path} is a file: the output must be a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WhatsthatError(f"cannot create the output folder {path}: {e.strerror or e}") from None
    return path


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("whatsthat", "torch", "torchvision", "fastai", "fastcore", "pillow", "efficientnet-lite-pytorch"):
        with contextlib.suppress(metadata.PackageNotFoundError):  # reported as absent, not an error
            out[pkg] = metadata.version(pkg)
    return out


class EpochHistory(Callback):
    """Record (and optionally print) each epoch's metrics, labelled with the fine_tune stage.

    fine_tune runs two fits (frozen body, then all layers); before_fit counts them. Passed as a
    per-fit callback, so it is never pickled into export.pkl.
    """

    order = Recorder.order + 1  # after Recorder has computed this epoch's log

    def __init__(self, stages: list[str], echo: Callable[[str], None] | None = None):
        self.stages, self.echo, self.history, self.fits = stages, echo, [], 0

    def before_fit(self) -> None:
        self.fits += 1

    def after_epoch(self) -> None:
        stage = self.stages[min(self.fits, len(self.stages)) - 1]
        rec: dict = {"stage": stage}
        for k, v in zip(self.recorder.metric_names, self.recorder.log, strict=False):
            rec[k] = v if isinstance(v, str) else round(float(v), 5)
        rec["epoch"] = int(rec.get("epoch", 0))
        self.history.append(rec)
        if self.echo:
            self.echo(epoch_line(stage, rec))

    @property
    def stage(self) -> str:
        return self.stages[min(max(self.fits, 1), len(self.stages)) - 1]


class EpochProgress(Callback):
    """Progress with time left within each fastai epoch (train and validation batches together)."""

    order = Recorder.order - 1  # the bar is cleared before EpochHistory prints the epoch's line

    def __init__(self, stages: EpochHistory, bar: bool, echo: Callable[[str], None]):
        self.stages, self.bar, self.echo, self.progress, self.done = stages, bar, echo, None, 0

    def before_epoch(self) -> None:
        from whatsthat.progress import Progress

        total = len(self.dls.train) + len(self.dls.valid)
        self.progress = Progress(f"[{self.stages.stage}] epoch {self.epoch}", total, bar=self.bar, echo=self.echo)
        self.done = 0

    def after_batch(self) -> None:
        self.done += 1
        self.progress.update(self.done)

    def after_epoch(self) -> None:
        self.progress.close()


class KeepBest(Callback):
    """Remember the weights with the lowest validation loss seen so far, across stages and epochs.

    Seeded with the head stage's result, so an unfrozen epoch that makes the model worse is undone at
    the end (`restore`) instead of exported. Lives only for the fits it is passed to: never pickled.
    """

    order = EpochHistory.order + 1  # after Recorder has this epoch's validation loss

    def __init__(self, stages: EpochHistory, loss: float = float("inf"), where: str | None = None,
                 state: dict | None = None):
        self.stages, self.best_loss, self.where, self.state = stages, loss, where, state

    def after_epoch(self) -> None:
        loss = float(self.recorder.values[-1][1])  # [train_loss, valid_loss, *metrics]
        if loss < self.best_loss:  # NaN never wins
            self.best_loss, self.where = loss, epoch_name(self.stages.stage, self.epoch)
            self.state = snapshot(self.learn.model)

    def restore(self, model: nn.Module) -> bool:
        """Load the best weights into `model`; True when they are not the last epoch's."""
        if self.state is None:
            return False
        current = model.state_dict()
        changed = any(not v.equal(current[k]) for k, v in self.state.items())
        if changed:
            model.load_state_dict(self.state)
        return changed


class FrozenBatchNormStats(Callback):
    """Keep the body's BatchNorm layers in eval mode while the body trains (their weights still learn).

    Why: the head stage learns on features computed with the pretrained running statistics. In train
    mode BatchNorm would normalise with each batch's statistics instead, so the first unfrozen batches
    feed the head features it has never seen (on faces-fer the training loss jumped from 0.08 to 2.5 and
    the model came out worse than the head alone), and validation would then use running statistics
    that, at efficientnet-lite's momentum 0.01, are still mostly ImageNet's: unlike those the weights
    were trained with. Keras's transfer-learning guide gives the same advice for the same reason.
    """

    order = 1  # after TrainEvalCallback (order -10) has put the whole model into train mode

    def before_train(self) -> None:
        from torch import nn

        for m in self.learn.model[0].modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def train(
    data: str | Path,
    out: str | Path = ".",
    settings: TrainSettings | None = None,
    *,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = None,
    callbacks: list | None = None,
    **overrides: Any,
) -> TrainResult:
    """Fine-tune `settings.arch` on the folder-per-class dataset `data`; write export.pkl + card into `out`.

    `settings`: a TrainSettings (default `TrainSettings()`, the measured recipe); keyword `overrides`
    change single fields of it, e.g. `train(data, out, settings, epochs=2)`.
    Stages, in order: `head_epochs` of the head alone on cached body features, then `top_epochs` of the
    body's top layers with the head on cached activations of the layers below (seconds each; see
    whatsthat.training.cached; `mirrors`: from the head's best epoch, on the pictures and their mirrors),
    `freeze_epochs` of fastai's frozen fit, `epochs` with every layer training.
    `lr=None` uses fastai's fine_tune default (FINE_TUNE_LR). After the head stage the body trains with its
    BatchNorm statistics frozen (`freeze_bn`, see FrozenBatchNormStats), in micro-batches of
    `micro_bs` pictures (see micro_batches; 0 turns them off). The weights exported are
    those of the stage and epoch with the lowest validation loss (KeepBest), named in the card.
    `progress`: a bar redrawn in place (True), plain lines every few seconds (False), or a bar only
    when stderr is a terminal (None). `callbacks` are extra fastai callbacks for the fastai fits.
    Returns the live learner too, for interpretation.
    """
    import fastai.callback.schedule  # noqa: F401  (adds Learner.fine_tune / fit_one_cycle)
    from fastai.metrics import accuracy, error_rate
    from fastai.torch_core import set_seed
    from fastai.vision.learner import create_head, vision_learner

    from whatsthat.training.backbones import ensure_torchvision_weights, get_arch
    from whatsthat.training.data import (
        check_dataset,
        dataset_notes,
        get_dataset_images,
        leave_out_unreadable,
        make_dataloaders,
    )

    echo = echo or (lambda s: print(s, file=sys.stderr))
    data, out = Path(data), Path(out)
    if settings is not None and not isinstance(settings, TrainSettings):
        raise WhatsthatError(f"settings must be a TrainSettings, not {type(settings).__name__}")
    settings = (settings or TrainSettings()).replace(**overrides)  # checked when made: bad values are an error
    if not settings.pretrained:
        # a random body has no features worth caching: everything trains from the start, at least one epoch
        if settings.epochs + settings.freeze_epochs == 0:
            echo("no pretrained body: the cached stages do not apply, training all layers for 1 epoch instead")
            settings = settings.replace(epochs=1)
        settings = settings.replace(head_epochs=0, top_epochs=0)
    arch, pretrained, size, bs, seed = settings.arch, settings.pretrained, settings.size, settings.bs, settings.seed
    epochs, freeze_epochs, head_epochs, top_epochs = (settings.epochs, settings.freeze_epochs, settings.head_epochs,
                                                      settings.top_epochs)  # fmt: skip
    mirrors, freeze_bn, micro_bs, valid_pct = settings.mirrors, settings.freeze_bn, settings.micro_bs, settings.valid_pct
    spec = get_arch(arch)
    counts = check_dataset(data)
    for note in dataset_notes(data):
        echo(note)
    check_writable(ensure_folder(out))  # before the slow work, not when export.pkl is written
    files = list(get_dataset_images(data))  # the data this model sees: its card's fingerprint
    # a broken file would otherwise stop training with a traceback from inside the DataLoader
    _, unreadable = leave_out_unreadable(files, data, echo)
    if unreadable:
        counts = check_dataset(data, unreadable)
    if pretrained and spec.torchvision:
        ensure_torchvision_weights(arch)  # fail before the slow work, with a message that says what to do

    set_seed(seed, reproducible=True)
    dls = make_dataloaders(data, size=size, bs=bs, valid_pct=valid_pct, seed=seed, stats=spec.stats,
                           workers=settings.workers, exclude=unreadable)
    head = {} if spec.body_features is None else {"custom_head": create_head(spec.body_features, dls.c)}
    learn = vision_learner(
        dls, spec.builder(), pretrained=pretrained, normalize=False, metrics=[error_rate, accuracy], **head
    )
    stages = (["frozen"] if pretrained and freeze_epochs else []) + ["unfrozen" if pretrained else "scratch"]
    bar = sys.stderr.isatty() if progress is None else progress
    recorder = EpochHistory(stages, echo=echo)
    echo(f"training {arch} on {len(dls.train_ds)} images ({len(dls.valid_ds)} for validation), "
         f"classes {list(dls.vocab)}, size {size}, bs {dls.bs}")
    base_lr = settings.base_lr
    # Micro-batches only where no batch statistic depends on them: the unfrozen epochs after the head
    # stage with the body's BatchNorm frozen. fastai's own fine_tune path keeps its batches as they are.
    micro = micro_bs if pretrained and epochs and not freeze_epochs and freeze_bn and micro_bs < dls.bs else 0
    t0 = time.time()
    # CPU speed only (whatsthat.training.cpu): the same weights come out, about twice as fast on 2 cores
    with big_buffers_on_heap(), channels_last(learn.model):
        history, keep, cache = fit_stages(learn, recorder, pretrained=pretrained, head_epochs=head_epochs,
                                   top_epochs=top_epochs, mirrors=mirrors, freeze_epochs=freeze_epochs,
                                   epochs=epochs, size=size,
                                   lr=base_lr, seed=seed,
                                   freeze_bn=freeze_bn, micro_bs=micro, callbacks=callbacks, bar=bar, echo=echo)
        train_seconds = time.time() - t0
        card = {
            "name": " / ".join(map(str, dls.vocab)),  # what it tells apart, e.g. "black / grizzly / teddy"
            "classes": list(dls.vocab),
            "arch": arch,
            "pretrained": pretrained,
            "image_size": size,
            "threshold": settings.threshold,
            "training": {
                "epochs": epochs,
                "freeze_epochs": freeze_epochs,
                "batch_size": dls.bs,
                "micro_batch_size": micro,  # 0: none
                "head_epochs": head_epochs,
                "top_epochs": top_epochs,
                "mirrors": mirrors,
                "lr": base_lr,
                "seed": seed,
                "valid_pct": valid_pct,
                "split": "hash of file name (stable across cleaning rounds)",
                "seconds": round(train_seconds, 1),
                "freeze_bn": freeze_bn,
                "best_stage": keep.where,  # the epoch whose weights were exported (lowest validation loss)
                "history": history,
            },
            "dataset": {
                "path": str(data),
                "n_images": len(files) - len(unreadable),
                "unreadable": unreadable,  # left out of training (whatsthat.training.data.unreadable_images)
                "n_train": len(dls.train_ds),
                "n_valid": len(dls.valid_ds),
                "per_class": counts,
                "sha256": dataset_fingerprint(files, data),
            },
            "versions": library_versions(),
            "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        # The epochs are the run's expensive part and cannot be redone: the learner is written first, and
        # each step after it is optional. One that fails is named in the card with the command that adds
        # it later, and the model is exported without it. The whole set replaces the old one only at the
        # end (StagedExport): an interrupted run leaves the previous export.* exactly as it was.
        with StagedExport(ModelFiles(out / "export.pkl")) as staged:
            write_learner(learn, staged.files.model)
            after = AfterEpochs(card, staged.files.model, out / "export.pkl", data, echo)
            card["metrics"] = after.step("metrics", lambda: evaluate(learn, cache), "whatsthat interpret")
            if card["metrics"] is not None:
                after.step("quality", lambda: add_quality(card, dls, keep.where), "whatsthat interpret")
            # out-of-class statistics beside export.pkl, their calibration in the card (whatsthat.model.detector; docs/not-sure.md)
            card["not_sure"] = after.step("not_sure", lambda: fit_and_save(learn, staged.files.model, cache=cache,
                                                                           echo=echo), "whatsthat not-sure fit")
            cache = None  # the cached activations are done with: freed before the artifact is written
            # the model process's torch-only copy (whatsthat.model.artifact)
            after.step("serving_artifact", lambda: write_artifact(learn, staged.files.model, card), "whatsthat artifact")
            staged.files.write_card(card)
            staged.commit()
    model_path = (out / "export.pkl").resolve()
    if card.get("metrics"):
        echo(f"validation error {card['metrics']['error_rate']:.3f} (accuracy {card['metrics']['accuracy']:.3f}) after "
             f"{train_seconds:.0f}s; wrote {model_path} and {ModelFiles(model_path).card.name}")
    else:
        echo(f"trained in {train_seconds:.0f}s; wrote {model_path} and {ModelFiles(model_path).card.name}")

    return TrainResult(learn, model_path, ModelFiles(model_path).card, card, history)


def fit_stages(learn: Learner, recorder: EpochHistory, *, pretrained: bool, head_epochs: int, top_epochs: int,
               mirrors: bool, freeze_epochs: int, epochs: int, size: int, lr: float, seed: int, freeze_bn: bool, micro_bs: int,
               callbacks: list | None, bar: bool, echo: Callable[[str], None]) -> tuple[list[dict], KeepBest, Cache | None]:
    """Run the training stages in order (see train); leave the best epoch's weights in the model.

    Returns every epoch's record, the cached stages' first, the KeepBest that says which epoch won, and
    the cached activations where they still describe the exported model (no fastai stage trained the
    body after the cached stages), else None.
    """
    keep = KeepBest(recorder)
    cached_history, cache = [], None
    if head_epochs or top_epochs:  # whatsthat.training.cached: the body's lower layers run once, forward only
        cached_history, best, cache = fit_cached(learn, head_epochs=head_epochs, top_epochs=top_epochs, size=size, lr=lr,
                                          seed=seed, mirrors=mirrors, echo=echo, bar=bar)
        keep = KeepBest(recorder, best.loss, best.where, best.state)
        if freeze_epochs or epochs:
            cache = None  # the fastai stages below train the lower layers: freed now, not held through them
    cbs = [recorder, EpochProgress(recorder, bar, echo), keep, *(callbacks or [])]
    # our own epoch lines and progress replace fastai's bar and its raw-list logging on stdout
    with learn.no_bar(), learn.no_logging():
        if not pretrained:  # nothing pretrained to protect: train everything from the start
            learn.fit_one_cycle(epochs + freeze_epochs, lr, cbs=cbs)
        elif freeze_epochs:
            learn.fine_tune(epochs, base_lr=lr, freeze_epochs=freeze_epochs, cbs=cbs)
        elif epochs:  # fine_tune's second half: the head is trained already
            learn.unfreeze()
            if freeze_bn:
                cbs.append(FrozenBatchNormStats())
            with micro_batches(learn, micro_bs) as accumulate:
                learn.fit_one_cycle(epochs, slice(lr / 200, lr / 2), pct_start=0.3, div=5.0, cbs=cbs + accumulate)
    history = cached_history + recorder.history
    last = history[-1]
    if keep.restore(learn.model):
        echo(f"exporting {keep.where} (validation loss {keep.best_loss:.4f}): the later epochs were worse "
             f"(last {last['stage']} epoch {last['epoch']}: {last['valid_loss']:.4f})")
    return history, keep, cache


@contextlib.contextmanager
def micro_batches(learn: Learner, size: int) -> Iterator[list[Callback]]:
    """Run the training batches as micro-batches of `size` pictures, stepping once per full batch.

    Yields the callbacks for the fit (fastai's GradientAccumulation: gradients summed over the
    micro-batches, scaled as one batch's mean, one optimiser step per `bs` pictures). Why: on a CPU
    a backward pass over 16 pictures takes ~40 ms per picture against ~60 at 32, as its activation
    buffers fit the heap that whatsthat.training.cpu keeps (docs/training.md, "Why it is fast on a CPU").
    The head's own BatchNorm layers see 16 pictures a batch instead of 32. `size` 0, or one that
    is not smaller than the batch, changes nothing.
    """
    from fastai.callback.training import GradientAccumulation

    dls = learn.dls
    full = dls.train
    if not 0 < size < full.bs:
        yield []
        return
    # step at least once per epoch on a training set smaller than a batch
    n_acc = min(full.bs, (len(full.dataset) // size) * size)
    dls.loaders[0] = full.new(bs=size)
    try:
        yield [GradientAccumulation(n_acc=n_acc)]
    finally:
        dls.loaders[0] = full


def evaluate(learn: Learner, cache: Cache | None = None) -> dict:
    """Validation loss, error rate, accuracy and per-class precision/recall/F1 of a live learner.

    `cache`: the validation pictures' cached activations (still valid for the model; fit_stages), scored
    through the top of the body and the head instead of decoding the pictures again.
    """
    import torch

    if cache is not None:
        probs, targets = cached_logits(cache.model, cache.valid_x).softmax(1), cache.valid_y
    else:
        with learn.no_bar(), learn.no_logging():
            probs, targets = learn.get_preds(dl=forward_only_valid(learn.dls))
    vocab = list(learn.dls.vocab)
    preds = probs.argmax(dim=1)
    loss = float(torch.nn.functional.nll_loss(torch.log(probs.clamp_min(1e-12)), targets))
    return {"valid_loss": round(loss, 4), **classification_report(preds.tolist(), targets.tolist(), vocab)}


def classification_report(preds: list[int], targets: list[int], vocab: list[str]) -> dict:
    """Accuracy, error rate, confusion matrix and per-class precision/recall/F1/support."""
    n = len(vocab)
    confusion = [[0] * n for _ in range(n)]  # rows: actual, columns: predicted
    for p, t in zip(preds, targets, strict=True):
        confusion[t][p] += 1
    total = len(targets)
    correct = sum(confusion[i][i] for i in range(n))
    per_class = {}
    for i, label in enumerate(vocab):
        tp = confusion[i][i]
        predicted = sum(confusion[r][i] for r in range(n))
        actual = sum(confusion[i])
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4), "support": actual}
    accuracy = correct / total if total else 0.0
    return {
        "accuracy": round(accuracy, 4),
        "error_rate": round(1 - accuracy, 4),
        "n_valid": total,
        "per_class": per_class,
        "confusion": confusion,
    }


def write_learner(learn: Learner, model_path: str | Path) -> Path:
    """Write the learner to `model_path` atomically; a full or read-only disk is one clear line."""
    model_path = Path(model_path)
    try:
        with atomic_path(model_path) as tmp:
            learn.export(tmp)
    except OSError as e:
        raise WhatsthatError(f"could not write the trained model to {model_path.parent}: {e.strerror or e}"
                             + (" (the disk is full)" if e.errno == errno.ENOSPC else "")
                             + "; the previous export there is unchanged") from None
    return model_path


def add_quality(card: dict, dls: object, best_stage: str | None) -> None:
    """The majority baseline, the accuracy's interval and the deploy verdict (whatsthat.model.quality) into `card`."""
    metrics = card["metrics"]
    metrics["baseline"] = majority_baseline(label_counts(dls.train_ds.items), label_counts(dls.valid_ds.items))
    quality = quality_from_report(metrics, metrics["baseline"], best_stage)
    metrics["accuracy_ci95"] = [round(quality.low, 4), round(quality.high, 4)]
    card["quality"] = {"level": quality.level, "deployable": quality.deployable, "verdict": quality.verdict()}


class AfterEpochs:
    """Runs the optional steps after training; a step that fails is recorded, said once, and skipped.

    `card["missing"][step]` = {"why": ..., "command": ...} for each, so the card says what the model
    lacks and how to add it, and the CLI and the notebook print one line for it.
    """

    def __init__(self, card: dict, staged_model: Path, final_model: Path, data: Path,
                 echo: Callable[[str], None]) -> None:
        self.card, self.staged, self.final, self.data, self.echo = card, staged_model, final_model, data, echo

    def step(self, name: str, fn: Callable[[], object], command: str) -> object:
        try:
            return fn()
        except Exception as e:  # any failure here must not cost the trained model
            why = str(e) if isinstance(e, WhatsthatError) else f"{type(e).__name__}: {e}"
            why = why.replace(str(self.staged.parent), str(self.final.parent))
            full = {"whatsthat not-sure fit": f"whatsthat not-sure fit {self.final} {self.data}",
                    "whatsthat artifact": f"whatsthat artifact {self.final}",
                    "whatsthat interpret": f"whatsthat interpret {self.data} --model {self.final}"}[command]
            self.card.setdefault("missing", {})[name] = {"why": why, "command": full}
            self.echo(f"{MISSING_WHAT[name]}: {why}. The model is exported without it; add it later: {full}")
            return None


MISSING_WHAT = {
    "metrics": "no validation metrics",
    "quality": "no deploy verdict",
    "not_sure": "no 'not sure' detector, so 'not sure' uses only the softmax rule",
    "serving_artifact": "no torch-only serving artifact (the model process will load export.pkl with fastai)",
}
