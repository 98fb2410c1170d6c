"""The notebook cleaner: the pictures the model finds hardest, one page at a time, marked and applied safely.

`Cleaner(learn, "data")` shows the pictures of one category and split (Train/Valid), worst loss first.
Each picture is one unit: the thumbnail, its dropdown (<Keep>, <Delete> or another label) and a caption
with the model's prediction, its confidence and the pending decision. The units sit side by side in one
strip that scrolls horizontally, so a caption always moves with its picture, and a marked unit gets a
coloured border. Decisions survive switching views and pages, are listed under the strip, and reach the
disk only through the engine (`whatsthat.cleaning.journal.apply_decisions`, `undo`), which journals every move.
This module depends on the engine; the engine never imports it.

With `suggestions` (whatsthat.suggest: `suggest(DATA)`, or the file `whatsthat suggest DATA --json` wrote), the
cleaner opens on a "Suggested" view, before the categories: each suggested picture, most confident first,
pre-marked with its suggestion (a dashed border, "suggested: ..." and the reason in its caption) and two
buttons, Accept and Dismiss. A suggestion is only a proposal: it becomes a pending decision when the
maintainer accepts it (its button, or "Accept all on this page") or picks another value in its dropdown
(a change), and Apply applies pending decisions only, through the same journal and undo. Dismissing (or
picking <Keep>) drops it. A suggestion never reviewed is never applied.

With `flagged` (a folder `whatsthat flags pull` wrote), a "Flagged by visitors" view follows: each photo a
visitor flagged and agreed to share, with what the visitor said it is and what the model had answered.
A flag whose label is a class is proposed for adding to that class (dashed, Accept/Dismiss, as a
suggestion); accepting it (or picking a class in its dropdown) makes a pending ``add`` decision, and Apply
copies the photo into the dataset's folder of that class through the same journal, with its flag's
provenance in the manifest; undo takes the copy out again. A "none of these" flag is not added to any
class: the model has no class for it (it is what its out-of-class detector should answer "not sure" to),
so it stays in the pulled folder, unless the maintainer picks a class for it.

Why the strip is drawn here rather than by fastai's ``ImageClassifierCleaner`` as it is: fastai's
``ImagesCleaner`` draws each thumbnail by ``display()``-ing a PIL image into an ``Output`` widget, and its
carousel is a ``flex-flow: row`` box whose units are ``flex: 0 0 auto``, as wide as their max-content. Two
things go wrong with that:

* In Voila every unit was 1,000,000 px wide and only the first picture could be seen. Voila's lab
  template styles each output area as a table (``.jp-OutputArea-child {display: table; table-layout:
  fixed; width: 100%}``); a table with a percentage width has no max-content width of its own, and
  Chromium gives it its table size limit, 1,000,000 px, which the ``flex: 0 0 auto`` unit then takes on.
* A caption appended to fastai's unit is an ``ipywidgets.Label``: it never wraps (``white-space: nowrap``,
  a longer text is cut with an ellipsis), it is exactly as wide as the picture above it, and nothing marks
  where one unit ends and the next begins. In JupyterLab a page of captions read as one line of text
  under the pictures, clipped at the strip's right edge, and which caption belonged to which picture
  could only be guessed.

So `Thumbnails` draws each picture as an ``ipywidgets.Image`` (JPEG bytes: no output area, no ``display``
call, no table CSS) in a fixed-width, bordered unit whose HTML caption wraps inside it. Everything else is
still fastai's ``ImageClassifierCleaner``: its category and Train/Valid dropdowns, the per-picture losses it
computes (``iwis``), and the ``ImagesCleaner`` interface (``fns``, ``set_fns``, ``values``, ``delete``,
``change``) that `Thumbnails` subclasses; the dropdown stays each unit's second child, where fastai reads it.
"""

from __future__ import annotations

import builtins
import html
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from fastai.vision.widgets import ImageClassifierCleaner, ImagesCleaner
from ipywidgets import HTML, Box, Button, Dropdown, HBox, Label, Layout, Output, Text, VBox
from ipywidgets import Image as ImageWidget
from PIL import Image

from whatsthat.cleaning.journal import (
    DELETE,
    KEEP,
    ApplyReport,
    Decision,
    StaleDecisionError,
    UndoReport,
    apply_decisions,
    dataset_root,
    file_sha256,
    relative_path,
    save_decisions,
    undo,
)
from whatsthat.cleaning.suggest import Suggestion, SuggestReport, load_suggestions
from whatsthat.errors import WhatsthatError
from whatsthat.flags.pull import PulledFlag, pulled
from whatsthat.images import ImageError, encode_jpeg, load_image

