#!/usr/bin/env python3
"""Fails when modules of a Rust crate import each other in a circle.

Every `crate::` and `super::` path in SRC (test modules left out) is reduced to the module
file or folder it names; an edge A -> B means a file of module A names module B. A parent
module using its own children is containment and is not counted. Prints the strongly
connected components with more than one module and exits 1 if there are any.

Usage: scripts/module-cycles.py SRC [DEPTH]
  DEPTH 1 compares top-level modules (folders); the default (9) compares module files.
"""
import collections
import os
import re
import sys


def main():
    root = sys.argv[1]
    depth = int(sys.argv[2]) if len(sys.argv) > 2 else 9

    def is_module(segs):
        base = os.path.join(root, *segs)
        return os.path.exists(base + ".rs") or os.path.isdir(base)

    def module_of_path(segs):
        # An item path names its module: keep the longest prefix that is a module.
        while len(segs) > 1 and not is_module(segs):
            segs = segs[:-1]
        return segs

    def module_of_file(path):
        rel = os.path.relpath(path, root)[:-3].split("/")
        if rel[-1] == "mod":
            rel = rel[:-1]
        return rel

    edges = collections.defaultdict(set)
    for dirpath, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs") or f == "tests.rs" or f.endswith("_tests.rs"):
                continue
            path = os.path.join(dirpath, f)
            me = module_of_file(path)
            if me in (["lib"], ["main"]):
                continue
            src = open(path, encoding="utf-8").read()
            src = re.sub(r"#\[cfg\(test\)\]\s*mod \w+\s*\{.*", "", src, flags=re.S)
            src = re.sub(r"//[^\n]*", "", src)
            targets = []
            for m in re.finditer(r"crate::(\{[^;]*?\}|[a-z_0-9]+(?:::[a-z_0-9]+)*)", src):
                text = m.group(1)
                if text.startswith("{"):
                    targets += [p.split("::") for p in re.findall(r"(?:^|[{,]\s*)([a-z_0-9]+(?:::[a-z_0-9]+)*)", text)]
                else:
                    targets.append(text.split("::"))
            parent = me[:-1]
            for m in re.finditer(r"\bsuper::([a-z_0-9]+)", src):
                targets.append(parent + [m.group(1)])
            src_mod = "::".join(me[:depth])
            for t in targets:
                tgt = module_of_path(t)[:depth]
                name = "::".join(tgt)
                # Containment: a module naming itself or one of its own children.
                if name == src_mod or name.startswith(src_mod + "::") or not is_module(tgt):
                    continue
                edges[src_mod].add(name)

    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(comp)

    for v in list(edges):
        if v not in index:
            visit(v)
    cycles = [sorted(c) for c in sccs if len(c) > 1]
    for c in cycles:
        print("cycle: " + " <-> ".join(c))
    if cycles:
        sys.exit(1)
    print(f"no module cycles in {root} ({len(edges)} modules with imports)")


if __name__ == "__main__":
    main()
