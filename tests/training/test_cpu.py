"""Code checks for whatsthat.training.cpu: the speed settings apply, are undone, and change no number."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from whatsthat.training.cpu import _glibc, big_buffers_on_heap, channels_last


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings exist only on Linux")
def test_heap_settings_apply_on_glibc_and_memory_still_works():
    if _glibc() is None:
        pytest.skip("not glibc")
    with big_buffers_on_heap() as applied:
        assert applied is True  # mallopt accepted both values (it returns 0 for one it refuses)
        big = torch.ones(40 << 20, dtype=torch.uint8)  # above the mmap threshold: served from the heap now
        assert int(big.sum()) == 40 << 20
        del big
    # after the block the allocator still works (the thresholds were put back, the heap trimmed)
    assert int(torch.ones(40 << 20, dtype=torch.uint8).sum()) == 40 << 20


def test_heap_settings_are_a_no_op_without_glibc(monkeypatch):
    import whatsthat.training.cpu

    monkeypatch.setattr(whatsthat.training.cpu, "_glibc", lambda: None)
    with big_buffers_on_heap() as applied:
        assert applied is False


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2)).eval()


def test_channels_last_changes_the_layout_not_the_numbers():
    net, x = _net(), torch.randn(2, 3, 32, 32)
    want = net(x)
    with channels_last(net):
        assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
        got = net(x)
    assert torch.allclose(got, want, atol=1e-5)
    # back in the usual layout, so export.pkl pickles what it always did
    assert all(p.is_contiguous() for p in net.parameters())


def test_channels_last_is_undone_when_training_fails():
    net = _net()
    with pytest.raises(RuntimeError, match="boom"), channels_last(net):
        raise RuntimeError("boom")
    assert net[0].weight.is_contiguous()
