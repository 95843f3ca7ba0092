"""Takes docs/dashboard.png: a 3-node cluster under forward-auth load for a while, the
page opened on the leader in headless Chromium. Reuses test_dashboard.py's helpers.

    python3 tests/dashboard/screenshot.py [seconds of load, default 120]
"""

import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import test_dashboard as t  # noqa: E402


def main():
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 120
    cluster_gen = t.cluster.__wrapped__()
    nodes = next(cluster_gen)
    load = t.Load(nodes)
    browser_gen = t.browser.__wrapped__()
    driver = next(browser_gen)
    try:
        time.sleep(seconds)
        leader = t.leader_of(nodes)
        url = next(n.url for n in nodes if n.id == leader)
        driver.set_window_size(1280, 900)
        driver.get(url + "/")
        t.eventually("page live", lambda: driver.find_element(t.By.ID, "live").text == "live", timeout=20)
        time.sleep(3)
        raw = os.path.join(t.SHOTS, "readme.png")
        driver.save_screenshot(raw)
        out = os.path.join(t.ROOT, "docs", "dashboard.png")
        # pngquant (Debian package) keeps the committed image small.
        subprocess.run(["pngquant", "--quality", "60-85", "--strip", "--force", "--output", out, raw], check=True)
        print(out, os.path.getsize(out), "bytes")
    finally:
        load.close()
        for gen in (browser_gen, cluster_gen):
            try:
                next(gen)
            except StopIteration:
                pass


if __name__ == "__main__":
    main()
