"""Gather a dataset: web search -> concurrent download -> verify -> resize -> de-duplicate -> manifest.

`gather` searches the web for each category's queries and downloads the images; `import_folder`
brings in an existing folder-per-class directory. Both write ``<out>/<label>/<sha16>.jpg`` files
(RGB JPEGs, longer side <= max_side) and a manifest row for every attempt (see manifest.py), and
both are incremental: what the manifest already settled is not fetched again, while transient
failures (timeouts, 5xx, 429, connection errors) are retried on the next run.

Only the main thread touches the dataset (duplicate checks, file writes, manifest), so the
manifest is rewritten atomically from one consistent state, periodically and at the end, also
when the run is interrupted (Ctrl-C).
"""

from __future__ import annotations

import http.client
import logging
import os
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whatsthat import images
from whatsthat.atomic import atomic_open
from whatsthat.dataset.config import GATHER_KEYS, Categories, check_label
from whatsthat.dataset.manifest import FIELDS, label_counts, read_manifest, write_manifest
from whatsthat.dataset.search import USER_AGENT, SearchBackend, get_backend
from whatsthat.errors import WhatsthatError

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {"per_query": 100, "max_side": 400, "backend": "ddg", "workers": 16, "timeout": 10.0}
DOWNLOAD_DEADLINE_FACTOR = 3  # a whole download may take 3x the per-read timeout (stops trickling servers)
FLUSH_EVERY_ROWS = 50
FLUSH_EVERY_SECONDS = 10.0
_CHUNK = 64 * 1024
_PARTIAL_PREFIX = ".part-"
# Reasons that say "try again later" rather than "this URL is bad": retried on the next run.
_TRANSIENT = frozenset({"timeout", "connection", "http-408", "http-425", "http-429"})
# Statuses (and the images behind them) that count against new images being duplicates: clean's
# "trashed" included, so a picture someone threw away does not come back from another URL.
_INDEXED_STATUSES = ("ok", "trashed")
# Content types that are never an image, whatever the URL says; others are judged by magic bytes.
_NON_IMAGE_TYPES = frozenset(
    {"application/json", "application/xml", "application/xhtml+xml", "application/javascript", "application/pdf"}
)


def is_transient(reason: str) -> bool:
    """Whether a failure `reason` is worth retrying on a later run (timeouts, 5xx, rate limits)."""
    return reason in _TRANSIENT or reason.startswith("http-5")


# ----------------------------------------------------------------------------------------- summary


@dataclass
class LabelStats:
    """What one run did for one label."""

    found: int = 0  # unique image URLs (or files) the searches returned
    known: int = 0  # already settled by an earlier run: not fetched again
    downloaded: int = 0  # new images saved
    duplicates: int = 0  # dropped: same bytes, near-identical picture, or URL owned by another label
    failed: Counter[str] = field(default_factory=Counter)  # reason -> count
    images: int = 0  # image files in the label folder after the run

    def to_dict(self) -> dict[str, Any]:
        return {
            "found": self.found,
            "known": self.known,
            "downloaded": self.downloaded,
            "duplicates": self.duplicates,
            "failed": dict(sorted(self.failed.items())),
            "images": self.images,
        }


