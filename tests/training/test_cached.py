"""The cached stages (whatsthat.training.cached): where the body is cut, what trains, what is kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from whatsthat.training.cached import CACHE_BUDGET, TOP_STAGE, cache_plan, top_cut
from whatsthat.training.train import train


def test_top_cut_is_the_first_layer_at_the_final_resolution():
    body = nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1),  # 32 -> 16
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),  # 16 -> 8
        nn.Conv2d(4, 4, 3, stride=2, padding=1),  # 8 -> 4: the first at the final size
        nn.Conv2d(4, 8, 1),
        nn.ReLU(),
    )
    assert top_cut(body, 32) == 3
    assert body.training  # put back as it was


def test_top_cut_of_efficientnet_lite0_is_its_last_downsampling_block():
    from fastai.vision.learner import create_body

    from whatsthat.model.networks import efficientnet_lite0

    body = create_body(efficientnet_lite0(pretrained=False), pretrained=False)
    for size in (224, 64):
        cut = top_cut(body, size)
        assert cut == 14  # stem (3 layers) + 11 blocks: the block that halves 14x14 to 7x7 at 224 px
        with torch.no_grad():
            below = body[:cut].eval()(torch.zeros(1, 3, size, size))
        assert below.shape[-1] == 2 * body.eval()(torch.zeros(1, 3, size, size)).shape[-1]


def test_cache_plan_skips_the_top_stage_when_over_budget():
    assert cache_plan(100, 20, 1000, budget=10**6) == (True, "")
    fits, note = cache_plan(100, 20, 10**4, budget=10**6)
    assert not fits and "skipped" in note and "120 pictures" in note
    # ten thousand pictures at 224 px (43 KB each at the cut) fit
    assert cache_plan(8000, 2000, 14 * 14 * 112 * 2, budget=CACHE_BUDGET)[0]


@pytest.mark.slow
def test_top_stage_trains_only_the_top_and_keeps_the_best_epoch(make_dataset, tmp_path):
    from whatsthat.model.networks import efficientnet_lite0

    data = make_dataset(n=12, classes=("red", "blue", "green"))
    lines: list[str] = []
    result = train(data, tmp_path / "m", arch="efficientnet_lite0", size=64, bs=8, head_epochs=2, top_epochs=3,
                   epochs=0, echo=lines.append)
    history = result.history
    assert [h["stage"] for h in history] == ["head (cached features)"] * 2 + [TOP_STAGE] * 3
    assert any(line.startswith("[top] epoch 2:") for line in lines)

    body = result.learn.model[0]
    pretrained = efficientnet_lite0(pretrained=True).state_dict().values()
    fresh = dict(zip(body.state_dict(), pretrained, strict=False))  # the body is the net's first layers
    cut = top_cut(body, 64)
    changed = {k for k, v in body.state_dict().items() if not torch.equal(v, fresh[k])}
    # exported: the epoch with the lowest validation loss (the head stage competes with its last epoch)
    candidates = [history[1]] + [h for h in history if h["stage"] == TOP_STAGE]
    named = {f"{h['stage']} epoch {h['epoch']}": h for h in candidates}
    best = named[result.card["training"]["best_stage"]]
    assert best["valid_loss"] == min(h["valid_loss"] for h in candidates)  # (rounded: ties are possible)
    if best["stage"] == TOP_STAGE:
        # below the cut nothing moved; above it the weights learnt, but no BatchNorm statistic moved
        assert not {k for k in changed if int(k.split(".")[0]) < cut}
        assert any(int(k.split(".")[0]) >= cut for k in changed)
        assert not {k for k in changed if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    else:  # the head stage's weights were put back: the body is the pretrained one
        assert not changed
    assert result.card["metrics"]["valid_loss"] == pytest.approx(best["valid_loss"], abs=5e-3)
    assert result.card["training"]["top_epochs"] == 3


@pytest.mark.slow
def test_the_final_scores_and_not_sure_statistics_from_the_cache_match_the_pictures(make_dataset, tmp_path):
    from whatsthat.training.notsure import fit_and_save
    from whatsthat.training.train import evaluate

    data = make_dataset(n=12, classes=("red", "blue", "green"))
    result = train(data, tmp_path / "m", arch="efficientnet_lite0", size=64, bs=8, head_epochs=2, top_epochs=2,
                   epochs=0, echo=lambda s: None)
    card = result.card
    # the card was scored on the cached activations; decoding the pictures again (float32 all through)
    # and running the whole model gives the same answers
    again = evaluate(result.learn)
    assert again["confusion"] == card["metrics"]["confusion"]
    assert again["valid_loss"] == pytest.approx(card["metrics"]["valid_loss"], abs=2e-3)
    # the detector reads the pretrained top's features (the top trained): from the pictures, with that top
    from whatsthat.model.detector import load_detector

    assert card["not_sure"]["layer"] == ("pretrained" if card["training"]["best_stage"].startswith(TOP_STAGE) else "pooled")
    top = load_detector(result.model_path, result.learn.model).pretrained
    from_pictures = fit_and_save(result.learn, tmp_path / "again" / "export.pkl", pretrained=top)
    assert from_pictures["threshold"] == pytest.approx(card["not_sure"]["threshold"], rel=1e-2)
    assert from_pictures["calibration"]["rank"] == card["not_sure"]["calibration"]["rank"]
    assert from_pictures["model_fingerprint"] == card["not_sure"]["model_fingerprint"]


@pytest.mark.slow
def test_after_a_whole_body_epoch_the_final_scores_come_from_the_pictures(make_dataset, tmp_path):
    from whatsthat.training.train import evaluate

    data = make_dataset(n=12, classes=("red", "blue", "green"))
    result = train(data, tmp_path / "m", arch="efficientnet_lite0", size=64, bs=8, head_epochs=2, top_epochs=1,
                   epochs=1, echo=lambda s: None)
    # the lower layers trained in the unfrozen epoch, so the cache no longer describes the model: the
    # card's scores are exactly those of the pictures through the exported model
    again = evaluate(result.learn)
    assert again == {k: result.card["metrics"][k] for k in again}


@pytest.mark.slow
def test_top_stage_alone_changes_the_top_only(make_dataset, tmp_path):
    from whatsthat.model.networks import efficientnet_lite0

    data = make_dataset(n=12, classes=("red", "blue", "green"))
    result = train(data, tmp_path / "m", arch="efficientnet_lite0", size=64, bs=8, head_epochs=0, top_epochs=2,
                   epochs=0, echo=lambda s: None)
    assert result.card["training"]["best_stage"].startswith(TOP_STAGE)  # the only candidates
    body = result.learn.model[0]
    fresh = dict(zip(body.state_dict(), efficientnet_lite0(pretrained=True).state_dict().values(), strict=False))
    changed = {k for k, v in body.state_dict().items() if not torch.equal(v, fresh[k])}
    cut = top_cut(body, 64)
    assert not {k for k in changed if int(k.split(".")[0]) < cut}
    assert any(int(k.split(".")[0]) >= cut for k in changed)
    assert not {k for k in changed if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    # the "not sure" detector reads the top as it was before training: the pretrained weights, stored
    from whatsthat.model.detector import load_detector

    det = load_detector(result.model_path, result.learn.model)
    assert result.card["not_sure"]["layer"] == "pretrained" and det.cut == cut
    stored = det.pretrained.module.state_dict()
    assert stored and all(int(k.split(".")[0]) >= cut and torch.equal(v, fresh[k]) for k, v in stored.items())
    # trained in channels_last (whatsthat.training.cpu), exported in the usual layout, parameters trainable as before
    assert all(p.is_contiguous() for p in result.learn.model.parameters())


@pytest.mark.slow
def test_mirrors_start_the_top_from_the_heads_best_epoch_and_every_epoch_competes(make_dataset, tmp_path):
    data = make_dataset(n=12, classes=("red", "blue", "green"))
    lines: list[str] = []
    result = train(data, tmp_path / "m", arch="efficientnet_lite0", size=64, bs=8, head_epochs=4, top_epochs=2,
                   mirrors=True, epochs=0, echo=lines.append)
    history = result.history
    assert result.card["training"]["mirrors"] is True
    heads = [h for h in history if h["stage"] == "head (cached features)"]
    best_head = min(heads, key=lambda h: h["valid_loss"])
    started = [line for line in lines if line.startswith("[top] starting from")]
    if best_head is heads[-1]:
        assert not started  # already the head the top starts from
    else:
        assert started == [f"[top] starting from head (cached features) epoch {best_head['epoch']} "
                           f"(validation loss {best_head['valid_loss']:.4f})"]
    # every epoch competes for export, the head stage's too
    named = {f"{h['stage']} epoch {h['epoch']}": h for h in history}
    best = named[result.card["training"]["best_stage"]]
    assert best["valid_loss"] == min(h["valid_loss"] for h in history)
    # the top stage ran over the training pictures and their mirrors
    n = result.card["dataset"]["n_train"]
    assert f"[top] 2 epochs on {2 * n} cached activations ({n} pictures and their mirrors)" in lines
    plain: list[str] = []
    train(data, tmp_path / "p", arch="efficientnet_lite0", size=64, bs=8, head_epochs=4, top_epochs=2, epochs=0,
          echo=plain.append)
    assert f"[top] 2 epochs on {n} cached activations" in plain


@pytest.mark.slow
def test_not_sure_fit_rebuilds_the_pretrained_top_that_train_kept(make_dataset, tmp_path):
    """`whatsthat not-sure fit` on a model whose top trained reads the same features as `train` chose:
    the top rebuilt from the backbone's own ImageNet weights equals the one train kept."""
    import json

    from whatsthat.model.detector import load_detector, stats_path_for
    from whatsthat.model.files import ModelFiles
    from whatsthat.training.notsure import fit_not_sure

    data = make_dataset(n=12, classes=("red", "blue", "green"))
    result = train(data, tmp_path / "m", arch="efficientnet_lite0", size=64, bs=8, head_epochs=0, top_epochs=2,
                   epochs=0, echo=lambda s: None)
    kept = load_detector(result.model_path, result.learn.model)
    assert kept.layer == "pretrained"
    # as a model from before train kept the top: no statistics beside it, none in its card
    stats_path_for(result.model_path).unlink()
    card = json.loads(ModelFiles(result.model_path).card.read_text())
    card.pop("not_sure")
    ModelFiles(result.model_path).card.write_text(json.dumps(card))

    entry = fit_not_sure(result.model_path, data)
    assert entry["layer"] == "pretrained"
    rebuilt = load_detector(result.model_path, result.learn.model)
    assert rebuilt.cut == kept.cut
    mine, theirs = rebuilt.pretrained.module.state_dict(), kept.pretrained.module.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.slow
