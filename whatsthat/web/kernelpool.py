"""The kernel manager Voila runs on (`whatsthat serve`): which pages get a kernel, and how long a kernel lives.

Voila starts a kernel for every GET of the page and jupyter_server keeps it until the idle culler, 10
minutes later. Nothing limits how many: 30 plain GETs (a crawler, a link preview, an uptime pinger)
left 31 kernels and 940 MB on a 512 MB dyno (issue 29). This manager adds, to jupyter_server's
`AsyncMappingKernelManager`:

- **Admission from the memory budget.** Once the model process has loaded and the preheated kernel has
  run the notebook, it measures what the server's parts cost (PSS: the server, the model process, the
  kernel factory, one kernel; `whatsthat.web.admission`), and from then on the whole server every
  `measure_interval` seconds. A new page is admitted only while the last measurement, plus one kernel's
  measured cost for each kernel started since and for the new one, stays within the budget (`--memory-mb`,
  else the container's memory limit, else 512 MB) less a headroom for the model process's work. So what
  the kernels really cost decides, not a guess, and a model process that grows leaves room for fewer.
  Otherwise `admit()` says why not: the page handler (`whatsthat.web.voilaapp`) then sends the small
  busy page and no kernel starts.
- **A fair share per client.** One client address holds at most `per_client` kernels at a time.
- **Kernels no page joins are shut down fast.** A real page opens its kernel's websocket seconds after
  its HTML arrived; curl, crawlers, prefetches and link previews never do. A kernel handed to a page
  that has not opened its websocket `join_timeout` seconds after the HTML was sent is shut down then,
  not 10 minutes later. The preheated kernel waiting in Voila's pool was handed to nobody: it stays.
- **Who a kernel serves, for visitors' flags** (`flags`, set by `whatsthat serve --flags`): the flag's
  client hash needs the visitor's address, which only this process knows, and only from the moment it
  hands a kernel to a page. A kernel's environment cannot carry it: Voila's pool starts and preheats
  kernels before anyone asks for them. So `handed` tells the model process, which owns the flag store,
  "kernel K serves address A" (the `client` request of `whatsthat.web.protocol`, off the event loop);
  the kernel names itself with each flag (VOILA_KERNEL_ID, which Voila sets in every kernel), and the
  model process keeps only the keyed hash (`whatsthat.web.flagdesk`).
- **Draining** for a graceful stop: no new page, no kernel restarted, and a way to see which kernels
  are still working (`busy_kernels`).
- **A kernel that died is not brought back empty.** jupyter_server restarts a kernel whose process died
  (its `KernelRestarter`: a crash, the OOM killer on a full dyno) under the same id. The new process has
  not run the notebook, so it holds none of its page's widgets: a page that connects to it afterwards
  shows only "Error displaying widget: model not found", and a page already connected sees the restart
  and its banner. Nothing can use it, so it is shut down at once, and Voila's pool refilled if it was
  the pooled kernel: its page then finds the kernel gone and reloads into a working one (`asleep.js`).
- **Culling that spares a page still connecting.** Voila's pool protects its kernels from the culler
  while they wait in the pool. A pooled kernel's last activity, though, is when it finished running the
  notebook, maybe hours earlier on a quiet site: the moment Voila hands it to a new page, it "has been
  idle" for longer than `cull_idle_timeout`, with no connection yet, and a culler tick in those seconds
  would shut it down under a page still loading its JavaScript (the browser tests hit this). So the
  first time the culler sees a kernel outside the pool, that counts as activity.

Voila takes this class as the base of its pooling manager
(`--VoilaConfiguration.multi_kernel_manager_class`), so its pool logic runs first: it calls this class's
`start_kernel`, `shutdown_kernel` and `cull_kernel_if_idle` only through `super()`, and only this
class's own methods (`admit`, `handed`, `page_sent`, ...) are called by the page handler.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from jupyter_server._tz import utcnow
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado.ioloop import IOLoop
from traitlets import Bool, Float, Integer

from whatsthat.errors import WhatsthatError
from whatsthat.web.admission import (
    HEADROOM_MB,
    JOIN_TIMEOUT,
    PER_CLIENT,
    Budget,
    Costs,
    cgroup_memory_limit,
    measure,
    memory_budget,
)
from whatsthat.web.protocol import ModelClient

MEASURE_INTERVAL = 2.0  # s; one measurement reads ~10 processes' smaps_rollup: a few ms
PROVISIONAL_PAGES = 2  # pages admitted before the first measurement (the first seconds of a cold start)
RESTART_WAIT = 60.0  # s at most for jupyter_server to finish restarting a dead kernel before it is shut down
SETTLE = 1.0  # s every kernel must have been idle before the start measurement


def _model_answers() -> bool:
    """Whether the model process (the server's own channel to it, from the environment) answers now; True without one."""
    client = ModelClient.from_env(connect_wait=1.0, request_timeout=5.0)
    if client is None:
        return True
    try:
        client.load_info()
    except WhatsthatError:  # ModelUnavailable, ModelLost: still loading, or restarting
        return False
    finally:
        client.close()
    return True


@dataclass
class Page:
    """A kernel handed to a page: who asked, when its HTML was sent, whether its websocket came."""

    client: str
    handed_at: float
    sent_at: float | None = None
    joined: bool = False


class PageKernelManager(AsyncMappingKernelManager):
    """jupyter_server's kernel manager with admission control, per-client caps and fast shutdown of unjoined kernels."""

    memory_mb = Float(0.0, config=True, help="memory budget in MB; 0: the container's limit (cgroup), else 512")
    headroom_mb = Float(HEADROOM_MB, config=True, help="MB kept free for the model process's work on a large photo")
    per_client = Integer(PER_CLIENT, config=True, help="kernels one client address may hold at once (0: no cap)")
    join_timeout = Float(JOIN_TIMEOUT, config=True,
                         help="seconds after its HTML was sent within which a page must open its kernel's websocket")  # fmt: skip
    measure_interval = Float(MEASURE_INTERVAL, config=True, help="seconds between measurements of the memory")
    flags = Bool(False, config=True, help="visitors' flags are on: tell the model process which client each page's kernel serves")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._seen_outside_pool: set[str] = set()
        self._pages: dict[str, Page] = {}  # kernel id -> the page it was handed to
        self._admitting: Counter[str] = Counter()  # client -> GETs admitted that have no kernel yet
        self._starting = 0
        self.draining = False
        self.budget: Budget = memory_budget(self.memory_mb or None, cgroup_memory_limit())
        self.start_costs: Costs | None = None  # the first measurement
        self.kernel_mb: float | None = None  # one kernel's cost: the preheated kernel's PSS at the start
        self.sampled_mb: float | None = None  # the whole server, at the last measurement
        self._sampled: set[str] = set()  # the kernels that measurement saw
        self._measuring = False
        self._model: ModelClient | None = None  # the server's own connection to the model process, for flags

    # -- counting --

    def pool_target(self) -> int:
        """How many kernels Voila keeps preheated (its pooling manager's setting; 0 without preheating)."""
        config = getattr(self, "kernel_pools_config", None) or {}
        return int((config.get("default") or {}).get("pool_size", 0))

    def pages(self) -> dict[str, Page]:
        """The kernels handed to pages that are still running."""
        for kid in [k for k in self._pages if k not in self._kernels]:
            del self._pages[kid]
        return self._pages

    def kernel_count(self) -> int:
        """Kernels running or promised: pages', pages admitted but not yet served, and the pool's."""
        pages = len(self.pages())
        others = len(self._kernels) + self._starting - pages  # the pool's, ready or starting
        return pages + sum(self._admitting.values()) + max(self.pool_target(), others)

    def held_by(self, client: str) -> int:
        return sum(1 for p in self.pages().values() if p.client == client) + self._admitting[client]

    def predicted_mb(self) -> float | None:
        """The whole server now: the last measurement, plus one kernel's cost for each kernel it did not see."""
        if self.sampled_mb is None or self.kernel_mb is None:
            return None
        unseen = max(0, self.kernel_count() - len(self._sampled & set(self._kernels)))
        return self.sampled_mb + unseen * self.kernel_mb

    # -- the page handler's side --

    def admit(self, client: str) -> str | None:
        """Reserve a kernel for a page requested by `client`; None when admitted, else why not (for the log).

        Admitted, the caller must follow with `handed` (it got a kernel) or `release` (it did not).
        """
        self.start_measuring()
        if self.draining:
            return "the server is stopping"
        if self.per_client > 0 and self.held_by(client) >= self.per_client:
            return f"{client} already holds {self.held_by(client)} kernels (at most {self.per_client} per client)"
        count, predicted = self.kernel_count(), self.predicted_mb()
        if predicted is None or self.kernel_mb is None:  # the first seconds of a cold start
            if count + 1 > self.pool_target() + PROVISIONAL_PAGES:
                return f"{count} kernels running or starting, {PROVISIONAL_PAGES} pages before the memory is measured"
        elif predicted + self.kernel_mb > self.budget.mb - self.headroom_mb:
            return (f"{count} kernels running or starting, about {predicted:.0f} MB; one more ({self.kernel_mb:.0f} MB) "
                    f"would leave less than {self.headroom_mb:.0f} MB of the {self.budget.mb:.0f} MB budget")  # fmt: skip
        self._admitting[client] += 1
        return None

    def release(self, client: str) -> None:
        """An admitted page request ended without a kernel (it failed, or the visitor left)."""
        if self._admitting[client] > 0:
            self._admitting[client] -= 1
        if self._admitting[client] <= 0:
            del self._admitting[client]

    def handed(self, client: str, kernel_id: str) -> None:
        """An admitted page request got `kernel_id` (from the pool or newly started)."""
        self.release(client)
        self._pages[kernel_id] = Page(client, time.monotonic())
        if self.flags:  # see the module docstring: the flag's client hash
            if self._model is None:  # one connection for all pages (its lock sends one request at a time)
                self._model = ModelClient.from_env(request_timeout=10.0)
            if self._model is not None:  # else no model process runs beside this server: no flags either
                IOLoop.current().run_in_executor(None, self._tell_model, self._model, kernel_id, client)

    def _tell_model(self, model: ModelClient, kernel_id: str, client: str) -> None:
        """Tell the model process which client `kernel_id` serves. In a thread: a page may come while the
        model process still loads (the page is built from the model card without waiting), and this waits
        for it as a kernel does."""
        try:
            model.tell_client(kernel_id, client)
        except WhatsthatError as e:  # flags from this page then count per page, not per client
            self.log.warning("could not tell the model process which client kernel %s serves: %s", kernel_id, e)

    def page_sent(self, kernel_id: str) -> None:
        """The page's HTML has been sent (or its request ended): its websocket must come within `join_timeout`."""
        page = self._pages.get(kernel_id)
        if page is None or page.sent_at is not None:
            return
        page.sent_at = time.monotonic()
        if not page.joined:
            IOLoop.current().call_later(self.join_timeout, self._shut_down_if_unjoined, kernel_id)

    async def _shut_down_if_unjoined(self, kernel_id: str) -> None:
        page = self._pages.get(kernel_id)
        if page is None or page.joined or kernel_id not in self._kernels:
            return
        self.log.warning("kernel %s: no page opened its websocket within %.0fs of its HTML reaching %s "
                         "(a robot, a prefetch or a link preview): shutting it down",
                         kernel_id, self.join_timeout, page.client)  # fmt: skip
        self._pages.pop(kernel_id, None)
        try:
            await self.shutdown_kernel(kernel_id, now=True)
        except KeyError:  # shut down meanwhile (the page's own beacon, the culler)
            pass

    # -- jupyter_server's hooks --

    def notify_connect(self, kernel_id: str) -> None:
        """A websocket joined the kernel (jupyter_server calls this for every kernel websocket)."""
        super().notify_connect(kernel_id)
        page = self._pages.get(kernel_id)
        if page is not None:
            page.joined = True

    async def start_kernel(self, **kwargs: Any) -> str:
        self._starting += 1
        try:
            kernel_id = await super().start_kernel(**kwargs)
        finally:
            self._starting -= 1
        if kernel_id in self._kernels:  # jupyter_client's restarter calls this before restarting the process
            self._kernels[kernel_id].add_restart_callback(lambda: self._restarted(kernel_id), "restart")
        return kernel_id

    def _restarted(self, kernel_id: str) -> None:
        """jupyter_server is restarting `kernel_id` after its process died: see the module docstring."""
        self.log.warning("kernel %s died; restarted, it would hold none of its page's widgets: shutting it down",
                         kernel_id)  # fmt: skip
        self._pages.pop(kernel_id, None)
        IOLoop.current().add_callback(self._shut_down_dead, kernel_id)

    async def _shut_down_dead(self, kernel_id: str) -> None:
        # The restarter fired this callback and is restarting the kernel now: a shutdown in the middle of
        # that would race it, so wait until the new process is up (its `ready` resolved, the process alive).
        deadline = time.monotonic() + RESTART_WAIT
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            kernel = self._kernels.get(kernel_id)
            if kernel is None:
                return
            if kernel.ready.done() and await kernel.is_alive():
                break
        try:
            await self.shutdown_kernel(kernel_id, now=True)
        except KeyError:  # shut down meanwhile
            return
        notebook = getattr(self, "notebook_path", None)  # set by Voila's pooling subclass
        refill = getattr(self, "fill_if_needed", None)
        if notebook and refill is not None and not self.draining:
            refill(delay=0, notebook_name=notebook)  # the pool never refills after a shutdown by itself

    async def shutdown_kernel(self, kernel_id: str, now: bool = False, restart: bool = False) -> None:
        try:
            await super().shutdown_kernel(kernel_id, now=now, restart=restart)
        finally:
            if not restart:
                self._pages.pop(kernel_id, None)

    async def cull_kernel_if_idle(self, kernel_id: str) -> None:
        self._seen_outside_pool &= set(self._kernels)  # forget kernels shut down since the last tick
        if kernel_id not in self._seen_outside_pool:
            self._seen_outside_pool.add(kernel_id)
            kernel = self._kernels.get(kernel_id)
            if kernel is not None:
                # the attribute jupyter_server's activity watcher keeps up to date for this same purpose
                kernel.last_activity = utcnow()
            return
        await super().cull_kernel_if_idle(kernel_id)

    # -- draining, for a graceful stop --

    def drain(self) -> None:
        """Admit no page and restart no kernel from now on (the server is stopping)."""
        self.draining = True
        for kernel_id in list(self._kernels):
            kernel = self._kernels.get(kernel_id)
            if kernel is not None:
                kernel.stop_restarter()

    def busy_kernels(self) -> list[str]:
        """Kernels running a callback now (a classification in flight), by jupyter_server's activity watcher."""
        return [kid for kid, k in list(self._kernels.items()) if getattr(k, "execution_state", None) == "busy"]

    # -- measuring the memory --

    def start_measuring(self) -> None:
        """Measure once the model and the preheated kernel are ready, then every `measure_interval` seconds (once)."""
        if not self._measuring:
            self._measuring = True
            IOLoop.current().add_callback(self._measure_forever)

    async def _measure_forever(self) -> None:
        await self._wait_until_ready()
        while True:
            seen = set(self._kernels)
            try:
                costs = await asyncio.to_thread(measure)
            except Exception:  # a measurement must never stop the server; the last one stays
                self.log.exception("measuring the server's memory failed")
            else:
                self._update(costs, seen & set(self._kernels))
            await asyncio.sleep(self.measure_interval)

    async def _wait_until_ready(self) -> None:
        """Until the model process answers and every kernel (the preheated one) has been idle for SETTLE seconds."""
        while not await asyncio.to_thread(_model_answers):  # short tries: a thread waiting long would delay exit
            await asyncio.sleep(0.5)
        idle_since = None
        while True:
            states = [getattr(k, "execution_state", None) for k in list(self._kernels.values())]
            if states and all(s == "idle" for s in states) and not self._starting:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= SETTLE:
                    return
            else:
                idle_since = None
            await asyncio.sleep(0.25)

    def _update(self, costs: Costs, seen: set[str]) -> None:
        """A new measurement of the whole server; the first one also gives one kernel's cost."""
        if self.start_costs is None:
            if not costs.kernels:
                return  # no kernel to measure one by yet
            self.start_costs = costs
            self.kernel_mb = max(costs.kernels)  # the preheated kernel, sharing its pages with the factory alone
            room = costs.room(self.budget.mb, self.kernel_mb, self.headroom_mb)
            self.log.info("memory budget %.0f MB (%s); measured: %s; %.0f MB kept free: room for %d more kernels "
                          "now, i.e. about %d visitors at once", self.budget.mb, self.budget.source, costs.describe(),
                          self.headroom_mb, room, room)  # fmt: skip
            if room < 1:
                self.log.error("the memory budget leaves no room for a visitor's kernel: every page gets the busy page")
        self.sampled_mb, self._sampled = costs.total, seen
