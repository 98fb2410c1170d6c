"""The model process and its channel: wire format, authentication, concurrent kernels, failures, restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from multiprocessing import Pipe
from multiprocessing.connection import Client

import pytest
from conftest import ROOT, draw_image, image_bytes
from model_fixture import tiny_model  # noqa: F401  (pytest fixture)

from whatsthat.errors import WhatsthatError
from whatsthat.web.modelprocess import Predictor, Supervisor, classify_files
from whatsthat.web.protocol import (
    ENV_AUTHKEY,
    ENV_SOCKET,
    ModelClient,
    ModelLost,
    ModelUnavailable,
    recv_message,
    send_message,
)


def red() -> bytes:
    return image_bytes(draw_image("red", 64))


def blue() -> bytes:
    return image_bytes(draw_image("blue", 64), "PNG")


def stub_predictor(fail_on: str | None = None, delay: float = 0.0) -> Predictor:
    """Red pictures are 'red' (0.9), others 'blue'; a picture `fail_on` wide raises (a model bug)."""

    def score(images):
        out = []
        for im in images:
            time.sleep(delay)
            if fail_on == "any":
                raise RuntimeError("the model broke")
            r, _g, b = (sum(c) / len(c) for c in zip(*im.resize((8, 8)).getdata(), strict=True))
            ranked = [("red", 0.9), ("blue", 0.1)] if r > b else [("blue", 0.8), ("red", 0.2)]
            out.append((ranked, 0.5))
        return out

    return Predictor(["blue", "red"], {"name": "stub"}, 0.6, "stub", score)


@pytest.fixture
def server(model_server):
    """A model server thread on a Unix socket in tmp, with a stub model; yields (path, key, predictor)."""
    predictor = stub_predictor()
    path, key = model_server(predictor)
    return path, key, predictor


# -- the wire format --


def test_messages_carry_json_and_raw_blobs():
    a, b = Pipe()
    send_message(a, {"op": "classify", "names": ["x"]}, [b"\xff\xd8\xff" + bytes(1000), b""])
    header, blobs = recv_message(b)
    assert header == {"op": "classify", "names": ["x"], "blobs": 2}
    assert blobs == [b"\xff\xd8\xff" + bytes(1000), b""]


def test_malformed_header_is_a_clear_error_not_a_crash():
    a, b = Pipe()
    a.send_bytes(b"\x80not json")
    with pytest.raises(WhatsthatError, match="malformed"):
        recv_message(b)
    a.send_bytes(b"[1, 2]")
    with pytest.raises(WhatsthatError, match="malformed"):
        recv_message(b)


def test_client_reads_the_channel_from_the_environment():
    assert ModelClient.from_env({}) is None
    client = ModelClient.from_env({ENV_SOCKET: "/tmp/x.sock", ENV_AUTHKEY: "ab" * 16})
    assert client.path == "/tmp/x.sock" and client.authkey == b"\xab" * 16
    with pytest.raises(WhatsthatError, match="not hex"):
        ModelClient.from_env({ENV_SOCKET: "/tmp/x.sock", ENV_AUTHKEY: "zz"})


def test_a_helper_process_reads_its_key_from_the_environment(monkeypatch):
    from whatsthat.web.restarter import child_key

    var = "WHATSTHAT_TEST_KEY"
    monkeypatch.delenv(var, raising=False)
    assert child_key(var) is None  # missing
    for bad in ("", "zz", "ab" * 15):  # empty, not hex, under 16 bytes
        monkeypatch.setenv(var, bad)
        assert child_key(var, min_bytes=16) is None
    monkeypatch.setenv(var, "ab")
    assert child_key(var) == b"\xab"  # any length will do by default, but not none at all
    monkeypatch.setenv(var, "ab" * 16)
    assert child_key(var, min_bytes=16) == b"\xab" * 16 and os.environ[var] == "ab" * 16
    assert child_key(var, pop=True) == b"\xab" * 16 and var not in os.environ  # popped: no child inherits it


# -- the server --


def test_info_and_classify(server):
    path, key, _ = server
    client = ModelClient(path, key)
    info = client.load_info()
    assert info["classes"] == ["blue", "red"] and info["backend"] == "stub" and info["threshold"] == 0.6
    results = client.classify_files([("r.jpg", red()), ("notes.jpg", b"just text, not a photo"), ("b.png", blue())], 32)
    assert [r["name"] for r in results] == ["r.jpg", "notes.jpg", "b.png"]
    assert results[0]["ranked"] == [("red", 0.9), ("blue", 0.1)] and results[0]["ood_score"] == 0.5
    assert results[2]["ranked"][0][0] == "blue"
    assert results[1]["reason"] == "not-image" and "not an image" in results[1]["error"] and results[1]["ranked"] == []
    for r in (results[0], results[2]):
        assert r["thumbnail"][:3] == b"\xff\xd8\xff"  # the server sends the thumbnail; the kernel never decodes
    assert results[1]["thumbnail"] == b""


def test_wrong_key_is_refused_and_the_server_keeps_serving(server):
    path, key, _ = server
    from multiprocessing import AuthenticationError

    with pytest.raises((AuthenticationError, EOFError, ConnectionResetError)):
        Client(path, family="AF_UNIX", authkey=b"not the key" * 3)
    assert ModelClient(path, key).load_info()["classes"] == ["blue", "red"]


def test_socket_file_is_owner_only(server):
    path, _, _ = server
    assert os.stat(path).st_mode & 0o077 == 0


def test_ten_kernels_at_once_each_get_their_own_answers(model_server):
    path, key = model_server(stub_predictor(delay=0.02))
    answers: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def visitor(i: int) -> None:
        try:
            client = ModelClient(path, key)
            files = [(f"{i}-{j}.jpg", red() if (i + j) % 2 else blue()) for j in range(3)]
            answers[i] = [r["ranked"][0][0] for r in client.classify_files(files, 32)]
        except BaseException as e:  # reported below: a thread's failure must fail the test
            errors.append(e)

    threads = [threading.Thread(target=visitor, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    for i in range(10):
        assert answers[i] == ["red" if (i + j) % 2 else "blue" for j in range(3)], (i, answers[i])


def test_a_failing_request_is_refused_and_others_are_unaffected(model_server):
    predictor = stub_predictor()
    path, key = model_server(predictor)
    victim, other = ModelClient(path, key), ModelClient(path, key)
    good = predictor._score
    predictor._score = stub_predictor(fail_on="any")._score
    with pytest.raises(WhatsthatError, match="the classifier failed"):
        victim.classify_files([("r.jpg", red())], 32)
    predictor._score = good
    assert victim.classify_files([("r.jpg", red())], 32)[0]["ranked"][0][0] == "red"  # same connection, still fine
    assert other.classify_files([("b.png", blue())], 32)[0]["ranked"][0][0] == "blue"


def test_server_refuses_malformed_requests_politely(server):
    path, key, _ = server
    client = ModelClient(path, key)
    with pytest.raises(WhatsthatError, match="unknown request"):
        client.request({"op": "shutdown"})
    with pytest.raises(WhatsthatError, match="one name per file"):
        client.request({"op": "classify", "names": ["a", "b"]}, [red()])
    assert client.load_info()["backend"] == "stub"


def test_no_server_is_model_unavailable_quickly(tmp_path):
    client = ModelClient(str(tmp_path / "nobody.sock"), b"k" * 32, connect_wait=0.3)
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable, match="not answering"):
        client.load_info()
    assert time.monotonic() - t0 < 3


def test_classify_files_in_process_with_a_plain_predict_many():
    class Plain:
        def predict_many(self, images):
            return [[("x", 1.0)] for _ in images]

    [ok, bad] = classify_files(Plain(), [("a.jpg", red()), ("b.svg", b"<svg></svg>")], 48)
    assert ok["ranked"] == [("x", 1.0)] and ok["ood_score"] is None and ok["thumbnail"][:2] == b"\xff\xd8"
    assert bad["reason"] == "svg"


# -- the real process under its supervisor --


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.slow
def test_supervisor_restarts_a_killed_model_process(tiny_model):  # noqa: F811
    with Supervisor(tiny_model) as sup:
        client = ModelClient(str(sup.socket), sup.authkey)
        info = client.load_info()
        assert info["backend"] == "artifact" and info["classes"] == ["blue", "red"]
        first = info["pid"]
        assert first == sup.proc.pid

        # killed between two requests: the next request reconnects to the restarted process and succeeds
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: sup.starts == 2, 30, "the supervisor noticing the death")
        [r] = client.classify_files([("r.jpg", red())], 32)
        assert sorted(label for label, _ in r["ranked"]) == ["blue", "red"]
        second = client.load_info()["pid"]
        assert second != first

        # killed in the middle of a request: that request fails as ModelLost (never resent: the upload
        # may be what killed it), and the next one works
        os.kill(second, signal.SIGSTOP)  # the request is sent and waits, unanswered
        outcome: list[BaseException | list] = []
        worker = threading.Thread(target=lambda: outcome.append(_try(client, [("r.jpg", red())])))
        worker.start()
        time.sleep(0.5)
        os.kill(second, signal.SIGKILL)
        worker.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], ModelLost), outcome
        assert client.classify_files([("b.png", blue())], 32)[0]["ranked"]
        assert client.load_info()["pid"] not in (first, second) and sup.starts == 3
    assert not sup.dir.exists()  # the private socket directory is cleaned up


def _try(client: ModelClient, files):
    try:
        return client.classify_files(files, 32)
    except WhatsthatError as e:
        return e


def start_env(**extra: str) -> dict[str, str]:
    """The environment repo2docker gives `start`: its Python first on PATH, no channel yet."""
    env = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}", **extra}
    env.pop(ENV_SOCKET, None)
    return env


@pytest.mark.slow
def test_binder_start_script_runs_jupyter_beside_a_model_process(tiny_model, tmp_path):  # noqa: F811
    """repo2docker's `start` wraps Jupyter's command: whatever it runs can reach the model process."""
    photo = tmp_path / "red.jpg"
    photo.write_bytes(red())
    child = (
        "import os, sys\n"
        "from whatsthat.web.protocol import ModelClient\n"
        "c = ModelClient.from_env()\n"
        "assert c is not None, 'no channel in the environment'\n"
        f"[r] = c.classify_files([('red.jpg', open({str(photo)!r}, 'rb').read())], 32)\n"
        "print('CHILD', c.load_info()['backend'], r['ranked'][0][0])\n"
        "sys.exit(7)\n"
    )
    env = start_env(WHATSTHAT_MODEL=str(tiny_model))
    proc = subprocess.run([str(ROOT / "start"), sys.executable, "-c", child], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 7, proc.stderr[-3000:]  # the wrapped command's exit code comes back
    assert "CHILD artifact " in proc.stdout, (proc.stdout, proc.stderr[-3000:])
    assert "model process" in proc.stderr and "ready" in proc.stderr


def test_start_script_without_a_model_runs_the_command_alone(tmp_path):
    env = start_env(WHATSTHAT_MODEL=str(tmp_path / "absent.pkl"))
    proc = subprocess.run([str(ROOT / "start"), sys.executable, "-c", f"import os; print(os.environ.get({ENV_SOCKET!r}))"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"  # no channel: the kernel will load the model itself
    assert "without a model process" in proc.stderr


def test_a_process_dying_during_the_handshake_is_waited_for_not_a_crash(tmp_path):
    """A kernel connecting while the model process dies sees EOF mid-handshake: that is 'restarting', retried."""
    import socket

    path = str(tmp_path / "dying.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.listen(8)

    def accept_and_drop() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.close()

    threading.Thread(target=accept_and_drop, daemon=True).start()
    try:
        with pytest.raises(ModelUnavailable, match="not answering"):
            ModelClient(path, b"k" * 32, connect_wait=0.5).load_info()
    finally:
        sock.close()


def test_a_hung_model_process_is_model_unavailable_not_a_hung_page(tmp_path):
    """A stopped or deadlocked process still accepts connections (the backlog) but never answers the handshake."""
    import socket

    path = str(tmp_path / "hung.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.listen(8)  # and never accept: connections wait in the backlog, as with a SIGSTOPped process
    try:
        t0 = time.monotonic()
        with pytest.raises(ModelUnavailable, match="did not complete the handshake"):
            ModelClient(path, b"k" * 32, connect_wait=5, handshake_timeout=0.5).load_info()
        assert time.monotonic() - t0 < 5
    finally:
        sock.close()


def test_wrong_key_is_model_unavailable_at_once(server):
    path, _, _ = server
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable, match="refused this kernel's key"):
        ModelClient(path, b"wrong" * 8, connect_wait=30).load_info()
    assert time.monotonic() - t0 < 5


# -- handing freed memory back --


def test_trim_runs_only_when_the_last_request_is_answered():
    from whatsthat.web.modelprocess import _Trimmer

    trimmer = _Trimmer()
    calls = []
    trimmer._trim = lambda pad: calls.append(pad)
    with trimmer.request():
        with trimmer.request():
            pass
        assert calls == []  # another request is still being served
    assert calls == [0]
    with pytest.raises(RuntimeError), trimmer.request():  # a failing request still counts as answered
        raise RuntimeError("boom")
    assert calls == [0, 0] and trimmer._busy == 0


def test_trimmer_finds_malloc_trim_on_glibc():
    from whatsthat.web.modelprocess import _Trimmer

    trimmer = _Trimmer()
    if sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION"):
        assert trimmer._trim is not None
        trimmer.trim()  # real call: must not raise


def test_the_fastai_fallback_sends_the_out_of_class_score_too(tiny_model, tmp_path):  # noqa: F811
    """A bare export.pkl (no artifact) with its statistics beside it: the same score as the artifact's."""
    import shutil

    from whatsthat.web.modelprocess import load_predictor

    bare = tmp_path / "export.pkl"
    for suffix in (".pkl", ".card.json", ".ood.safetensors"):
        src = tiny_model.with_name(tiny_model.stem + suffix)
        assert src.is_file(), f"the tiny model has no {src.name}"
        shutil.copy(src, bare.with_name(bare.stem + suffix))
    fallback, artifact = load_predictor(bare), load_predictor(tiny_model)
    assert (fallback.backend, artifact.backend) == ("fastai", "artifact")
    [r_fb] = classify_files(fallback, [("red.jpg", red())], 32)
    [r_art] = classify_files(artifact, [("red.jpg", red())], 32)
    assert r_fb["ood_score"] is not None
    assert r_fb["ood_score"] == pytest.approx(r_art["ood_score"], rel=1e-3, abs=1e-3)


