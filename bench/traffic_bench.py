"""The page under real traffic: plain GETs beside real visitors, a pinger, a slow phone (issue 29).

    WHATSTHAT_SERVE_VENV=.venv-serve .venv/bin/python bench/traffic_bench.py [--baseline main] [--pinger-minutes 15]

Every server is `whatsthat serve` from the serving venv, on 127.0.0.1 only, with the shipped model, as the
Procfile runs it. The baseline is the same venv running another commit's package (common.checkout, first
on PYTHONPATH), so only whatsthat's code differs. Phases, each with its own fresh server:

- **Flood with visitors.** 200 plain GETs of the page in 60 s, at most 8 at a time (no browser, no
  JavaScript: what crawlers, link previews and uptime pingers send), while 5 visitors in headless Chromium
  open the page, upload a grizzly, click Classify and close the tab. A visitor who gets the busy page
  (HTTP 503) tries again 10 s later, as someone pressing "Try again now" would. Each GET and each visitor
  comes from its own address (X-Forwarded-For, which the server is told to trust, as on Heroku), so
  the per-client cap does not hide the memory cap. The whole server's PSS (server, model process, kernel
  factory, kernels) is sampled every second, from its idle size before the flood until 90 s after it.
- **Pinger.** One plain GET a minute for --pinger-minutes, as the services that keep an Eco dyno awake
  send; the kernels are counted every second. The baseline's pinger runs at the same time on its own server.
- **Capacity** (--capacity): with the default budget (512 MB), visitors arrive one at a time, each
  classifies a photo and stays, until one gets the busy page: how many visitors at once a small dyno holds.
- **Slow phone** (--phone-runs): how long after its HTML has arrived a phone's page opens its kernel's
  websocket: Chromium with its CPU slowed down 4x and 6x (DevTools' mid-tier and low-end mobile presets) and
  slow 4G (1.6 Mbit/s, 150 ms, as bench/app_bench.py; and DevTools' own slow 4G, 563 ms), an empty cache
  each time. This is what the server's --join-timeout must allow; the server here has a join timeout of
  600 s so the time is measured, not cut short.

Memory is PSS (shared pages split among the processes that map them, so the parts add up honestly). The
machine is shared: times are noisy, memory is not. Every process started here is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
from app_bench import (
    CHROMIUM,
    CHROMIUM_ARGS,
    bin_dir,
    require_current_package,
    serve_venv,
    wait_until,
)
from common import ROOT, BenchServer, checkout, median, percentile, require_bears, table

from whatsthat.web.admission import measure

START_TIMEOUT = 300
BUDGET_MB = 512  # the default budget: a small Heroku dyno
FLOOD_GETS, FLOOD_SECONDS, FLOOD_CONCURRENCY = 200, 60.0, 8
VISITORS = 5
VISITOR_RETRY_S = 10.0
AFTER_FLOOD_S = 90.0
BACK_WITHIN_MB = 50.0
SLOW_4G = {"offline": False, "latency": 150, "downloadThroughput": 1.6e6 / 8, "uploadThroughput": 0.75e6 / 8}
# Chromium DevTools' own "Slow 4G" preset (its old "Fast 3G"): the same bandwidth, 562.5 ms of latency
DEVTOOLS_SLOW_4G = {**SLOW_4G, "latency": 562.5, "downloadThroughput": 1.6e6 * 0.9 / 8, "uploadThroughput": 0.75e6 * 0.9 / 8}
PHONES = {  # name: (CPU slowdown, network)
    "4x CPU, slow 4G (1.6 Mbit/s, 150 ms)": (4, SLOW_4G),
    "6x CPU, slow 4G (1.6 Mbit/s, 150 ms)": (6, SLOW_4G),
    "6x CPU, DevTools slow 4G (1.44 Mbit/s, 563 ms)": (6, DEVTOOLS_SLOW_4G),
}
MODEL_LOADED = "whatsthat.web.app: model "  # each kernel's line once its page can classify
PHOTO_INPUT = ".whatsthat-photoinput input[type=file]:not([capture])"  # whatsthat's photo input (issue 31)


class TrafficServer(BenchServer):
    """`whatsthat serve` on a free local port, every user dir in a temp dir; `code`: another commit's package."""

    stop_group = False  # `whatsthat serve` stops its model process and kernels itself, as on a dyno
    stop_timeout = 40.0

    def __init__(self, name: str, model: Path, code: Path | None = None, args: tuple[str, ...] = ()) -> None:
        super().__init__(name, f"whatsthat-traffic-{name}-", code)
        self.name, self.model, self.args = name, model, args

    def __enter__(self) -> TrafficServer:
        tmp, env, self.port = self.prepare()
        env.pop("DYNO", None)
        cmd = [str(bin_dir() / "whatsthat"), "serve", f"--model={self.model}", f"--port={self.port}",
               "--host=127.0.0.1", f"--examples={tmp / 'none'}", *self.args, "--",
               f"--Voila.connection_dir_root={tmp}"]  # fmt: skip
        self.launch(cmd, env)
        return self

    def sample(self) -> tuple[float, int]:
        """(the whole server's PSS in MB, its kernels)."""
        self.processes()
        costs = measure(self.proc.pid)
        return costs.total, len(costs.kernels)

    def wait_ready(self) -> None:
        """Answering, the preheated kernel through the notebook, the memory measured (after), then idle."""
        def up() -> bool:
            if self.proc.poll() is not None:
                sys.exit(f"the {self.name} server exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/voila/static/voila.js", timeout=5) as r:
                    return r.status == 200 and MODEL_LOADED in self.log_text() and "ready (" in self.log_text()
            except (urllib.error.URLError, OSError):
                return False

        wait_until(up, START_TIMEOUT, f"{self.name}: server ready")
        if self.code is None:
            wait_until(lambda: "memory budget" in self.log_text(), START_TIMEOUT, f"{self.name}: memory measured")
        time.sleep(3)

    def kernel_cap(self) -> str:
        """What the server's start measurement said fits: "N visitors" (no admission control: "no cap")."""
        found = re.findall(r"i\.e\. about (\d+) visitors at once", self.log_text())
        return f"{found[-1]} visitors" if found else "no cap"


