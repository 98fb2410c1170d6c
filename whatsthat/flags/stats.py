"""`whatsthat flags stats`: what visitors say about the model, in three tables.

Counts per class (what visitors said it was, what the model had answered), the confusions they
report (model's answer -> visitor's label, most common first), and "none of these" by ISO week: a
rising count says the page meets pictures of things the model has no class for.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from whatsthat.flags.store import NONE_OF_THESE, FlagStore, StoredFlag, describe_url, open_store

PAGE = 5000


@dataclass
class FlagStats:
    source: str
    total: int = 0
    with_photo: int = 0
    said: Counter = field(default_factory=Counter)  # visitor label -> flags
    answered: Counter = field(default_factory=Counter)  # model's answer -> flags
    photos: Counter = field(default_factory=Counter)  # visitor label -> flags with a photo
    confusions: Counter = field(default_factory=Counter)  # (model's answer, visitor label) -> flags
    weeks: Counter = field(default_factory=Counter)  # ISO week "2026-W49" -> flags
    none_weeks: Counter = field(default_factory=Counter)  # ISO week -> "none of these" flags
    models: Counter = field(default_factory=Counter)  # fingerprint -> flags

    def add(self, f: StoredFlag) -> None:
        self.total += 1
        self.with_photo += f.photo_bytes > 0
        self.said[f.label] += 1
        self.answered[f.answer] += 1
        self.photos[f.label] += f.photo_bytes > 0
        if f.answer != f.label:
            self.confusions[(f.answer, f.label)] += 1
        year, week, _ = f.time.isocalendar()
        self.weeks[f"{year}-W{week:02d}"] += 1
        self.none_weeks[f"{year}-W{week:02d}"] += f.label == NONE_OF_THESE
        self.models[f.model] += 1

    def table(self) -> str:
        if not self.total:
            return f"no flags yet in {self.source}"
        lines = [f"{self.total} flag(s) in {self.source}, {self.with_photo} with a photo, "
                 f"from {len(self.models)} model(s)", ""]
        classes = sorted(set(self.said) | set(self.answered) - {""}, key=lambda c: (c == NONE_OF_THESE, c))
        width = max(len(c) for c in [*classes, "class"])
        lines.append(f"{'class':<{width}}  {'visitors said':>13}  {'with photo':>10}  {'model answered':>14}")
        lines += [f"{c:<{width}}  {self.said[c]:>13}  {self.photos[c]:>10}  {self.answered[c]:>14}" for c in classes]
        lines += ["", "confusions visitors report (model answered -> visitor said):"]
        if self.confusions:
            lines += [f"  {a or '(no answer)'} -> {b}: {k}" for (a, b), k in self.confusions.most_common()]
        else:
            lines.append("  none: every flag agrees with the model's answer")
        lines += ["", f"'{NONE_OF_THESE}' by week (of all flags that week):"]
        lines += [f"  {w}  {self.none_weeks[w]:>5} of {self.weeks[w]}" for w in sorted(self.weeks)]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def flag_stats(store: FlagStore, *, source: str = "") -> FlagStats:
    """The counts of every flag in `store` (read without the photos, a page at a time)."""
    stats, after = FlagStats(source or store.dialect), 0
    while page := store.rows(after=after, photos=False, limit=PAGE):
        for f in page:
            stats.add(f)
        after = page[-1].id
    return stats


def stats_of(url: str | None) -> FlagStats:
    """`flag_stats` of the database at `url` (None: the default SQLite file), which must exist already."""
    with open_store(url, create=False) as store:
        return flag_stats(store, source=describe_url(url))
