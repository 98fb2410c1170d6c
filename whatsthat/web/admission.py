"""How many page kernels fit, and who a visitor is: the arithmetic behind the server's admission control.

Each page view costs Voila a kernel (docs/serving.md). Nothing in Voila or jupyter_server limits how
many it starts, so 30 plain GETs (a crawler, a link preview in a busy chat, an uptime pinger) left 31
kernels and 940 MB on a 512 MB dyno (issue 29). The server's kernel manager
(`whatsthat.web.kernelpool.PageKernelManager`) admits a new page only while the kernels fit in the
memory budget; this module holds what it needs and that is plain Python:

- `memory_budget`: the container's memory limit (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`),
  else the operator's `whatsthat serve --memory-mb`, else 512 MB (the smallest Heroku dyno);
- `measure`: what the server's parts cost, as PSS (shared pages split among the processes that map
  them, so the parts add up honestly): the server, the model process, the kernel factory, the kernels;
- `Costs.room`: how many more kernels fit in the budget beside what was measured;
- `client_address`: who holds a kernel, for the per-client cap (X-Forwarded-For only where trusted).

Nothing here is hard-coded but the headroom: the model process's working memory while it decodes one
large photo (docs/serving.md, "Uploads": a 200 MP JPEG takes about 40 MB), which no idle measurement sees.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MEMORY_MB = 512  # Heroku's Eco and Basic dynos
HEADROOM_MB = 40  # the model process decoding one large photo (see the module docstring)
PER_CLIENT = 3  # kernels one client address may hold at once
# Seconds a page has, after its HTML was sent, to open its kernel's websocket. Measured: a slow phone
# (Chromium with its CPU slowed down 6x, DevTools' slow 4G, an empty cache) opened it 14-15 s after the
# HTML; twice that leaves room for a slower one, and a pinger once a minute still leaves at most one
# kernel standing (docs/serving.md, "Kernels no page joins"; bench/traffic_bench.py).
JOIN_TIMEOUT = 30.0
UNLIMITED = 2**60  # cgroup v1 says "no limit" with a number near 2**63
CGROUP_ROOT = Path("/sys/fs/cgroup")
MB = 2**20


def cgroup_memory_limit(root: Path = CGROUP_ROOT, proc_cgroup: Path = Path("/proc/self/cgroup")) -> int | None:
    """This process's container memory limit in bytes (cgroup v2, then v1); None where there is none.

    A container usually sees its own cgroup at the root of the hierarchy (a cgroup namespace); a process
    in a nested cgroup has its path in /proc/self/cgroup. Both places are read, the nested one first.
    """
    v2, v1 = [], []
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        rel = path.lstrip("/")
        if hierarchy == "0" and controllers == "":
            v2.append(root / rel / "memory.max")
        elif "memory" in controllers.split(","):
            v1.append(root / "memory" / rel / "memory.limit_in_bytes")
    candidates = [*v2, root / "memory.max", *v1, root / "memory" / "memory.limit_in_bytes"]
    for path in dict.fromkeys(candidates):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return value if 0 < value < UNLIMITED else None
    return None


@dataclass(frozen=True)
class Budget:
    """The memory the server may use, and where that figure came from (for the log and the docs)."""

    mb: float
    source: str


def memory_budget(option_mb: float | None = None, cgroup_limit: int | None = None) -> Budget:
    """The operator's `--memory-mb` when given, else the container's limit, else DEFAULT_MEMORY_MB.

    `cgroup_limit`: bytes, as `cgroup_memory_limit()` reads them (passed in by tests).
    """
    if option_mb is not None:
        if option_mb <= 0:
            raise ValueError(f"the memory budget must be positive, not {option_mb} MB")
        return Budget(float(option_mb), "--memory-mb")
    if cgroup_limit is not None:
        return Budget(cgroup_limit / MB, "the container's memory limit (cgroup)")
    return Budget(float(DEFAULT_MEMORY_MB), f"the default for a {DEFAULT_MEMORY_MB} MB dyno")


@dataclass
class Costs:
    """PSS in MB of the server's parts, as measured; `kernels` holds one figure per kernel."""

    server: float = 0.0
    model: float = 0.0
    factory: float = 0.0
    kernels: list[float] = field(default_factory=list)

    @property
    def fixed(self) -> float:
        """What the server costs with no kernel at all."""
        return self.server + self.model + self.factory

    @property
    def total(self) -> float:
        return self.fixed + sum(self.kernels)

    def room(self, budget_mb: float, kernel_mb: float, headroom_mb: float = HEADROOM_MB) -> int:
        """How many more kernels of `kernel_mb` fit in `budget_mb` less the headroom, beside all measured here."""
        if kernel_mb <= 0:
            raise ValueError("a kernel's cost must be positive")
        return max(0, int((budget_mb - headroom_mb - self.total) // kernel_mb))

    def describe(self) -> str:
        kernels = ", ".join(f"{k:.0f}" for k in self.kernels) or "none"
        return (f"server {self.server:.0f} MB + model process {self.model:.0f} MB + kernel factory "
                f"{self.factory:.0f} MB; kernels {kernels} MB")  # fmt: skip


def kind_of(cmdline: str, parent_cmdline: str = "") -> str:
    """"model", "factory", "kernel" or "other", from a process's command line (and its parent's).

    A kernel forked by the factory keeps the factory's command line: its parent tells them apart.
    """
    if "whatsthat.web.modelprocess" in cmdline:
        return "model"
    if "whatsthat.web.kernelfactory" in cmdline:
        return "kernel" if "whatsthat.web.kernelfactory" in parent_cmdline else "factory"
    if "whatsthat.web.pagekernel" in cmdline or "ipykernel_launcher" in cmdline:
        return "kernel"
    return "other"


def measure(pid: int | None = None) -> Costs:
    """The PSS of process `pid` (default: this one, the server) and of everything it started, by part.

    Reads /proc/PID/smaps_rollup through psutil (installed with ipykernel, which requires it): a few
    milliseconds per process. Processes that end while it reads are skipped.
    """
    import psutil  # imported here: only the server measures, and only on Linux does PSS exist

    me = psutil.Process(pid)
    costs = Costs(server=_pss_mb(me) or 0.0)
    for child in me.children(recursive=True):
        try:
            line = " ".join(child.cmdline())
            parent = child.parent()
            parent_line = " ".join(parent.cmdline()) if parent is not None else ""
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        pss = _pss_mb(child)
        if pss is None:
            continue
        kind = kind_of(line, parent_line)
        if kind == "kernel":
            costs.kernels.append(pss)
        elif kind == "model":
            costs.model += pss
        elif kind == "factory":
            costs.factory += pss
        else:  # a short-lived helper (the preview drawer): counted with the server
            costs.server += pss
    return costs


def _pss_mb(p: object) -> float | None:
    import psutil

    try:
        return p.memory_full_info().pss / MB  # type: ignore[attr-defined]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, AttributeError):
        return None


def client_address(remote_ip: str | None, forwarded_for: Iterable[str] = (), *, trust_forwarded: bool = False) -> str:
    """Who is asking: the connection's peer, or behind a trusted router the address it saw.

    Heroku's router appends the address it received the request from to X-Forwarded-For, after whatever
    the client sent itself, so only the last entry is the router's word; the ones before it are the
    client's own and can say anything. Where no such router is in front (`trust_forwarded` False), the
    header is the client's own too and is ignored. An entry that is not an IP address is ignored.
    """
    if trust_forwarded:
        entries = [e.strip() for value in forwarded_for for e in value.split(",") if e.strip()]
        if entries:
            last = entries[-1]
            try:
                return str(ipaddress.ip_address(last))
            except ValueError:
                pass
    return remote_ip or "unknown"


def trust_forwarded_default(environ: Mapping[str, str] | None = None) -> bool:
    """Trust X-Forwarded-For by default only on a Heroku dyno (it sets $DYNO), where its router is in front."""
    env = os.environ if environ is None else environ
    return bool(env.get("DYNO"))


# Link-preview and search robots that say who they are. They get the page's preview (title, classes,
# picture) as a static page, without a kernel: they never run the page's JavaScript anyway. Anything
# else, including robots that do not say so, gets the ordinary page under the same caps as a visitor.
PREVIEW_ROBOTS = re.compile(
    r"facebookexternalhit|facebookcatalog|Facebot|meta-externalagent|Twitterbot|Slackbot|Discordbot|WhatsApp|"
    r"TelegramBot|LinkedInBot|SkypeUriPreview|Pinterestbot|redditbot|Applebot|Embedly|Iframely|vkShare|"
    r"Mastodon|Bluesky|Googlebot|bingbot|DuckDuckBot|YandexBot|Baiduspider|Google-InspectionTool",
    re.IGNORECASE,
)


def is_preview_robot(user_agent: str | None) -> bool:
    return bool(user_agent) and PREVIEW_ROBOTS.search(user_agent or "") is not None
