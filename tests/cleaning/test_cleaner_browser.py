"""The cleaner widget as a maintainer sees it: JupyterLab (and Voila) driven by headless Chromium at 1400 px.

One JupyterLab server per module runs a notebook that shows `Cleaner` on generated pictures with the tiny
model. The checks are geometric, on the boxes the browser lays out: every caption sits under its own
picture (and under no other), its text fits its box and stands apart from the next caption, on every
page and wherever the strip is scrolled;
then a picture is marked through the page's own dropdowns, shows up in the pending list, and Apply moves
the file on disk.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from browser_support import LAB_TOKEN as TOKEN
from browser_support import jupyterlab
from conftest import ROOT, draw_image, isolated_env
from model_fixture import tiny_model  # noqa: F401  (pytest fixture)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PAGE_SIZE = 8
PER_CLASS = 26  # ~21 of them in Train: three pages of blue/Train
START_TIMEOUT = 180
WIDGET_TIMEOUT_MS = 240_000  # the kernel imports fastai and predicts: slow on a busy 2-core machine
VIEWPORT = {"width": 1400, "height": 1000}
DELETE_BORDER = "rgb(217, 83, 79)"  # whatsthat.cleaning.cleaner.BORDER["delete"]

NOTEBOOK_SOURCE = """\
from fastai.learner import Learner, load_learner

from whatsthat.cleaning.cleaner import Cleaner
from whatsthat.training.data import make_dataloaders
from whatsthat.training.backbones import get_arch

exported = load_learner({model!r})
dls = make_dataloaders({data!r}, size=64, bs=8, stats=get_arch("resnet18").stats)
learn = Learner(dls, exported.model, loss_func=exported.loss_func)
with learn.no_bar():
    cleaner = Cleaner(learn, {data!r}, page_size={page_size})
cleaner"""

CAPTIONS_READY_JS = """notFirst => {
  const captions = [...document.querySelectorAll('.whatsthat-thumb .whatsthat-caption')].map(c => c.innerText.trim());
  return captions.length > 0 && captions.every(Boolean) && captions[0].split('\\n').pop() !== notFirst;
}"""
# Per unit: the boxes of its picture, its caption and the caption's text, whether that text is clipped.
UNITS_JS = """() => [...document.querySelectorAll('.whatsthat-thumb')].map(u => {
  const box = r => [r.left, r.top, r.right, r.bottom];
  const caption = u.querySelector('.whatsthat-caption');
  const content = caption.querySelector('.widget-html-content') || caption;
  const text = document.createRange();
  text.selectNodeContents(content);
  return {unit: box(u.getBoundingClientRect()), picture: box(u.querySelector('img').getBoundingClientRect()),
          caption: box(caption.getBoundingClientRect()), textbox: box(text.getBoundingClientRect()),
          clipped: content.scrollWidth > content.clientWidth + 1 || content.scrollHeight > content.clientHeight + 1,
          text: caption.innerText};
})"""
# fastai's carousel put captions 4 px apart: a page of them read as one line of text
MIN_TEXT_GAP = 12


@dataclass
class Lab:
    url: str
    data: Path
    proc: subprocess.Popen
    log: Path


def _pictures(data: Path) -> None:
    """Generated pictures, landscape and portrait, so units of different widths sit side by side."""
    for c in ("red", "blue"):
        (data / c).mkdir(parents=True)
        for i in range(PER_CLASS):
            size = (260 + 9 * i, 170) if i % 3 else (110, 230)
            draw_image(c, 96, seed=i).resize(size).save(data / c / f"{c}_{i:03d}.png")


@pytest.fixture(scope="module")
def lab(chromium, tiny_model, tmp_path_factory):  # noqa: F811  (tiny_model is the imported fixture)
    """JupyterLab on a free local port with cleaner.ipynb in its root; every Jupyter/home dir in tmp."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("jupyterlab")
    tmp = tmp_path_factory.mktemp("lab")
    data = tmp / "data"
    _pictures(data)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        NOTEBOOK_SOURCE.format(model=str(tiny_model), data=str(data), page_size=PAGE_SIZE))])  # fmt: skip
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp / "cleaner.ipynb")
    env = {**os.environ, **isolated_env(tmp / "home"), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])  # this tree
    with jupyterlab(tmp, env, START_TIMEOUT) as (url, proc, log):
        yield Lab(url, data, proc, log)


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport=VIEWPORT)
    pg = context.new_page()
    try:
        yield pg
    finally:
        context.close()


