"""Categories: which labels to learn and which web searches find pictures of each.

The label (a folder name, what the app shows) is decoupled from its search queries, because good
queries are phrases ("grizzly bear face") while labels are short words ("grizzly"). Two forms:

A TOML file::

    [categories]
    grizzly = ["grizzly bear", "grizzly bear face"]
    black = "black bear"          # one query may be a plain string
    teddy = ["teddy bear"]

    [gather]                      # optional; command-line flags override these
    per_query = 100
    max_side = 400
    backend = "ddg"               # "ddg" or "bing"

Or command-line words: ``grizzly="grizzly bear"`` (label=query; repeat a label to add queries)
or a bare ``"teddy bear"`` (label derived from the query: ``teddy_bear``).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from whatsthat.errors import WhatsthatError

LABEL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
GATHER_KEYS = {"per_query": int, "max_side": int, "backend": str, "workers": int, "timeout": float}


@dataclass
class Categories:
    """Labels in order, each with its search queries, plus optional [gather] settings."""

    queries: dict[str, list[str]]
    gather: dict[str, object] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return list(self.queries)


def check_label(label: str) -> str:
    """Return `label` if it is a safe folder name, else raise a message saying what is allowed."""
    if not LABEL_RE.fullmatch(label):
        raise WhatsthatError(
            f"bad label {label!r}: use lowercase letters, digits, '_' or '-' (it becomes a folder name), "
            "e.g. grizzly or black_bear"
        )
    return label


def label_from_query(query: str) -> str:
    """'Teddy Bear!' -> 'teddy_bear'."""
    label = re.sub(r"[^a-z0-9]+", "_", query.lower()).strip("_")[:64]
    if not label:
        raise WhatsthatError(f"cannot make a label from {query!r}: write it as label=\"query\"")
    return label


def _add(queries: dict[str, list[str]], label: str, query: str) -> None:
    query = query.strip()
    if not query:
        raise WhatsthatError(f"label {label!r} has an empty search query")
    bucket = queries.setdefault(check_label(label), [])
    if query not in bucket:
        bucket.append(query)


def parse_category_args(words: list[str]) -> Categories:
    """Parse CLI words like ``grizzly="grizzly bear"`` or ``"teddy bear"`` into Categories."""
    queries: dict[str, list[str]] = {}
    for word in words:
        if "=" in word:
            label, _, query = word.partition("=")
            _add(queries, label.strip(), query)
        else:
            _add(queries, label_from_query(word), word)
    return _validated(Categories(queries), "the command line")


def load_categories(path: str | Path) -> Categories:
    """Read a categories TOML file (see module docstring); errors name the file and the problem."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WhatsthatError(f"categories file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise WhatsthatError(f"cannot read {path}: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise WhatsthatError(f"{path} is not valid TOML: {e}") from e
    unknown = set(doc) - {"categories", "gather"}
    if unknown:
        raise WhatsthatError(f"{path}: unknown section(s) {sorted(unknown)}; expected [categories] and [gather]")
    cats = doc.get("categories")
    if not isinstance(cats, dict) or not cats:
        raise WhatsthatError(f"{path}: needs a [categories] table, e.g.\n[categories]\ngrizzly = [\"grizzly bear\"]")
    queries: dict[str, list[str]] = {}
    for label, value in cats.items():
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise WhatsthatError(f"{path}: category {label!r} must be a query string or a list of strings")
        for q in values:
            try:
                _add(queries, label, q)
            except WhatsthatError as e:
                raise WhatsthatError(f"{path}: {e}") from None
    gather = doc.get("gather", {})
    if not isinstance(gather, dict):
        raise WhatsthatError(f"{path}: [gather] must be a table")
    for key, value in gather.items():
        if key not in GATHER_KEYS:
            raise WhatsthatError(f"{path}: unknown [gather] setting {key!r}; known: {', '.join(GATHER_KEYS)}")
        typ = GATHER_KEYS[key]
        if typ is float and isinstance(value, int):
            value = float(value)
        if not isinstance(value, typ) or isinstance(value, bool):
            raise WhatsthatError(f"{path}: [gather] {key} must be a {typ.__name__}, not {value!r}")
    return _validated(Categories(queries, dict(gather)), str(path))


def _validated(cats: Categories, where: str) -> Categories:
    if len(cats.queries) < 2:
        raise WhatsthatError(
            f"{where}: a classifier needs at least two categories (got {len(cats.queries)}), "
            'e.g. grizzly="grizzly bear" black="black bear"'
        )
    return cats
