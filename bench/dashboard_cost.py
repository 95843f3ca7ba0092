"""What the dashboard costs the node: CPU of one `quorate serve` under a steady
`quorate-bench check` load, with no page open and with the page open in headless Chromium
(its SSE stream, charts redrawn every second), alternating runs.

    python3 bench/dashboard_cost.py [--quorate BIN] [--bench BIN] [--seconds 20] [--rounds 2]
        [--concurrency 2]

CPU is the node's utime+stime from /proc over each run, so other processes on the machine
do not count; decisions/s comes from quorate-bench's JSON report.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "dashboard"))
import test_dashboard as t  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quorate", default=t.BIN)
    ap.add_argument("--bench", default=os.path.join(t.ROOT, "target", "debug", "quorate-bench"))
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="quorate-cost-")
    grpc, http = f"127.0.0.1:{t.free_port()}", f"127.0.0.1:{t.free_port()}"
    node = subprocess.Popen([args.quorate, "serve", "--grpc", grpc, "--http", http, "--data-dir",
                             os.path.join(work, "data")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    browser_gen = t.browser.__wrapped__()
    driver = next(browser_gen)
    try:
        t.eventually("node ready", lambda: t.http("GET", f"http://{http}/readyz", timeout=1)[0] == 200)
        results = []
        for r in range(args.rounds):
            for page in (False, True):
                driver.get(f"http://{http}/" if page else "about:blank")
                if page:
                    t.eventually("page live", lambda: driver.find_element(t.By.ID, "live").text == "live", timeout=20)
                before = cpu_seconds(node.pid)
                started = time.monotonic()
                out = subprocess.run([args.bench, "check", "--target", f"http://{grpc}", "--limit", "per_minute",
                                      "--keys", "100000", "--concurrency", str(args.concurrency),
                                      "--duration", f"{args.seconds}s", "--warmup", "1s", "--json", "--allow-errors"],
                                     capture_output=True, text=True, check=True)
                elapsed = time.monotonic() - started
                cpu = cpu_seconds(node.pid) - before
                report = json.loads(out.stdout.strip().splitlines()[-1])
                rate = report.get("throughput_rps") or report.get("rps") or report.get("throughput")
                results.append((page, rate, 100 * cpu / elapsed))
                print(f"round {r + 1} page {'open  ' if page else 'closed'}: {rate} decisions/s, "
                      f"node CPU {100 * cpu / elapsed:.1f}% of one core", flush=True)
        for page in (False, True):
            rows = [x for x in results if x[0] == page]
            print(f"mean page {'open  ' if page else 'closed'}: node CPU "
                  f"{sum(x[2] for x in rows) / len(rows):.1f}% of one core")
    finally:
        try:
            next(browser_gen)
        except StopIteration:
            pass
        node.terminate()
        node.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
