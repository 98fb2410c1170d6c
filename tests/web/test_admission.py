"""How many kernels fit and who a visitor is (whatsthat.web.admission), what link previews show
(whatsthat.web.preview), and the flags that carry both to Voila (whatsthat.web.serve, the CLI)."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from whatsthat.errors import WhatsthatError
from whatsthat.web.admission import (
    DEFAULT_MEMORY_MB,
    Costs,
    cgroup_memory_limit,
    client_address,
    is_preview_robot,
    kind_of,
    measure,
    memory_budget,
    trust_forwarded_default,
)
from whatsthat.web.preview import PICTURE_SIZE, busy_page, draw_picture, meta_tags, page_meta, robot_page
from whatsthat.web.serve import heroku_url, voila_settings

MB = 2**20


def cgroups(tmp_path: Path, proc: str, files: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "self-cgroup").write_text(proc)
    return root, tmp_path / "self-cgroup"


def test_the_container_limit_from_cgroup_v2(tmp_path):
    root, proc = cgroups(tmp_path, "0::/dyno\n", {"dyno/memory.max": f"{512 * MB}\n"})
    assert cgroup_memory_limit(root, proc) == 512 * MB
    root, proc = cgroups(tmp_path / "ns", "0::/\n", {"memory.max": f"{1024 * MB}\n"})  # a cgroup namespace
    assert cgroup_memory_limit(root, proc) == 1024 * MB
    root, proc = cgroups(tmp_path / "max", "0::/\n", {"memory.max": "max\n"})
    assert cgroup_memory_limit(root, proc) is None


def test_the_container_limit_from_cgroup_v1(tmp_path):
    root, proc = cgroups(tmp_path, "4:memory:/docker/abc\n1:cpu:/\n",
                         {"memory/docker/abc/memory.limit_in_bytes": f"{512 * MB}\n"})  # fmt: skip
    assert cgroup_memory_limit(root, proc) == 512 * MB
    # this machine's kind of answer: "no limit" as a number near 2**63
    root, proc = cgroups(tmp_path / "unlimited", "4:memory:/x\n",
                         {"memory/x/memory.limit_in_bytes": "9223372036854771712\n"})  # fmt: skip
    assert cgroup_memory_limit(root, proc) is None
    assert cgroup_memory_limit(tmp_path / "nothing", tmp_path / "no-such-file") is None


def test_the_budget_is_the_option_else_the_container_else_a_small_dyno():
    assert memory_budget(300, 1024 * MB).mb == 300  # the operator knows best
    assert memory_budget(None, 1024 * MB).mb == 1024
    assert "cgroup" in memory_budget(None, 1024 * MB).source
    assert memory_budget(None, None).mb == DEFAULT_MEMORY_MB == 512
    with pytest.raises(ValueError):
        memory_budget(0, None)


def test_room_is_what_fits_beside_what_was_measured():
    costs = Costs(server=70, model=270, factory=22, kernels=[22])
    assert costs.fixed == 362 and costs.total == 384
    assert costs.room(512, 22, headroom_mb=40) == 4  # (512 - 40 - 384) / 22 = 4.0
    assert costs.room(1024, 22, headroom_mb=40) == 27
    assert costs.room(300, 22) == 0  # nothing fits beside the preheated kernel
    assert "model process 270 MB" in costs.describe()


def test_processes_are_told_apart_by_their_command_lines():
    factory = "python -m whatsthat.web.kernelfactory --socket s"
    assert kind_of(factory) == "factory"
    assert kind_of(factory, parent_cmdline=factory) == "kernel"  # forked: it keeps the factory's command line
    assert kind_of("python -m whatsthat.web.modelprocess --model m") == "model"
    assert kind_of("python -m whatsthat.web.pagekernel -f c.json") == "kernel"
    assert kind_of("python -m ipykernel_launcher -f c.json") == "kernel"
    assert kind_of("python -m whatsthat.web.preview --meta {}") == "other"


def test_measure_this_process():
    costs = measure(os.getpid())
    assert costs.server > 5 and costs.model == 0 and costs.kernels == []


def test_client_address_trusts_x_forwarded_for_only_behind_a_trusted_router():
    assert client_address("10.0.0.1", ["1.2.3.4"]) == "10.0.0.1"  # no router: the header is the client's own
    assert client_address("10.0.0.1", ["1.2.3.4"], trust_forwarded=True) == "1.2.3.4"
    # the router appends what it saw: whatever the client wrote before it does not count
    assert client_address("10.0.0.1", ["6.6.6.6, 1.2.3.4"], trust_forwarded=True) == "1.2.3.4"
    assert client_address("10.0.0.1", ["6.6.6.6", "1.2.3.4"], trust_forwarded=True) == "1.2.3.4"
    assert client_address("10.0.0.1", ["2001:db8::1"], trust_forwarded=True) == "2001:db8::1"
    assert client_address("10.0.0.1", ["not an address"], trust_forwarded=True) == "10.0.0.1"
    assert client_address("10.0.0.1", [], trust_forwarded=True) == "10.0.0.1"
    assert client_address(None) == "unknown"


def test_x_forwarded_for_is_trusted_by_default_only_on_a_heroku_dyno():
    assert trust_forwarded_default({"DYNO": "web.1"}) is True
    assert trust_forwarded_default({}) is False


@pytest.mark.parametrize("agent", ["Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
                                   "facebookexternalhit/1.1", "Mozilla/5.0 (compatible; Discordbot/2.0)",
                                   "WhatsApp/2.23.20.0", "Twitterbot/1.0", "TelegramBot (like TwitterBot)",
                                   "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"])  # fmt: skip
def test_link_preview_robots_are_recognised(agent):
    assert is_preview_robot(agent)


@pytest.mark.parametrize("agent", [None, "", "curl/8.5.0", "Python-urllib/3.11",
                                   "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                                   "HeadlessChrome/131.0 Safari/537.36"])  # fmt: skip
def test_browsers_and_anonymous_clients_are_visitors(agent):
    assert not is_preview_robot(agent)  # they get the page, under the same caps as anyone


# -- link previews --


def test_page_meta_names_the_classes():
    meta = page_meta({"classes": ["black", "grizzly", "teddy"]})
    assert meta["title"] == "What's that?"
    assert meta["description"].endswith("whether it shows black, grizzly or teddy.")
    assert page_meta({})["classes"] == [] and "what it shows" in page_meta({})["description"]


def test_meta_tags_are_escaped_and_absolute_when_the_address_is_known():
    meta = page_meta({"classes": ['"><script>alert(1)</script>']})
    tags = meta_tags(meta, "https://bears.example/")
    assert "<script>" not in tags and "&quot;&gt;&lt;script&gt;" in tags
    for name in ("og:title", "og:description", "og:image", "twitter:card", "twitter:image", "og:url"):
        assert f'"{name}"' in tags
    assert 'content="https://bears.example/whatsthat/preview.png"' in tags
    relative = meta_tags(meta, "/")
    assert 'content="/whatsthat/preview.png"' in relative and "og:url" not in relative


def test_the_busy_page_says_so_and_carries_the_preview():
    page = busy_page(page_meta({"classes": ["a", "b"]}), "http://h/", retry_after=60)
    assert "Busy right now, try again in a minute" in page
    assert 'property="og:image" content="http://h/whatsthat/preview.png"' in page
    assert "location.reload()" in page and ">60<" in page
    robot = robot_page(page_meta({"classes": ["a", "b"]}), "http://h/")
    assert "whether it shows a or b" in robot and "og:title" in robot and "Busy" not in robot


def test_the_preview_picture_is_a_wide_png(tmp_path):
    from PIL import Image

    path = draw_picture(page_meta({"classes": ["black", "grizzly", "teddy", "x" * 40] + [f"c{i}" for i in range(20)]}),
                        tmp_path / "p.png")  # fmt: skip
    with Image.open(path) as im:
        assert (im.format, im.size) == ("PNG", PICTURE_SIZE) == ("PNG", (1200, 630))


# -- the flags --


def test_voila_settings_carry_the_template_the_preview_and_the_caps():
    meta = page_meta({"classes": ["black", "grizzly", "teddy"]})
    env, args = voila_settings(memory_mb=300, per_client=2, join_timeout=12, trust_forwarded_for=True,
                               public_url="https://bears.example/", meta=meta)  # fmt: skip
    assert env["JUPYTER_PATH"].split(os.pathsep)[0].endswith("whatsthat/web/templates")
    assert "--template=whatsthat" in args
    for expected in ("--PageKernelManager.memory_mb=300.0", "--PageKernelManager.per_client=2",
                     "--PageKernelManager.join_timeout=12.0", "--PageVoila.trust_forwarded_for=True",
                     "--PageVoila.public_url=https://bears.example/"):  # fmt: skip
        assert expected in args
    (resources,) = [a.split("=", 1)[1] for a in args if a.startswith("--VoilaConfiguration.resources=")]
    resources = ast.literal_eval(resources)  # what traitlets does with it
    assert resources["metadata"]["name"] == "What's that?"  # the page's <title>
    assert resources["whatsthat"]["classes"] == ["black", "grizzly", "teddy"]
    assert 'content="https://bears.example/whatsthat/preview.png"' in resources["whatsthat"]["tags"]
    template = Path(env["JUPYTER_PATH"].split(os.pathsep)[0]) / "voila" / "templates" / "whatsthat"
    assert (template / "index.html.j2").is_file() and (template / "asleep.js").is_file()


def test_voila_settings_defaults(monkeypatch):
    monkeypatch.delenv("DYNO", raising=False)
    monkeypatch.delenv("HEROKU_APP_DEFAULT_DOMAIN_NAME", raising=False)
    _, args = voila_settings()
    assert "--PageKernelManager.memory_mb=0.0" in args  # 0: the container's limit, else 512
    assert "--PageKernelManager.per_client=3" in args and "--PageKernelManager.join_timeout=30.0" in args
    assert "--PageVoila.trust_forwarded_for=False" in args and "--PageVoila.public_url=" in args
    monkeypatch.setenv("DYNO", "web.1")
    monkeypatch.setenv("HEROKU_APP_DEFAULT_DOMAIN_NAME", "bears.herokuapp.com")
    _, args = voila_settings()
    assert "--PageVoila.trust_forwarded_for=True" in args
    assert "--PageVoila.public_url=https://bears.herokuapp.com/" in args


def test_heroku_url():
    assert heroku_url({"HEROKU_APP_DEFAULT_DOMAIN_NAME": "my-app.herokuapp.com"}) == "https://my-app.herokuapp.com/"
    assert heroku_url({}) == ""


@pytest.mark.parametrize("kwargs", [{"memory_mb": 0}, {"per_client": -1}, {"join_timeout": 0}])
def test_voila_settings_refuse_bad_caps(kwargs):
    with pytest.raises(WhatsthatError):
        voila_settings(**kwargs)


@pytest.mark.parametrize("argv, message", [
    (["serve", "--memory-mb", "0"], "a whole number of 1 or more"),
    (["serve", "--per-client", "-1"], "a whole number of 0 or more"),
    (["serve", "--join-timeout", "0"], "a positive number"),
])  # fmt: skip
def test_serve_flags_refuse_bad_values(argv, message, capsys):
    from whatsthat.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    assert message in capsys.readouterr().err


def test_serve_flags_reach_serve(monkeypatch):
    import whatsthat.web.serve as servemod
    from whatsthat.cli import main

    seen = {}
    monkeypatch.setattr(servemod, "serve", lambda model, **kw: seen.update(kw) or 0)
    assert main(["serve", "--memory-mb", "1024", "--per-client", "0", "--join-timeout", "20",
                 "--trust-forwarded-for", "--public-url", "https://x.example/"]) == 0  # fmt: skip
    assert (seen["memory_mb"], seen["per_client"], seen["join_timeout"], seen["trust_forwarded_for"],
            seen["public_url"]) == (1024, 0, 20.0, True, "https://x.example/")  # fmt: skip
    seen.clear()
    assert main(["serve"]) == 0
    assert "per_client" not in seen and seen["memory_mb"] is None and seen["trust_forwarded_for"] is None