# A unit is never narrower than this, so its dropdown and a wrapped caption fit under a portrait picture.
MIN_UNIT_WIDTH = 150
THUMB_QUALITY = 85  # JPEG thumbnails: a page of 30 is a few hundred KB over the kernel's websocket
BORDER = {"keep": "#d0d0d0", "delete": "#d9534f", "relabel": "#f0ad4e"}
MARK_TEXT = {"delete": "✗ delete (to the trash)", "relabel": "→ move to {label}"}
SUGGESTED = "Suggested"  # the view of the suggestions, first in the category dropdown
FLAGGED = "Flagged by visitors"  # the view of a pulled folder of visitors' flags, after Suggested
NOT_ADDED = "<Not added>"  # a flagged photo's dropdown: not added to the data (the other values: the classes)
# a suggestion's review: open (pre-marked, not a decision yet), accepted, changed (another value picked), dismissed
OPEN, ACCEPTED, CHANGED, DISMISSED = "open", "accepted", "changed", "dismissed"


def _require_display() -> None:
    """The cleaner is drawn by a Jupyter frontend; outside IPython (plain python) say what to do instead."""
    if not callable(getattr(builtins, "display", None)):  # IPython puts display() in builtins
        raise WhatsthatError(
            "the cleaner is a Jupyter widget and IPython's display() is not available here: open train.ipynb in "
            "Jupyter (or VS Code/Colab), or apply a decisions file with `whatsthat clean DATA --apply decisions.json`"
        )


class Thumbnails(ImagesCleaner):
    """fastai's ImagesCleaner drawn as units (picture, dropdown, caption) in one horizontally scrolling strip."""

    def __init__(self, opts: Sequence[str] = (), height: int = 128, width: int = 256, max_n: int = 30):
        super().__init__(tuple(opts), height=height, width=width, max_n=max_n)
        # align_items: each unit keeps its own height; overflow: the strip scrolls sideways, not the page
        self.widget = Box([], layout=Layout(display="flex", flex_flow="row nowrap", align_items="flex-start",
                                            overflow="auto hidden", width="100%", padding="2px 0 6px 0"))  # fmt: skip
        self.widget.add_class("whatsthat-strip")

    def set_fns(self, fns: Iterable[str | Path]) -> None:
        """Draw one unit per file (at most max_n): its thumbnail, a dropdown, and an empty caption."""
        self.fns = list(fns)[: self.max_n]
        self.widget.children = [self._unit(Path(f)) for f in self.fns]

    def _unit(self, path: Path) -> VBox:
        problem = None
        try:
            im = load_image(path)
        except ImageError as e:  # shown on the unit; the file can still be marked for deletion
            im, problem = Image.new("RGB", (self.height, self.height), (200, 200, 200)), f"cannot show {path.name}: {e}"
        im.thumbnail((self.width, self.height))  # fits inside width x height, never enlarges (as fastai's to_thumb)
        picture = ImageWidget(value=encode_jpeg(im, THUMB_QUALITY), format="jpeg",
                              layout=Layout(width=f"{im.width}px", height=f"{im.height}px"))  # fmt: skip
        picture.add_class("whatsthat-picture")
        if problem:
            picture.tooltip = problem
        dropdown = Dropdown(options=self.opts, layout=Layout(width="100%"))
        caption = HTML(layout=Layout(width="100%"))
        caption.add_class("whatsthat-caption")
        unit = VBox([picture, dropdown, caption],  # the dropdown at index 1: fastai's values() reads it there
                    layout=Layout(width=f"{max(im.width, MIN_UNIT_WIDTH) + 10}px", flex="0 0 auto",
                                  margin="0 8px 0 0", padding="2px", align_items="center"))  # fmt: skip
        unit.add_class("whatsthat-thumb")
        self.mark(unit, "keep")
        return unit

    @staticmethod
    def mark(unit: VBox, action: str, caption: str | None = None) -> None:
        """Show a unit's decision (keep, delete, relabel): its border colour and CSS class, and its caption."""
        unit.layout.border = f"3px solid {BORDER[action]}"
        for name in BORDER:
            unit.remove_class(f"whatsthat-{name}")
        unit.add_class(f"whatsthat-{action}")
        if caption is not None:
            unit.children[2].value = caption


def _learner_files(learn) -> list[Path]:
    """Absolute paths of every image in the learner's training and validation sets."""
    return [Path(os.path.abspath(p)) for dl in (learn.dls.train, learn.dls.valid) for p in dl.dataset.items]


def _dataset_root_of(files: list[Path]) -> Path:
    """The folder whose label folders hold every one of `files`."""
    if not files:
        raise WhatsthatError("this learner has no training images (loaded from export.pkl?): the cleaner needs the "
                             "live learner from training, e.g. Cleaner(train(...).learn, 'data')")
    roots = {p.parent.parent for p in files}
    if len(roots) != 1:
        raise WhatsthatError(f"the learner's images are not all in one <root>/<label>/ layout ({len(roots)} roots); "
                             "pass the dataset folder: Cleaner(learn, root)")
    return roots.pop()


