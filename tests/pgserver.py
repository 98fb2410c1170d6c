"""A real PostgreSQL server for the tests: Debian's, in a temp folder, on a Unix socket, never as root.

`initdb` and `pg_ctl` as Debian packages them (/usr/lib/postgresql/N/bin, or on the PATH). PostgreSQL
refuses to run as root, and CI runs as root: then the server runs as Debian's `postgres` user (or
`nobody`) through `runuser`, in a folder that user owns. `make test` installs PostgreSQL where it is
missing (.ci/ensure-postgres); elsewhere the tests that need it skip, unless
WHATSTHAT_POSTGRES_TESTS=required (make test sets it), where they fail.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path


def find_bin() -> Path | None:
    """The folder holding Debian's initdb/pg_ctl (the newest version), or one on the PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


class PostgresServer:
    """One server: start() it, url(db) to connect, stop()/start() to fault-test, close() to remove it."""

    def __init__(self, bindir: Path, port: int = 54329):
        self.bindir, self.port = bindir, port
        self.user = None
        if os.geteuid() == 0:  # PostgreSQL refuses root: run it as an unprivileged user
            for name in ("postgres", "nobody"):
                try:
                    self.user = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            if self.user is None:
                raise RuntimeError("running as root, and there is no postgres or nobody user to run PostgreSQL as")
        # not under pytest's tmp (root-only folders): the server's user must reach its own folder
        self.dir = Path(tempfile.mkdtemp(prefix="whatsthat-pg-"))
        self.data, self.socket = self.dir / "data", self.dir / "sock"
        self.socket.mkdir()
        if self.user is not None:
            for p in (self.dir, self.socket):
                os.chown(p, self.user.pw_uid, self.user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / tool), *args]
        if self.user is not None:
            cmd = ["runuser", "-u", self.user.pw_name, "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=self.dir, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"{tool} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def start(self) -> None:
        # no TCP at all (listen_addresses ''): the Unix socket in our folder is the only way in
        opts = f"-k {self.socket} -c listen_addresses='' -p {self.port} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@/{db}?host={self.socket}&port={self.port}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # a name made here, not input: no injection
        return self.url(name)

    def close(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.dir, ignore_errors=True)
