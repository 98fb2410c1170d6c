"""The cleaner's Suggested view as a maintainer sees it: JupyterLab driven by headless Chromium.

A notebook opens the cleaner with a suggestions file (what `whatsthat suggest DATA --json` writes) over
generated pictures and the tiny model. The page must show the suggestions first, pre-marked (the dropdown
set, a dashed border, "suggested" and the reason), with nothing to apply yet; one click on Accept makes
a pending decision, Apply moves the file through the journal, and Undo brings it back, suggested again.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from browser_support import LAB_TOKEN as TOKEN
from browser_support import jupyterlab
from conftest import ROOT, draw_image, isolated_env
from model_fixture import tiny_model  # noqa: F401  (pytest fixture)

from whatsthat.cleaning.journal import batches, trash_list

pytestmark = [pytest.mark.browser, pytest.mark.slow]

START_TIMEOUT = 180
WIDGET_TIMEOUT_MS = 240_000  # the kernel imports fastai and predicts: slow on a busy 2-core machine
DELETE_BORDER = "rgb(217, 83, 79)"  # whatsthat.cleaning.cleaner.BORDER["delete"]
JUNK, WRONG = "blue/blue_000.png", "red/red_001.png"
SUGGESTIONS = [
    {"path": JUNK, "action": "delete", "label": None, "given": "blue", "score": 0.93,
     "why": "unlike every class (farther out than 51 of the 52 pictures; nearest: blue)"},
    {"path": WRONG, "action": "relabel", "label": "blue", "given": "red", "score": 0.88,
     "why": "looks like blue (88%), not red (12%)"},
]

NOTEBOOK_SOURCE = """\
from fastai.learner import Learner, load_learner

from whatsthat.cleaning.cleaner import Cleaner
from whatsthat.training.data import make_dataloaders
from whatsthat.training.backbones import get_arch

exported = load_learner({model!r})
dls = make_dataloaders({data!r}, size=64, bs=8, stats=get_arch("resnet18").stats)
learn = Learner(dls, exported.model, loss_func=exported.loss_func)
with learn.no_bar():
    cleaner = Cleaner(learn, {data!r}, page_size=8, suggestions={suggestions!r})