HUNG_SERVER = """
import socket, sys, time
sock = socket.socket(socket.AF_UNIX)
sock.bind(sys.argv[1])
sock.listen(8)  # listening, never accepting: alive, but every kernel's handshake would wait for ever
time.sleep(3600)
"""


class HungThenHealthy(Supervisor):
    """The first model process hangs; the restarted one is the real model process."""

    def command(self) -> list[str]:
        if self.starts <= 1:
            return [self.python, "-c", HUNG_SERVER, str(self.socket)]
        return super().command()


def test_supervisor_kills_and_restarts_a_hung_model_process(tiny_model):  # noqa: F811
    sup = HungThenHealthy(tiny_model, probe_interval=0.3, probe_timeout=0.5, probe_failures=2, min_delay=0.1)
    with sup:
        hung = sup.proc
        deadline = time.monotonic() + 30
        while sup.starts < 2:
            assert time.monotonic() < deadline, "the hung process was not restarted"
            time.sleep(0.1)
        assert hung.wait(timeout=5) == -signal.SIGKILL
        client = ModelClient(str(sup.socket), sup.authkey, connect_wait=120)
        assert client.load_info()["ok"]  # the restarted process serves
        client.close()


@pytest.mark.slow
def test_sigterm_answers_the_request_in_flight_then_exits(tiny_model):  # noqa: F811
    """Heroku's stop: SIGTERM to the model process while a kernel waits for its answer; the answer still comes."""
    with Supervisor(tiny_model) as sup:
        client = ModelClient(str(sup.socket), sup.authkey)
        pid = client.load_info()["pid"]
        sup.stop_restarting()  # Heroku signals every process of the dyno at once: nothing restarts
        os.kill(pid, signal.SIGSTOP)  # the request goes out and waits, unanswered
        outcome: list = []
        worker = threading.Thread(target=lambda: outcome.append(_try(client, [("r.jpg", red())])))
        worker.start()
        time.sleep(0.5)
        os.kill(pid, signal.SIGTERM)  # pending while the process is stopped
        os.kill(pid, signal.SIGCONT)
        worker.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], list), outcome  # answered, not ModelLost
        assert outcome[0][0]["ranked"]
        assert sup.proc.wait(timeout=20) == 0  # then it exits of itself, within the drain
        with pytest.raises(WhatsthatError):  # and took no new connection meanwhile
            ModelClient(str(sup.socket), sup.authkey, connect_wait=0.3).load_info()


def test_the_trimmer_waits_for_a_quiet_moment():
    from whatsthat.web.modelprocess import _Trimmer

    t = _Trimmer()
    with t.request():
        assert t.wait_idle(0.2, quiet=0.05) is False  # busy the whole time
    t0 = time.monotonic()
    assert t.wait_idle(5, quiet=0.1) is True
    assert 0.1 <= time.monotonic() - t0 < 2