class Sampler(threading.Thread):
    """The server's PSS and kernels every second, from `start()` until `stop()`; can abort a runaway flood."""

    def __init__(self, server: TrafficServer, stop_mb: float | None = None) -> None:
        super().__init__(daemon=True, name=f"sampler-{server.name}")
        self.server, self.stop_mb = server, stop_mb
        self.samples: list[tuple[float, float, int]] = []  # (monotonic, MB, kernels)
        self._halt = threading.Event()
        self.runaway = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            t = time.monotonic()
            try:
                mb, kernels = self.server.sample()
            except psutil.Error:
                continue
            self.samples.append((t, mb, kernels))
            if self.stop_mb is not None and mb > self.stop_mb:
                self.runaway.set()
            self._halt.wait(max(0.0, 1.0 - (time.monotonic() - t)))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)

    def between(self, t0: float, t1: float) -> list[tuple[float, float, int]]:
        return [s for s in self.samples if t0 <= s[0] <= t1]


def plain_get(url: str, address: str) -> tuple[int, float]:
    """(HTTP status, seconds) of one GET as a robot sends it: no browser, the body read to its end."""
    request = urllib.request.Request(url, headers={"User-Agent": "traffic-bench (plain GET)", "X-Forwarded-For": address})
    t0 = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=180) as r:
            r.read()
            return r.status, time.monotonic() - t0
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, time.monotonic() - t0
    except (urllib.error.URLError, OSError):
        return 0, time.monotonic() - t0


def flood(server: TrafficServer, abort: threading.Event, gets: int = FLOOD_GETS) -> list[tuple[int, float]]:
    """`gets` plain GETs spread over FLOOD_SECONDS, at most FLOOD_CONCURRENCY at a time, each from its own address."""
    results: list[concurrent.futures.Future] = []
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(FLOOD_CONCURRENCY) as pool:
        for i in range(gets):
            if abort.is_set():
                break
            time.sleep(max(0.0, t0 + i * FLOOD_SECONDS / gets - time.monotonic()))
            address = f"198.18.{i // 250}.{i % 250 + 1}"  # 198.18.0.0/15: reserved for benchmarks
            results.append(pool.submit(plain_get, server.url + "/", address))
    return [f.result() for f in results]