def _wait_for_units(page, lab: Lab) -> None:
    try:
        page.locator(".whatsthat-thumb").nth(PAGE_SIZE - 1).wait_for(timeout=WIDGET_TIMEOUT_MS)
    except Exception:  # a Playwright timeout: show why the widget never came (the kernel's error is on the page)
        outputs = page.locator(".jp-OutputArea-output, .jp-RenderedText").all_inner_texts()
        pytest.fail(f"no cleaner widget; page outputs: {outputs!r}\nserver log:\n{lab.log.read_text()[-3000:]}")
    _wait_for_captions(page)


def _wait_for_captions(page, first_is_not: str | None = None) -> None:
    """Until every unit has its caption (the kernel fills them after drawing the units), and the first unit
    shows another file than `first_is_not` (a new page)."""
    page.wait_for_function(CAPTIONS_READY_JS, arg=first_is_not, timeout=60_000)
    page.wait_for_timeout(300)  # images decode and the last layout settles


def _open_in_lab(page, lab: Lab) -> None:
    page.goto(f"{lab.url}/lab/tree/cleaner.ipynb?token={TOKEN}", timeout=120_000)
    page.wait_for_function("() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel",
                           timeout=120_000)  # fmt: skip
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    _wait_for_units(page, lab)


def _overlap(a: list[float], b: list[float]) -> float:
    return min(a[2], b[2]) - max(a[0], b[0])


def _check_layout(page, where: str) -> list[dict]:
    """Every caption under its own picture and no other, its text unclipped; returns the units."""
    units = page.evaluate(UNITS_JS)
    assert len(units) >= 2, where
    for i, u in enumerate(units):
        what = f"{where}, unit {i} ({u['text'].splitlines()[-1]!r})"
        assert u["caption"][1] >= u["picture"][3] - 0.5, f"{what}: caption not below its picture {u}"
        assert _overlap(u["caption"], u["picture"]) > 0, f"{what}: caption not under its picture {u}"
        others = [v["picture"] for j, v in enumerate(units) if j != i]
        assert all(_overlap(u["caption"], p) <= 0 for p in others), f"{what}: caption under another picture"
        assert not u["clipped"], f"{what}: caption text does not fit its box"
        assert u["unit"][2] - u["unit"][0] < VIEWPORT["width"] / 2, f"{what}: unit {u['unit']} is far too wide"
    for i, (u, v) in enumerate(zip(units, units[1:], strict=False)):
        gap = v["textbox"][0] - u["textbox"][2]
        assert gap >= MIN_TEXT_GAP, f"{where}: the captions of units {i} and {i + 1} are {gap:.0f} px apart"
    return units