def test_the_pretrained_top_is_rebuilt_only_where_it_still_fits(make_dataset, tmp_path):
    import copy

    from whatsthat.model.networks import efficientnet_lite0
    from whatsthat.training.notsure import original_top

    data = make_dataset(n=8, classes=("red", "blue"))
    result = train(data, tmp_path / "m", arch="efficientnet_lite0", size=64, bs=8, head_epochs=0, top_epochs=1,
                   epochs=0, echo=lambda s: None)
    model, card = result.learn.model, result.card
    top, why = original_top(model, card)
    assert top is not None and why == ""

    # whole-body epochs moved a lower layer: the pretrained top would read activations it never saw
    moved = copy.deepcopy(model)
    with torch.no_grad():
        next(moved[0][0].parameters()).add_(0.01)
    top, why = original_top(moved, card)
    assert top is None and "below its top trained" in why

    # a top that never trained: the model's own features already are the pretrained ones
    untouched = copy.deepcopy(model)
    body = untouched[0]
    body.load_state_dict(nn.Sequential(*list(efficientnet_lite0(pretrained=True).children())[: len(body)]).state_dict())
    top, why = original_top(untouched, card)
    assert top is None and "its top is the pretrained one" in why


def test_the_pretrained_top_needs_a_named_backbone_whose_weights_are_here():
    from whatsthat.training.notsure import original_top

    assert original_top(None, {})[1] == "its card names no pretrained backbone"
    assert original_top(None, {"arch": "efficientnet_lite0", "pretrained": False})[0] is None
    assert "unknown architecture" in original_top(None, {"arch": "vgg99"})[1]
    # the test's home is empty: torchvision's weights were never downloaded, and nothing is fetched now
    assert original_top(None, {"arch": "resnet18"})[1] == "resnet18's ImageNet weights are not on this machine"