class Cleaner:
    """fastai's ImageClassifierCleaner, with decisions that survive switching views, paging, predictions, and Apply.

    Each thumbnail's dropdown is bound to its file (and the sha256 seen when it was shown) the
    moment the unit is drawn, so a decision can never be applied to another view's file at the same
    index. Nothing changes on disk until `apply` (or the Apply button).
    """

    def __init__(self, learn, root: str | Path | None = None, *, page_size: int = 30, height: int = 128,
                 width: int = 256, predictions: bool = True,
                 suggestions: SuggestReport | Iterable[Suggestion] | str | Path | None = None,
                 flagged: str | Path | None = None):  # fmt: skip
        _require_display()
        if page_size < 1:
            raise WhatsthatError(f"page_size must be 1 or more, not {page_size}")
        files = _learner_files(learn)
        self.root = dataset_root(root if root is not None else _dataset_root_of(files))
        outside = [p for p in files if not p.is_relative_to(self.root)]
        if outside:
            raise WhatsthatError(f"{outside[0]} (and {len(outside) - 1} more) are not in {self.root}: "
                                 "pass the dataset folder the learner was trained on")
        self.learn = learn
        self.page_size, self.page, self.predictions = page_size, 0, predictions
        self.pending: dict[str, Decision] = {}
        self.refused: list[str] = []
        self.last_report: ApplyReport | UndoReport | None = None
        self._preds: dict[str, tuple[str, float]] = {}
        self._shas: dict[str, str] = {}  # sha256 of each file when it was last drawn
        # suggestions (whatsthat.suggest) of changes to pictures still on disk, most confident first, and their review
        self.suggested: dict[str, Suggestion] = _suggested_changes(self.root, suggestions)
        self.review: dict[str, str] = dict.fromkeys(self.suggested, OPEN)
        # visitors' flagged photos (whatsthat.flags.pull), by absolute path, and their review: OPEN for a class
        # label (proposed), DISMISSED for "none of these" (nothing proposed); `added`: source -> copy after Apply
        if flagged is not None and Path(flagged).resolve().is_relative_to(self.root):
            raise WhatsthatError(f"{flagged} is inside the dataset {self.root}: pull the flags into a folder of their "
                                 "own (its folders would be taken for labels)")
        self.flagged: dict[str, PulledFlag] = {str(f.path): f for f in pulled(flagged)} if flagged is not None else {}
        self.flag_review: dict[str, str] = {k: OPEN if f.label in self._classes else DISMISSED
                                            for k, f in self.flagged.items()}
        self.added: dict[str, str] = {}

        # max_n=0: fastai computes the losses and its view dropdowns but draws no thumbnails; ours replace them
        self.icc = ImageClassifierCleaner(learn, max_n=0, height=height, width=width)
        self.icc.iw = self.icc.default = Thumbnails(learn.dls.vocab, height, width, page_size)
        self.icc.widget = VBox([self.icc.dd_cats, self.icc.dd_ds, self.icc.iw.widget])
        # fastai's (path, target, loss) per image, made absolute so a later chdir cannot confuse
        # them; we show only those still on disk (see refresh)
        self._all_info = tuple([(Path(os.path.abspath(p)), t, loss) for p, t, loss in info] for info in self.icc.iwis)
        self.icc.iwis = self._all_info
        self._suggested_view: str | None = None
        self._flagged_view: str | None = None
        categories = tuple(self.icc.dd_cats.options)
        views = []
        if self.suggested:  # the Suggested view comes first (fastai draws nothing for it: see view_files)
            self._suggested_view = SUGGESTED if SUGGESTED not in categories else f"{SUGGESTED} (whatsthat)"
            views.append(self._suggested_view)
        if self.flagged:  # then the visitors' flags (fastai draws nothing for it either)
            self._flagged_view = FLAGGED if FLAGGED not in categories else f"{FLAGGED} (whatsthat)"
            views.append(self._flagged_view)
        if views:
            self.icc.dd_cats.options = (*views, *categories)
            self.icc.dd_cats.value = views[0]

        self._prev = Button(description="◀ previous", layout=Layout(width="auto"))
        self._next = Button(description="next ▶", layout=Layout(width="auto"))
        self._page_label = Label()
        self._prev.on_click(lambda _: self.show_page(self.page - 1))
        self._next.on_click(lambda _: self.show_page(self.page + 1))
        self._summary = HTML()
        self._summary.add_class("whatsthat-pending")
        self._apply_button = Button(description="Apply", button_style="warning", icon="check",
                                    layout=Layout(width="auto"))  # fmt: skip
        self._undo_button = Button(description="Undo last apply", icon="undo", layout=Layout(width="auto"))
        self._forget_button = Button(description="Forget decisions", layout=Layout(width="auto"))
        self._save_button = Button(description="Save decisions to", icon="save", layout=Layout(width="auto"))
        self._save_path = Text(value=str(Path("cleaning-decisions.json").resolve()), layout=Layout(width="40em"))
        self._accept_page_button = Button(description="Accept all on this page", icon="check-square",
                                          layout=Layout(width="auto",
                                                        display="" if self.suggested or self.flagged else "none"))
        self._accept_page_button.on_click(lambda _: self._guarded(self.accept_page))
        self._apply_button.on_click(lambda _: self._guarded(self.apply))
        self._undo_button.on_click(lambda _: self._guarded(self.undo))
        self._forget_button.on_click(lambda _: self._guarded(self.forget))
        self._save_button.on_click(lambda _: self._guarded(
            lambda: f"saved {len(self.pending)} decision(s) to {self.save(self._save_path.value)}"))
        self.messages = Output()
        self.widget = VBox([
            HBox([self.icc.dd_cats, self.icc.dd_ds]),
            self.icc.iw.widget,
            HBox([self._prev, self._page_label, self._next, self._accept_page_button]),
            self._summary,
            HBox([self._apply_button, self._undo_button, self._forget_button]),
            HBox([self._save_button, self._save_path]),
            self.messages,
        ])  # fmt: skip
        self.widget.add_class("whatsthat-cleaner")

        # fastai redraws the thumbnails (new dropdowns) on every view change: hook each new set
        self.icc.iw.widget.observe(self._on_view, names="children")
        self.icc.dd_cats.observe(self._on_select, names="value")
        self.icc.dd_ds.observe(self._on_select, names="value")
        self.show_page(0)

    # -- what a user sees and does --

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    @property
    def dropdowns(self) -> list:
        """The per-image dropdowns of the current view, in thumbnail order."""
        return [box.children[1] for box in self.icc.iw.widget.children]

    @property
    def files(self) -> list[str]:
        """The files of the current view, root-relative (a flagged photo: its absolute path), in thumbnail order."""
        return [self._key(f) for f in self.icc.iw.fns]

    @property
    def _classes(self) -> list[str]:
        return [str(v) for v in self.learn.dls.vocab]

    def _key(self, path: str | Path) -> str:
        """How a file is known here: root-relative, or a flagged photo's absolute path (it is outside the data)."""
        absolute = os.path.abspath(path)
        return absolute if absolute in self.flagged else relative_path(self.root, absolute)

    def select(self, category: str | None = None, split: str | None = None) -> None:
        """Switch the view as the two dropdowns do: a category, and "Train" or "Valid"."""
        if split is not None:
            self.icc.dd_ds.value = split
        if category is not None:
            self.icc.dd_cats.value = category

    @property
    def in_suggested_view(self) -> bool:
        return self._suggested_view is not None and self.icc.dd_cats.value == self._suggested_view

    @property
    def in_flagged_view(self) -> bool:
        return self._flagged_view is not None and self.icc.dd_cats.value == self._flagged_view

    def view_files(self) -> list[Path]:
        """Every file of the selected category and split, worst loss first (all pages).

        The Suggested view: every suggested picture still on disk, most confident suggestion first,
        whatever the split (reviewed ones stay, with their review, so pages do not shift under you).
        """
        if self.in_suggested_view:
            return [self.root / rel for rel in self.suggested if (self.root / rel).is_file()]
        if self.in_flagged_view:  # in the order they were flagged; added ones stay, marked so
            return [Path(k) for k in self.flagged if Path(k).is_file()]
        info = [o for o in self.icc.iwis[self.icc.dd_ds.index] if o[1] == self.icc.dd_cats.value]
        return [o[0] for o in sorted(info, key=lambda o: float(o[2]), reverse=True)]

    @property
    def pages(self) -> int:
        return max(1, -(-len(self.view_files()) // self.page_size))

    def show_page(self, page: int) -> None:
        """Show page `page` (0-based, clamped) of the current category and split."""
        self.page = min(max(page, 0), self.pages - 1)
        start = self.page * self.page_size
        self.icc.iw.set_fns(self.view_files()[start : start + self.page_size])
        self._update_pager()

    def decisions(self) -> list[Decision]:
        """Pending decisions from every view seen so far."""
        return list(self.pending.values())

    def apply(self) -> ApplyReport:
        """Apply the pending decisions as one batch; they stay pending if the batch is refused."""
        try:
            report = apply_decisions(self.root, self.decisions())
        except StaleDecisionError as e:
            self.refused = e.paths
            self._update_summary()
            raise
        self.pending.clear()
        self.refused = []
        self.added.update(report.added)
        self.last_report = report
        self.refresh()
        return report

    def undo(self) -> UndoReport:
        """Undo the latest applied batch and show its files again (an accepted suggestion among them: open again)."""
        report = undo(self.root)
        for _, back in report.restored:
            if self.review.get(back) in (ACCEPTED, CHANGED):
                self.review[back] = OPEN
        for _, source in report.removed:  # an added flag taken out again: proposed again, as at the start
            if self.added.pop(source, None) is not None and source in self.flagged:
                self.flag_review[source] = OPEN if self.flagged[source].label in self._classes else DISMISSED
        self.last_report = report
        self.refresh()
        return report

    def forget(self, paths: Iterable[str] | None = None) -> None:
        """Drop pending decisions (all, or those for `paths`) and reset their dropdowns to <Keep>.

        A suggestion that was accepted or changed is open again, pre-marked as it was at the start.
        """
        paths = list(self.pending) if paths is None else [self._key(p) for p in paths]
        for p in paths:
            self.pending.pop(p, None)
        reopened = [p for p in paths if self.review.get(p) in (ACCEPTED, CHANGED)]
        for p in reopened:
            self.review[p] = OPEN
        for p in paths:
            if self.flag_review.get(p) in (ACCEPTED, CHANGED):
                self.flag_review[p] = OPEN if self.flagged[p].label in self._classes else DISMISSED
                reopened.append(p)
        if reopened:
            self.refused = [p for p in self.refused if p in self.pending]
            self.show_page(self.page)  # redrawn: the reopened ones pre-marked again
            return
        self.refused = [p for p in self.refused if p in self.pending]
        for rel, dd in zip(self.files, self.dropdowns, strict=True):
            if rel in paths:
                dd.value = KEEP
        self._update_summary()

    def accept(self, paths: Iterable[str] | None = None) -> list[str]:
        """Accept suggestions (all open ones, or those for `paths`): each becomes a pending decision.

        The decision carries the bytes seen now (sha256): a picture that changes before Apply is refused.
        Returns the paths accepted.
        """
        shown = dict(zip(self.files, self.icc.iw.widget.children, strict=True))
        wanted = [p for p, state in self.review.items() if state == OPEN] if paths is None else \
            [relative_path(self.root, p) for p in paths]
        unknown = [p for p in wanted if p not in self.suggested]
        if unknown:
            raise WhatsthatError(f"no suggestion for {', '.join(unknown[:3])}" + (" ..." if len(unknown) > 3 else ""))
        done = []
        for rel in wanted:
            if not (self.root / rel).is_file() or self.review[rel] == ACCEPTED:
                continue
            s = self.suggested[rel]
            self.pending[rel] = Decision(rel, s.action, s.label, sha256=self._shas.get(rel) or file_sha256(self.root / rel))
            self.review[rel] = ACCEPTED
            done.append(rel)
            if rel in shown:
                self._show_decision(rel, shown[rel])
        self._update_summary()
        return done

    def dismiss(self, paths: Iterable[str]) -> None:
        """Dismiss suggestions: no decision, the picture stays as it is (its dropdown back to <Keep>)."""
        shown = dict(zip(self.files, self.icc.iw.widget.children, strict=True))
        for rel in [relative_path(self.root, p) for p in paths]:
            if rel not in self.suggested:
                raise WhatsthatError(f"no suggestion for {rel}")
            self.review[rel] = DISMISSED
            self.pending.pop(rel, None)
            if rel in shown:
                dd = shown[rel].children[1]
                if dd.value != KEEP:
                    dd.value = KEEP  # _on_pick sees a dismissed suggestion and records nothing
                self._show_decision(rel, shown[rel])
        self._update_summary()

    def accept_flags(self, paths: Iterable[str | Path] | None = None) -> list[str]:
        """Accept visitors' flags (all open ones, or those for `paths`): each becomes a pending add to its label.

        A "none of these" flag cannot be accepted as it is (no class to add it to): pick a class in its
        dropdown instead. Returns the paths accepted.
        """
        wanted = [k for k, state in self.flag_review.items() if state == OPEN] if paths is None else \
            [os.path.abspath(p) for p in paths]
        unknown = [p for p in wanted if p not in self.flagged]
        if unknown:
            raise WhatsthatError(f"no flagged photo {', '.join(unknown[:3])}" + (" ..." if len(unknown) > 3 else ""))
        shown = dict(zip(self.files, self.icc.iw.widget.children, strict=True))
        done = []
        for key in wanted:
            flag = self.flagged[key]
            if flag.label not in self._classes:
                raise WhatsthatError(f"flag {flag.flag_id} says {flag.label!r}, which is not a class of this model: "
                                     "it is not added; pick a class in its dropdown if it is one")
            if not Path(key).is_file() or key in self.added or self.flag_review[key] == ACCEPTED:
                continue
            self.pending[key] = Decision(key, "add", flag.label, sha256=self._shas.get(key) or file_sha256(key))
            self.flag_review[key] = ACCEPTED
            done.append(key)
            if key in shown:
                self._show_flag(key, shown[key])
        self._update_summary()
        return done

    def dismiss_flags(self, paths: Iterable[str | Path]) -> None:
        """Dismiss visitors' flags: the photos are not added (their dropdowns back to <Not added>)."""
        shown = dict(zip(self.files, self.icc.iw.widget.children, strict=True))
        for key in [os.path.abspath(p) for p in paths]:
            if key not in self.flagged:
                raise WhatsthatError(f"no flagged photo {key}")
            self.flag_review[key] = DISMISSED
            self.pending.pop(key, None)
            if key in shown:
                dd = shown[key].children[1]
                if dd.value != NOT_ADDED:
                    dd.value = NOT_ADDED
                self._show_flag(key, shown[key])
        self._update_summary()

    def accept_page(self) -> str:
        """Accept every open suggestion (or visitor's flag) on the page shown ("Accept all on this page")."""
        if self.in_flagged_view:
            done = self.accept_flags([k for k in self.files if self.flag_review.get(k) == OPEN])
            return f"accepted {len(done)} flag(s) on this page: {len(self.pending)} pending decision(s); Apply applies them"
        done = self.accept([rel for rel in self.files if self.review.get(rel) == OPEN])
        return f"accepted {len(done)} suggestion(s) on this page: {len(self.pending)} pending decision(s); Apply applies them"

    def save(self, path: str | Path) -> Path:
        """Write the pending decisions to a JSON/CSV file for `whatsthat clean DATA --apply FILE`."""
        return save_decisions(path, self.decisions(), root=self.root)

    def refresh(self) -> None:
        """Show only the images still where the learner saw them, then redraw the current page."""
        self.icc.iwis = tuple([o for o in info if o[0].is_file()] for info in self._all_info)
        self.show_page(self.page)

    # -- widget plumbing --

    def _guarded(self, fn) -> None:
        # button callbacks: a user-fixable problem is shown in the widget, not lost in a log
        self.messages.clear_output()
        with self.messages:
            try:
                out = fn()
            except WhatsthatError as e:
                print(f"error: {e}")
                return
            if out is not None:
                print(out)

    def _on_select(self, change: dict | None = None) -> None:
        self.page = 0  # fastai has already drawn the first page of the new view
        if self.in_suggested_view or self.in_flagged_view:
            self.show_page(0)  # fastai knows no such category and drew nothing
            return
        self._update_pager()

    def _on_view(self, change: dict | None = None) -> None:
        fns = [Path(os.path.abspath(f)) for f in self.icc.iw.fns]
        units = list(self.icc.iw.widget.children)
        if len(fns) != len(units):  # set_fns sets fns, then children: a mismatch means another writer
            raise WhatsthatError(f"cleaner view out of step ({len(fns)} files, {len(units)} thumbnails)")
        if self.in_flagged_view:
            self._on_flagged_view(fns, units)
            return
        if self.predictions:
            self._predict(fns)
        for f, unit in zip(fns, units, strict=True):
            rel = relative_path(self.root, f)
            sha = file_sha256(f)  # what the user is looking at now; apply refuses other bytes
            self._shas[rel] = sha
            dd = unit.children[1]
            if rel in self.pending:
                dd.value = _dropdown_value(self.pending[rel])
            elif self.review.get(rel) == OPEN:  # pre-marked, before the observer: not a decision until accepted
                s = self.suggested[rel]
                dd.value = _dropdown_value(Decision(rel, s.action, s.label))
            dd.observe(lambda change, rel=rel, sha=sha, unit=unit: self._on_pick(rel, sha, change["new"], unit),
                       names="value")  # fmt: skip
            self._show_decision(rel, unit)
        self._update_summary()

    def _on_flagged_view(self, fns: list[Path], units: list) -> None:
        for f, unit in zip(fns, units, strict=True):
            key = str(f)
            sha = file_sha256(f)
            self._shas[key] = sha
            dd = unit.children[1]
            dd.options = (NOT_ADDED, *self._classes)  # add it to a class, or not: keep/delete mean nothing here
            flag = self.flagged[key]
            if key in self.added and self.added[key].split("/")[0] in dd.options:
                dd.value = self.added[key].split("/")[0]  # where it went (the dropdown is disabled: undo takes it out)
            elif key in self.pending:
                dd.value = str(self.pending[key].label)
            elif self.flag_review[key] == OPEN:  # pre-marked, before the observer: not a decision until accepted
                dd.value = flag.label
            dd.observe(lambda change, key=key, sha=sha, unit=unit: self._on_flag_pick(key, sha, change["new"], unit),
                       names="value")  # fmt: skip
            self._show_flag(key, unit)
        self._update_summary()

    def _on_flag_pick(self, key: str, sha: str, value: str, unit) -> None:
        if key in self.added:  # added already: undo takes it out; the dropdown shows where it went
            return
        if value == NOT_ADDED:
            self.pending.pop(key, None)
            self.flag_review[key] = DISMISSED
        else:
            self.pending[key] = Decision(key, "add", value, sha256=sha)
            self.flag_review[key] = ACCEPTED if value == self.flagged[key].label else CHANGED
        self._show_flag(key, unit)
        self._update_summary()

    def _show_flag(self, key: str, unit) -> None:
        """A flagged photo's caption (what the visitor said, what the model answered, what becomes of it)."""
        flag, review, d = self.flagged[key], self.flag_review[key], self.pending.get(key)
        said = html.escape(flag.label)
        answer = html.escape(flag.answer or "(nothing)") + (f" {flag.probability:.0%}" if flag.probability is not None else "")
        lines = [f"visitor said <b>{said}</b>", f"model answered {answer}"]
        if flag.text:
            lines.append(f'<i style="color:#555">“{html.escape(flag.text)}”</i>')
        action = "keep"
        if key in self.added:
            lines.append(f'<span style="color:#3c763d">✓ added as {html.escape(self.added[key])}</span>')
        elif d is not None:
            action = "relabel"
            lines.append(f'<b style="color:{BORDER[action]}">+ add to {html.escape(str(d.label))}</b>' +
                         (" (changed)" if review == CHANGED else ""))
        elif review == OPEN:
            lines.append(f'<b class="whatsthat-suggestion" style="color:{BORDER["relabel"]}">proposed: add to {said}</b>')
        elif flag.none_of_these:
            lines.append('<span style="color:#777">not added: the model has no class for it (its "not sure" '
                         "case); pick a class if it is one</span>")
        elif flag.label not in self._classes:
            lines.append(f'<span style="color:#777">not added: {said} is not a class of this model; pick a class '
                         "if it is one</span>")
        else:
            lines.append('<span style="color:#777">dismissed: not added</span>')
        lines.append(f'<span style="color:#777;font-size:85%;word-break:break-all">flag {flag.flag_id} · '
                     f'{html.escape(Path(key).name)}</span>')
        caption = lines[0] + "".join(f'<div style="line-height:1.3">{x}</div>' for x in lines[1:])
        if review == OPEN and d is None and key not in self.added:
            Thumbnails.mark(unit, "relabel", caption)
            unit.layout.border = f"3px dashed {BORDER['relabel']}"
            unit.add_class("whatsthat-suggested")
        else:
            Thumbnails.mark(unit, action, caption)
            unit.remove_class("whatsthat-suggested")
        unit.children[1].disabled = key in self.added
        buttons = list(unit.children[3:])
        want = review == OPEN and d is None and key not in self.added
        if want and not buttons:
            unit.children = (*unit.children[:3], self._flag_buttons(key))
        elif not want and buttons:
            unit.children = unit.children[:3]

    def _flag_buttons(self, key: str) -> HBox:
        """Accept and Dismiss under a flagged photo whose visitor label is a class."""
        accept = Button(description="Accept", button_style="success", layout=Layout(width="50%"),
                        tooltip=f"add it to {self.flagged[key].label}")  # fmt: skip
        dismiss = Button(description="Dismiss", tooltip="do not add it", layout=Layout(width="50%"))
        accept.add_class("whatsthat-accept")
        dismiss.add_class("whatsthat-dismiss")
        accept.on_click(lambda _: self._guarded(lambda: self.accept_flags([key]) and None))
        dismiss.on_click(lambda _: self._guarded(lambda: self.dismiss_flags([key])))
        return HBox([accept, dismiss], layout=Layout(width="100%"))

    def _on_pick(self, rel: str, sha: str, value: str, unit) -> None:
        suggested = self.suggested.get(rel)
        if value == KEEP or value == rel.split("/")[0]:
            self.pending.pop(rel, None)
            if suggested:
                self.review[rel] = DISMISSED
        else:
            self.pending[rel] = Decision.from_value(rel, value, sha256=sha)
            if suggested:  # picking the suggested value itself accepts it; another one changes it
                same = value == _dropdown_value(Decision(rel, suggested.action, suggested.label))
                self.review[rel] = ACCEPTED if same else CHANGED
        self._show_decision(rel, unit)
        self._update_summary()

    def _show_decision(self, rel: str, unit) -> None:
        """The unit's caption (prediction, pending decision, file name) and border colour."""
        current, name = rel.split("/")
        lines = []
        if rel in self._preds:
            label, p = self._preds[rel]
            not_current = "" if label == current else f' <b style="white-space:nowrap">(not {html.escape(current)})</b>'
            lines.append(f"predicted {html.escape(label)} {p:.0%}{not_current}")
        d = self.pending.get(rel)
        action = d.action if d else "keep"
        if d:
            text = MARK_TEXT[action].format(label=d.label)
            lines.append(f'<b style="color:{BORDER[action]}">{html.escape(text)}</b>')
        suggestion, review = self.suggested.get(rel), self.review.get(rel)
        if suggestion:
            lines += _review_lines(suggestion, review)
        lines.append(f'<span style="color:#777;font-size:85%;word-break:break-all">{html.escape(name)}</span>')
        # the first line stays bare text (callers read "predicted ..."); later lines set a line height
        # of their own, as ipywidgets' HTML is spaced for one line of 28 px
        caption = lines[0] + "".join(f'<div style="line-height:1.3">{x}</div>' for x in lines[1:])
        if review == OPEN:  # pre-marked in the suggestion's colour, dashed: a proposal, not a decision
            Thumbnails.mark(unit, suggestion.action, caption)
            unit.layout.border = f"3px dashed {BORDER[suggestion.action]}"
            unit.add_class("whatsthat-suggested")
        else:
            Thumbnails.mark(unit, action, caption)
            unit.remove_class("whatsthat-suggested")
        buttons = list(unit.children[3:])
        if review == OPEN and not buttons:
            unit.children = (*unit.children[:3], self._review_buttons(rel))
        elif review != OPEN and buttons:
            unit.children = unit.children[:3]

    def _review_buttons(self, rel: str) -> HBox:
        """Accept and Dismiss under a suggested picture."""
        accept = Button(description="Accept", button_style="success", tooltip=f"accept the suggestion for {rel}",
                        layout=Layout(width="50%"))  # fmt: skip
        dismiss = Button(description="Dismiss", tooltip=f"keep {rel} as it is", layout=Layout(width="50%"))
        accept.add_class("whatsthat-accept")
        dismiss.add_class("whatsthat-dismiss")
        accept.on_click(lambda _: self._guarded(lambda: self.accept([rel]) and None))
        dismiss.on_click(lambda _: self._guarded(lambda: self.dismiss([rel])))
        return HBox([accept, dismiss], layout=Layout(width="100%"))

    def _predict(self, files: list[Path]) -> None:
        todo = [f for f in files if relative_path(self.root, f) not in self._preds]
        if not todo:
            return
        import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)

        dl = self.learn.dls.test_dl(todo)
        with self.learn.no_bar(), self.learn.no_logging():
            probs, _ = self.learn.get_preds(dl=dl)
        vocab = [str(v) for v in self.learn.dls.vocab]
        for f, row in zip(todo, probs.tolist(), strict=True):
            best = max(range(len(row)), key=row.__getitem__)
            self._preds[relative_path(self.root, f)] = (vocab[best], row[best])

    def _update_pager(self) -> None:
        n = len(self.view_files())
        order = ("most confident suggestion first" if self.in_suggested_view else
                 "in the order they were flagged" if self.in_flagged_view else "worst loss first")
        self.icc.dd_ds.disabled = self.in_suggested_view or self.in_flagged_view  # these span both splits
        self._page_label.value = f"page {self.page + 1} of {self.pages} ({n} images, {order})"
        self._prev.disabled = self.page == 0
        self._next.disabled = self.page >= self.pages - 1

    def _update_summary(self) -> None:
        ds = self.decisions()
        self._apply_button.description = f"Apply {len(ds)} decision(s)"
        self._apply_button.disabled = not ds
        still = sum(state == OPEN and (self.root / rel).is_file() for rel, state in self.review.items())
        to_review = (f"<div class='whatsthat-to-review'><b>{still} suggestion(s) to review</b>: accept, change or "
                     f"dismiss each; Apply applies only what you accepted.</div>") if still else ""
        flags = sum(state == OPEN and Path(k).is_file() and k not in self.added for k, state in self.flag_review.items())
        if flags:
            to_review += (f"<div class='whatsthat-to-review'><b>{flags} visitor flag(s) to review</b> "
                          f"(\"{self._flagged_view}\"): accept, change or dismiss each.</div>")
        if not ds:
            self._summary.value = ("<i>No pending decisions. Mark images as &lt;Delete&gt; or pick their right "
                                   "label.</i>" + to_review)
            return
        items = "".join(f"<li>{'⚠ ' if d.path in self.refused else ''}{html.escape(d.describe())}</li>"
                        for d in ds[:50])  # fmt: skip
        more = f"<li>... and {len(ds) - 50} more</li>" if len(ds) > 50 else ""
        self._summary.value = (f"<b>{len(ds)} pending decision(s)</b> (kept when you switch views):"
                               f"<ul>{items}{more}</ul>{to_review}")


def _suggested_changes(root: Path, suggestions: SuggestReport | Iterable[Suggestion] | str | Path | None) -> dict[str, Suggestion]:
    """The suggested changes (relabel, delete) to pictures still under `root`, most confident first, by path."""
    if suggestions is None:
        return {}
    if isinstance(suggestions, str | Path):
        suggestions = load_suggestions(suggestions)
    elif isinstance(suggestions, SuggestReport):
        if suggestions.root.resolve() != root:
            raise WhatsthatError(f"the suggestions are for {suggestions.root}, not {root}: run suggest on this dataset")
        suggestions = suggestions.items
    out: dict[str, Suggestion] = {}
    for s in sorted(suggestions, key=lambda s: -s.score):
        rel = relative_path(root, s.path)
        if s.action != "keep" and rel not in out and (root / rel).is_file():
            out[rel] = s
    return out


def _review_lines(s: Suggestion, review: str | None) -> list[str]:
    """A suggested picture's caption lines: what was suggested and why, and what became of it."""
    what = html.escape(MARK_TEXT[s.action].format(label=s.label))
    why = f'<i style="color:#555">{html.escape(s.why)}</i>'
    if review == OPEN:
        return [f'<b class="whatsthat-suggestion" style="color:{BORDER[s.action]}">suggested ({s.score:.0%}): {what}</b>',
                why]
    if review == ACCEPTED:
        return ['<span style="color:#3c763d">✓ suggestion accepted</span>']
    if review == CHANGED:
        return [f'<span style="color:#777">suggested {what}; changed</span>']
    return [f'<span style="color:#777">suggestion dismissed ({what})</span>', why]


def _dropdown_value(d: Decision) -> str:
    return {"keep": KEEP, "delete": DELETE}.get(d.action) or str(d.label)