cleaner"""


@pytest.fixture(scope="module")
def lab(chromium, tiny_model, tmp_path_factory):  # noqa: F811  (tiny_model is the imported fixture)
    """JupyterLab on a free local port with suggested.ipynb in its root; every Jupyter/home dir in tmp."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("jupyterlab")
    tmp = tmp_path_factory.mktemp("lab")
    data = tmp / "data"
    for c in ("red", "blue"):
        (data / c).mkdir(parents=True)
        for i in range(26):
            draw_image(c, 96, seed=i).resize((200, 140)).save(data / c / f"{c}_{i:03d}.png")
    suggestions = tmp / "suggestions.json"
    suggestions.write_text(json.dumps(SUGGESTIONS, indent=1))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        NOTEBOOK_SOURCE.format(model=str(tiny_model), data=str(data), suggestions=str(suggestions)))])  # fmt: skip
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp / "suggested.ipynb")
    env = {**os.environ, **isolated_env(tmp / "home"), "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])  # this tree
    with jupyterlab(tmp, env, START_TIMEOUT) as (url, proc, log):
        yield url, data, log


def _caption(unit) -> str:
    return unit.locator(".whatsthat-caption").inner_text()


def test_the_cleaner_shows_the_suggestions_premarked_and_an_accepted_one_goes_through_the_journal(browser, lab, tmp_path):
    url, data, log = lab
    page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
    page.goto(f"{url}/lab/tree/suggested.ipynb?token={TOKEN}", timeout=120_000)
    page.wait_for_function("() => window.jupyterapp?.shell.currentWidget?.sessionContext?.session?.kernel",
                           timeout=120_000)  # fmt: skip
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    units = page.locator(".whatsthat-thumb")
    try:
        page.locator(".whatsthat-suggestion").nth(1).wait_for(timeout=WIDGET_TIMEOUT_MS)
    except Exception:  # a Playwright timeout: show why the widget never came (the kernel's error is on the page)
        outputs = page.locator(".jp-OutputArea-output, .jp-RenderedText").all_inner_texts()
        pytest.fail(f"no suggestions shown; page outputs: {outputs!r}\nserver log:\n{log.read_text()[-3000:]}")
    page.wait_for_timeout(300)

    # the Suggested view comes first and is the one shown: the two suggestions, most confident first
    category = page.locator(".whatsthat-cleaner select").first
    assert category.evaluate("s => [...s.options].map(o => o.text)") == ["Suggested", "blue", "red"]
    assert category.evaluate("s => s.options[s.selectedIndex].text") == "Suggested"
    assert units.count() == 2
    junk, wrong = units.nth(0), units.nth(1)
    assert _caption(junk).strip().splitlines()[-1] == JUNK.split("/")[1]
    # pre-marked: the dropdown shows the suggestion, the caption says "suggested" and why, the border is dashed
    assert junk.locator("select").evaluate("s => s.value") == "<Delete>"
    assert wrong.locator("select").evaluate("s => s.value") == "blue"
    assert "suggested (93%): ✗ delete" in _caption(junk) and "unlike every class" in _caption(junk)
    assert "suggested (88%): → move to blue" in _caption(wrong) and "looks like blue (88%)" in _caption(wrong)
    assert junk.evaluate("u => getComputedStyle(u).borderTopStyle") == "dashed"
    assert junk.evaluate("u => getComputedStyle(u).borderTopColor") == DELETE_BORDER
    pending = page.locator(".whatsthat-pending")
    assert "2 suggestion(s) to review" in pending.inner_text() and "No pending decisions" in pending.inner_text()
    assert page.get_by_role("button", name="Apply 0 decision(s)").is_disabled()  # nothing applied without a click
    page.screenshot(path=tmp_path / "suggested.png")
    print(f"\nscreenshot: {tmp_path / 'suggested.png'}")

    # Accept the junk: a pending decision; the other suggestion stays a suggestion
    junk.get_by_role("button", name="Accept").click()
    pending.filter(has_text=f"{JUNK}: delete").wait_for(timeout=30_000)
    assert "1 suggestion(s) to review" in pending.inner_text()
    assert "suggestion accepted" in _caption(junk)
    page.wait_for_function("() => getComputedStyle(document.querySelector('.whatsthat-thumb')).borderTopStyle == 'solid'",
                           timeout=30_000)  # fmt: skip

    # Apply: through the journal, to the trash; the relabel was never accepted, so it did not happen
    page.get_by_role("button", name=re.compile(r"Apply 1 decision")).click()
    page.get_by_text(re.compile(r"batch \S+: moved 1 image\(s\) to the trash, relabelled 0")).wait_for(timeout=60_000)
    deadline = time.monotonic() + 10
    while (data / JUNK).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (data / JUNK).exists() and [i.original for i in trash_list(data)] == [JUNK]
    (batch,) = batches(data)
    assert [(a["op"], a["src"]) for a in batch.actions] == [("trash", JUNK)] and batch.state == "applied"
    assert (data / WRONG).is_file()
    units.nth(1).wait_for(state="detached", timeout=30_000)  # the applied one left the view
    assert _caption(units.nth(0)).strip().splitlines()[-1] == WRONG.split("/")[1]

    # Undo: the file is back where it was, and suggested again
    page.get_by_role("button", name="Undo last apply").click()
    page.get_by_text(re.compile(r"undid batch \S+: restored 1 image")).wait_for(timeout=60_000)
    assert (data / JUNK).is_file() and trash_list(data) == [] and batches(data)[0].state == "undone"
    units.nth(1).wait_for(timeout=30_000)
    assert "suggested (93%): ✗ delete" in _caption(units.nth(0))
    assert units.nth(0).locator("select").evaluate("s => s.value") == "<Delete>"
    page.context.close()
