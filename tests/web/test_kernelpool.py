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