async def visitor(browser, k: int, url: str, photo: Path, start_after: float, deadline: float) -> dict:
    """Open the page (again 10 s after a busy page), upload, classify, close the tab; what happened."""
    from playwright.async_api import expect

    await asyncio.sleep(start_after)
    out = {"busy": 0, "asleep": 0, "answer": None, "seconds": None}
    t0 = time.monotonic()
    while time.monotonic() < deadline:
        context = await browser.new_context(extra_http_headers={"X-Forwarded-For": f"203.0.113.{k + 1}"})
        page = await context.new_page()
        busy = False
        try:
            response = await page.goto(url + "/", wait_until="domcontentloaded", timeout=180_000)
            busy = response is None or response.status == 503
            if busy:
                out["busy"] += 1
                continue
            classify = page.get_by_role("button", name="Classify")
            asleep = page.locator("#whatsthat-asleep")
            await expect(classify.or_(asleep)).to_be_visible(timeout=180_000)
            if await asleep.count():
                out["asleep"] += 1
                continue
            await expect(classify).to_be_enabled(timeout=180_000)
            if await page.locator(PHOTO_INPUT).count():  # whatsthat's photo input: classified on arrival
                await page.locator(PHOTO_INPUT).set_input_files(photo)
            else:  # a baseline from before it: ipywidgets' FileUpload, then Classify
                async with page.expect_file_chooser() as chooser:
                    await page.click(".widget-upload")
                await (await chooser.value).set_files(photo)
                await page.locator(".widget-upload").filter(has_text="(1)").wait_for(timeout=120_000)
                await classify.click()
            label = page.locator(".widget-label").filter(has_text="Prediction:")
            await label.wait_for(timeout=180_000)
            out["answer"], out["seconds"] = await label.inner_text(), time.monotonic() - t0
            return out
        except Exception as e:  # a timeout under the flood: try again while there is time
            out["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        finally:
            await page.close(run_before_unload=True)  # the tab closes: Voila's page shuts its kernel down
            await asyncio.sleep(0.5)
            await context.close()
            if busy:
                await asyncio.sleep(VISITOR_RETRY_S)
    return out


def visitors(url: str, photo: Path, count: int = VISITORS, spread_s: float = 40.0, limit_s: float = 300.0) -> list[dict]:
    """`count` visitors in one headless Chromium, arriving over `spread_s` seconds."""
    from playwright.async_api import async_playwright

    async def run() -> list[dict]:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            deadline = time.monotonic() + limit_s
            try:
                return await asyncio.gather(*(visitor(browser, k, url, photo, 5 + k * spread_s / max(1, count - 1),
                                                      deadline) for k in range(count)))  # fmt: skip
            finally:
                await browser.close()

    return asyncio.run(run())


def flood_phase(name: str, model: Path, photo: Path, code: Path | None, stop_mb: float | None) -> dict:
    """Idle size, then the flood with visitors, then 90 s; the samples and what each client got."""
    args = () if code is not None else ("--trust-forwarded-for",)
    with TrafficServer(name, model, code, args) as server:
        server.wait_ready()
        sampler = Sampler(server, stop_mb)
        sampler.start()
        time.sleep(5)
        idle = median([mb for _, mb, _ in sampler.samples[-5:]])
        t_flood = time.monotonic()
        seen: dict = {}
        thread = threading.Thread(target=lambda: seen.setdefault("visitors", visitors(server.url, photo)), daemon=True)
        thread.start()
        gets = flood(server, sampler.runaway)
        t_end = time.monotonic()
        thread.join(timeout=400)
        t_visitors = time.monotonic()
        time.sleep(max(0.0, t_end + AFTER_FLOOD_S - time.monotonic()))
        sampler.stop()
        during = sampler.between(t_flood, t_end)
        after = sampler.between(t_end, t_end + AFTER_FLOOD_S + 2)
        back = next((t - t_end for t, mb, _ in after if mb <= idle + BACK_WITHIN_MB and t >= t_visitors), None)
        log = server.log_text()
        return {
            "idle_mb": idle, "peak_mb": max(mb for t, mb, _ in sampler.samples if t >= t_flood),
            "peak_kernels": max(k for t, _, k in sampler.samples if t >= t_flood),
            "during_max_mb": max(mb for _, mb, _ in during), "end_mb": after[-1][1] if after else None,
            "end_kernels": after[-1][2] if after else None, "back_s": back, "flood_s": t_end - t_flood,
            "visitors_done_s": t_visitors - t_flood, "gets": gets, "visitors": seen.get("visitors", []),
            "runaway": sampler.runaway.is_set(), "cap": server.kernel_cap(),
            "busy_logged": log.count("busy page for"), "unjoined_logged": log.count("no page opened its websocket"),
        }  # fmt: skip


def pinger_phase(model: Path, code: Path | None, minutes: float) -> dict[str, dict]:
    """A GET a minute on each server (after, and the baseline's when given) at the same time; kernels each second."""
    servers = {"after": TrafficServer("pinger-after", model)}
    if code is not None:
        servers["before"] = TrafficServer("pinger-before", model, code)
    out: dict[str, dict] = {}
    for s in servers.values():
        s.__enter__()
    try:
        for s in servers.values():
            s.wait_ready()
        samplers = {k: Sampler(s) for k, s in servers.items()}
        for sampler in samplers.values():
            sampler.start()
        t0, pings = time.monotonic(), int(minutes)
        statuses: dict[str, list[int]] = {k: [] for k in servers}
        for i in range(pings):
            time.sleep(max(0.0, t0 + 60 * i - time.monotonic()))
            for k, s in servers.items():
                statuses[k].append(plain_get(s.url + "/", "192.0.2.1")[0])
        time.sleep(max(0.0, t0 + 60 * pings - time.monotonic()))
        for k, sampler in samplers.items():
            sampler.stop()
            kernels = [n for _, _, n in sampler.samples]
            out[k] = {"pings": len(statuses[k]), "statuses": statuses[k], "max_kernels": max(kernels),
                      "end_kernels": kernels[-1], "end_mb": sampler.samples[-1][1],
                      "max_mb": max(mb for _, mb, _ in sampler.samples)}  # fmt: skip
    finally:
        for s in servers.values():
            s.__exit__(None, None, None)
    return out


def capacity_phase(model: Path, photo: Path, limit: int = 12) -> dict:
    """Visitors arrive one at a time, classify and stay (default budget) until one gets the busy page."""
    from playwright.sync_api import expect, sync_playwright

    with TrafficServer("capacity", model, args=("--per-client=0",)) as server, sync_playwright() as p:
        server.wait_ready()
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        steps: list[dict] = []
        try:
            for n in range(1, limit + 1):
                page = browser.new_context().new_page()
                response = page.goto(server.url + "/", wait_until="domcontentloaded", timeout=180_000)
                if response is None or response.status != 200:
                    steps.append({"visitor": n, "status": response.status if response else None,
                                  "mb": server.sample()[0]})  # fmt: skip
                    break
                expect(page.get_by_role("button", name="Classify")).to_be_enabled(timeout=180_000)
                if page.locator(PHOTO_INPUT).count():  # whatsthat's photo input: classified on arrival
                    page.locator(PHOTO_INPUT).set_input_files(photo)
                else:  # a baseline from before it: ipywidgets' FileUpload, then Classify
                    with page.expect_file_chooser() as chooser:
                        page.click(".widget-upload")
                    chooser.value.set_files(photo)
                    page.locator(".widget-upload").filter(has_text="(1)").wait_for(timeout=60_000)
                    page.get_by_role("button", name="Classify").click()
                page.locator(".widget-label").filter(has_text="Prediction:").wait_for(timeout=120_000)
                time.sleep(5)  # the server's next measurements include this visitor
                mb, kernels = server.sample()
                steps.append({"visitor": n, "status": 200, "mb": mb, "kernels": kernels})
                print(f"capacity: visitor {n}: {mb:.0f} MB, {kernels} kernels", flush=True)
        finally:
            browser.close()
        return {"steps": steps, "room": server.kernel_cap()}


def phone_phase(model: Path, runs: int) -> dict[str, list[float]]:
    """Seconds from the page's HTML received to its kernel websocket opened, per phone profile (join timeout off)."""
    from playwright.sync_api import expect, sync_playwright

    out: dict[str, list[float]] = {}
    with TrafficServer("phone", model, args=("--join-timeout=600", "--per-client=0", "--memory-mb=100000")) as server, sync_playwright() as p:
        server.wait_ready()
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            for name, (rate, network) in PHONES.items():
                for _ in range(runs):
                    context = browser.new_context()
                    page = context.new_page()
                    cdp = context.new_cdp_session(page)
                    cdp.send("Network.enable")
                    cdp.send("Network.emulateNetworkConditions", network)
                    cdp.send("Emulation.setCPUThrottlingRate", {"rate": rate})
                    marks: dict[str, float] = {}
                    # the page's HTML fully received (the server's clock starts when it has sent it), then
                    # the kernel's websocket created (the server hears of it one round trip later)
                    page.on("requestfinished", lambda r, m=marks: m.setdefault("html", time.monotonic())
                            if r.resource_type == "document" else None)  # fmt: skip
                    page.on("websocket", lambda ws, m=marks: m.setdefault("ws", time.monotonic())
                            if "/channels" in ws.url else None)  # fmt: skip
                    page.goto(server.url + "/", wait_until="domcontentloaded", timeout=300_000)
                    expect(page.get_by_role("button", name="Classify")).to_be_enabled(timeout=300_000)
                    out.setdefault(name, []).append(marks["ws"] - marks["html"])
                    print(f"phone {name}: {out[name][-1]:.1f} s; kernels {server.sample()[1]}", flush=True)
                    page.close(run_before_unload=True)
                    context.close()
                    server.wait_ready()
        finally:
            browser.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "export.pkl")
    ap.add_argument("--baseline", default="main", help="the commit to compare with (default main); '' for none")
    ap.add_argument("--pinger-minutes", type=float, default=15.0, help="how long the pinger runs (0: skip)")
    ap.add_argument("--phone-runs", type=int, default=3, help="page loads per phone profile (0: skip)")
    ap.add_argument("--no-flood", action="store_true", help="skip the flood with visitors")
    ap.add_argument("--capacity", action=argparse.BooleanOptionalAction, default=True,
                    help="visitors one at a time, each staying, until the busy page (default: on)")
    ap.add_argument("--baseline-stop-mb", type=float, default=4000.0,
                    help="stop the baseline's flood when its server passes this many MB (default 4000)")
    ap.add_argument("--results", type=Path, help="write the measurements as JSON here too")
    args = ap.parse_args()
    if serve_venv() is None:
        sys.exit("set WHATSTHAT_SERVE_VENV to the serving venv (make serve-env): the dyno's environment is what counts")
    require_current_package()
    photo = sorted((require_bears() / "grizzly").glob("*.jpg"))[0]
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M"), "baseline": args.baseline}
    with checkout(args.baseline) if args.baseline else _no_checkout() as code:
        if args.phone_runs:
            results["phone"] = phone_phase(args.model, args.phone_runs)
            print(json.dumps(results["phone"]), flush=True)
        if args.capacity:
            results["capacity"] = capacity_phase(args.model, photo)
            print(json.dumps(results["capacity"]), flush=True)
        if not args.no_flood:
            results["after"] = flood_phase("after", args.model, photo, None, None)
            print(json.dumps({k: v for k, v in results["after"].items() if k != "gets"}), flush=True)
            if code is not None:
                results["before"] = flood_phase("before", args.model, photo, code, args.baseline_stop_mb)
                print(json.dumps({k: v for k, v in results["before"].items() if k != "gets"}), flush=True)
        if args.pinger_minutes:
            results["pinger"] = pinger_phase(args.model, code, args.pinger_minutes)
            print(json.dumps(results["pinger"]), flush=True)
    if args.results:
        args.results.write_text(json.dumps(results, indent=1))
    print(report(results, args))


