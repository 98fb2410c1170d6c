"""Training on cached activations: the head stage and the top stage, each epoch in seconds on a CPU.

On a CPU nearly all of an epoch's cost is the body's lower layers, the ones that work at high
resolution. They are also the layers a small dataset should change least: edges, textures and parts
are as good for faces or ducks as for ImageNet. So the body is cut where it reaches its final
resolution (`top_cut`): the layers below the cut ("lower") run once per picture, forward only, and
their activations are kept. Then:

1. **head stage**: the new head trains on the top's output for those pictures (the final features),
   as fastai's frozen epoch would, without the backward pass through the body;
2. **top stage**: the top of the body (for efficientnet_lite0 its last five blocks and the 1x1 conv
   that makes the 1280 features, 7x7 at 224 px) trains together with the head on the cached
   activations, for several epochs at a low learning rate, its BatchNorm statistics frozen as in the
   unfrozen epochs (whatsthat.training.train.FrozenBatchNormStats says why). No augmentation by default: the
   cache holds each picture once.
3. **mirrors** (`mirrors=True`, `whatsthat train --mirrors`): the top stage starts from the head
   stage's best epoch instead of its last, and trains on every picture and its horizontal mirror (the
   lower layers run once more, on the mirrored pictures: the one augmentation a cache can hold). More
   accurate where the head overfits (faces), worse on the other shared domains, and 1.6 times the
   default's training time on faces-fer: an option.

Why the top stage: on faces (48 px grayscale expressions, far from ImageNet) the head alone cannot
get past ImageNet's final features, and one unfrozen epoch of the whole body is both too short to
adapt them and the slowest thing in training. Adapting only the top, many epochs over the same
cached activations, is what "freeze the early layers, fine-tune the later ones" does in the transfer
learning literature, made cheap by the cache. docs/training-experiments.md has the measurements.

Every epoch is scored on the validation pictures; the weights of the epoch with the lowest
validation loss (the head stage's last epoch competing too; with mirrors, all its epochs) are left in
the model at the end. The cache is handed back (`Cache`) so that the final scores and the "not sure"
statistics, which need every picture through the trained model once more, run only the top and the
head on it instead of decoding every picture and running the lower layers again.

Why both parts of `mirrors` together: on faces-fer the head overfits within its 8 epochs (training
loss 0.08, validation loss up from 0.75 to 0.95), and a top stage started from that head spends the
schedule's peak unlearning it. Measured over 4 seeds (docs/training-experiments.md): the head's
best epoch as the start alone did nothing (76.3% against 76.8%), mirrors alone did worse on the one
seed tried, both together gave 79.3% on average.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from whatsthat.model.detector import PretrainedTop
from whatsthat.progress import Progress, epoch_line
from whatsthat.training.cpu import INFERENCE_BS, forward_only_valid

if TYPE_CHECKING:
    from fastai.learner import Learner

# The activations at the cut are kept as float16: for efficientnet_lite0 at 224 px that is 43 KB per
# picture (14x14x112), so 10,000 pictures take 440 MB. Above this budget the top stage is skipped,
# with a line saying so, and the head stage runs as before.
CACHE_BUDGET = 2 << 30
# Learning rates of the top stage, as fractions of the base learning rate (2e-3 by default): the body's
# top at 2e-4, the head at 1e-3. Measured on faces-fer: at 1e-3 for the top its training loss diverged
# within two epochs; 3e-4 spiked at the peak of the one-cycle schedule; 1e-4 gained less in 8 epochs.
TOP_LR_FRACTION = 0.1
HEAD_LR_FRACTION = 0.5
# The head stage: the head alone at 5x the base learning rate, in batches of 64 (fit_head)
HEAD_LR_FACTOR = 5
HEAD_BS = 64
HEAD_STAGE = "head (cached features)"
TOP_STAGE = "top (cached activations)"


def top_cut(body: nn.Sequential, size: int) -> int:
    """Index of the first layer of `body` whose output has the body's final spatial size.

    For efficientnet_lite0 that is the block that halves 14x14 to 7x7 (at 224 px); for a ResNet it is
    layer4. Found by running a blank picture through the layers, so it holds for any flat body.
    """
    was_training = body.training
    body.eval()
    shapes = []
    with torch.no_grad():
        x = torch.zeros(1, 3, size, size)
        for layer in body:
            x = layer(x)
            shapes.append(tuple(x.shape[-2:]))
    body.train(was_training)
    return shapes.index(shapes[-1])


@dataclass
class Best:
    """The lowest validation loss so far, the epoch it came from and its weights."""

    loss: float = math.inf
    where: str | None = None
    state: dict | None = None

    def offer(self, loss: float, where: str, model: nn.Module) -> None:
        if loss < self.loss:  # NaN never wins
            self.loss, self.where, self.state = loss, where, snapshot(model)


@dataclass
class Cache:
    """The lower layers' activations of the training and validation pictures (each picture once, no
    mirrors), and the model's rest that turns them into the body's output and the logits.

    Valid only while the lower layers keep the weights they had when it was made: after a fastai stage
    that trains the whole body (`--epochs`, `--freeze-epochs`) it no longer describes the model.
    """

    model: nn.Sequential  # nn.Sequential(top of the body, head): the shape whatsthat.model.detector.split_forward takes
    train_x: torch.Tensor
    train_y: torch.Tensor
    valid_x: torch.Tensor
    valid_y: torch.Tensor
    # the top as it was before the top stage, when the exported model's top differs from it: the "not
    # sure" detector reads its features (whatsthat.model.detector, "pretrained")
    pretrained: PretrainedTop | None = None


def epoch_name(stage: str, epoch: int) -> str:
    """How an epoch is named in Best.where, the card's `training.best_stage` and the log."""
    return f"{stage} epoch {epoch}"


