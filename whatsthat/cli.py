"""The `whatsthat` command line: a thin layer over the library (each command calls one function).

Heavy imports (torch, fastai) happen inside the commands, so `whatsthat --help` is instant.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from whatsthat import __version__
from whatsthat.errors import WhatsthatError
from whatsthat.training.settings import FINE_TUNE_LR, KNOBS, TrainSettings
from whatsthat.web.deploy import TARGETS as DEPLOY_TARGETS

# whatsthat.training.backbones.ARCHS's names, listed here so that parsing a command imports no torch
# (tests/test_cli.py keeps the two the same); `train --arch` and `suggest --arch` choose among them
BACKBONES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "resnet18", "resnet34"]

EXAMPLES = """\
examples:
  whatsthat gather grizzly="grizzly bear" black="black bear" teddy="teddy bear"
  whatsthat gather --config categories.toml --per-query 150
  whatsthat import ~/Pictures/bears --out data
  whatsthat train data --arch efficientnet_lite2 --epochs 3
  whatsthat interpret data --model export.pkl
  whatsthat suggest data --json > suggestions.json   (likely label errors and junk, before cleaning)
  whatsthat clean data --apply cleaning-decisions.json   (then: whatsthat undo data)
  whatsthat predict photo.jpg --json
  whatsthat not-sure fit export.pkl data   (statistics for a model trained before they existed)
  whatsthat flags pull flagged/   (visitors' flagged photos, for the cleaner's "Flagged by visitors")
"""


def _checked(cast: type, ok: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    """An argparse `type=` that converts with `cast` and says what was expected when `ok` fails."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a whole number of 1 or more")
_port = _checked(int, lambda v: 1 <= v <= 65535, "a port number from 1 to 65535")
_count = _checked(int, lambda v: v >= 0, "a whole number of 0 or more")
_fraction = _checked(float, lambda v: 0 < v < 1, "a number between 0 and 1 (exclusive)")
_positive_float = _checked(float, lambda v: v > 0, "a positive number")


# --- commands -------------------------------------------------------------------------------------


def cmd_gather(args: argparse.Namespace) -> int:
    from whatsthat.dataset.config import load_categories, parse_category_args
    from whatsthat.dataset.gather import gather

    if args.config and args.categories:
        raise WhatsthatError("give categories either on the command line or with --config, not both")
    if args.config:
        cats = load_categories(args.config)
    elif args.categories:
        cats = parse_category_args(args.categories)
    else:
        raise WhatsthatError('no categories: e.g. whatsthat gather grizzly="grizzly bear" black="black bear"  '
                             "(or --config categories.toml)")
    settings = {**cats.gather, **{k: v for k, v in {
        "per_query": args.per_query, "max_side": args.max_side, "backend": args.backend,
        "workers": args.workers, "timeout": args.timeout}.items() if v is not None}}  # fmt: skip
    summary = gather(cats, args.out, progress=not args.quiet, **settings)
    print(summary.table())
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from whatsthat.dataset.gather import import_folder

    summary = import_folder(args.src, args.out, max_side=args.max_side, progress=not args.quiet)
    print(summary.table())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from whatsthat.training.train import train

    # every option named after a TrainSettings field sets it (the parser's defaults are TrainSettings()'s)
    knobs = {name: value for name, value in vars(args).items() if name in KNOBS}
    settings = TrainSettings(**knobs, pretrained=not args.no_pretrained)
    result = train(args.data, args.out, settings, progress=args.progress)
    m = result.card["metrics"]
    print(f"{result.model_path}: error_rate {m['error_rate']:.4f}  accuracy {m['accuracy']:.4f}  "
          f"({result.card['training']['seconds']:.0f}s)")
    print("\n".join(result.quality.lines()))  # accuracy with interval, vs guessing, best stage, verdict last
    return 0


def cmd_interpret(args: argparse.Namespace) -> int:
    from whatsthat.cleaning.interpret import interpret

    result = interpret(args.model, args.data, args.out, top=args.top, split=args.split)
    print(result.table())
    for r in result.top_losses[: min(5, len(result.top_losses))]:
        print(f"  top loss {r['loss']:.2f}: {r['file']} is {r['actual']}, predicted {r['predicted']} ({r['probability']:.2f})")
    for f, why in result.skipped:
        print(f"  skipped {f}: {why}", file=sys.stderr)
    for name, path in result.files.items():
        print(f"wrote {name}: {path}")
    print("\n".join(result.quality.lines()))  # the verdict is the last line
    return 0


