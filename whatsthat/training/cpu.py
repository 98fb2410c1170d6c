"""CPU training speed: where the big activation buffers live, and how they are laid out.

A CNN's forward and backward passes allocate and free activation buffers of tens of megabytes on
every batch. glibc's malloc serves a request above its mmap threshold (128 KiB, sliding up to at
most 32 MiB) with a fresh `mmap`, and gives the top of its heap back to the system whenever more
than the trim threshold (twice the mmap threshold, so at most 64 MiB) is free there: after each
batch, that is, so the next batch page-faults its activations in again, zero-filled by the kernel.
Profiled on 2 cores with efficientnet_lite0 at 224 px, the process spent more time in the kernel
than in the convolutions.

`big_buffers_on_heap` sets the mmap threshold to glibc's ceiling and the trim threshold to 1 GiB,
so the same memory is reused batch after batch; afterwards it puts back the values glibc's sliding
threshold settles at and hands the kept memory back to the system: about twice as fast on 2 cores,
with channels_last (the runs: docs/training.md, "Why it is fast on a CPU").

`channels_last`: oneDNN's convolutions are faster in NHWC layout on a CPU; the serving path already
runs the model that way (whatsthat.training.classifier). Training runs in it too, and the model goes back to
the usual layout before it is exported, so export.pkl is what it always was.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from fastai.data.core import DataLoaders, TfmdDL

# mallopt parameters, from glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit (it refuses a higher one)
SETTLED_TRIM_THRESHOLD = 2 * MMAP_THRESHOLD_MAX  # where glibc's sliding trim threshold ends up
TRIM_THRESHOLD = 1 << 30  # keep up to 1 GiB of freed memory at the top of the heap while training

# Batch size of the passes that only run a model forward (cached features, evaluation, the "not sure"
# statistics): on a CPU smaller batches are faster per picture, as more of their activations stay
# under the mmap threshold. No result depends on it: the model runs in eval mode.
INFERENCE_BS = 16


def forward_only_valid(dls: DataLoaders) -> TfmdDL:
    """The validation loader of fastai DataLoaders `dls` at INFERENCE_BS, in order."""
    return dls.valid.new(bs=INFERENCE_BS, shuffle=False, drop_last=False)


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (Linux); None elsewhere, where these settings do not apply."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    # gnu_get_libc_version exists only in glibc (musl has a mallopt that ignores these parameters)
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    return libc


@contextlib.contextmanager
def big_buffers_on_heap() -> Iterator[bool]:
    """While inside, serve big allocations from a heap that is not trimmed; yields whether it applied.

    On exit the thresholds go back to where glibc's own sliding thresholds settle after a few big
    frees (that sliding cannot be switched back on once set), and malloc_trim hands the kept
    memory back to the system.
    """
    libc = _glibc()
    if libc is None:
        yield False
        return
    applied = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    applied = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and applied
    try:
        yield applied
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, SETTLED_TRIM_THRESHOLD)
        libc.malloc_trim(0)


@contextlib.contextmanager
def channels_last(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in NHWC memory layout while inside, back in the usual (contiguous) layout on exit."""
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)