def snapshot(model: nn.Module) -> dict:
    """A copy of the model's weights and buffers, unaffected by later training."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit_cached(learn: Learner, *, head_epochs: int, top_epochs: int, size: int, lr: float, seed: int = 42,
               mirrors: bool = False, echo: Callable[[str], None] | None = None,
               bar: bool = False) -> tuple[list[dict], Best, Cache]:
    """The head stage, then the top stage (see the module docstring), on activations computed once.

    `mirrors`: the top stage starts from the head stage's best epoch and trains on the training
    pictures' horizontal mirrors too (module docstring, 3).

    Leaves the best epoch's weights in `learn.model`. Returns every epoch's record, that Best, and the
    Cache of activations (for scoring the final model without the lower layers).
    """
    echo = echo or (lambda s: None)
    body, head = learn.model[0], learn.model[1]
    cut = top_cut(body, size)
    lower, top = body[:cut], body[cut:]
    dls = learn.dls
    # validation transforms (no augmentation), at the forward-only batch size
    train_dl = dls.test_dl(dls.train_ds.items, with_labels=True, bs=INFERENCE_BS)
    valid_dl = forward_only_valid(dls)
    copies = 2 if mirrors else 1  # of each training picture in the cache
    if top_epochs:
        fits, note = cache_plan(len(dls.train_ds) * copies, len(dls.valid_ds), activation_bytes(lower, size))
        top_epochs = top_epochs if fits else 0
        if note:
            echo(note)
    if not top_epochs:
        mirrors, copies = False, 1  # only the top stage uses them

    # one progress for both passes: this is the slow part (the body's lower layers on every image)
    progress = Progress("[head] computing body features", len(train_dl) * copies + len(valid_dl), bar=bar, echo=echo)
    done = 0

    def activations(dl, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal done
        xs, ys = [], []
        lower.eval()
        with torch.no_grad():
            for xb, yb in dl:
                xb = xb.as_subclass(torch.Tensor)  # plain tensors: fastai's types reject F.cross_entropy
                xs.append(lower(xb.flip(3) if flip else xb).half())
                ys.append(yb.as_subclass(torch.Tensor))
                done += 1
                progress.update(done)
        return torch.cat(xs), torch.cat(ys).long()

    at, yt = activations(train_dl)
    av, yv = activations(valid_dl)
    # the top stage's training set: every picture, then (with mirrors) every picture's mirror. The mirrors
    # are a pass of their own over train_dl after the others: starting to iterate a DataLoader draws a
    # seed from torch's global generator, which the head's dropout uses next, so folding the mirrors into
    # the first pass (one decode per picture) changes the trained model. This order is part of what
    # docs/training-experiments.md measured.
    at_top, yt_top = (torch.cat([at, activations(train_dl, flip=True)[0]]), torch.cat([yt, yt])) if mirrors else (at, yt)
    t_feats = progress.close()

    history: list[dict] = []
    best = Best()

    def record(stage: str, epoch: int, losses: list[float], logits: Callable[[], torch.Tensor], seconds: float) -> None:
        out = logits()
        loss = F.cross_entropy(out, yv).item()
        err = (out.argmax(1) != yv).float().mean().item()
        rec = {"stage": stage, "epoch": epoch, "train_loss": round(sum(losses) / max(1, len(losses)), 5),
               "valid_loss": round(loss, 5), "error_rate": round(err, 5), "accuracy": round(1 - err, 5),
               "time": f"{seconds:.0f}s"}
        history.append(rec)
        echo(epoch_line(stage.split()[0], rec))
        # the head stage competes with its last epoch; with mirrors with every epoch (the top starts from the best)
        if stage == TOP_STAGE or mirrors or epoch == head_epochs - 1:
            best.offer(loss, epoch_name(stage, epoch), learn.model)

    if head_epochs:
        ft, fv = evaluate(top, at), evaluate(top, av)  # the final features
        fit_head(head, ft, yt, head_epochs, lr=lr, seed=seed, bar=bar, echo=echo,
                 on_epoch=lambda e, losses, s: record(HEAD_STAGE, e, losses, lambda: evaluate(head, fv),
                                                      t_feats if e == 0 else s))
        del ft, fv
        if mirrors and best.where != epoch_name(HEAD_STAGE, head_epochs - 1):
            learn.model.load_state_dict(best.state)  # the top starts from the head's best epoch, not an overfit one
            echo(f"[top] starting from {best.where} (validation loss {best.loss:.4f})")
    pretrained = None
    if top_epochs:
        pretrained = PretrainedTop(cut, copy.deepcopy(top).eval())  # before it learns: see whatsthat.model.detector
        echo(f"[top] {top_epochs} epochs on {len(at_top)} cached activations"
             + (f" ({len(at)} pictures and their mirrors)" if mirrors else ""))
        model = nn.Sequential(top, head)
        grads = {p: p.requires_grad for p in model.parameters()}
        for p in model.parameters():
            p.requires_grad_(True)

        def train_mode() -> None:
            head.train()
            top.eval()  # BatchNorm statistics frozen; the top has no dropout of its own

        groups = [{"params": list(top.parameters()), "lr": lr * TOP_LR_FRACTION},
                  {"params": list(head.parameters()), "lr": lr * HEAD_LR_FRACTION}]
        try:
            fit_epochs(model, groups, at_top, yt_top, top_epochs, bs=dls.bs, seed=seed, train_mode=train_mode,
                       progress_label="[top] epoch", bar=bar, echo=echo,
                       on_epoch=lambda e, losses, s: record(TOP_STAGE, e, losses, lambda: evaluate(model, av), s))
        finally:
            for p, flag in grads.items():
                p.requires_grad_(flag)
    if best.state is not None:
        last = history[-1]
        if epoch_name(last["stage"], last["epoch"]) != best.where:
            learn.model.load_state_dict(best.state)
            echo(f"kept {best.where} (validation loss {best.loss:.4f}): the later epochs were worse")
    if best.where is None or not best.where.startswith(TOP_STAGE):
        pretrained = None  # the exported top is the pretrained one: its own features are those
    return history, best, Cache(nn.Sequential(top, head), at, yt, av, yv, pretrained)


def fit_head(head: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, *, lr: float, seed: int,
             bar: bool = False, echo: Callable[[str], None] | None = None,
             on_epoch: Callable[[int, list[float], float], None] | None = None) -> None:
    """The head stage's recipe: the head alone on the body's final features `x`, at HEAD_LR_FACTOR times
    the base learning rate `lr`, in batches of HEAD_BS. Also what `whatsthat suggest` trains in each fold."""
    # milliseconds per epoch: no progress within it
    fit_epochs(head, [{"params": list(head.parameters()), "lr": lr * HEAD_LR_FACTOR}], x, y, epochs, bs=HEAD_BS,
               seed=seed, train_mode=head.train, progress_label=None, bar=bar, echo=echo or (lambda s: None),
               on_epoch=on_epoch or (lambda e, losses, s: None))


def fit_epochs(model: nn.Module, groups: list[dict], x: torch.Tensor, y: torch.Tensor, epochs: int, *, bs: int,
               seed: int, train_mode: Callable[[], object], progress_label: str | None, bar: bool,
               echo: Callable[[str], None], on_epoch: Callable[[int, list[float], float], None]) -> None:
    """AdamW with a one-cycle schedule over cached inputs `x` (float16, made float32 per batch).

    `progress_label`: show progress within each epoch under this label (None: none).
    """
    n = len(x)
    bs = min(bs, n)
    steps = max(1, n // bs)  # drop the last partial batch, as fastai does (BatchNorm needs 2+)
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=epochs * steps,
                                                pct_start=0.3)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        train_mode()
        perm = torch.randperm(n, generator=gen)
        losses = []
        progress = Progress(f"{progress_label} {epoch}", steps, bar=bar, echo=echo) if progress_label else None
        for i in range(steps):
            idx = perm[i * bs : (i + 1) * bs]
            xb = x[idx].float()
            if xb.dim() == 4:
                xb = xb.contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if progress:
                progress.update(i + 1)
        seconds = progress.close() if progress else 0.0
        on_epoch(epoch, losses, seconds)


def evaluate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of `model` (in eval mode) on cached inputs, in forward-only batches."""
    model.eval()
    with torch.no_grad():
        out = [model(x[i : i + INFERENCE_BS].float()) for i in range(0, len(x), INFERENCE_BS)]
    return torch.cat(out)


def cache_plan(n_train: int, n_valid: int, per_picture: int, budget: int = CACHE_BUDGET) -> tuple[bool, str]:
    """(top stage at all?, a line for the log or "") for a cache of activations within `budget` bytes."""
    need = (n_train + n_valid) * per_picture
    if need <= budget:
        return True, ""
    return False, (f"[top] skipped: the cached activations of {n_train + n_valid} pictures would take "
                   f"{need / 2**30:.1f} GiB, over {budget / 2**30:.1f} GiB; the other stages still run")


def activation_bytes(lower: nn.Module, size: int) -> int:
    """Bytes one picture's cached float16 activations take at the cut."""
    lower.eval()
    with torch.no_grad():
        return lower(torch.zeros(1, 3, size, size)).numel() * 2
