"""A plain HTTP server on 127.0.0.1:8080, standard library only, for the executable example."""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        if self.path.startswith("/env"):
            variables = {k: v for k, v in os.environ.items() if k.startswith("ALEPH_")}
            self._answer(200, json.dumps(variables).encode(), "application/json")
        else:
            self._answer(200, f"Hello from an executable program! path={self.path}\n".encode())

    do_HEAD = do_GET

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self._answer(200, b"echo: " + body)

    def log_message(self, format, *args):  # quiet: one line per request on stderr is noise in the console
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8080"))), Handler).serve_forever()
