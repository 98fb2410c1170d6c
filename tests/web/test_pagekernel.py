"""The visitor's kernel: the kernelspec `whatsthat serve` writes, and a real kernel started from it."""

from __future__ import annotations

import json
import os
import sys

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import start_new_kernel

from whatsthat.web.serve import voila_command, write_page_kernelspec

# what the kernel reports about itself: whether the debugger's modules were imported, whether it keeps history
PROBE = "import sys, json; print(json.dumps({'debugpy': 'debugpy' in sys.modules and sys.modules['debugpy'] is not None, "\
        "'pydevd': any(m.startswith('_pydevd') for m in sys.modules), "\
        "'history': get_ipython().history_manager.enabled}))"


def test_kernelspec_is_found_first_as_python3(tmp_path, monkeypatch):
    root = write_page_kernelspec(tmp_path / "k", python="/venv/bin/python")
    spec = json.loads((root / "kernels" / "python3" / "kernel.json").read_text())
    assert spec["argv"] == ["/venv/bin/python", "-m", "whatsthat.web.pagekernel", "-f", "{connection_file}"]
    monkeypatch.setenv("JUPYTER_PATH", str(root))
    # the name app.ipynb asks for resolves to our launcher, ahead of ipykernel's own python3
    assert KernelSpecManager().get_kernel_spec("python3").argv[:3] == ["/venv/bin/python", "-m", "whatsthat.web.pagekernel"]


def test_voila_command_puts_the_kernelspec_first_on_jupyter_path(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_PATH", "/elsewhere")
    cmd = voila_command(kernel_path=tmp_path)
    (path,) = [a.removeprefix("JUPYTER_PATH=").split(os.pathsep) for a in cmd if a.startswith("JUPYTER_PATH=")]
    assert path[0] == str(tmp_path) and path[-1] == "/elsewhere"  # the kernelspec first, the user's own last
    assert path[1].endswith("whatsthat/web/templates")  # the page's template, between them


def _run_in_kernel(kernel_name: str, env_path: str | None) -> dict:
    old = os.environ.get("JUPYTER_PATH")
    try:
        if env_path is not None:
            os.environ["JUPYTER_PATH"] = env_path
        km, kc = start_new_kernel(kernel_name=kernel_name)
    finally:
        if old is None:
            os.environ.pop("JUPYTER_PATH", None)
        else:
            os.environ["JUPYTER_PATH"] = old
    try:
        out: list[str] = []
        reply = kc.execute_interactive(PROBE, timeout=60,
                                       output_hook=lambda m: out.append(m["content"].get("text", "")))  # fmt: skip
        assert reply["content"]["status"] == "ok"
        return json.loads("".join(out))
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_page_kernel_runs_code_without_the_debugger_or_history(tmp_path, monkeypatch):
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # where a kernel's history would go
    root = write_page_kernelspec(tmp_path / "spec", python=sys.executable)
    page = _run_in_kernel("python3", str(root))
    assert page == {"debugpy": False, "pydevd": False, "history": False}
    # the control: ipykernel's own kernel does load them and keep history here, so the check above can fail
    plain = _run_in_kernel("python3", None)
    assert plain == {"debugpy": True, "pydevd": True, "history": True}