def cmd_suggest(args: argparse.Namespace) -> int:
    from whatsthat.cleaning.suggest import suggest

    report = suggest(args.data, arch=args.arch, size=args.size, folds=args.folds, seed=args.seed,
                     cache=not args.no_cache, progress=args.progress)
    if args.json:
        print(json.dumps(report.to_json(keep=args.all), indent=1))
    else:
        print(report.table(limit=args.limit, keep=args.all))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from whatsthat.images import ImageError
    from whatsthat.training.classifier import load_classifier

    clf = load_classifier(args.model)
    if clf.detector is None:
        print(f"note: {args.model} has no out-of-class statistics, so 'not sure' is only the softmax rule "
              f"(top probability below {clf.threshold}); add them with `whatsthat not-sure fit {args.model} DATA`",
              file=sys.stderr)
    results, failed = [], 0
    for image in args.images:
        try:
            v = clf.judge(Path(image))
        except ImageError as e:
            failed += 1
            results.append({"image": image, "error": str(e)})
            continue
        top = v.ranked[: args.top] if args.top else v.ranked
        results.append({"image": image, "label": v.label, "verdict": v.kind, "message": v.message,
                        "ood_score": v.ood_score, "ood_threshold": clf.detector.threshold if clf.detector else None,
                        "probabilities": dict(top)})
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    else:
        for r in results:
            if "error" in r:
                print(f"{r['image']}: error: {r['error']}", file=sys.stderr)
                continue
            answer = {"sure": r["label"], "ambiguous": "not sure (ambiguous)",
                      "out_of_class": "not sure (out of class)"}[r["verdict"]]
            probs = "  ".join(f"{k} {v:.3f}" for k, v in r["probabilities"].items())
            print(f"{r['image']}: {answer}  ({probs})" + ("" if r["label"] else f"  {r['message']}"))
    return 1 if failed else 0


