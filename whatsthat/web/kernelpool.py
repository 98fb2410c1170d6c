"""The kernel manager Voila runs on (`whatsthat serve`): culling that spares a page still connecting.

Voila's preheated pool protects its kernels from the culler while they wait in the pool. A pooled
kernel's last activity, though, is when it finished running the notebook, maybe hours earlier on a
quiet site. The moment Voila hands it to a new page it is no longer protected, and it has "been idle"
for longer than `cull_idle_timeout`, with no connection yet: the page is still loading its JavaScript.
If the culler ticks in those seconds, it shuts the kernel down and the visitor gets a page whose
widgets never appear (404 on the kernel). The browser tests hit this on a busy machine.

The fix: the first time the culler sees a kernel outside the pool, that counts as activity. A page's
kernel is then culled `cull_idle_timeout` after it left the pool at the earliest (at most one
`cull_interval` later than before). Culling of abandoned pages otherwise works as in jupyter_server.

Voila takes this class as the base of its pooling manager
(`--VoilaConfiguration.multi_kernel_manager_class`), so its pool logic runs first: it only calls this
`cull_kernel_if_idle` for kernels that are not in the pool.
"""

from __future__ import annotations

from jupyter_server._tz import utcnow
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager


class PageKernelManager(AsyncMappingKernelManager):
    """jupyter_server's kernel manager, where leaving Voila's pool counts as kernel activity."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self._seen_outside_pool: set[str] = set()

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
