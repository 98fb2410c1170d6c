"""Page kernels forked from one process that has already imported what they need: the kernel factory.

Voila starts a kernel per page view, and a kernel started as a new Python process spends about a
second of CPU importing ipykernel, IPython, zmq, ipywidgets and whatsthat.web.app before it can answer,
and holds its own copy of those modules, on a dyno of 512 MB (docs/serving.md has the figures).

So `whatsthat serve` starts one factory process. It imports those modules once, and then forks each
new kernel from itself, the zygote of Android and gunicorn's `--preload`. A forked kernel starts with
every module already imported, and shares the pages they occupy with the factory and with the other
kernels until it writes to them. It saves memory, not time: what a forked kernel costs against one
started as a process of its own is measured in docs/serving.md; the pages do not become interactive
sooner, since their time is the browser's running Voila's JavaScript, not the kernels' start.

Lifetime: the factory stops when the server dies (a parent-death signal), and each kernel when its
factory does (ipykernel's parent poller), as kernels started by the server stop when it dies. On
SIGTERM (the server's stop, Heroku's stop of the whole dyno, the parent-death signal) it forks no more,
passes SIGTERM on to its kernels, which finish the callback in flight first (`whatsthat.web.pagekernel`),
and exits when they have, DRAIN seconds at most.

How Jupyter uses it. Kernel provisioners are jupyter_client's documented extension point for how a
kernel process is started. `FactoryProvisioner` is registered as the `whatsthat-kernel-factory`
provisioner in pyproject.toml, and `whatsthat.web.serve` names it in the page kernelspec. It asks the
factory to fork instead of running the kernelspec's command, and otherwise is jupyter_client's
LocalProvisioner: signals go to the kernel's process group, and the kernel manager polls and waits
for the process. It watches the process through a pidfd, because the kernel is the factory's child,
not the server's. When the factory is not running or does not answer, the provisioner runs the
kernelspec's command as usual (with a warning in the log), so a page works either way.

Why forking is safe here. Before it forks, the factory has only imported modules: it has started no
thread and created no ZeroMQ context or event loop. Each child then:

* starts a new session, so that an interrupt reaches its own process group and nothing else;
* reseeds `random`, so that no two kernels share its state;
* takes its arguments, environment and working directory from the request;
* runs exactly what `whatsthat.web.pagekernel` runs.

The wire: `multiprocessing.connection` over a Unix socket in a private (0700) directory, with an
authkey that only the server process holds (the kernels' environment never carries it). Messages are
`whatsthat.web.protocol`'s JSON frames:

    {"op": "fork", "argv": [...], "env": {...}, "cwd": "..."}  -> {"ok": true, "pid": N}
    {"op": "status", "pid": N}  -> {"ok": true, "exited": bool, "code": int | null}

    python -m whatsthat.web.kernelfactory --socket PATH     (the authkey comes in WHATSTHAT_KERNEL_FACTORY_KEY)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import importlib
import logging
import os
import random
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import LocalProvisioner
from traitlets import Float

from whatsthat.errors import WhatsthatError
from whatsthat.web.pagekernel import BLOCKED, mark_not_importable, run_kernel
from whatsthat.web.protocol import channel_from_env, recv_message, send_message
from whatsthat.web.restarter import Restarter, child_key

log = logging.getLogger("whatsthat.web.kernelfactory")

ENV_SOCKET = "WHATSTHAT_KERNEL_FACTORY"
ENV_AUTHKEY = "WHATSTHAT_KERNEL_FACTORY_KEY"  # hex
PROVISIONER = "whatsthat-kernel-factory"  # the entry point's name in pyproject.toml
KERNEL_MODULE = "whatsthat.web.pagekernel"  # the kernelspec's `-m` module, which a fork stands in for
# What a page kernel imports: ipykernel at start; the notebook's own imports; and what ipykernel
# imports only while it initialises (found by comparing a forked kernel's modules with the factory's
# after a page ran). A module missing here is only imported later, in each kernel.
PRELOAD = (
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipywidgets",
    "whatsthat.web.app",
    "IPython.core.completerlib",
    "IPython.core.debugger",
    "IPython.core.oinspect",
    "IPython.extensions.storemagic",
    "psutil",
    "tornado.locks",
    "tornado.queues",
)
CONNECT_WAIT = 30.0  # s the server waits for the factory to listen: a cold start imports beside torch
REQUEST_TIMEOUT = 10.0  # s for one answer: a fork takes milliseconds
DRAIN = 15.0  # s a stopping factory waits for its kernels to finish; Heroku kills everything 30 s after SIGTERM


class FactoryUnavailable(WhatsthatError):
    """The kernel factory could not be reached or did not answer."""


class Stopping(Exception):
    """Raised in the factory's main thread by SIGTERM: stop forking, let the kernels finish (`Factory.serve`)."""


