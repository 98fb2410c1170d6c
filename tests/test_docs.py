"""The documentation points only at things that exist.

README.md and docs/*.md are what a newcomer follows. Each relative link must reach a file (and each
`#anchor` into a markdown file a heading there, slugged as GitHub slugs it), each `whatsthat COMMAND`
they show must be a subcommand of the CLI, and each `make TARGET` a target of the Makefile. Fast, no
network: the pages are read as text, the CLI's parser is built but never run.
"""

from __future__ import annotations

import argparse
import re
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

from whatsthat.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
IDS = [str(p.relative_to(ROOT)) for p in PAGES]

FENCE = re.compile(r"^ {0,3}(```+|~~~+)")
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
# `](target)` closes every inline link and image, nested ones (a badge inside a link) included.
LINK = re.compile(r"\]\(\s*<?([^()\s<>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^)]*\)))?\s*\)")
REF_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$", re.M)
HTML_REF = re.compile(r"<(?:a|img)\b[^>]*?\b(?:href|src)=[\"']([^\"']+)[\"']", re.I)
HTML_ID = re.compile(r"<a\b[^>]*?\b(?:id|name)=[\"']([^\"']+)[\"']", re.I)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
# A command as a shell would see it: at the start of the code, or after a space, `;`, `&`, `|` or `(`,
# possibly behind a path (.venv/bin/whatsthat). Placeholders in capitals (`whatsthat COMMAND`) are not
# commands and do not match.
WHATSTHAT = re.compile(r"(?:^|(?<=[\s;&|(]))(?:[\w./-]*/)?whatsthat[ \t]+([a-z][a-z0-9-]*)(?:[ \t]+([a-z][a-z0-9-]*))?")
MAKE = re.compile(r"(?:^|(?<=[\s;&|(]))make[ \t]+([a-z][\w.-]*)")