def cmd_not_sure(args: argparse.Namespace) -> int:
    from whatsthat.model.files import ModelFiles
    from whatsthat.training.notsure import fit_not_sure

    entry = fit_not_sure(args.model, args.data, method=args.method, layer=args.layer, k=args.k,
                         in_class_rate=args.rate, echo=lambda s: print(s, file=sys.stderr))
    cal = entry["calibration"]
    print(f"{args.model}: 'not sure' by {entry['method']} ({entry['layer']} features), threshold {entry['threshold']:.4f}, "
          f"{cal['valid_flagged']:.1%} of {cal['n_valid']} held-out pictures above it; wrote {entry['file']} "
          f"and updated {ModelFiles(args.model).card.name}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from whatsthat.cleaning.journal import apply_decisions, load_decisions

    report = apply_decisions(args.data, load_decisions(args.apply), dry_run=args.dry_run)
    print(report.summary())
    return 0


def cmd_undo(args: argparse.Namespace) -> int:
    from whatsthat.cleaning.journal import undo

    print(undo(args.data, batch=args.batch).summary())
    return 0


def cmd_trash(args: argparse.Namespace) -> int:
    from whatsthat.cleaning.journal import empty_trash, trash_list

    if args.action == "list":
        if args.older_than is not None or args.yes:
            raise WhatsthatError("--older-than and --yes go with `trash DATA empty`")
        items = trash_list(args.data)
        for item in items:
            origin = f"was {item.original}, batch {item.batch}" if item.batch else "not put there by whatsthat"
            print(f"{item.path}  ({origin}, {item.size} bytes)")
        print(f"{len(items)} file(s) in the trash, {sum(i.size for i in items) / 1e6:.1f} MB")
        return 0
    report = empty_trash(args.data, older_than=args.older_than, dry_run=not args.yes)
    print(report.summary())
    if not args.yes and report.deleted:
        print("nothing deleted yet: add --yes to delete these files for good (their batches can then not be undone)")
    return 0


def cmd_journal(args: argparse.Namespace) -> int:
    from whatsthat.cleaning.journal import batches, dataset_root, journal

    dataset_root(args.data)  # a missing folder is an error, not "no cleaning batches"
    if args.json:
        print(json.dumps(journal(args.data), indent=1))
        return 0
    found = batches(args.data)
    for b in found:
        print(b.summary())
        if args.verbose:
            for a in b.actions:
                print(f"    {a['op']:<8} {a['src']} -> {a['dst']}")
    if not found:
        print(f"no cleaning batches in {args.data}")
    return 0


def cmd_flags_pull(args: argparse.Namespace) -> int:
    from whatsthat.flags.pull import pull_flags
    from whatsthat.flags.store import database_url

    print(pull_flags(database_url(args.db), args.out))
    return 0


def cmd_flags_stats(args: argparse.Namespace) -> int:
    from whatsthat.flags.stats import stats_of
    from whatsthat.flags.store import database_url

    print(stats_of(database_url(args.db)))
    return 0


def cmd_flags_delete(args: argparse.Namespace) -> int:
    from whatsthat.flags.store import database_url, delete_flags

    print(delete_flags(database_url(args.db), args.before))
    return 0


def _before(text: str) -> dt.datetime:
    """--before: a date (UTC midnight), a date and time (UTC unless it says), or Nd (N days ago)."""
    if text.endswith("d") and text[:-1].isdigit():
        return dt.datetime.now(dt.UTC) - dt.timedelta(days=int(text[:-1]))
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2026-12-01, a time like 2026-12-01T12:00, or "
                                         f"a number of days like 90d; got {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def cmd_serve(args: argparse.Namespace) -> int:
    from whatsthat.web.serve import serve

    voila_args = args.voila_args[1:] if args.voila_args[:1] == ["--"] else args.voila_args
    # the admission options' defaults live in whatsthat.web.kernelpool: passed on only when given
    given = {k: v for k in ("per_client", "join_timeout") if (v := getattr(args, k)) is not None}
    return serve(args.model, port=args.port, host=args.host, notebook=args.notebook, examples=args.examples,
                 cull_idle_timeout=args.cull_idle_timeout, cull_interval=args.cull_interval,
                 kernel_factory=args.kernel_factory, memory_mb=args.memory_mb,
                 trust_forwarded_for=args.trust_forwarded_for, public_url=args.public_url,
                 frame_ancestors=args.frame_ancestors, flags=args.flags, voila_args=voila_args,
                 **given)  # fmt: skip


def cmd_artifact(args: argparse.Namespace) -> int:
    from whatsthat.training.classifier import artifact_from_export

    for path in artifact_from_export(args.model):
        print(f"wrote {path}")
    return 0


def cmd_deploy_check(args: argparse.Namespace) -> int:
    from whatsthat.web.deploy import check_deploy

    problems = check_deploy(args.root, model=args.model, target=args.target)
    for p in problems:
        print(f"- {p}")
    if problems:
        print(f"{len(problems)} problem(s): the deployed app would not match this environment", file=sys.stderr)
        return 1
    starts = "Procfile" if args.target == "heroku" else "Dockerfile, Space card, Git LFS"
    print(f"deploy files OK for {args.target}: requirements pins match this environment, {starts}, runtime and "
          "the model check out")
    return 0


# --- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="whatsthat", description="From a few words to a deployed image classifier.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--version", action="version", version=f"whatsthat {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("gather", help="search the web for images of each category and download them",
                       description="Search, download, verify, resize and de-duplicate images; record every attempt "
                                   "in DATA/manifest.csv. Re-running only fetches what is new.")
    g.add_argument("categories", nargs="*", metavar="LABEL=QUERY",
                   help='a category: grizzly="grizzly bear" (repeat a label to add queries), or a bare "teddy bear"')
    g.add_argument("--config", type=Path, help="categories TOML file (see docs/training.md)")
    g.add_argument("--out", type=Path, default=Path("data"), help="dataset folder (default: data)")
    g.add_argument("--per-query", type=_positive_int, help="images to ask for per query (default 100)")
    g.add_argument("--max-side", type=_positive_int, help="resize so the longer side is at most this (default 400)")
    g.add_argument("--backend", choices=["ddg", "bing"], help="search engine (default ddg)")
    g.add_argument("--workers", type=_positive_int, help="concurrent downloads (default 16)")
    g.add_argument("--timeout", type=_positive_float, help="seconds per request (default 10)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    g.set_defaults(func=cmd_gather)

    i = sub.add_parser("import", help="import a folder-per-class directory of your own images",
                       description="Copy SRC/<label>/* into the dataset (verified, resized, de-duplicated, in the manifest).")
    i.add_argument("src", type=Path, help="folder with one sub-folder per label")
    i.add_argument("--out", type=Path, default=Path("data"), help="dataset folder (default: data)")
    i.add_argument("--max-side", type=_positive_int, default=400, help="resize so the longer side is at most this")
    i.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    i.set_defaults(func=cmd_import)

    d = TrainSettings()  # the defaults below are these: one place for them, shared with train() and train.ipynb
    t = sub.add_parser("train", help="fine-tune a pretrained CNN and export export.pkl + model card",
                       description="DataBlock -> vision_learner -> fine_tune -> OUT/export.pkl and OUT/export.card.json.")
    t.add_argument("data", type=Path, nargs="?", default=Path("data"), help="dataset folder (default: data)")
    t.add_argument("--out", type=Path, default=Path("."), help="where export.pkl goes (default: .)")
    t.add_argument("--arch", default=d.arch,
                   choices=BACKBONES,
                   help=f"backbone (default {d.arch}: the measured recipe, trains offline; lite1 and lite2 "
                        "are bigger and slower; resnet18/34, the course's, download torchvision's weights once)")
    t.add_argument("--head-epochs", type=_count, default=d.head_epochs,
                   help=f"first, epochs training only the head on cached body features: seconds each (default {d.head_epochs})")
    t.add_argument("--top-epochs", type=_count, default=d.top_epochs,
                   help="then epochs training the body's top layers and the head on cached activations of the "
                        f"layers below: seconds each (default {d.top_epochs})")
    t.add_argument("--mirrors", action="store_true", default=d.mirrors,
                   help="the top stage starts from the head's best epoch and trains on every picture and its "
                        "mirror: more accurate where the head overfits (faces), 1.6x the training time there")
    t.add_argument("--freeze-epochs", type=_count, default=d.freeze_epochs,
                   help=f"then fastai frozen-body epochs, as fine_tune's first stage (default {d.freeze_epochs}; "
                        "the course uses 1)")
    t.add_argument("--epochs", type=_count, default=d.epochs,
                   help=f"then epochs with all layers training, on augmented pictures (default {d.epochs}; course 4)")
    t.add_argument("--size", type=_positive_int, default=d.size, help=f"training image size in pixels (default {d.size})")
    t.add_argument("--bs", type=_positive_int, default=d.bs, help=f"batch size (default {d.bs})")
    t.add_argument("--micro-bs", type=_count, default=d.micro_bs,
                   help="run the unfrozen epochs' batches as micro-batches of this many pictures, one optimiser "
                        f"step per --bs (faster on a CPU; 0: off; default {d.micro_bs})")
    t.add_argument("--valid-pct", type=_fraction, default=d.valid_pct,
                   help=f"share of images held out (default {d.valid_pct})")
    t.add_argument("--seed", type=int, default=d.seed, help=f"seed of the split and the training run (default {d.seed})")
    t.add_argument("--lr", type=_positive_float, default=d.lr, help=f"base learning rate (default {FINE_TUNE_LR})")
    t.add_argument("--workers", type=_count, default=d.workers,
                   help=f"data loader worker processes (default {d.workers})")
    t.add_argument("--threshold", type=_fraction, default=d.threshold,
                   help=f'"not sure" below this probability (default {d.threshold})')
    t.add_argument("--no-pretrained", action="store_true", help="start from random weights (for tests)")
    t.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bars with time left (default: on a terminal; plain lines in a log)")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("interpret", help="confusion matrix, top losses and per-class metrics of a model",
                       description="Evaluate MODEL on the validation images of DATA; write PNGs and report.json to OUT.")
    r.add_argument("data", type=Path, nargs="?", default=Path("data"), help="dataset folder (default: data)")
    r.add_argument("--model", type=Path, default=Path("export.pkl"), help="exported model (default: export.pkl)")
    r.add_argument("--out", type=Path, default=Path("interpret"), help="output folder (default: interpret)")
    r.add_argument("--top", type=_positive_int, default=9, help="how many top losses to show (default 9)")
    r.add_argument("--split", choices=["valid", "train", "all"], default="valid", help="which images (default valid)")
    r.set_defaults(func=cmd_interpret)

    sg = sub.add_parser("suggest", help="likely label errors and junk, from models that never saw each picture",
                        description="Suggest a relabel or delete for the pictures of DATA whose label is probably "
                                    "wrong (confident learning on out-of-fold probabilities) or that look like none "
                                    "of the classes. Moves nothing: review them in the notebook cleaner, or edit the "
                                    "JSON and apply it with `whatsthat clean DATA --apply FILE`.")
    sg.add_argument("data", type=Path, nargs="?", default=Path("data"), help="dataset folder (default: data)")
    sg.add_argument("--json", action="store_true", help="print one JSON list (path, action, label, given, score, why)")
    sg.add_argument("--all", action="store_true", help="list every picture, the keeps too (after the changes)")
    sg.add_argument("--limit", type=_positive_int, help="show at most this many lines of the table")
    sg.add_argument("--folds", type=_positive_int, default=5, help="folds for the out-of-fold models (default 5)")
    sg.add_argument("--seed", type=int, default=42, help="seed of the folds and the heads (default 42)")
    sg.add_argument("--arch", action="append",
                    choices=BACKBONES,
                    help="backbone of a feature pass; repeat it for several, whose opinions are averaged (default "
                         "efficientnet_lite2 and efficientnet_lite0: together they find more than train's lite0 "
                         "alone, docs/suggest.md)")
    sg.add_argument("--size", type=_positive_int,
                    help="image size in pixels of every feature pass (default each backbone's own: 260 for lite2, "
                         "224 for lite0)")
    sg.add_argument("--no-cache", action="store_true",
                    help="compute every picture's features again (default: reuse those of unchanged pictures)")
    sg.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                    help="progress bar with time left (default: on a terminal; plain lines in a log)")
    sg.set_defaults(func=cmd_suggest)

    pr = sub.add_parser("predict", help="classify image files with an exported model")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s)")
    pr.add_argument("--model", type=Path, default=Path(os.environ.get("WHATSTHAT_MODEL", "export.pkl")),
                    help="exported model (default: $WHATSTHAT_MODEL or export.pkl)")
    pr.add_argument("--json", action="store_true", help="print JSON")
    pr.add_argument("--top", type=_positive_int, help="show only the K most likely labels")
    pr.set_defaults(func=cmd_predict)

    ns = sub.add_parser("not-sure", help="out-of-class statistics for a model trained without them",
                        description="Fit the out-of-class detector of MODEL on its dataset DATA (the split it was "
                                    "trained with) and write MODEL's .ood.safetensors and card entry. "
                                    "`whatsthat train` does this itself.")
    ns.add_argument("action", choices=["fit"], help="fit")
    ns.add_argument("model", type=Path, help="exported model, e.g. export.pkl")
    ns.add_argument("data", type=Path, help="the dataset folder the model was trained on")
    ns.add_argument("--method", choices=["knn", "mahalanobis", "energy", "max_logit", "msp"],
                    help="detector (default: the benchmark's choice, see docs/not-sure.md)")
    ns.add_argument("--layer", choices=["pretrained", "pooled", "penultimate"],
                    help="features the detector reads (default: the pretrained top's where training changed the "
                         "top and the lower layers are still the pretrained ones, as `train` chooses; else pooled)")
    ns.add_argument("--k", type=_positive_int, help="neighbours for knn")
    ns.add_argument("--rate", type=_fraction, help="share of held-out in-class pictures allowed above the threshold")
    ns.set_defaults(func=cmd_not_sure)

    c = sub.add_parser("clean", help="apply cleaning decisions (delete/relabel) as one undoable batch",
                       description="Apply a decisions file (JSON or CSV: path,action,label[,sha256]; path is "
                                   "<label>/<file> inside DATA; action keep, delete or relabel) saved by the "
                                   "notebook cleaner or written by hand. Deleted images go to DATA/.trash; "
                                   "every move is journaled in DATA/.journal.jsonl; `whatsthat undo` reverts.")
    c.add_argument("data", type=Path, nargs="?", default=Path("data"), help="dataset folder (default: data)")
    c.add_argument("--apply", type=Path, required=True, metavar="FILE", help="decisions file (.json or .csv)")
    c.add_argument("--dry-run", action="store_true", help="show what would move, change nothing")
    c.set_defaults(func=cmd_clean)

    u = sub.add_parser("undo", help="undo the last cleaning batch (repeat to go further back)")
    u.add_argument("data", type=Path, nargs="?", default=Path("data"), help="dataset folder (default: data)")
    u.add_argument("--batch", metavar="ID", help="undo this batch (see `whatsthat journal`) instead of the last")
    u.set_defaults(func=cmd_undo)

    tr = sub.add_parser("trash", help="list the trash, or empty it for good",
                        description="`list` shows trashed images and where they came from; `empty` deletes them "
                                    "for good (only with --yes; without it, shows what would go).")
    tr.add_argument("data", type=Path, nargs="?", default=Path("data"), help="dataset folder (default: data)")
    tr.add_argument("action", choices=["list", "empty"], help="list or empty")
    tr.add_argument("--older-than", type=_positive_float, metavar="DAYS", help="only batches older than DAYS days")
    tr.add_argument("--yes", action="store_true", help="really delete (empty)")
    tr.set_defaults(func=cmd_trash)

    jo = sub.add_parser("journal", help="show the cleaning batches applied to a dataset")
    jo.add_argument("data", type=Path, nargs="?", default=Path("data"), help="dataset folder (default: data)")
    jo.add_argument("-v", "--verbose", action="store_true", help="list every move of each batch")
    jo.add_argument("--json", action="store_true", help="print the raw journal records")
    jo.set_defaults(func=cmd_journal)

    fl = sub.add_parser("flags", help="visitors' flags: pull their photos into a folder, show stats, delete old ones",
                        description="The flags visitors sent from the page (whatsthat serve --flags); see docs/flags.md.")
    fsub = fl.add_subparsers(dest="action", metavar="ACTION", required=True)
    db_help = ("the database: sqlite:///PATH or postgresql://... (default: $DATABASE_URL, else the default SQLite "
               "file ~/.local/share/whatsthat/flags.db)")
    fp = fsub.add_parser("pull", help="write the photos kept with consent as a folder per visitor label",
                         description="Write the flagged photos (those kept with the visitor's consent) into OUT as a "
                                     "folder per visitor label, each with a manifest row (flag id, time, model "
                                     "fingerprint, model answer). Pulling again adds only new flags.")
    fp.add_argument("out", type=Path, metavar="OUT", help="the folder to write, e.g. flagged/")
    fp.add_argument("--db", metavar="URL", help=db_help)
    fp.set_defaults(func=cmd_flags_pull)
    fs = fsub.add_parser("stats", help="counts per class, the confusions visitors report, 'none of these' by week")
    fs.add_argument("--db", metavar="URL", help=db_help)
    fs.set_defaults(func=cmd_flags_stats)
    fd = fsub.add_parser("delete", help="delete the flags (photos included) stored before a date")
    fd.add_argument("--before", type=_before, metavar="WHEN", required=True,
                    help="a date (2026-12-01, UTC), a time (2026-12-01T12:00), or a number of days ago (90d)")
    fd.add_argument("--db", metavar="URL", help=db_help)
    fd.set_defaults(func=cmd_flags_delete)

    sv = sub.add_parser("serve", help="serve the web page (Voila) for a model, locally",
                        description="Run Voila on app.ipynb with kernel culling and a preheated kernel.")
    sv.add_argument("--model", type=Path, default=Path(os.environ.get("WHATSTHAT_MODEL", "export.pkl")),
                    help="exported model (default: $WHATSTHAT_MODEL or export.pkl)")
    sv.add_argument("--port", type=_port, default=int(os.environ.get("PORT", 8866)),
                    help="port (default: $PORT or 8866)")
    sv.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1; 0.0.0.0 for all)")
    sv.add_argument("--notebook", type=Path, help="the app notebook (default: ./app.ipynb or the checkout's)")
    sv.add_argument("--examples", type=Path, help="folder of example images offered on the page")
    sv.add_argument("--cull-idle-timeout", type=_positive_int, default=600,
                    help="seconds before an idle visitor's kernel is shut down (default 600)")
    sv.add_argument("--cull-interval", type=_positive_int, default=60, help="seconds between culling checks (default 60)")
    sv.add_argument("--kernel-factory", action=argparse.BooleanOptionalAction, default=True,
                    help="fork visitors' kernels from one process that has imported them (default: on)")
    sv.add_argument("--memory-mb", type=_positive_int,
                    help="memory budget for the whole server, in MB: as many visitors' kernels start as fit "
                         "(default: the container's memory limit, else 512, a small Heroku dyno)")
    sv.add_argument("--per-client", type=_count,
                    help="kernels one client address may hold at once; 0: no cap (default 3)")
    sv.add_argument("--join-timeout", type=_positive_float,
                    help="seconds a page has, once sent, to connect to its kernel before the kernel is shut down "
                         "(robots and link previews never connect; default 30)")
    sv.add_argument("--trust-forwarded-for", action=argparse.BooleanOptionalAction, default=None,
                    help="take visitors' addresses from X-Forwarded-For (default: only on a Heroku dyno, whose "
                         "router sets it)")
    sv.add_argument("--public-url", help="the site's public address, for absolute links in link previews "
                                         "(default: Heroku's app address where dyno metadata gives it)")
    sv.add_argument("--frame-ancestors", default="",
                    help="sites that may show the page in a frame, besides its own, separated by spaces "
                         "(a Hugging Face Space: https://huggingface.co; default: none)")
    sv.add_argument("--flags", default="off", metavar="off|on|URL",
                    help="visitors' flags ('Wrong? Tell us what it is'): off (default); on: stored in $DATABASE_URL, "
                         "else the default SQLite file that `whatsthat flags pull` reads; or a database URL "
                         "(sqlite:///PATH, postgresql://...)")
    sv.add_argument("voila_args", nargs=argparse.REMAINDER, help="after --: more Voila options")
    sv.set_defaults(func=cmd_serve)

    ar = sub.add_parser("artifact", help="write the torch-only serving artifact beside an export.pkl",
                        description="Write export.safetensors + export.serving.json beside MODEL (needs fastai to read "
                                    "it); the model process then serves without fastai or torchvision.")
    ar.add_argument("model", type=Path, nargs="?", default=Path("export.pkl"), help="the export (default: export.pkl)")
    ar.set_defaults(func=cmd_artifact)

    dc = sub.add_parser("deploy-check", help="check the deployment files against this environment and the model")
    dc.add_argument("root", type=Path, nargs="?", default=Path("."), help="the repository (default: .)")
    dc.add_argument("--model", type=Path, help="model to check (default: ROOT/export.pkl)")
    dc.add_argument("--target", choices=DEPLOY_TARGETS, default="heroku",
                    help="where it goes: heroku (the Procfile; default) or spaces (Hugging Face: the Dockerfile, "
                         "the Space card in README.md, Git LFS)")
    dc.set_defaults(func=cmd_deploy_check)
    return p


