#!/usr/bin/env python3
"""Markdown tables from bench/envoy.sh's results.jsonl (medians over rounds).

    python3 bench/envoy_report.py OUT_DIR/results.jsonl
"""
import json
import statistics
import sys
from collections import defaultdict

NAMES = {
    "null": "do-nothing tonic RLS server (`quorate-bench null-rls`)",
    "q1": "quorate, 1 node, strict",
    "q3": "quorate, 3 nodes, strict (via leader)",
    "q1x": "quorate ALT build, 1 node, strict",
    "q3x": "quorate ALT build, 3 nodes, strict (via leader)",
    "lim_mem": "Limitador, in-memory counters",
    "lim_redis": "Limitador, Redis counters",
}
ORDER = ["null", "q1", "q3", "q1x", "q3x", "lim_mem", "lim_redis"]
# h2load keeps 8 connections x 16 streams; requests still in flight when it stops are
# answered by the server but not counted by h2load.
IN_FLIGHT = 8 * 16


def med(rows, key):
    vals = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def fmt(v, digits=0):
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    by = defaultdict(list)
    for r in rows:
        by[(r["client"], r["server"], r.get("descriptors"), r.get("identity"))].append(r)

    print("### Envoy RLS ShouldRateLimit\n")
    print("| server | descriptors | quorate-bench req/s | × null | p50 µs | p99 µs | p999 µs | "
          "errors / bad | h2load req/s | × null | h2load mean µs | h2load verified |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|")
    for d in (1, 3):
        null_qb = med(by[("quorate-bench", "null", d, None)], "throughput_rps")
        null_h2 = med(by[("h2load", "null", d, None)], "throughput_rps")
        for s in ORDER:
            qb = by[("quorate-bench", s, d, None)]
            h2 = by[("h2load", s, d, None)]
            if not qb and not h2:
                continue
            t = med(qb, "throughput_rps")
            ht = med(h2, "throughput_rps")
            errs = sum(sum(r["errors"].values()) + r["bad_answers"] for r in qb)
            if s.startswith(("q1", "q3")):
                ok = all(0 <= r["server_rls_answers"] - r["succeeded"] <= IN_FLIGHT
                         and r["failed"] == 0 and r["errored"] == 0 for r in h2)
                ver = "yes (metrics)" if ok else "NO"
            else:
                ok = all(r["failed"] == 0 and r["errored"] == 0 for r in h2)
                ver = "sample decoded" if ok else "NO"
            print(f"| {NAMES[s]} | {d} | {fmt(t)} | {fmt(t / null_qb if t and null_qb else None, 2)} "
                  f"| {fmt(med(qb, 'p50_us'))} | {fmt(med(qb, 'p99_us'))} | {fmt(med(qb, 'p999_us'))} "
                  f"| {errs} | {fmt(ht)} | {fmt(ht / null_h2 if ht and null_h2 else None, 2)} "
                  f"| {fmt(med(h2, 'mean_us'))} | {ver} |")

    refs = sorted({(r["server"], r["concurrency"]) for r in rows if r["client"] == "rls-reference"})
    if refs:
        print("\n### ext_authz Check (single node) vs the pure rate-limit decision\n")
        print("| server | c | call | req/s | p50 µs | p99 µs | p999 µs | Δ p50 vs RLS µs | Δ p50 vs identity none µs | errors / bad |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for srv, c in refs:
        ref = [r for r in by[("rls-reference", srv, 1, None)] if r["concurrency"] == c]
        base = med(ref, "p50_us")
        cases = [("RLS ShouldRateLimit, 1 descriptor (reference)", ref)]
        for ident in ("none", "api-key", "jwt"):
            rs = [r for r in by[("ext-authz", srv, None, ident)] if r["concurrency"] == c]
            cases.append((f"ext_authz, identity {ident}", rs))
        public = med(cases[1][1], "p50_us")
        for name, rs in cases:
            if not rs:
                continue
            errs = sum(sum(r["errors"].values()) + r["bad_answers"] for r in rs)
            p50 = med(rs, "p50_us")
            dn = p50 - public if "api-key" in name or "jwt" in name else None
            print(f"| {srv} | {c} | {name} | {fmt(med(rs, 'throughput_rps'))} | {fmt(p50)} | {fmt(med(rs, 'p99_us'))} "
                  f"| {fmt(med(rs, 'p999_us'))} | {fmt(p50 - base)} | {fmt(dn)} | {errs} |")

if __name__ == "__main__":
    main(sys.argv[1])