def split(text: str) -> tuple[str, list[str], list[str]]:
    """(prose with code blocks blanked, the code blocks' lines, the inline code spans of the prose)."""
    prose, blocks, fence = [], [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            prose.append("")
        elif fence is not None:
            if (
                m
                and m.group(1)[0] == fence[0]
                and len(m.group(1)) >= len(fence)
                and not line.strip()[len(m.group(1)) :]
            ):
                fence = None
            else:
                blocks.append(line)
            prose.append("")
        else:
            prose.append(line)
    joined = "\n".join(prose)
    spans = [m.group(2).strip() for m in INLINE_CODE.finditer(joined)]
    return joined, blocks, spans


def without_code(prose: str) -> str:
    """The prose with its inline code spans blanked (a link shown as code is not a link)."""
    return INLINE_CODE.sub(lambda m: " " * len(m.group(0)), prose)


def links(text: str) -> list[str]:
    prose = without_code(split(text)[0])
    return [m.group(1) for pattern in (LINK, REF_DEF, HTML_REF) for m in pattern.finditer(prose)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text, lowercased, punctuation but `-` and `_` dropped,
    each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays, its target goes
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"(\*+|_{2,})", "", text)
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every anchor GitHub makes in a markdown file (a repeated heading gets -1, -2, ...)."""
    prose, _, _ = split(path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    found = set(HTML_ID.findall(prose))
    for line in prose.splitlines():
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return frozenset(found)


def shown(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for target in links(page.read_text(encoding="utf-8")):
        if SCHEME.match(target) or target.startswith("//"):
            continue  # a web address: not checked here (no network)
        path_part, _, anchor = target.partition("#")
        path_part = unquote(path_part.split("?")[0])
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{target}: no file {shown(dest, root)}")
        elif anchor and dest.suffix == ".md" and anchor.lower() not in anchors(dest):
            problems.append(f"{target}: no heading with the anchor #{anchor} in {shown(dest, root)}")
    return problems


def code_of(page: Path) -> list[str]:
    """The code a page shows: inline spans and code-block lines, shell comments cut off."""
    _, blocks, spans = split(page.read_text(encoding="utf-8"))
    return [re.sub(r"(^|\s)#.*$", "", line) for line in blocks] + spans


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def first_positional_choices(parser: argparse.ArgumentParser) -> list[str] | None:
    """The choices of a subcommand's first positional argument, when it has any (`not-sure fit`)."""
    positionals = [a for a in parser._actions if not a.option_strings and not isinstance(a, argparse._HelpAction)]
    return list(positionals[0].choices) if positionals and positionals[0].choices else None


def unknown_commands(page: Path) -> list[str]:
    commands, problems = subcommands(), []
    for code in code_of(page):
        for m in WHATSTHAT.finditer(code):
            name, action = m.group(1), m.group(2)
            if name not in commands:
                problems.append(f"`whatsthat {name}`: no such subcommand (known: {', '.join(sorted(commands))})")
                continue
            choices = first_positional_choices(commands[name])
            if choices is not None and action is not None and action not in choices:
                problems.append(f"`whatsthat {name} {action}`: {name} takes {' or '.join(choices)}")
    return problems


@cache
def make_targets(makefile: Path = ROOT / "Makefile") -> frozenset[str]:
    targets = set()
    for line in makefile.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([^\s:#=][^:=]*?)\s*::?(?!=)", line)
        if m:
            targets.update(t for t in m.group(1).split() if not t.startswith("$"))
    return frozenset(targets - {".PHONY"})


def unknown_make_targets(page: Path, makefile: Path = ROOT / "Makefile") -> list[str]:
    targets = make_targets(makefile)
    return [
        f"`make {m.group(1)}`: no such target in the Makefile (known: {', '.join(sorted(targets))})"
        for code in code_of(page)
        for m in MAKE.finditer(code)
        if m.group(1) not in targets
    ]


def test_the_pages_exist():
    names = {p.name for p in PAGES}
    assert {
        "README.md",
        "training.md",
        "not-sure.md",
        "cleaning.md",
        "serving.md",
        "deploy.md",
        "performance.md",
    } <= names


def test_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_relative_links_resolve(page):
    problems = broken_links(page)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_whatsthat_commands_exist(page):
    problems = unknown_commands(page)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=IDS)
def test_make_targets_exist(page):
    problems = unknown_make_targets(page)
    assert not problems, "\n".join(problems)


# -- the checks themselves can fail --


def test_checks_catch_what_they_are_for(tmp_path):
    (tmp_path / "Makefile").write_text(".PHONY: app\napp: install\n\techo hi\ninstall:\n")
    (tmp_path / "other.md").write_text("# Other page\n\n## The `serve` step, again!\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n[ok](other.md) [ok](other.md#the-serve-step-again) [ok](other.md#twice-1) [ok](#title)\n"
        "[![badge](missing.svg)](https://example.org) [bad anchor](other.md#nope) [bad](#nowhere)\n"
        "`[not a link](nothing.md)` [web](https://example.org/x.md)\n\n"
        "`whatsthat train data` `whatsthat not-sure fit m d` `whatsthat COMMAND --help` `whatsthat.cli`\n"
        "`whatsthat frobnicate` `whatsthat not-sure refit m d` `make app` `make deploy`\n\n"
        "```bash\n.venv/bin/whatsthat serve   # not: whatsthat nothing\nmake install && make bogus\n```\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "missing.svg: no file missing.svg",
        "other.md#nope: no heading with the anchor #nope in other.md",
        "#nowhere: no heading with the anchor #nowhere in page.md",
    ]
    assert [p.split(":")[0] for p in unknown_commands(page)] == ["`whatsthat frobnicate`", "`whatsthat not-sure refit`"]
    assert [p.split(":")[0] for p in unknown_make_targets(page, tmp_path / "Makefile")] == [
        "`make bogus`",
        "`make deploy`",
    ]
