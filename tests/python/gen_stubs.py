"""Generates Python gRPC stubs for Envoy's RLS v3 (and other Envoy APIs) from Envoy's own
.proto sources.

Usage: gen_stubs.py PROTO_ROOT OUT_DIR [ROOT.proto ...]

PROTO_ROOT is the `proto/` directory shipped inside the envoy-types crate package; it holds
`data-plane-api`, `xds`, `protoc-gen-validate` and `googleapis`. Starting from the ROOT
files (default: `envoy/service/ratelimit/v3/rls.proto`), this follows the imports, compiles
every file they reach (except protobuf's own well-known types, which the protobuf runtime
provides) with `grpc_tools.protoc`, and writes the modules under OUT_DIR.
"""

import os
import re
import sys

from grpc_tools import protoc

DEFAULT_ROOTS = ["envoy/service/ratelimit/v3/rls.proto"]
INCLUDE_DIRS = ["data-plane-api", "xds", "protoc-gen-validate", "googleapis"]
IMPORT = re.compile(r'^\s*import\s+(?:public\s+|weak\s+)?"([^"]+)"\s*;', re.MULTILINE)


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    proto_root, out_dir = sys.argv[1], sys.argv[2]
    roots = sys.argv[3:] or DEFAULT_ROOTS
    includes = [os.path.join(proto_root, d) for d in INCLUDE_DIRS]
    for d in includes:
        if not os.path.isdir(d):
            print(f"gen_stubs: missing proto directory {d}", file=sys.stderr)
            return 1
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")

    def locate(name):
        for d in includes:
            path = os.path.join(d, name)
            if os.path.isfile(path):
                return path
        return None

    files, queue, seen = [], list(roots), set()
    while queue:
        name = queue.pop()
        if name in seen:
            continue
        seen.add(name)
        path = locate(name)
        if path is None:
            if os.path.isfile(os.path.join(well_known, name)):
                continue  # google/protobuf/*: shipped with the protobuf runtime
            print(f"gen_stubs: cannot find {name} (imported from the closure of {roots})",
                  file=sys.stderr)
            return 1
        files.append(name)
        with open(path, encoding="utf-8") as f:
            queue.extend(IMPORT.findall(f.read()))

    os.makedirs(out_dir, exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{well_known}"]
    args += [f"-I{d}" for d in includes]
    args += [f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
    args += sorted(files)
    rc = protoc.main(args)
    if rc != 0:
        print(f"gen_stubs: protoc failed ({rc})", file=sys.stderr)
        return 1
    print(f"gen_stubs: {len(files)} .proto files compiled into {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
