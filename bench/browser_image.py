#!/usr/bin/env python3
"""Image viewer benchmark: the web app's own viewer in headless Chromium against a real hub.

Not part of the test run. Prints figures and ends with one `name=value` line.

  python bench/browser_image.py              # 500-slice 512×512 CT
  python bench/browser_image.py --slices 100 # quicker

The hub runs as `telehealth serve` (embedded SQLite and S3) with a CT series pushed by
storescu, as bench/retrieve.py does. Chromium opens /app/studies/{study} once for its scripts
(warm script cache, as issue 6 allows), then again for the figures (no image is cached: frames
are fetched anew by each page):

- first_image_ms: navigation start → the first slice's pixels drawn on the canvas
  (`window.__viewerStats.firstImageMs`, performance.now() at that draw);
- all_loaded_s: navigation → every slice's pixels held by the viewer;
- scroll_slices_s: after loading, one ArrowDown per animation frame through the whole series;
  distinct slices drawn per second (the display's 60 Hz is the ceiling).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[1])  # bench/queue.py must not shadow queue

from bench.ingest import http_json, make_series, stop, stop_all, wait_until  # noqa: E402
from bench.retrieve import PASSWORD, describe, load, start_hub  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]

# One ArrowDown per animation frame; resolves with the distinct slices drawn and the time.
SCROLL_SCRIPT = """async (total) => {
  const viewer = document.querySelector('.image-viewer');
  const stats = window.__viewerStats;
  const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
  viewer.focus();
  await frame();
  const seen = new Set([stats.index]);
  let drawn = stats.drawn;
  const start = performance.now();
  for (let i = 1; i < total; i++) {
    viewer.dispatchEvent(new KeyboardEvent('keydown', { key: 'ArrowDown', bubbles: true }));
    await frame();
    if (stats.drawn > drawn) seen.add(stats.index);
    drawn = stats.drawn;
  }
  await frame();
  seen.add(stats.index);
  return { slices: seen.size, ms: performance.now() - start, last: stats.index };
}"""

# Where the time to the first image went: when each step's request started and ended (ms
# since navigation).
TIMELINE_SCRIPT = """() => {
  const entries = performance.getEntriesByType('resource');
  const span = (test) => {
    const entry = entries.find((e) => test(e.name));
    return entry ? `${Math.round(entry.startTime)}-${Math.round(entry.responseEnd)}` : '-';
  };
  const nav = performance.getEntriesByType('navigation')[0];
  return {
    html: nav ? `0-${Math.round(nav.responseEnd)}` : '-',
    me: span((u) => u.endsWith('/api/auth/me')),
    series: span((u) => /\\/series\\?/.test(u)),
    metadata: span((u) => u.endsWith('/metadata')),
    frame: span((u) => u.includes('/frames/')),
    drawn: Math.round(window.__viewerStats.firstImageMs),
  };
}"""


def open_viewer(browser, base: str, url: str, total: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1440, "height": 900})
    response = context.request.post(
        f"{base}/api/auth/login", data={"username": "bench", "password": PASSWORD}
    )
    if not response.ok:
        raise RuntimeError(f"login failed: {response.status}")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Warm the script cache (the app and the viewer's lazy chunk), not the images: each
    # page fetches its frames anew.
    page.goto(url)  # the first opening also has the hub compute the series' metadata
    page.wait_for_function("() => (window.__viewerStats?.drawn ?? 0) > 0", timeout=300_000)
    page.goto(f"{base}/app/desk")
    page.goto(url)
    page.wait_for_function("() => (window.__viewerStats?.drawn ?? 0) > 0", timeout=60_000)
    first_ms = page.evaluate("() => window.__viewerStats.firstImageMs")
    steps = page.evaluate(TIMELINE_SCRIPT)
    page.wait_for_function(
        f"() => window.__viewerStats.loaded >= {total}", timeout=600_000, polling=100
    )
    loaded_s = page.evaluate("() => performance.now()") / 1000
    scroll = page.evaluate(SCROLL_SCRIPT, total)
    context.close()
    if errors:
        raise RuntimeError(f"script errors: {errors[:3]}")
    if scroll["last"] != total - 1:
        raise RuntimeError(f"scroll ended on slice {scroll['last'] + 1} of {total}")
    print("  " + " ".join(f"{name}={at}" for name, at in steps.items()), file=sys.stderr)
    return {
        "first_image_ms": float(first_ms),
        "all_loaded_s": loaded_s,
        "scroll_slices_s": scroll["slices"] / (scroll["ms"] / 1000),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--slices", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    build = subprocess.run(["bash", str(REPO / "scripts" / "build_webapp.sh")], check=False)
    if build.returncode != 0:
        if not (REPO / "viewer" / "app" / "dist" / "index.html").is_file():
            return 1
        print("web app build failed: measuring the last build", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix="browser-image-bench-"))
    try:
        print(f"generating {args.slices} slices in {tmp}", file=sys.stderr)
        make_series(tmp / "ct", args.slices, 1, "VIEWPAT")
        ct = describe(tmp / "ct")
        proc, hub, health = start_hub(tmp)
        try:
            load(hub.dicom_port, hub.called_aet, [tmp / "ct"], tmp, "hub")
            wait_until(lambda: http_json(health, 10)["spool_backlog"] == 0, 600, "hub uploads")
            base = hub.dicomweb.removesuffix("/dicomweb")
            url = f"{base}/app/studies/{ct['study']}?series={ct['series']}"
            runs = []
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                for run in range(args.repeats):
                    t0 = time.perf_counter()
                    figures = open_viewer(browser, base, url, args.slices)
                    runs.append(figures)
                    print(
                        f"run {run + 1}: "
                        + " ".join(f"{k}={v:.1f}" for k, v in figures.items())
                        + f" ({time.perf_counter() - t0:.1f} s)",
                        file=sys.stderr,
                    )
                browser.close()
        finally:
            stop(proc)
        medians = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
        print(f"{args.slices}-slice 512×512 CT, {args.repeats} runs, medians")
        for name, value in medians.items():
            print(f"{name:<18}{value:>10.1f}")
        print(
            f"first_image_ms={medians['first_image_ms']:.0f} "
            f"scroll_slices_s={medians['scroll_slices_s']:.1f} "
            f"all_loaded_s={medians['all_loaded_s']:.1f}"
        )
        return 0
    finally:
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
