"""The dashboard in a real headless Chromium against a live 3-node quorate cluster.

Starts three real `quorate serve` processes (QUORATE_BIN), forms them into one cluster
through the admin API, drives forward-auth load at every node, opens the page on a
follower through chromedriver (WebDriver) and checks what an operator sees:

1. three members, the right one marked leader, no request to any other origin, no
   console error;
2. the traffic chart moves (its pixels and its newest second change under load);
3. the Envoy RLQS panel says no proxy is connected, then shows a bucket and the proxies
   reporting it (real RLQS streams from stubs of Envoy's rlqs.proto, which run.sh
   generates) with shares that sum to at most the limit; a per-tenant bucket value never
   appears in the page (only its digest);
4. without the admin token the operations are absent (and a wrong token is refused);
5. a rollback done through the page, with the token, changes the live policy version
   (checked through the admin API, not the page);
6. a SIGKILLed leader is shown "down" within 3 s, and the new leader is shown.

Screenshots of every step go to target/dashboard-screenshots/.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("QUORATE_BIN", os.path.join(ROOT, "target", "debug", "quorate"))
POLICY = os.path.join(os.path.dirname(__file__), "policy.yaml")
SHOTS = os.path.join(ROOT, "target", "dashboard-screenshots")
TOKEN = "dashboard-test-admin-token"
ALICE = "alice-secret-key"
BOB = "bob-secret-key"
# A per-tenant RLQS bucket value that looks like a credential: shown only as a digest.
TENANT = "tenant-secret-token-77"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, token=None, timeout=5):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, decode(r.read())
    except urllib.error.HTTPError as e:
        return e.code, decode(e.read())


def decode(raw):
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return raw.decode(errors="replace")


def eventually(what, check, timeout=30.0, every=0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


class Node:
    def __init__(self, node_id, workdir, join):
        self.id = node_id
        self.grpc = f"127.0.0.1:{free_port()}"
        self.http = f"127.0.0.1:{free_port()}"
        self.peer = f"127.0.0.1:{free_port()}"
        self.url = "http://" + self.http
        self.log = open(os.path.join(workdir, f"node{node_id}.log"), "w")
        token_file = os.path.join(workdir, "admin-token")
        with open(token_file, "w") as f:
            f.write(TOKEN)
        args = [BIN, "serve", "--id", str(node_id), "--grpc", self.grpc, "--http", self.http,
                "--peer", self.peer, "--data-dir", os.path.join(workdir, f"node{node_id}"),
                "--policy", POLICY, "--admin-token-file", token_file]
        if join:
            args.append("--join")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT)

    def node_info(self):
        status, body = http("GET", self.url + "/dashboard/api/node", timeout=2)
        assert status == 200, body
        return body

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


class Load:
    """Forward-auth requests to every node from a few threads, until stopped."""

    def __init__(self, nodes):
        self.nodes = nodes
        self.stop = threading.Event()
        self.sent = 0
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(6)]
        for t in self.threads:
            t.start()

    def run(self, i):
        n = 0
        while not self.stop.is_set():
            node = self.nodes[(i + n) % len(self.nodes)]
            key, path = [(ALICE, "/api/items"), (BOB, "/api/items"), (BOB, "/admin/x"), ("nope", "/api/x")][n % 4]
            req = urllib.request.Request(node.url + "/authz", method="GET")
            req.add_header("x-forwarded-uri", path)
            req.add_header("x-forwarded-host", "api.example.com")
            req.add_header("x-forwarded-method", "GET")
            req.add_header("x-api-key", key)
            try:
                urllib.request.urlopen(req, timeout=2).read()
            except urllib.error.HTTPError:
                pass
            except OSError:
                time.sleep(0.05)  # a killed node
            self.sent += 1
            n += 1

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=5)


@pytest.fixture(scope="module")
def cluster():
    assert os.access(BIN, os.X_OK), f"{BIN} not found: cargo build -p quorate-server --bin quorate"
    workdir = tempfile.mkdtemp(prefix="quorate-dashboard-")
    nodes = [Node(1, workdir, join=False)]
    ok = False
    try:
        eventually("node 1 ready", lambda: http("GET", nodes[0].url + "/readyz", timeout=1)[0] == 200)
        nodes += [Node(2, workdir, join=True), Node(3, workdir, join=True)]
        for n in nodes[1:]:
            eventually(f"node {n.id} up", lambda n=n: http("GET", n.url + "/healthz", timeout=1)[0] == 200)
        for n in nodes[1:]:
            status, body = http("POST", nodes[0].url + "/admin/v1/cluster/learners",
                                {"id": n.id, "grpc": n.grpc, "http": n.http, "peer": n.peer}, TOKEN, timeout=40)
            assert status == 200, body
        for n in nodes[1:]:
            status, body = http("POST", nodes[0].url + "/admin/v1/cluster/promote", {"id": n.id}, TOKEN, timeout=20)
            assert status == 200, body
        eventually("one leader seen by all", lambda: len({n.node_info()["leader"] for n in nodes}) == 1
                   and nodes[0].node_info()["leader"] is not None)
        ok = True
        yield nodes
    finally:
        for n in nodes:
            if n.proc.poll() is None:
                n.proc.terminate()
                try:
                    n.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    n.proc.kill()
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept {workdir} for inspection")


@pytest.fixture(scope="module")
def load(cluster):
    l = Load(cluster)
    yield l
    l.close()


@pytest.fixture(scope="module")
def browser():
    os.makedirs(SHOTS, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="quorate-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1440,1000", f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The Debian chromedriver, never selenium-manager (which would download one).
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=opts, service=service)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def shot(driver, name, section=None):
    if section:
        driver.execute_script("document.getElementById(arguments[0]).scrollIntoView()", section)
        time.sleep(0.3)
    path = os.path.join(SHOTS, name + ".png")
    driver.save_screenshot(path)
    return path


def leader_of(nodes):
    for n in nodes:
        if n.proc.poll() is None:
            try:
                leader = n.node_info()["leader"]
                if leader:
                    return leader
            except Exception:  # noqa: BLE001
                pass
    return None


def rows(driver):
    """The members table, read in one script call (the page redraws it every second, so
    element-by-element reads would race the redraw)."""
    got = driver.execute_script(
        "return [...document.querySelectorAll('#members tbody tr')]"
        ".map(r => [r.dataset.member, r.dataset.role, r.dataset.reachable])")
    return {int(m): (role, reach) for m, role, reach in got}


def cells(driver, selector):
    return driver.execute_script(
        "const r = document.querySelector(arguments[0]);"
        "return r ? [...r.querySelectorAll('td')].map(c => c.textContent) : null", selector)


@pytest.fixture(scope="module")
def page(cluster, load, browser):
    leader = leader_of(cluster)
    # Open the page on a follower: it must keep working when the leader is killed.
    viewer = next(n for n in cluster if n.id != leader)
    browser.get(viewer.url + "/")
    eventually("page live", lambda: browser.find_element(By.ID, "live").text == "live", timeout=20)
    return viewer


def test_three_members_with_the_right_leader(cluster, page, browser):
    def marked():
        # The cluster's leader, asked now (a loaded machine may hold an election).
        leader = leader_of(cluster)
        r = rows(browser)
        if len(r) == 3 and r.get(leader, ("",))[0] == "leader" and \
                f"leader: node {leader}" in browser.find_element(By.ID, "summary").text:
            return r
        return None

    seen = eventually("three members, the cluster's leader marked", marked)
    assert all(reach == "yes" for _, reach in seen.values()), seen
    assert sum(1 for role, _ in seen.values() if role == "leader") == 1, seen
    # The policy section shows the live version.
    live = http("GET", page.url + "/admin/v1/policy", token=TOKEN)[1]["version"]
    eventually("policy version shown",
               lambda: browser.find_element(By.ID, "policy-version").get_attribute("data-version") == str(live))
    # Same-origin only: every resource the page loaded came from the node itself.
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(page.url + "/") for u in urls), urls
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
    shot(browser, "01-cluster", "cluster")


def test_the_traffic_chart_moves(page, load, browser):
    canvas = browser.find_element(By.ID, "traffic-chart")

    def state():
        return (canvas.get_attribute("data-end"),
                browser.execute_script("return arguments[0].toDataURL()", canvas))

    eventually("traffic drawn", lambda: float(canvas.get_attribute("data-rate") or 0) > 0, timeout=20)
    first_end, first_pixels = state()
    eventually("chart moved", lambda: (s := state())[0] != first_end and s[1] != first_pixels, timeout=10)
    rate = float(canvas.get_attribute("data-rate"))
    assert rate > 1.0, rate
    # The per-surface table counts HTTP authz traffic, with denials (bob over his limit
    # or forbidden, and the unknown key).
    row = [c.replace(",", "") for c in cells(browser, "#surfaces tr[data-surface=http_authz]")]
    assert int(row[1]) > 0 and int(row[2]) > 0, row
    # Hot keys list counter keys: the consumer, never the API key itself.
    hot = browser.find_element(By.ID, "hot-hits").text
    assert "alice" in hot or "bob" in hot, hot
    assert ALICE not in browser.page_source and BOB not in browser.page_source
    shot(browser, "02-traffic", "traffic")
    shot(browser, "03-hotkeys", "hotkeys")


class RlqsProxy:
    """One simulated Envoy `rate_limit_quota` filter: a real RLQS stream to the cluster's
    leader that reports `buckets` (dicts of bucket_id entries) at `per_second` requests
    every 250 ms, as Envoy's reporting_interval would, until stopped. Like Envoy, it
    reconnects when its stream ends (a follower refuses streams; elections happen on a
    loaded machine)."""

    def __init__(self, cluster, buckets, per_second):
        from envoy.service.rate_limit_quota.v3 import rlqs_pb2
        from google.protobuf import duration_pb2

        self.pb = rlqs_pb2
        self.interval = duration_pb2.Duration(nanos=250_000_000)
        self.cluster = cluster
        self.buckets = buckets
        self.per_second = per_second
        self.stop = threading.Event()
        self.pushes = 0
        self.ended = []
        self.call = None
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def reports(self):
        first = True
        while not self.stop.is_set():
            n = int(self.per_second / 4)
            usages = [self.pb.RateLimitQuotaUsageReports.BucketQuotaUsage(
                bucket_id=self.pb.BucketId(bucket=b), num_requests_allowed=n - n // 4,
                num_requests_denied=n // 4, time_elapsed=self.interval) for b in self.buckets]
            yield self.pb.RateLimitQuotaUsageReports(domain="edge" if first else "", bucket_quota_usages=usages)
            first = False
            self.stop.wait(0.25)

    def run(self):
        import grpc
        from envoy.service.rate_limit_quota.v3 import rlqs_pb2_grpc

        while not self.stop.is_set():
            leader = leader_of(self.cluster)
            node = next((n for n in self.cluster if n.id == leader), None)
            if node is None:
                self.stop.wait(0.2)
                continue
            with grpc.insecure_channel(node.grpc) as channel:
                stub = rlqs_pb2_grpc.RateLimitQuotaServiceStub(channel)
                self.call = stub.StreamRateLimitQuotas(self.reports())
                try:
                    for _ in self.call:
                        self.pushes += 1
                except Exception as e:  # noqa: BLE001 - ended by a refusal, a failover or close()
                    self.ended = (self.ended + [str(e)[:200]])[-3:]
            self.stop.wait(0.2)

    def close(self):
        self.stop.set()
        if self.call is not None:
            self.call.cancel()
        self.thread.join(timeout=5)


def rlqs_state(driver):
    """The RLQS panel, read in one script call (it is redrawn every second)."""
    return driver.execute_script(
        "const s = document.getElementById('rlqs');"
        "return {configured: s.dataset.configured, empty: document.getElementById('rlqs-empty').hidden ? null :"
        " document.getElementById('rlqs-empty').textContent, head: document.getElementById('rlqs-head').textContent,"
        " buckets: [...s.querySelectorAll('.bucket')].map(b => ({rule: b.dataset.rule, limit: Number(b.dataset.limit),"
        " assigned: Number(b.dataset.assigned), text: b.textContent,"
        " shares: [...b.querySelectorAll('tbody tr')].map(r => Number(r.dataset.share))}))}")


def shot_below_header(driver, name, section):
    """A screenshot with `section`'s title just below the page's sticky header."""
    driver.execute_script("const s = document.getElementById(arguments[0]); s.scrollIntoView();"
                          "window.scrollBy(0, -document.querySelector('header').offsetHeight - 8)", section)
    time.sleep(0.3)
    return shot(driver, name)


def test_the_rlqs_panel_shows_a_bucket_and_its_proxies(cluster, page, browser):
    # Before any proxy connects: the panel says so (and says RLQS is configured).
    state = eventually("RLQS empty state", lambda: (s := rlqs_state(browser))["empty"] and s)
    assert state["configured"] == "yes", state
    assert "No proxies connected" in state["empty"], state
    shot_below_header(browser, "03b-rlqs-empty", "rlqs")

    proxies = [RlqsProxy(cluster, [{"name": "api"}, {"tenant": TENANT}], 240),
               RlqsProxy(cluster, [{"name": "api"}], 120),
               RlqsProxy(cluster, [{"name": "api"}], 40)]
    try:
        seen = []

        def shown():
            s = rlqs_state(browser)
            seen[:] = [s]
            api = next((b for b in s["buckets"] if b["rule"] == "api"), None)
            if api and len(api["shares"]) == 3 and all(x > 0 for x in api["shares"]) and s["empty"] is None:
                return s
            return None

        try:
            state = eventually("the api bucket with three proxies holding shares", shown, timeout=60)
        except AssertionError as e:
            view = http("GET", page.url + "/dashboard/api/rlqs")
            ended = [p.ended for p in proxies]
            raise AssertionError(f"{e}; the panel: {seen}; the endpoint: {view}; streams: {ended}") from None
        api = next(b for b in state["buckets"] if b["rule"] == "api")
        assert sum(api["shares"]) <= api["limit"], api
        assert api["assigned"] <= api["limit"], api
        assert "edge / api" in api["text"] and "name=api" in api["text"], api["text"]
        assert any(b["rule"] == "per_tenant" for b in state["buckets"]), state
        # The page is on a follower: the shares come from the leader, and it says so
        # (unless an election on this loaded machine just made the page's node lead).
        leader = leader_of(cluster)
        made_by = "this node" if leader == page.id else f"node {leader}, the leader"
        assert "Shares made by " + made_by in state["head"], state["head"]
        assert TENANT not in browser.page_source
        assert all(p.pushes > 0 for p in proxies), [p.pushes for p in proxies]
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        shot_below_header(browser, "03c-rlqs", "rlqs")
    finally:
        for p in proxies:
            p.close()


def test_without_the_token_operations_are_absent(page, browser):
    assert not browser.find_element(By.ID, "ops").is_displayed()
    for id_ in ["rollback-preview", "apply-dry-run", "snapshot"]:
        assert not browser.find_element(By.ID, id_).is_displayed(), id_
    assert browser.find_element(By.ID, "ops-locked").is_displayed()
    assert "read-only" in browser.find_element(By.ID, "token-state").text
    # A wrong token is refused by the admin API and the page stays read-only.
    browser.find_element(By.ID, "token").send_keys("wrong-token")
    browser.find_element(By.ID, "token-use").click()
    eventually("wrong token refused", lambda: "refused" in browser.find_element(By.ID, "token-state").text)
    assert not browser.find_element(By.ID, "ops").is_displayed()
    # The dashboard's own operation endpoint refuses without the token too.
    status, _ = http("POST", page.url + "/dashboard/api/policy/dry-run", {"source": "limits: []"})
    assert status == 401
    shot(browser, "04-read-only", "operations")


def test_rollback_through_the_page_changes_the_live_version(page, browser):
    url = page.url
    before = http("GET", url + "/admin/v1/policy", token=TOKEN)[1]
    # A second version to roll back from.
    source = before["source"].replace("limit: 100", "limit: 150")
    assert source != before["source"]
    status, body = http("PUT", url + "/admin/v1/policy", {"format": "quorate", "source": source}, TOKEN)
    assert status == 200, body
    v2 = body["version"]
    eventually("page shows v2",
               lambda: browser.find_element(By.ID, "policy-version").get_attribute("data-version") == str(v2))

    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "token-use").click()
    eventually("operations shown", lambda: browser.find_element(By.ID, "ops").is_displayed())
    browser.find_element(By.ID, "operations").location_once_scrolled_into_view
    Select(browser.find_element(By.ID, "rollback-version")).select_by_value(str(before["version"]))
    browser.find_element(By.ID, "rollback-preview").click()
    dialog = eventually("confirmation with a diff",
                        lambda: (d := browser.find_element(By.ID, "confirm")).is_displayed() and d)
    assert "limit: 150" in dialog.text and "limit: 100" in dialog.text, dialog.text
    shot(browser, "05-rollback-confirm")
    browser.find_element(By.ID, "confirm-ok").click()
    eventually("rollback result", lambda: browser.find_element(By.ID, "op-result").get_attribute("data-status") == "200")

    after = http("GET", url + "/admin/v1/policy", token=TOKEN)[1]
    assert after["version"] > v2, after
    assert after["rollback_of"] == before["version"], after
    assert after["source"] == before["source"]
    eventually("page shows the new version",
               lambda: browser.find_element(By.ID, "policy-version").get_attribute("data-version") == str(after["version"]))
    shot(browser, "06-rollback-done", "operations")


def test_a_killed_leader_shows_down_and_the_new_leader(cluster, page, browser):
    old = leader_of(cluster)
    victim = next(n for n in cluster if n.id == old)
    assert victim is not page
    browser.execute_script("document.getElementById('cluster').scrollIntoView()")
    victim.kill()
    killed_at = time.monotonic()
    eventually("killed member shown down",
               lambda: rows(browser).get(old, ("", ""))[1] == "no", timeout=3.0, every=0.05)
    took = time.monotonic() - killed_at
    assert took <= 3.0, took
    shot(browser, "07-member-down")
    survivors = [n for n in cluster if n.id != old]
    new = eventually("new leader elected", lambda: (l := leader_of(survivors)) and l != old and l, timeout=20)
    eventually("new leader shown",
               lambda: rows(browser).get(new, ("",))[0] == "leader"
               and f"leader: node {new}" in browser.find_element(By.ID, "summary").text, timeout=10)
    roles = rows(browser)
    assert roles[old] == ("down", "no"), roles
    assert sum(1 for role, _ in roles.values() if role == "leader") == 1, roles
    shot(browser, "08-new-leader", "cluster")
