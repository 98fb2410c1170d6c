"""Culling that spares a kernel Voila just handed from its pool to a page that is still loading."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from types import SimpleNamespace

from jupyter_server._tz import utcnow

from whatsthat.web.kernelpool import PageKernelManager


def idle_kernel(seconds: float) -> SimpleNamespace:
    return SimpleNamespace(last_activity=utcnow() - timedelta(seconds=seconds), execution_state="idle",
                           kernel_name="python3", kernel_spec=SimpleNamespace(metadata={}))  # fmt: skip


def manager() -> tuple[PageKernelManager, list[str]]:
    mgr = PageKernelManager(cull_idle_timeout=30, cull_interval=5, cull_connected=True)
    shut: list[str] = []

    async def shutdown_kernel(kernel_id: str, *args: object, **kwargs: object) -> None:
        shut.append(kernel_id)
        mgr._kernels.pop(kernel_id, None)

    mgr.shutdown_kernel = shutdown_kernel  # the instance's own: no real kernel to stop here
    return mgr, shut


def test_a_kernel_just_out_of_the_pool_is_not_culled_at_once():
    mgr, shut = manager()
    mgr._kernels["k"] = idle_kernel(600)  # ran the notebook 10 minutes ago, handed to a page just now
    asyncio.run(mgr.cull_kernel_if_idle("k"))
    assert shut == []  # jupyter_server alone would cull it here: idle 600 s > 30 s, no connection
    assert (utcnow() - mgr._kernels["k"].last_activity).total_seconds() < 5


def test_an_abandoned_page_is_still_culled():
    mgr, shut = manager()
    mgr._kernels["k"] = idle_kernel(600)
    asyncio.run(mgr.cull_kernel_if_idle("k"))
    mgr._kernels["k"].last_activity = utcnow() - timedelta(seconds=31)  # 31 s later, nothing happened
    asyncio.run(mgr.cull_kernel_if_idle("k"))
    assert shut == ["k"]
    mgr._kernels["k2"] = idle_kernel(10)
    asyncio.run(mgr.cull_kernel_if_idle("k2"))
    assert mgr._seen_outside_pool == {"k2"}  # the culled kernel is forgotten


def test_a_busy_or_recent_kernel_is_kept():
    mgr, shut = manager()
    mgr._kernels["k"] = idle_kernel(5)
    for _ in range(3):
        asyncio.run(mgr.cull_kernel_if_idle("k"))
    assert shut == []


# -- admission, the per-client cap, kernels no page joins (whatsthat.web.kernelpool) --


def pooled_manager(room_mb: float | None = 4 * 20, per_client: int = 3, join_timeout: float = 0.2,
                   ) -> tuple[PageKernelManager, list[str]]:  # fmt: skip
    """A manager with one preheated kernel ("pool") of 20 MB, measured with `room_mb` left in its budget (None: not yet)."""
    from whatsthat.web.admission import Budget

    mgr, shut = manager()
    mgr.per_client, mgr.join_timeout = per_client, join_timeout
    mgr.kernel_pools_config = {"default": {"pool_size": 1}}  # Voila's pooling manager's setting
    mgr._measuring = True  # no measuring loop here: the test says what was measured
    mgr.budget, mgr.headroom_mb = Budget(512, "test"), 40
    mgr._kernels["pool"] = idle_kernel(0)
    if room_mb is not None:
        mgr.kernel_mb, mgr.sampled_mb, mgr._sampled = 20, 512 - 40 - room_mb, {"pool"}
    return mgr, shut


def hand_out(mgr: PageKernelManager, client: str, kernel_id: str) -> None:
    """What the page handler does for one admitted page: the kernel it got."""
    assert mgr.admit(client) is None
    mgr._kernels[kernel_id] = idle_kernel(0)
    mgr.handed(client, kernel_id)


def test_pages_are_admitted_while_one_more_kernel_fits_the_budget():
    mgr, _ = pooled_manager(room_mb=3 * 20, per_client=0)
    for i in range(3):
        hand_out(mgr, f"10.0.0.{i}", f"k{i}")
    assert mgr.predicted_mb() == 472  # the measured 412 MB, and three kernels of 20 MB it did not see
    refusal = mgr.admit("10.0.0.9")
    assert refusal is not None and "about 472 MB; one more (20 MB) would leave less than 40 MB of the 512 MB" in refusal
    mgr._kernels.pop("k0")  # one visitor left: its kernel is gone
    assert mgr.admit("10.0.0.9") is None


def test_a_new_measurement_replaces_the_estimate():
    from whatsthat.web.admission import Costs

    mgr, _ = pooled_manager(room_mb=2 * 20, per_client=0)
    hand_out(mgr, "a", "k1")
    hand_out(mgr, "b", "k2")
    assert mgr.admit("c") is not None
    # measured: the two visitors' kernels cost 12 MB each, not 20: room for one more
    mgr._update(Costs(server=70, model=270, factory=20, kernels=[20, 12, 12]), {"pool", "k1", "k2"})
    assert mgr.predicted_mb() == 404 and mgr.admit("c") is None


def test_an_admitted_page_counts_before_its_kernel_exists():
    mgr, _ = pooled_manager(room_mb=2 * 20, per_client=0)
    assert mgr.admit("a") is None and mgr.admit("b") is None  # both still waiting for Voila
    assert mgr.kernel_count() == 3 and mgr.admit("c") is not None
    mgr.release("a")  # a's request ended without a kernel
    assert mgr.admit("c") is None


def test_before_the_first_measurement_only_a_few_pages_are_admitted():
    mgr, _ = pooled_manager(room_mb=None, per_client=0)
    assert mgr.admit("a") is None and mgr.admit("b") is None
    assert "2 pages before the memory is measured" in mgr.admit("c")


def test_the_first_measurement_gives_a_kernels_cost():
    from whatsthat.web.admission import Costs

    mgr, _ = pooled_manager(room_mb=None)
    mgr._update(Costs(server=70, model=270, factory=22), set())
    assert mgr.kernel_mb is None  # no kernel yet: nothing to go by
    mgr._update(Costs(server=70, model=270, factory=22, kernels=[22]), {"pool"})
    assert (mgr.kernel_mb, mgr.sampled_mb) == (22, 384)
    assert mgr.start_costs is not None and mgr.start_costs.total == 384


def test_one_client_holds_at_most_per_client_kernels():
    mgr, _ = pooled_manager(room_mb=20 * 20, per_client=3)
    for i in range(3):
        hand_out(mgr, "6.6.6.6", f"k{i}")
    assert "6.6.6.6 already holds 3 kernels" in mgr.admit("6.6.6.6")
    assert mgr.admit("1.2.3.4") is None  # others are not held back
    mgr._kernels.pop("k1")
    assert mgr.admit("6.6.6.6") is None


def test_a_draining_server_admits_nobody():
    mgr, _ = pooled_manager()
    stopped = []
    mgr._kernels["pool"].stop_restarter = lambda: stopped.append("pool")
    mgr.drain()
    assert mgr.admit("a") == "the server is stopping" and stopped == ["pool"]


def test_a_kernel_no_page_joins_is_shut_down_and_a_joined_one_kept():
    async def scenario() -> list[str]:
        mgr, shut = pooled_manager(join_timeout=0.2)
        hand_out(mgr, "robot", "r")
        hand_out(mgr, "visitor", "v")
        mgr.page_sent("r")
        mgr.page_sent("v")
        mgr.notify_connect("v")  # the visitor's page opened its websocket
        await asyncio.sleep(0.5)
        assert "r" not in mgr.pages() and "v" in mgr.pages()
        return shut

    assert asyncio.run(scenario()) == ["r"]  # the preheated kernel, handed to nobody, stays too


def test_the_join_timeout_starts_when_the_page_was_sent():
    async def scenario() -> list[str]:
        mgr, shut = pooled_manager(join_timeout=0.2)
        hand_out(mgr, "slow page", "k")
        await asyncio.sleep(0.4)  # Voila still rendering the page: no clock yet
        assert shut == []
        mgr.page_sent("k")
        await asyncio.sleep(0.4)
        return shut

    assert asyncio.run(scenario()) == ["k"]
