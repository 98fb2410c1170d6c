"""config.py: labels, category words from the command line, and categories TOML files (good and bad)."""

from __future__ import annotations

import pytest

from whatsthat.dataset.config import Categories, check_label, label_from_query, load_categories, parse_category_args
from whatsthat.errors import WhatsthatError


@pytest.mark.parametrize("label", ["grizzly", "black_bear", "teddy-bear", "a", "x1", "0day", "a" * 64])
def test_check_label_accepts_folder_safe_names(label):
    assert check_label(label) == label


@pytest.mark.parametrize(
    "label",
    ["", "Grizzly", "black bear", "-lead", "_lead", "a/b", "..", ".hidden", "ours\u00e9", "a" * 65, "a\n"],
)
def test_check_label_rejects_unsafe_names(label):
    with pytest.raises(WhatsthatError, match="bad label"):
        check_label(label)


@pytest.mark.parametrize(
    ("query", "label"),
    [("Teddy Bear!", "teddy_bear"), ("grizzly", "grizzly"), ("  black   bear ", "black_bear"), ("x" * 80, "x" * 64)],
)
def test_label_from_query(query, label):
    assert label_from_query(query) == label


@pytest.mark.parametrize("query", ["!!!", "", "\u00e9\u00e8"])
def test_label_from_query_needs_some_ascii(query):
    with pytest.raises(WhatsthatError, match="label="):
        label_from_query(query)


def test_parse_category_args_forms():
    cats = parse_category_args(
        ["grizzly=grizzly bear", "grizzly=grizzly bear face", "teddy bear", "grizzly=grizzly bear"]
    )
    assert cats.queries == {"grizzly": ["grizzly bear", "grizzly bear face"], "teddy_bear": ["teddy bear"]}
    assert cats.labels == ["grizzly", "teddy_bear"]
    assert cats.gather == {}


@pytest.mark.parametrize(
    ("words", "match"),
    [
        (["grizzly=grizzly bear"], "at least two categories"),
        ([], "at least two categories"),
        (["grizzly=grizzly bear", "black="], "empty search query"),
        (["grizzly=grizzly bear", "Black=black bear"], "bad label"),
        (["grizzly=grizzly bear", "=black bear"], "bad label"),
        (["grizzly=grizzly bear", "???"], "cannot make a label"),
    ],
)
def test_parse_category_args_errors(words, match):
    with pytest.raises(WhatsthatError, match=match):
        parse_category_args(words)


def write(tmp_path, text: str):
    path = tmp_path / "cats.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_categories_full_file(tmp_path):
    path = write(
        tmp_path,
        """
[categories]
grizzly = ["grizzly bear", "grizzly bear face"]
black = "black bear"

[gather]
per_query = 50
max_side = 300
backend = "bing"
workers = 4
timeout = 5
""",
    )
    cats = load_categories(path)
    assert isinstance(cats, Categories)
    assert cats.queries == {"grizzly": ["grizzly bear", "grizzly bear face"], "black": ["black bear"]}
    # the int timeout is a float setting and is kept as given; gather normalises it
    assert cats.gather == {"per_query": 50, "max_side": 300, "backend": "bing", "workers": 4, "timeout": 5}


def test_load_categories_without_gather_section(tmp_path):
    cats = load_categories(write(tmp_path, '[categories]\na = "x"\nb = ["y", "y", "z"]\n'))
    assert cats.queries == {"a": ["x"], "b": ["y", "z"]}
    assert cats.gather == {}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[categories\n", "not valid TOML"),
        ('[categories]\na = "x"\n[other]\nz = 1\n', r"unknown section\(s\) \['other'\]"),
        ("[gather]\nper_query = 3\n", "needs a \\[categories\\] table"),
        ("[categories]\n", "needs a \\[categories\\] table"),
        ('categories = "grizzly"\n', "needs a \\[categories\\] table"),
        ('[categories]\na = "x"\n', "at least two categories"),
        ('[categories]\na = "x"\nb = 3\n', "'b' must be a query string or a list of strings"),
        ('[categories]\na = "x"\nb = []\n', "'b' must be a query string or a list of strings"),
        ('[categories]\na = "x"\nb = ["y", 2]\n', "'b' must be a query string or a list of strings"),
        ('[categories]\na = "x"\nb = "  "\n', "empty search query"),
        ('[categories]\na = "x"\n"Bad Label" = "y"\n', "bad label"),
        ('[categories]\na = "x"\nb = "y"\n[gather]\ncolour = 1\n', "unknown \\[gather\\] setting 'colour'"),
        ('[categories]\na = "x"\nb = "y"\n[gather]\nper_query = "many"\n', "per_query must be a int"),
        ('[categories]\na = "x"\nb = "y"\n[gather]\nper_query = true\n', "per_query must be a int"),
        ('[categories]\na = "x"\nb = "y"\n[gather]\nper_query = 1.5\n', "per_query must be a int"),
        ('[categories]\na = "x"\nb = "y"\n[gather]\nbackend = 1\n', "backend must be a str"),
        ('[categories]\na = "x"\nb = "y"\n[gather]\ntimeout = "slow"\n', "timeout must be a float"),
        ('gather = 3\n[categories]\na = "x"\nb = "y"\n', "\\[gather\\] must be a table"),
    ],
)
def test_load_categories_errors_name_the_file_and_problem(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(WhatsthatError, match=match) as info:
        load_categories(path)
    assert str(path) in str(info.value)


def test_load_categories_missing_file(tmp_path):
    with pytest.raises(WhatsthatError, match="categories file not found"):
        load_categories(tmp_path / "nope.toml")


def test_load_categories_unreadable(tmp_path):
    path = tmp_path / "bin.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(WhatsthatError, match="cannot read"):
        load_categories(path)
    with pytest.raises(WhatsthatError, match="cannot read"):
        load_categories(tmp_path)  # a folder, not a file