def _stopping(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the factory at once
    raise Stopping


# ---------------------------------------------------------------------------------------------------
# the factory process


def preload(modules: Sequence[str] = PRELOAD) -> list[str]:
    """Import `modules` (ipykernel's debugger made unimportable first, as in a page kernel); returns those missing."""
    mark_not_importable(BLOCKED)
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            missing.append(f"{name} ({e})")
    return missing


class Factory:
    """Accepts fork requests on `socket_path` and reaps its children, in one thread (see the docstring)."""

    def __init__(self, socket_path: str | Path, authkey: bytes) -> None:
        self.socket_path = str(socket_path)
        self.authkey = authkey
        self.exited: dict[int, int] = {}  # pid -> exit code, until the server asked
        self.children: set[int] = set()

    def _reap(self, signum: int = 0, frame: Any = None) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self.exited[pid] = os.waitstatus_to_exitcode(status)

    def serve(self) -> None:
        """Fork kernels on request until SIGTERM (`Stopping`), then stop them gracefully and return."""
        signal.signal(signal.SIGCHLD, self._reap)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)  # a predecessor's, left by a crash: binding needs the name free
        try:
            with Listener(self.socket_path, family="AF_UNIX", authkey=self.authkey) as listener:
                signal.signal(signal.SIGTERM, _stopping)
                while True:
                    try:
                        conn = listener.accept()
                    except (AuthenticationError, OSError, EOFError) as e:  # a stranger or a dropped connection
                        log.warning("kernel factory refused a connection: %s", e)
                        continue
                    with conn:
                        self._answer(listener, conn)
        except Stopping:
            self.stop_kernels()

    def stop_kernels(self, timeout: float = DRAIN) -> None:
        """SIGTERM to every kernel still running (each finishes its callback in flight), then wait for them."""
        self._reap()
        if self.children:
            log.info("kernel factory stopping: %d kernel(s) finish what they are doing", len(self.children))
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.children and time.monotonic() < deadline:
            time.sleep(0.05)
            self._reap()
        if self.children:
            log.warning("kernel factory stopping with %d kernel(s) still running after %.0fs", len(self.children), timeout)

    def _answer(self, listener: Listener, conn: Connection) -> None:
        try:
            if not conn.poll(REQUEST_TIMEOUT):
                return
            header, _ = recv_message(conn)
            op = header.get("op")
            if op == "fork":
                argv, env, cwd = header.get("argv"), header.get("env"), header.get("cwd")
                if not (isinstance(argv, list) and isinstance(env, dict) and isinstance(cwd, str)):
                    send_message(conn, {"ok": False, "error": "fork needs argv (list), env (object), cwd (string)"})
                    return
                pid = os.fork()
                if pid == 0:
                    become_kernel(argv, env, cwd, close=(listener, conn))  # never returns
                self.children.add(pid)
                send_message(conn, {"ok": True, "pid": pid})
            elif op == "status":
                pid = header.get("pid")
                self._reap()
                if pid in self.exited:
                    send_message(conn, {"ok": True, "exited": True, "code": self.exited.pop(pid)})
                else:
                    send_message(conn, {"ok": True, "exited": pid not in self.children, "code": None})
            else:
                send_message(conn, {"ok": False, "error": f"unknown op {op!r}"})
        except (OSError, EOFError, WhatsthatError) as e:  # the server went away mid-request, or sent garbage
            log.warning("kernel factory dropped a request: %s", e)