class _no_checkout:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def report(results: dict, args: argparse.Namespace) -> str:
    rows: list[list[object]] = []
    before_name = f"before ({args.baseline})"

    def flood_cells(r: dict | None) -> dict[str, str]:
        if r is None:
            return {}
        codes = [c for c, _ in r["gets"]]
        seconds = [s for _, s in r["gets"]]
        answered = [v for v in r["visitors"] if v.get("answer")]
        times = [v["seconds"] for v in answered]
        return {
            "gets": f"{len(codes)}: {codes.count(200)} pages, {codes.count(503)} busy, "
                    f"{len(codes) - codes.count(200) - codes.count(503)} failed" + (" (stopped: runaway)" if r["runaway"] else ""),
            "get_s": f"{median(seconds):.2f} / {percentile(seconds, 95):.2f}",
            "peak": f"{r['peak_mb']:.0f}", "kernels": str(r["peak_kernels"]),
            "visitors": f"{len(answered)} of {len(r['visitors'])}",
            "retries": f"{sum(v['busy'] for v in r['visitors'])} busy pages, {sum(v['asleep'] for v in r['visitors'])} asleep",
            "visitor_s": f"{median(times):.0f} / {max(times):.0f}" if times else "-",
            "idle": f"{r['idle_mb']:.0f}", "end": f"{r['end_mb']:.0f} ({r['end_kernels']} kernels)",
            "back": f"{r['back_s']:.0f}" if r["back_s"] is not None else "not within 90 s",
            "cap": r["cap"],
        }  # fmt: skip

    a, b = flood_cells(results.get("after")), flood_cells(results.get("before"))
    labels = [("gets", "plain GETs: pages / busy (503) / failed", ""),
              ("get_s", "plain GET, median / p95 s", ""),
              ("peak", "whole server's PSS, peak sampled each second, MB", f"<= {BUDGET_MB}"),
              ("kernels", "kernels at the peak", ""),
              ("visitors", "visitors answered", "5 of 5"),
              ("retries", "visitors' retries", ""),
              ("visitor_s", "visitor: arrival -> answer, median / max s", ""),
              ("idle", "idle size before the flood, MB", ""),
              ("end", "90 s after the flood, MB", f"<= idle + {BACK_WITHIN_MB:.0f}"),
              ("back", f"s after the flood until within {BACK_WITHIN_MB:.0f} MB of idle", "<= 90"),
              ("cap", "room at the start measurement", "")]  # fmt: skip
    for key, label, target in labels:
        if key in a or key in b:
            rows.append([label, a.get(key, "-"), b.get(key, "-"), target])
    pinger = results.get("pinger") or {}
    if pinger:
        minutes = pinger["after"]["pings"]
        # (no MB here: the two servers run side by side and share pages, so PSS splits them between the servers)
        for key, label in (("max_kernels", "most kernels at once (the preheated one included)"),
                           ("end_kernels", "kernels at the end")):  # fmt: skip
            rows.append([f"pinger, a GET a minute for {minutes} min: {label}",
                         f"{pinger['after'][key]:.0f}", f"{pinger['before'][key]:.0f}" if "before" in pinger else "-",
                         "<= 2" if key == "max_kernels" else ""])  # fmt: skip
    capacity = results.get("capacity")
    if capacity:
        admitted = [st for st in capacity["steps"] if st["status"] == 200]
        last = capacity["steps"][-1]
        rows.append(["visitors at once who classified and stayed, default 512 MB budget",
                     f"{len(admitted)} ({admitted[-1]['mb']:.0f} MB)" if admitted else "0", "", ""])  # fmt: skip
        rows.append(["the next visitor", f"HTTP {last['status']}" if last["status"] != 200 else "admitted (limit)", "",
                     "503"])  # fmt: skip
    for name, seconds in (results.get("phone") or {}).items():
        rows.append([f"slow phone ({name}): HTML -> kernel websocket, median / max s",
                     f"{median(seconds):.1f} / {max(seconds):.1f}", "", "< --join-timeout"])  # fmt: skip
    return table(["measure", "after", before_name, "target"], rows)


if __name__ == "__main__":
    main()