# What `pip install whatsthat[train]` adds to the serving core (pyproject's optional dependencies).
TRAINING_MODULES = {"fastai", "fastcore", "torchvision", "imagehash", "ddgs", "matplotlib", "scipy", "cleanlab"}


def main(argv: list[str] | None = None) -> int:
    # torch warns on fastai's import that torch.jit.script is deprecated: nothing a user can act on
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.command != "serve":  # serve stops its servers on SIGTERM itself
        signal.signal(signal.SIGTERM, _terminated)
    try:
        return args.func(args)
    except WhatsthatError as e:
        print(f"whatsthat {args.command}: error: {e}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:
        if e.name not in TRAINING_MODULES:
            raise
        # a serving install (requirements.txt, `pip install whatsthat`) has torch but not the training stack
        print(f"whatsthat {args.command}: error: this command needs {e.name}, which this environment does not "
              "have (a serving install); install the training libraries: pip install 'whatsthat[train]'",
              file=sys.stderr)  # fmt: skip
        return 1
    except Terminated:
        print(f"whatsthat {args.command}: stopped (SIGTERM)", file=sys.stderr)
        return 128 + signal.SIGTERM
    except KeyboardInterrupt:
        print(f"whatsthat {args.command}: interrupted", file=sys.stderr)
        return 130


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that `with` blocks clean up as for Ctrl-C (a training
    run's staged export is removed, the previous export.* set stays as it was)."""


def _terminated(signum: int, frame: object) -> None:
    raise Terminated


if __name__ == "__main__":
    sys.exit(main())