def become_kernel(argv: Sequence[str], env: dict[str, str], cwd: str, *, close: Sequence[Any] = ()) -> None:
    """In a freshly forked child: become the page kernel `argv` asks for, then exit (never returns)."""
    code = 1
    try:
        # The child must not hold the factory's socket or the server's connection. Closing the Listener
        # here does not remove the socket file: multiprocessing's finalizer that unlinks it runs only in
        # the process that created it.
        for resource in close:
            resource.close()
        for signum in (signal.SIGCHLD, signal.SIGTERM):  # the factory's handlers are not a kernel's
            signal.signal(signum, signal.SIG_DFL)
        log.handlers.clear()  # nor is its log handler
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.setsid()  # its own process group: the server's interrupts and kills reach this kernel only
        random.seed()  # the factory's state would otherwise be every kernel's
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)  # as Popen(stdin=DEVNULL): a kernel never reads its stdin
        os.close(devnull)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        # ipykernel reads JPY_PARENT_PID when it is imported, i.e. in the factory, where it is unset; so
        # name the parent here: the kernel then exits when its parent (the factory) does, as a kernel
        # does when the server that started it dies, instead of living on as an orphan
        argv = [f"--IPKernelApp.parent_handle={os.getppid()}", *argv]
        sys.argv = [sys.executable, "-m", KERNEL_MODULE, *argv]
        run_kernel(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # a fork must never return into the factory's loop: report and exit
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def die_with(parent: int) -> bool:
    """Get SIGTERM when `parent` (the server) dies; False where the kernel cannot arrange it (not Linux).

    So a server killed without its shutdown (SIGKILL, the OOM killer) leaves no factory behind, and
    with the factory its kernels go too (see become_kernel). Linux's parent-death signal is sent when
    the thread that started this process ends: `KernelFactory` starts it from threads that live as
    long as the server.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return False
    pr_set_pdeathsig = 1
    if prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:  # it died before the call above: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m whatsthat.web.kernelfactory", description=__doc__.splitlines()[0])
    ap.add_argument("--socket", required=True, help="the Unix socket to listen on")
    ap.add_argument("--parent", type=int, help="the server's pid: the factory stops when it dies")
    args = ap.parse_args(argv)
    # its own logger only: the root logger's setup would be every forked kernel's too
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    authkey = child_key(ENV_AUTHKEY, pop=True)  # popped: no kernel inherits it
    if authkey is None:
        print(f"kernel factory: {ENV_AUTHKEY} must hold the hex authkey", file=sys.stderr)
        return 2
    missing = preload()
    if missing:
        log.warning("not preloaded (each kernel imports them itself): %s", ", ".join(missing))
    gc.collect()
    gc.freeze()  # what is loaded now is never collected, so no collection touches (and copies) its pages
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # until it serves (Factory.serve): no kernel yet
    if args.parent is not None and not die_with(args.parent):
        log.warning("cannot arrange to stop with the server (pid %d): stop it with the server", args.parent)
    Factory(args.socket, authkey).serve()
    return 0


# ---------------------------------------------------------------------------------------------------
# the server's side


class FactoryClient:
    """The server's requests to the factory: one short connection per request."""

    def __init__(self, path: str, authkey: bytes, *, connect_wait: float = CONNECT_WAIT) -> None:
        self.path, self.authkey, self.connect_wait = path, authkey, connect_wait

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **kwargs: Any) -> FactoryClient | None:
        found = channel_from_env(env, ENV_SOCKET, ENV_AUTHKEY)
        return None if found is None else cls(*found, **kwargs)

    def _request(self, header: dict, wait: float = 0.0) -> dict:
        deadline = time.monotonic() + wait
        while True:
            try:
                conn = Client(self.path, family="AF_UNIX", authkey=self.authkey)
                break
            except AuthenticationError as e:
                raise FactoryUnavailable(f"the kernel factory refused the key ({e})") from None
            except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, BrokenPipeError, EOFError) as e:
                if time.monotonic() >= deadline:
                    why = getattr(e, "strerror", None) or type(e).__name__
                    raise FactoryUnavailable(f"no kernel factory at {self.path} ({why})") from None
                time.sleep(0.05)
        with conn:
            try:
                send_message(conn, header)
                if not conn.poll(REQUEST_TIMEOUT):
                    raise FactoryUnavailable(f"the kernel factory did not answer within {REQUEST_TIMEOUT:.0f}s")
                answer, _ = recv_message(conn)
            except (OSError, EOFError) as e:
                raise FactoryUnavailable(f"the kernel factory went away ({e})") from None
        if not answer.get("ok"):
            raise FactoryUnavailable(f"the kernel factory refused: {answer.get('error')}")
        return answer

    def fork(self, argv: Sequence[str], env: dict[str, str], cwd: str) -> int:
        """A new kernel process running `whatsthat.web.pagekernel argv`; returns its pid."""
        answer = self._request({"op": "fork", "argv": list(argv), "env": dict(env), "cwd": cwd}, wait=self.connect_wait)
        return int(answer["pid"])

    def exit_code(self, pid: int) -> int | None:
        """The exit code of the factory's child `pid`, once it has exited and been reaped; else None."""
        answer = self._request({"op": "status", "pid": pid})
        return answer["code"] if answer.get("exited") else None


