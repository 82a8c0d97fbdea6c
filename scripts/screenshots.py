"""Screenshots of Flower showing Conveyor's jobs, for the README: `docs/img/flower-*.png`.

Drives headless Chromium (Debian's `chromium` package) over the DevTools protocol against a
running stack (`conveyor up`, or `conveyor flower` next to a worker), so they can be taken
again whenever Flower or Conveyor changes:

    CONVEYOR_FLOWER_USER=admin CONVEYOR_FLOWER_PASSWORD=... conveyor up &
    CONVEYOR_FLOWER_USER=admin CONVEYOR_FLOWER_PASSWORD=... python scripts/screenshots.py --seed

`--seed` first enqueues a mix of jobs (successes, slow ones, a failure, and the example of a
task with sensitive fields if one is registered) so the pages have something to show.
The credentials go to Chromium as an `Authorization` header over the DevTools connection,
never in a URL or on a command line. Flower's URL and credentials come from the settings, or
--url/--user (the password only from CONVEYOR_FLOWER_PASSWORD).

A tool, not a test: it exits non-zero with a message when something is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--remote-debugging-port=0", "about:blank",
]
#: page, file, JavaScript that is true once the page shows what it should
PAGES = [
    ("", "flower-workers.png",
     "document.querySelectorAll('#workers-table tbody tr').length > 0 && "
     "!['', '\u2014'].includes(document.querySelector('#workers-online').innerText.trim())"),
    ("tasks", "flower-tasks.png",
     "document.querySelectorAll('#tasks-table tbody tr td a').length > 0"),
]


class DevTools:
    """The few DevTools protocol calls this script needs, over one page's websocket."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, url: str) -> DevTools:
        from tornado.websocket import websocket_connect

        return cls(await websocket_connect(url, max_message_size=64 * 1024 * 1024))

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        await self.ws.write_message(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            raw = await asyncio.wait_for(self.ws.read_message(), timeout=30)
            if raw is None:
                raise RuntimeError("Chromium closed the DevTools connection")
            msg: dict[str, Any] = json.loads(raw)
            if msg.get("id") == call_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg.get("result", {})
                return result
            self.events.append(msg)

    async def until(self, expression: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = await self.call("Runtime.evaluate", expression=f"!!({expression})", returnByValue=True)
            if result.get("result", {}).get("value"):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the page never showed: {expression}")
            await asyncio.sleep(0.25)

    async def screenshot(self, url: str, ready: str, path: Path) -> None:
        await self.call("Page.navigate", url=url)
        await self.until("document.readyState === 'complete'")
        await self.until(ready)
        await asyncio.sleep(0.5)  # let tables finish drawing
        shot = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))


def start_chromium(binary: str, profile: Path, size: tuple[int, int]) -> tuple[subprocess.Popen[bytes], str]:
    """Chromium on a free DevTools port; returns it and its first page's websocket URL."""
    from urllib.request import urlopen

    proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                             f"--window-size={size[0]},{size[1]}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("chromium did not start (is Debian's chromium package installed?)")
        time.sleep(0.1)
    port = port_file.read_text().split()[0]
    with urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as resp:  # noqa: S310 - loopback
        pages = [t for t in json.load(resp) if t.get("type") == "page"]
    return proc, pages[0]["webSocketDebuggerUrl"]


def seed(settings: Any) -> list[tuple[str, str]]:
    """Enqueue a mix of jobs for the pages to show; return (file name, job id) of the jobs
    whose detail page is worth a picture: a failure, and a job with redacted fields."""
    from jobs.client import Client
    from tasks import load_all
    from worker.factory import create_app

    client = Client(create_app(settings))
    jobs = [client.enqueue("system.ping", {"message": f"hello {i}"}) for i in range(6)]
    jobs += [client.enqueue("system.sleep", {"seconds": s}) for s in (0.4, 1.2, 2.5)]
    failed = client.enqueue("system.sleep", {"seconds": 0.1, "fail": True, "permanent": True})
    details = [("flower-task-failed.png", failed.id)]
    jobs.append(failed)
    # A task with sensitive fields and an example payload: Flower shows those fields as ***.
    sensitive = [s for s in load_all(settings.task_modules).values() if s.sensitive and s.example]
    for spec in sensitive[:1]:
        job = client.enqueue(spec.name, spec.example)
        details.append(("flower-task-redacted.png", job.id))
        jobs.append(job)
    for job in jobs:
        job.wait_finished(timeout=120)
    client.enqueue("system.sleep", {"seconds": 30, "steps": 30})  # running while we look
    time.sleep(1.5)
    return details


async def shoot(ws_url: str, base: str, auth: str, out: Path, size: tuple[int, int],
                details: list[tuple[str, str]]) -> list[Path]:
    tools = await DevTools.connect(ws_url)
    await tools.call("Network.enable")
    await tools.call("Network.setExtraHTTPHeaders", headers={"Authorization": auth})
    await tools.call("Emulation.setDeviceMetricsOverride", width=size[0], height=size[1],
                     deviceScaleFactor=1, mobile=False)
    pages = list(PAGES)
    for name, job_id in details:
        pages.append((f"task/{job_id}", name, f"document.body.innerText.includes('{job_id}')"))
    written = []
    for path, name, ready in pages:
        target = out / name
        await tools.screenshot(base + path, ready, target)
        print(f"wrote {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}")
        written.append(target)
    tools.ws.close()
    return written


def main() -> int:
    from config import get_settings
    from worker.flower import flower_command

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="Flower's base URL (default: from the settings)")
    parser.add_argument("--user", help="Flower user (default: CONVEYOR_FLOWER_USER)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--seed", action="store_true", help="enqueue a mix of jobs first")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    parser.add_argument("--size", default="1400x900", help="window size, WIDTHxHEIGHT")
    args = parser.parse_args()

    settings = get_settings()
    if not args.chromium:
        raise SystemExit("no chromium found: apt-get install chromium (or pass --chromium PATH)")
    user = args.user or settings.flower_user
    password = os.environ.get("CONVEYOR_FLOWER_PASSWORD") or (
        settings.flower_password.get_secret_value() if settings.flower_password else None)
    if not user or not password:
        raise SystemExit("set CONVEYOR_FLOWER_USER and CONVEYOR_FLOWER_PASSWORD to Flower's credentials")
    base = args.url or flower_command(settings, base_env={}).url
    base = base if base.endswith("/") else base + "/"
    width, height = (int(v) for v in args.size.lower().split("x"))
    args.out.mkdir(parents=True, exist_ok=True)

    detail = seed(settings) if args.seed else []
    auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    with tempfile.TemporaryDirectory(prefix="conveyor-chromium-") as profile:
        proc, ws_url = start_chromium(args.chromium, Path(profile), (width, height))
        try:
            asyncio.run(shoot(ws_url, base, auth, args.out, (width, height), detail))
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