@dataclass
class GatherSummary:
    """Per-label counts of a gather/import run, the search errors, and where the dataset is."""

    root: Path
    backend: str
    labels: dict[str, LabelStats] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # searches that failed for good
    notes: list[str] = field(default_factory=list)  # things worth knowing that are not failures

    @property
    def downloaded(self) -> int:
        return sum(s.downloaded for s in self.labels.values())

    @property
    def failed(self) -> int:
        return sum(s.failed.total() for s in self.labels.values())

    @property
    def duplicates(self) -> int:
        return sum(s.duplicates for s in self.labels.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: root, backend, per-label stats, errors."""
        return {
            "root": str(self.root),
            "backend": self.backend,
            "labels": {label: s.to_dict() for label, s in self.labels.items()},
            "errors": list(self.errors),
            "notes": list(self.notes),
        }

    def table(self) -> str:
        """A plain-text table of the run, then failure reasons and errors, for people."""
        cols = ["found", "known", "new", "dupes", "failed", "images"]
        width = max([len("label"), len("total"), *(len(label) for label in self.labels)])
        lines = [f"{'label':<{width}}" + "".join(f"{c:>8}" for c in cols)]
        total = [0] * len(cols)
        for label, s in self.labels.items():
            values = [s.found, s.known, s.downloaded, s.duplicates, s.failed.total(), s.images]
            total = [a + b for a, b in zip(total, values, strict=True)]
            lines.append(f"{label:<{width}}" + "".join(f"{v:>8}" for v in values))
        if len(self.labels) > 1:
            lines.append(f"{'total':<{width}}" + "".join(f"{v:>8}" for v in total))
        for label, s in self.labels.items():
            if s.failed:
                reasons = ", ".join(f"{r} {n}" for r, n in s.failed.most_common())
                lines.append(f"failed {label}: {reasons}")
        retry = sum(n for s in self.labels.values() for r, n in s.failed.items() if is_transient(r))
        if retry:
            lines.append(f"{retry} transient failure(s) will be retried when you run this again")
        for label, s in self.labels.items():
            if s.images == 0:
                lines.append(f"warning: no images for {label!r}; try other search queries")
        lines.extend(f"note: {n}" for n in self.notes)
        lines.extend(f"error: {e}" for e in self.errors)
        lines.append(f"dataset: {self.root}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------- download


class FetchError(Exception):
    """A download that did not produce bytes; `reason` is a short code for the manifest."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    # urllib follows redirects to ftp:// too; a search result must only ever lead to http(s).
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise FetchError("bad-url", f"redirect to a non-HTTP URL refused: {newurl[:100]}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _check_content_type(header: str | None) -> None:
    ctype = (header or "").split(";")[0].strip().lower()
    if ctype == "image/svg+xml":
        raise FetchError("svg", "SVG drawings are not supported")
    if ctype.startswith(("text/", "video/", "audio/")) or ctype in _NON_IMAGE_TYPES:
        raise FetchError("content-type", f"the server says this is {ctype}, not an image")
    # image/*, application/octet-stream, a missing or odd type: the magic bytes decide


def fetch(url: str, *, timeout: float = 10.0, max_bytes: int = images.MAX_BYTES, opener: Any = None) -> bytes:
    """Download `url` (http/https only) into memory, at most `max_bytes`, or raise FetchError."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise FetchError("bad-url", f"not an http(s) URL: {url[:100]}")
    opener = opener or urllib.request.build_opener(_HttpOnlyRedirects)
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*,*/*;q=0.5"})
    deadline = time.monotonic() + timeout * DOWNLOAD_DEADLINE_FACTOR
    try:
        with opener.open(request, timeout=timeout) as resp:
            _check_content_type(resp.headers.get("Content-Type"))
            length = resp.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise FetchError("too-large", f"{int(length) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
            chunks, size = [], 0
            while chunk := resp.read(_CHUNK):
                size += len(chunk)
                if size > max_bytes:  # Content-Length can be absent or lie: cap what we actually read
                    raise FetchError("too-large", f"over {max_bytes / 1e6:.0f} MB")
                if time.monotonic() > deadline:
                    raise FetchError("timeout", f"download took over {timeout * DOWNLOAD_DEADLINE_FACTOR:.0f}s")
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as e:
        e.close()
        if 300 <= e.code < 400:  # urllib refuses redirects to file:// etc. with an HTTPError
            raise FetchError("bad-url", f"redirect refused: {e.reason}") from e
        raise FetchError(f"http-{e.code}", f"HTTP {e.code} {e.reason}") from e
    except TimeoutError as e:
        raise FetchError("timeout", f"no answer within {timeout:g}s") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError):
            raise FetchError("timeout", f"no connection within {timeout:g}s") from e
        if isinstance(e.reason, ssl.SSLError):
            raise FetchError("ssl", f"TLS error: {e.reason}") from e
        raise FetchError("connection", f"cannot connect: {e.reason}") from e
    except ssl.SSLError as e:
        raise FetchError("ssl", f"TLS error: {e}") from e
    except (ConnectionError, http.client.HTTPException) as e:
        raise FetchError("connection", f"connection broken: {e!r}") from e
    except ValueError as e:  # urllib's word for a URL it cannot parse
        raise FetchError("bad-url", str(e)) from e


# ------------------------------------------------------------------------------------ one picture


@dataclass
class _Prepared:
    """A verified picture ready to save: hashes of the original bytes and of the resized pixels."""

    sha256: str
    phash: str
    jpeg: bytes
    width: int
    height: int


def _prepare(data: bytes, max_side: int, max_bytes: int) -> _Prepared:
    """Verify, flatten to RGB, resize and hash `data`; ImageError says why it is unusable."""
    im = images.load_image(data, max_bytes=max_bytes)
    im = images.resize_max(im, max_side)
    return _Prepared(images.sha256(data), images.phash(im), images.encode_jpeg(im), im.width, im.height)


def _read_local(path: Path, max_bytes: int) -> bytes:
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise FetchError("too-large", f"{size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
        return path.read_bytes()
    except OSError as e:
        raise FetchError("unreadable", f"cannot read {path}: {e.strerror or e}") from e


@dataclass
class _Job:
    url: str
    query: str
    label: str
    load: Callable[[], bytes]  # runs in a worker thread


def _run_job(job: _Job, max_side: int, max_bytes: int) -> _Prepared:
    return _prepare(job.load(), max_side, max_bytes)


# ---------------------------------------------------------------------------------------- dataset


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _Dataset:
    """The manifest in memory plus the duplicate indexes; only the main thread uses it."""

    def __init__(self, root: Path, near_dup_bits: int):
        self.root = root
        self.near_dup_bits = near_dup_bits
        self.rows: list[dict[str, str]] = read_manifest(root)
        self._pos: dict[tuple[str, str], int] = {}
        self.owner: dict[str, str] = {}  # url -> the label that settled (or is fetching) it
        self._sha: dict[str, str] = {}
        self._phash: list[tuple[int, str]] = []
        for i, row in enumerate(self.rows):
            self._pos[(row["url"], row["label"])] = i
            if row["status"] != "failed" or not is_transient(row["reason"]):
                self.owner.setdefault(row["url"], row["label"])
            self._index(row)
        self._dirty = 0
        self._flushed_at = time.monotonic()
        self.sweep_partials()

    def sweep_partials(self) -> None:
        """Delete half-written images (.part-*) that an interrupted or killed run left behind."""
        for part in self.root.glob(f"*/{_PARTIAL_PREFIX}*"):
            part.unlink(missing_ok=True)

    def _index(self, row: Mapping[str, str]) -> None:
        if row["status"] in _INDEXED_STATUSES and row["sha256"]:
            self._sha.setdefault(row["sha256"], row["file"])
            try:
                self._phash.append((int(row["phash"], 16), row["file"]))
            except ValueError:
                log.warning(
                    "manifest row for %s has no valid phash (%r): near-duplicates of it go unnoticed",
                    row["url"],
                    row["phash"],
                )

    def row(self, url: str, label: str) -> dict[str, str] | None:
        i = self._pos.get((url, label))
        return None if i is None else self.rows[i]

    def duplicate_of(self, prepared: _Prepared) -> tuple[str, str] | None:
        """(reason, file it duplicates) when `prepared` is already in the dataset, else None."""
        if prepared.sha256 in self._sha:
            return "exact-duplicate", self._sha[prepared.sha256]
        if self.near_dup_bits >= 0:
            h = int(prepared.phash, 16)
            for other, file in self._phash:
                if (h ^ other).bit_count() <= self.near_dup_bits:
                    return "near-duplicate", file
        return None

    def save(self, label: str, prepared: _Prepared) -> str:
        """Write the JPEG atomically as <label>/<sha16>.jpg and return its root-relative path."""
        folder = self.root / label
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{prepared.sha256[:16]}.jpg"
        # the dot prefix keeps a half-written file from ever looking like an image to other modules
        with atomic_open(folder / name, binary=True, prefix=_PARTIAL_PREFIX) as f:
            f.write(prepared.jpeg)
        return f"{label}/{name}"

    def record(self, row: dict[str, str]) -> None:
        """Add a manifest row; a retried (url, label) replaces its earlier failed row."""
        key = (row["url"], row["label"])
        if key in self._pos:
            self.rows[self._pos[key]] = row
        else:
            self._pos[key] = len(self.rows)
            self.rows.append(row)
        self._index(row)
        self._dirty += 1
        if self._dirty >= FLUSH_EVERY_ROWS or time.monotonic() - self._flushed_at > FLUSH_EVERY_SECONDS:
            self.flush()

    def flush(self) -> None:
        write_manifest(self.root, self.rows)
        self._dirty = 0
        self._flushed_at = time.monotonic()


def _row(job: _Job, backend: str, status: str, reason: str = "", **values: object) -> dict[str, str]:
    row = dict.fromkeys(FIELDS, "")
    row.update(url=job.url, query=job.query, label=job.label, status=status, reason=reason, backend=backend)
    row.update({k: str(v) for k, v in values.items()})
    row["fetched_at"] = _now()
    return row


class _Progress:
    """A one-line progress counter on stderr, only when stderr is a terminal (never floods logs)."""

    def __init__(self, total: int, what: str, enabled: bool):
        self.total, self.what = total, what
        self.enabled = enabled and total > 0 and sys.stderr.isatty()
        self.done = 0
        self.counts: Counter[str] = Counter()
        self._shown_at = 0.0

    def update(self, status: str) -> None:
        self.done += 1
        self.counts[status] += 1
        if self.enabled and (self.done == self.total or time.monotonic() - self._shown_at > 0.1):
            self._shown_at = time.monotonic()
            bar = "#" * (30 * self.done // self.total)
            c = self.counts
            sys.stderr.write(
                f"\r{self.what} [{bar:<30}] {self.done}/{self.total}  "
                f"ok {c['ok']}  dup {c['duplicate']}  failed {c['failed']} "
            )
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _process(
    jobs: list[_Job],
    ds: _Dataset,
    summary: GatherSummary,
    *,
    workers: int,
    max_side: int,
    max_bytes: int,
    progress: bool,
    what: str,
) -> None:
    """Run `jobs` on a thread pool; the main thread dedupes, saves and records each result."""
    bar = _Progress(len(jobs), what, progress)
    pool = ThreadPoolExecutor(max_workers=max(1, min(workers, len(jobs) or 1)), thread_name_prefix="whatsthat-get")
    pending: dict[Future[_Prepared], _Job] = {}
    finished = False
    try:
        pending = {pool.submit(_run_job, job, max_side, max_bytes): job for job in jobs}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                job = pending.pop(fut)
                row = _settle(job, fut, ds, summary.labels[job.label], summary.backend)
                ds.record(row)
                bar.update(row["status"])
        finished = True
    finally:
        # On Ctrl-C: drop queued jobs and don't wait for in-flight ones (their results are simply
        # not recorded, so the next run fetches them); the manifest is written from what finished.
        pool.shutdown(wait=finished, cancel_futures=True)
        bar.close()
        if not finished:
            ds.sweep_partials()  # Ctrl-C can land inside mkstemp, before save() can clean up
        ds.flush()


def _settle(job: _Job, fut: Future[_Prepared], ds: _Dataset, stats: LabelStats, backend: str) -> dict[str, str]:
    """Turn one finished job into a manifest row, saving the image unless it is a duplicate."""
    try:
        prepared = fut.result()
    except (FetchError, images.ImageError) as e:
        stats.failed[e.reason] += 1
        log.debug("%s: %s (%s)", job.url, e.reason, e)
        return _row(job, backend, "failed", e.reason)
    dup = ds.duplicate_of(prepared)
    hashes = {"sha256": prepared.sha256, "phash": prepared.phash, "width": prepared.width, "height": prepared.height}
    if dup is not None:
        stats.duplicates += 1
        log.debug("%s: %s of %s", job.url, dup[0], dup[1])
        return _row(job, backend, "duplicate", dup[0], **hashes)
    file = ds.save(job.label, prepared)
    stats.downloaded += 1
    return _row(job, backend, "ok", file=file, **hashes)


# ------------------------------------------------------------------------------------------ gather


def _as_queries(categories: Categories | Mapping[str, str | Sequence[str]]) -> dict[str, list[str]]:
    raw = categories.queries if isinstance(categories, Categories) else categories
    if not isinstance(raw, Mapping) or not raw:
        raise WhatsthatError("no categories to gather: give at least one label with its search queries")
    queries: dict[str, list[str]] = {}
    for label, qs in raw.items():
        qs = [qs] if isinstance(qs, str) else list(qs)
        qs = [q.strip() for q in qs if isinstance(q, str) and q.strip()]
        if not qs:
            raise WhatsthatError(f"category {label!r} has no search query")
        queries[check_label(label)] = qs
    return queries


def _setting(name: str, given: Any, file_settings: Mapping[str, object]) -> Any:
    value = given if given is not None else file_settings.get(name, DEFAULTS[name])
    typ = GATHER_KEYS[name]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if name == "backend" and not isinstance(value, str):
        return value  # a SearchBackend instance
    if not isinstance(value, typ) or isinstance(value, bool):
        kind = {int: "a whole number", float: "a number", str: "a name"}[typ]
        raise WhatsthatError(f"{name} must be {kind}, not {value!r}")
    if typ is not str and value <= 0:
        raise WhatsthatError(f"{name} must be positive, not {value!r}")
    return value


def _prepare_out(out: str | Path) -> Path:
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise WhatsthatError(f"{root} exists and is not a folder")
    root.mkdir(parents=True, exist_ok=True)
    return root


def gather(
    categories: Categories | Mapping[str, str | Sequence[str]],
    out: str | Path,
    *,
    per_query: int | None = None,
    max_side: int | None = None,
    backend: str | SearchBackend | None = None,
    workers: int | None = None,
    timeout: float | None = None,
    max_bytes: int = images.MAX_BYTES,
    progress: bool = True,
    near_dup_bits: int = 4,
) -> GatherSummary:
    """Search, download, verify, resize and de-duplicate images of each category into `out`.

    `categories` is a Categories (its [gather] settings are defaults) or a {label: queries} dict.
    A None setting means "not given": the Categories' [gather] value, else 100 results per query,
    max_side 400, backend "ddg", 16 workers, a 10 s timeout. `near_dup_bits` < 0 turns off
    near-duplicate detection. Re-running skips URLs the manifest has settled.
    """
    queries = _as_queries(categories)
    file_settings = categories.gather if isinstance(categories, Categories) else {}
    per_query = _setting("per_query", per_query, file_settings)
    max_side = _setting("max_side", max_side, file_settings)
    workers = _setting("workers", workers, file_settings)
    timeout = _setting("timeout", timeout, file_settings)
    chosen = _setting("backend", backend, file_settings)
    engine: SearchBackend = get_backend(chosen, timeout=timeout) if isinstance(chosen, str) else chosen
    root = _prepare_out(out)
    ds = _Dataset(root, near_dup_bits)
    summary = GatherSummary(root=root, backend=engine.name, labels={label: LabelStats() for label in queries})

    jobs: list[_Job] = []
    searches = failures = 0
    for label, label_queries in queries.items():
        stats, seen = summary.labels[label], set()
        for query in label_queries:
            searches += 1
            if progress and sys.stderr.isatty():
                sys.stderr.write(f"searching {engine.name} for {query!r}...\n")
            try:
                results = engine.search(query, per_query)
            except WhatsthatError as e:
                failures += 1
                summary.errors.append(str(e))
                continue
            for result in results:
                if result.url in seen:
                    continue
                seen.add(result.url)
                stats.found += 1
                job = _Job(
                    result.url,
                    query,
                    label,
                    lambda url=result.url: fetch(url, timeout=timeout, max_bytes=max_bytes),
                )
                _plan(job, ds, stats, engine.name, jobs)
    if searches and failures == searches:
        raise WhatsthatError("every search failed:\n" + "\n".join(summary.errors))
    _process(
        jobs,
        ds,
        summary,
        workers=workers,
        max_side=max_side,
        max_bytes=max_bytes,
        progress=progress,
        what="downloading",
    )
    _count_images(summary)
    return summary


def _plan(job: _Job, ds: _Dataset, stats: LabelStats, backend: str, jobs: list[_Job]) -> None:
    """Queue `job` unless the manifest settled it; a URL another label owns becomes a duplicate row."""
    previous = ds.row(job.url, job.label)
    if previous is not None and not _should_retry(previous, backend):
        stats.known += 1
        return
    owner = ds.owner.get(job.url)
    if owner is not None and owner != job.label:
        # the same picture under two labels would teach the model nothing but confusion
        stats.duplicates += 1
        ds.record(_row(job, backend, "duplicate", "same-url"))
        return
    ds.owner[job.url] = job.label
    jobs.append(job)


def _should_retry(row: Mapping[str, str], backend: str) -> bool:
    if row["status"] != "failed":
        return False
    # local files are cheap to look at again (and may have been fixed); web failures only if transient
    return backend == "import" or is_transient(row["reason"])


def _count_images(summary: GatherSummary) -> None:
    counts = label_counts(summary.root)
    for label, stats in summary.labels.items():
        stats.images = counts.get(label, 0)


# ------------------------------------------------------------------------------------------ import


def _class_folders(src: Path) -> list[Path]:
    if not src.is_dir():
        raise WhatsthatError(f"{src} is not a folder")
    folders = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise WhatsthatError(
            f"{src} has no class subfolders: expected one folder per label, e.g. {src}/grizzly/*.jpg, {src}/black/*.jpg"
        )
    for folder in folders:
        try:
            check_label(folder.name)
        except WhatsthatError as e:
            raise WhatsthatError(f"cannot import {folder}: {e}") from None
    return folders


def _files_under(folder: Path) -> Iterable[Path]:
    """Every non-folder entry under `folder` (broken links included: they become 'unreadable' rows)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def import_folder(
    src: str | Path,
    out: str | Path,
    *,
    max_side: int = 400,
    near_dup_bits: int = 4,
    max_bytes: int = images.MAX_BYTES,
    workers: int = 8,
    progress: bool = True,
) -> GatherSummary:
    """Import a folder-per-class directory `src` (labels = subfolder names) into dataset `out`.

    Same checks, resizing, de-duplication and manifest as `gather` (url = file://<absolute path>,
    backend "import"). Files that are not usable images become failed rows; re-running skips
    files already imported and retries the failed ones.
    """
    src = Path(src).resolve()
    root = Path(out).resolve()
    if root == src or root.is_relative_to(src) or src.is_relative_to(root):
        raise WhatsthatError(f"import into a separate folder: {out} and {src} overlap")
    folders = _class_folders(src)
    root = _prepare_out(root)
    ds = _Dataset(root, near_dup_bits)
    summary = GatherSummary(root=root, backend="import", labels={f.name: LabelStats() for f in folders})
    jobs: list[_Job] = []
    ignored = [p.name for p in src.iterdir() if not p.is_dir() and not p.name.startswith(".")]
    if ignored:
        summary.notes.append(f"{len(ignored)} file(s) at the top of {src} ignored (not in a class folder)")
    for folder in folders:
        stats = summary.labels[folder.name]
        for path in _files_under(folder):
            stats.found += 1
            job = _Job("file://" + path.as_posix(), "", folder.name, lambda p=path: _read_local(p, max_bytes))
            _plan(job, ds, stats, "import", jobs)
    _process(
        jobs, ds, summary, workers=workers, max_side=max_side, max_bytes=max_bytes, progress=progress, what="importing"
    )
    _count_images(summary)
    return summary
