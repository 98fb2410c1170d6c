"""The cleaner's thumbnail strip without a browser: units, their widths, fastai's reading of them, marks.

The layout itself (captions under their pictures in JupyterLab and Voila) is tested in a real browser by
tests/test_cleaner_browser.py; the Cleaner's decisions and Apply in tests/test_clean.py.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, draw_image

from whatsthat.cleaning.cleaner import BORDER, MIN_UNIT_WIDTH, Thumbnails


def test_each_picture_is_one_unit_that_fastai_reads_as_its_own(tmp_path):
    files = []
    for i, size in enumerate([(400, 200), (60, 240), (20, 20)]):  # landscape, portrait, tiny
        files.append(tmp_path / f"p{i}.png")
        draw_image("red", 64, seed=i).resize(size).save(files[-1])
    strip = Thumbnails(("blue", "red"), height=128, width=256, max_n=2)
    strip.set_fns(files)
    assert strip.fns == files[:2] and len(strip.widget.children) == 2  # max_n, as fastai's
    strip.set_fns(files[1:] + files[:1])
    portrait, tiny = strip.widget.children[:2]
    picture, dropdown, caption = portrait.children
    assert (picture.layout.width, picture.layout.height) == ("32px", "128px")  # fits 256x128, keeps the aspect
    assert picture.value[:2] == b"\xff\xd8" and picture.format == "jpeg"
    assert list(dropdown.options) == ["<Keep>", "<Delete>", "blue", "red"] and caption.value == ""
    assert tiny.children[0].layout.width == "20px"  # never enlarged...
    assert portrait.layout.width == tiny.layout.width == f"{MIN_UNIT_WIDTH + 10}px"  # ...but room for the caption
    assert portrait.layout.flex == "0 0 auto" and "whatsthat-thumb" in portrait._dom_classes
    # fastai's ImagesCleaner API reads the dropdown of each unit
    portrait.children[1].value = "<Delete>"
    tiny.children[1].value = "blue"
    assert list(strip.delete()) == [0] and list(strip.change()) == [(1, "blue")]


def test_a_picture_that_cannot_be_opened_still_gets_its_unit(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a picture")
    strip = Thumbnails(("blue", "red"))
    strip.set_fns([bad])
    (unit,) = strip.widget.children
    assert "cannot show notes.jpg" in unit.children[0].tooltip and "not an image" in unit.children[0].tooltip
    assert unit.children[1].options[1] == "<Delete>"  # it can still be thrown out


def test_marking_a_unit_colours_its_border_and_sets_its_caption(tmp_path):
    draw_image("blue").save(tmp_path / "a.png")
    strip = Thumbnails(("blue", "red"))
    strip.set_fns([tmp_path / "a.png"])
    (unit,) = strip.widget.children
    assert unit.layout.border_top == f"3px solid {BORDER['keep']}" and "whatsthat-keep" in unit._dom_classes
    Thumbnails.mark(unit, "delete", "predicted blue 90%")
    assert unit.layout.border_left == f"3px solid {BORDER['delete']}" and unit.children[2].value == "predicted blue 90%"
    assert "whatsthat-delete" in unit._dom_classes and "whatsthat-keep" not in unit._dom_classes
    Thumbnails.mark(unit, "keep")
    assert "whatsthat-delete" not in unit._dom_classes and unit.children[2].value == "predicted blue 90%"


def test_the_engine_imports_neither_the_widget_nor_jupyter():
    """clean.py is what the CLI and the widget share: it must not pull in the widget, ipywidgets or fastai."""
    code = "import sys, whatsthat.cleaning.journal; print(sorted(m for m in ('whatsthat.cleaning.cleaner', 'ipywidgets', 'fastai') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