class ForkedKernel:
    """What LocalProvisioner expects of its Popen, for a kernel that is the factory's child, not ours.

    A pidfd names the process itself (a reused pid cannot be mistaken for it) and becomes readable when
    it exits; the exit code comes from the factory, which reaped it.
    """

    stdin = stdout = stderr = None

    def __init__(self, pid: int, factory: FactoryClient) -> None:
        self.pid = pid
        self.factory = factory
        self.returncode: int | None = None
        try:
            self._fd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:  # already gone (and reaped) before we looked
            self._fd = None
            self._finish()

    def _finish(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        # One question is enough: the pidfd turns readable once the kernel has exited, and the factory
        # reaps whatever has exited before it answers
        try:
            code = self.factory.exit_code(self.pid)
        except FactoryUnavailable as e:
            log.warning("exit code of kernel %d unknown: %s", self.pid, e)
            code = None
        self.returncode = code if code is not None else 1  # gone, but nobody can say how

    def poll(self) -> int | None:
        if self.returncode is None and self._fd is not None:
            readable, _, _ = select.select([self._fd], [], [], 0)
            if readable:
                self._finish()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise subprocess.TimeoutExpired([KERNEL_MODULE], timeout or 0)
            select.select([self._fd], [], [], 0.1 if remaining is None else min(remaining, 0.1))
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None and self._fd is not None:
            signal.pidfd_send_signal(self._fd, signum)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def unsupported() -> str | None:
    """Why kernels cannot be forked and watched here (None where they can): it needs fork and pidfds (Linux 5.3+)."""
    if not hasattr(os, "fork") or not hasattr(os, "pidfd_open"):
        return "this system has no fork or no pidfd_open"
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError as e:
        return f"pidfd_open does not work here ({e.strerror or e})"
    return None


def kernel_args(cmd: Sequence[str]) -> list[str] | None:
    """The arguments after `-m whatsthat.web.pagekernel` in a kernelspec command; None for any other command."""
    if len(cmd) >= 3 and list(cmd[1:3]) == ["-m", KERNEL_MODULE]:
        return list(cmd[3:])
    return None


def without_factory(env: dict[str, str]) -> dict[str, str]:
    """`env` less the factory's address and key: no kernel gets them."""
    return {k: v for k, v in env.items() if k not in (ENV_SOCKET, ENV_AUTHKEY)}


class FactoryProvisioner(LocalProvisioner):
    """jupyter_client's LocalProvisioner, except that a page kernel is forked by the factory (see above)."""

    connect_wait = Float(CONNECT_WAIT, config=True, help="seconds to wait for the factory to listen")

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        kwargs["env"] = without_factory(dict(kwargs.get("env") or os.environ))
        factory = FactoryClient.from_env(connect_wait=self.connect_wait)
        args = kernel_args(cmd)
        if factory is None or args is None:
            return await super().launch_kernel(cmd, **kwargs)
        cwd = str(kwargs.get("cwd") or os.getcwd())
        try:
            pid = await asyncio.to_thread(factory.fork, args, kwargs["env"], cwd)
        except FactoryUnavailable as e:
            self.log.warning("%s: starting the kernel as a process of its own", e)
            return await super().launch_kernel(cmd, **kwargs)
        self.process = ForkedKernel(pid, factory)
        self.pid = self.pgid = pid  # the child called setsid(): its pid is its process group
        self.cwd = cwd
        return self.connection_info


class KernelFactory(Restarter):
    """Runs the factory process, restarting it when it exits; `env()` is what the server's provisioner needs.

    While it is down (a second or so) new kernels wait for it or start as processes of their own. The
    kernels it had forked stop with it, as any kernel stops when the process that started it dies:
    their visitors reload the page. The factory only forks, so that should be rare.
    """

    name = "kernel factory"
    socket_var, key_var = ENV_SOCKET, ENV_AUTHKEY

    def __init__(self, *, python: str | None = None, stderr: Any = None, min_delay: float = 0.5,
                 max_delay: float = 30.0) -> None:  # fmt: skip
        super().__init__(python=python, stderr=stderr, min_delay=min_delay, max_delay=max_delay,
                         dir_prefix="whatsthat-kernels-", socket_name="factory.sock")  # fmt: skip

    def command(self) -> list[str]:
        return [self.python, "-m", "whatsthat.web.kernelfactory", "--socket", str(self.socket), "--parent", str(os.getpid())]


if __name__ == "__main__":
    sys.exit(main())
