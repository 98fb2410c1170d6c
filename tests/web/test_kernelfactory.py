"""Page kernels forked by the kernel factory: real factory processes, real kernels, jupyter_client's own manager."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from jupyter_client import BlockingKernelClient, KernelManager
from jupyter_client.connect import write_connection_file
from traitlets.config import Config

from whatsthat.web.kernelfactory import (
    ENV_AUTHKEY,
    ENV_SOCKET,
    FactoryClient,
    FactoryProvisioner,
    FactoryUnavailable,
    ForkedKernel,
    KernelFactory,
    kernel_args,
    unsupported,
    without_factory,
)
from whatsthat.web.protocol import send_message
from whatsthat.web.serve import write_page_kernelspec

# what a kernel reports about itself
PROBE = ("import os, sys, json, logging; print(json.dumps({'cwd': os.getcwd(), 'mark': os.environ.get('MARK'), "
         "'key': any(k.startswith('WHATSTHAT_KERNEL_FACTORY') for k in os.environ), "
         "'preloaded': 'whatsthat.web.app' in sys.modules, "
         "'debugpy': sys.modules.get('debugpy', 'absent') is not None, "
         "'history': get_ipython().history_manager.enabled, "
         "'factory_log': len(logging.getLogger('whatsthat.web.kernelfactory').handlers)}))")  # fmt: skip


def run(kc: BlockingKernelClient, code: str, timeout: float = 60) -> tuple[dict, str]:
    out: list[str] = []
    reply = kc.execute_interactive(code, timeout=timeout, output_hook=lambda m: out.append(m["content"].get("text", "")))
    return reply["content"], "".join(out)


def connect(connection_file: str) -> BlockingKernelClient:
    kc = BlockingKernelClient(connection_file=connection_file)
    kc.load_connection_file()
    kc.start_channels()
    deadline = time.monotonic() + 60
    while True:  # the kernel's heartbeat may not be up yet: "died before replying" is then premature
        try:
            kc.wait_for_ready(timeout=60)
            return kc
        except RuntimeError:
            assert time.monotonic() < deadline, "the kernel never answered"
            time.sleep(0.2)


def stopped(pid: int) -> bool:
    """Exited: gone, or a zombie (an orphan waits for whoever adopted it, often PID 1, to reap it)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_stopped(pids: list[int], timeout: float = 30) -> list[int]:
    """The pids still running after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while (running := [pid for pid in pids if not stopped(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return running


@pytest.fixture
def factory():
    with KernelFactory() as f:
        yield f


def test_forking_is_supported_here():
    # the serving platform (Linux) has fork and working pidfds; elsewhere `whatsthat serve` says why not
    assert unsupported() is None


def test_kernel_args_and_env():
    assert kernel_args(["/py", "-m", "whatsthat.web.pagekernel", "-f", "c.json"]) == ["-f", "c.json"]
    assert kernel_args(["/py", "-m", "ipykernel_launcher", "-f", "c.json"]) is None  # any other kernel: not ours
    assert without_factory({ENV_SOCKET: "s", ENV_AUTHKEY: "k", "PATH": "/bin"}) == {"PATH": "/bin"}


def test_a_forked_kernel_is_the_page_kernel_with_the_requested_env_and_cwd(factory, tmp_path):
    cf, _ = write_connection_file(str(tmp_path / "kernel.json"))
    client = FactoryClient(str(factory.socket), factory.authkey)
    env = {**without_factory(dict(os.environ)), "MARK": "from the request"}
    pid = client.fork(["-f", cf], env, str(tmp_path))
    kernel = ForkedKernel(pid, client)
    kc = connect(cf)
    try:
        assert psutil.Process(pid).ppid() == factory.proc.pid  # forked, not started
        assert os.getsid(pid) == pid  # a session of its own: interrupts reach it alone
        reply, out = run(kc, PROBE)
        assert reply["status"] == "ok", reply
        assert json.loads(out) == {"cwd": str(tmp_path), "mark": "from the request", "key": False,
                                   "preloaded": True, "debugpy": False, "history": False, "factory_log": 0}  # fmt: skip
        # an interrupt sent to its process group stops running code, as with any kernel
        kc.execute("import time; time.sleep(60)")
        time.sleep(1)
        os.killpg(pid, signal.SIGINT)
        reply = kc.get_shell_msg(timeout=30)["content"]
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt"
        assert kernel.poll() is None
    finally:
        kc.stop_channels()
        kernel.kill()
    assert kernel.wait(timeout=10) == -signal.SIGKILL  # the exit code as the factory reaped it
    assert stopped(pid)


def test_the_factory_refuses_requests_it_cannot_serve(factory, tmp_path):
    client = FactoryClient(str(factory.socket), factory.authkey)
    with pytest.raises(FactoryUnavailable, match="unknown op"):
        client._request({"op": "exec"}, wait=30)
    with pytest.raises(FactoryUnavailable, match="needs argv"):
        client._request({"op": "fork", "argv": "-f x", "env": {}, "cwd": "/"}, wait=30)
    with pytest.raises(FactoryUnavailable, match="refused the key"):
        FactoryClient(str(factory.socket), b"not the key")._request({"op": "status", "pid": 1}, wait=30)
    # a client that sends garbage is dropped; the factory still serves the next one
    from multiprocessing.connection import Client

    with Client(str(factory.socket), family="AF_UNIX", authkey=factory.authkey) as conn:
        conn.send_bytes(b"not json")
    with Client(str(factory.socket), family="AF_UNIX", authkey=factory.authkey) as conn:
        send_message(conn, {"op": "status", "pid": 1})
        assert conn.poll(10)
    assert client.exit_code(1) is None  # not its child: nothing to report


def test_a_dead_factory_is_restarted_and_its_kernels_stop_with_it(tmp_path):
    with KernelFactory(min_delay=0.1) as factory:
        client = FactoryClient(str(factory.socket), factory.authkey)
        cf, _ = write_connection_file(str(tmp_path / "k1.json"))
        first = client.fork(["-f", cf], without_factory(dict(os.environ)), str(tmp_path))
        connect(cf).stop_channels()
        old = factory.proc.pid
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while factory.starts < 2 or factory.proc.pid == old:
            assert time.monotonic() < deadline, "the factory was not restarted"
            time.sleep(0.1)
        cf2, _ = write_connection_file(str(tmp_path / "k2.json"))
        second = client.fork(["-f", cf2], without_factory(dict(os.environ)), str(tmp_path))  # waits for it to listen
        kc = connect(cf2)
        try:
            assert psutil.Process(second).ppid() == factory.proc.pid
            # the kernel of before stopped with its factory, as a kernel stops when its server dies (no orphans)
            assert wait_stopped([first]) == []
        finally:
            kc.stop_channels()
            for pid in (first, second):
                if psutil.pid_exists(pid):
                    os.kill(pid, signal.SIGKILL)


def _manager(spec_root: Path, monkeypatch, **config) -> KernelManager:
    monkeypatch.setenv("JUPYTER_PATH", str(spec_root))
    return KernelManager(kernel_name="python3", config=Config({"FactoryProvisioner": config}))


def test_jupyter_starts_interrupts_and_stops_page_kernels_through_the_factory(factory, tmp_path, monkeypatch):
    root = write_page_kernelspec(tmp_path / "spec", python=sys.executable, forked=True)
    for k, v in factory.env().items():
        monkeypatch.setenv(k, v)
    km = _manager(root, monkeypatch)
    km.start_kernel(cwd=str(tmp_path))
    kc = km.client()
    kc.start_channels()
    try:
        assert isinstance(km.provisioner, FactoryProvisioner)
        assert isinstance(km.provisioner.process, ForkedKernel)
        pid = km.provisioner.pid
        assert psutil.Process(pid).ppid() == factory.proc.pid
        kc.wait_for_ready(timeout=60)
        reply, out = run(kc, PROBE)
        assert json.loads(out)["key"] is False and json.loads(out)["preloaded"] is True  # the manager's env, less the key
        kc.execute("import time; time.sleep(60)")
        time.sleep(1)
        km.interrupt_kernel()
        assert kc.get_shell_msg(timeout=30)["content"]["ename"] == "KeyboardInterrupt"
        assert km.is_alive()
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert not km.is_alive()
    assert stopped(pid)


def test_without_a_factory_the_kernel_starts_as_a_process_of_its_own(tmp_path, monkeypatch, caplog):
    root = write_page_kernelspec(tmp_path / "spec", python=sys.executable, forked=True)
    monkeypatch.setenv(ENV_SOCKET, str(tmp_path / "nobody.sock"))  # set, but nothing listens there
    monkeypatch.setenv(ENV_AUTHKEY, "00" * 32)
    km = _manager(root, monkeypatch, connect_wait=0.5)
    km.start_kernel(cwd=str(tmp_path))
    try:
        assert "whatsthat.web.pagekernel" in " ".join(psutil.Process(km.provisioner.pid).cmdline())
        assert "starting the kernel as a process of its own" in caplog.text
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        reply, out = run(kc, PROBE)
        assert json.loads(out)["key"] is False  # even so, the key is not passed on
        kc.stop_channels()
    finally:
        km.shutdown_kernel(now=True)


def test_the_factory_and_its_kernels_stop_when_the_server_is_killed(tmp_path):
    # the "server" is a Python that runs a KernelFactory and is then killed without any shutdown
    code = (
        "import os, sys, time\n"
        "from jupyter_client.connect import write_connection_file\n"
        "from whatsthat.web.kernelfactory import FactoryClient, KernelFactory, without_factory\n"
        "f = KernelFactory().start()\n"
        "cf, _ = write_connection_file(sys.argv[1])\n"
        "pid = FactoryClient(str(f.socket), f.authkey).fork(['-f', cf], without_factory(dict(os.environ)), sys.argv[2])\n"
        "print(f.proc.pid, pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    server = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "k.json"), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    factory_pid = kernel_pid = None
    try:
        factory_pid, kernel_pid = map(int, server.stdout.readline().split())
        connect(str(tmp_path / "k.json")).stop_channels()  # the kernel is up
        server.kill()
        server.wait(timeout=10)
        assert wait_stopped([factory_pid, kernel_pid]) == []
    finally:
        server.kill()
        for pid in (factory_pid, kernel_pid):
            if pid is not None and psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)


def test_sigterm_lets_each_kernel_finish_its_callback_then_the_factory_and_kernels_stop(factory, tmp_path):
    """Heroku's stop: SIGTERM to the factory (and to every kernel). A callback in flight (here a cell that
    sleeps, as a Classify click waits for the model process) finishes and its output is sent; then all stop."""
    cf, _ = write_connection_file(str(tmp_path / "kernel.json"))
    client = FactoryClient(str(factory.socket), factory.authkey)
    pid = client.fork(["-f", cf], without_factory(dict(os.environ)), str(tmp_path))
    kc = connect(cf)
    factory.stop_restarting()
    try:
        msg_id = kc.execute("import time; time.sleep(2); print('answered')")
        time.sleep(0.7)  # the cell is running
        factory.proc.send_signal(signal.SIGTERM)  # the factory passes it on to its kernels
        os.kill(pid, signal.SIGTERM)  # and Heroku sends it to the kernel itself too
        out = []
        deadline = time.monotonic() + 30
        while "answered" not in "".join(out):
            assert time.monotonic() < deadline, out
            msg = kc.get_iopub_msg(timeout=30)
            if msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
    finally:
        kc.stop_channels()
    assert wait_stopped([pid, factory.proc.pid], timeout=15) == []
    assert factory.proc.wait(timeout=5) == 0


def test_sigterm_stops_an_idle_kernel_at_once(factory, tmp_path):
    cf, _ = write_connection_file(str(tmp_path / "kernel.json"))
    client = FactoryClient(str(factory.socket), factory.authkey)
    pid = client.fork(["-f", cf], without_factory(dict(os.environ)), str(tmp_path))
    connect(cf).stop_channels()
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    assert wait_stopped([pid], timeout=10) == []
    assert time.monotonic() - t0 < 5