def _check_scrolling(page, where: str) -> None:
    """Scroll the strip to its middle and its end: each caption keeps its place under its picture."""
    strip = page.locator(".whatsthat-strip")
    before = _check_layout(page, where)
    width = strip.evaluate("s => s.scrollWidth - s.clientWidth")
    for to in (width // 2, width):
        strip.evaluate("(s, x) => { s.scrollLeft = x; }", to)
        page.wait_for_timeout(200)
        after = _check_layout(page, f"{where}, strip scrolled to {to}px")
        for b, a in zip(before, after, strict=True):
            moved = a["picture"][0] - b["picture"][0]
            assert abs((a["caption"][0] - b["caption"][0]) - moved) < 1, f"{where}: a caption did not scroll with its picture"
    strip.evaluate("s => { s.scrollLeft = 0; }")


def _file_of(unit) -> str:
    return unit.locator(".whatsthat-caption").inner_text().strip().splitlines()[-1]


def test_captions_stay_under_their_pictures_and_apply_moves_files_in_jupyterlab(page, lab, tmp_path):
    _open_in_lab(page, lab)
    strip = page.locator(".whatsthat-strip")
    assert strip.evaluate("s => s.scrollWidth > s.clientWidth"), "a page of 8 should need scrolling at 1400 px"
    page.screenshot(path=tmp_path / "cleaner-jupyterlab.png")
    print(f"\nscreenshot: {tmp_path / 'cleaner-jupyterlab.png'}")

    # every page of blue/Train, each also scrolled to the middle and the end
    firsts = []
    next_button = page.get_by_role("button", name="next ▶")
    while True:
        firsts.append(_file_of(page.locator(".whatsthat-thumb").first))
        _check_scrolling(page, f"page {len(firsts)}")
        if next_button.is_disabled():
            break
        next_button.click()
        _wait_for_captions(page, first_is_not=firsts[-1])
    assert len(firsts) >= 3 and len(set(firsts)) == len(firsts)
    page.get_by_role("button", name="◀ previous").click()
    _wait_for_captions(page, first_is_not=firsts[-1])
    assert _file_of(page.locator(".whatsthat-thumb").first) == firsts[-2]

    # mark two pictures through the page's own dropdowns: each shows up in the pending list, marked
    units = page.locator(".whatsthat-thumb")
    junk, wrong = _file_of(units.nth(0)), _file_of(units.nth(1))
    pending = page.locator(".whatsthat-pending")
    units.nth(0).locator("select").select_option("<Delete>")
    pending.filter(has_text=f"blue/{junk}: delete").wait_for(timeout=30_000)
    units.nth(1).locator("select").select_option("red")
    pending.filter(has_text=f"blue/{wrong} -> red").wait_for(timeout=30_000)
    assert "2 pending decision(s)" in pending.inner_text()
    assert units.nth(0).evaluate("u => getComputedStyle(u).borderTopColor") == DELETE_BORDER
    assert "delete" in units.nth(0).locator(".whatsthat-caption").inner_text()
    assert "move to red" in units.nth(1).locator(".whatsthat-caption").inner_text()
    _check_scrolling(page, "after marking")
    page.screenshot(path=tmp_path / "cleaner-jupyterlab-marked.png")
    page.locator(".whatsthat-cleaner").screenshot(path=tmp_path / "cleaner-widget.png")  # docs/cleaner.png

    # Apply moves the files: the junk to the trash, the mislabelled one to its label's folder
    page.get_by_role("button", name=re.compile(r"Apply 2 decision")).click()
    page.get_by_text(re.compile(r"batch \S+: moved 1 image\(s\) to the trash, relabelled 1")).wait_for(timeout=60_000)
    deadline = time.monotonic() + 10
    while (lab.data / "blue" / wrong).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (lab.data / "blue" / junk).exists() and len(list(lab.data.glob(f".trash/*/blue/{junk}"))) == 1
    assert not (lab.data / "blue" / wrong).exists() and (lab.data / "red" / wrong).is_file()
    assert "No pending decisions" in pending.inner_text()
    _check_layout(page, "after Apply")


def test_the_cleaner_in_voila_shows_every_unit_at_its_own_width(page, lab):
    """Voila's table-styled output areas once made each thumbnail 1,000,000 px wide."""
    page.goto(f"{lab.url}/voila/render/cleaner.ipynb?token={TOKEN}", timeout=WIDGET_TIMEOUT_MS)
    _wait_for_units(page, lab)
    _check_scrolling(page, "voila")
    assert page.locator(".whatsthat-strip").evaluate("s => s.scrollWidth") < PAGE_SIZE * VIEWPORT["width"] / 2
