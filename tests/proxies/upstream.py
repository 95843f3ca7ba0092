"""The application behind the proxies in the proxy end-to-end tests: answers every request
with 200 and a JSON echo of what it received — method, path (with query), headers (names
lower-cased; repeated headers joined with ", ") and the body's length.

Requests carrying `x-test-tag` are remembered: `GET /__seen/TAG` (asked directly, not
through a proxy) answers `{"seen": true|false}`, so a test can tell that a denied
request never reached the app.

Usage: upstream.py   (binds 127.0.0.1 on a free port, prints `upstream ready port=N`)
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


SEEN = set()
SEEN_LOCK = threading.Lock()


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        if self.path.startswith("/__seen/"):
            with SEEN_LOCK:
                reply = {"seen": self.path[len("/__seen/"):] in SEEN}
        else:
            headers = {}
            for name, value in self.headers.items():
                name = name.lower()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            if "x-test-tag" in headers:
                with SEEN_LOCK:
                    SEEN.add(headers["x-test-tag"])
            reply = {
                "method": self.command,
                "path": self.path,
                "headers": headers,
                "body_length": length,
            }
        body = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer

    def log_message(self, *args):
        pass


def main() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    print(f"upstream ready port={server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
