"""A small HTTP server for executable-program tests: echoes requests, answers in every
framing (Content-Length, chunked, close-delimited), crashes on demand.

Usage: http_echo_server.py PORT [BIND]
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _answer(self):
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if path == "/crash":
            os._exit(3)
        if path in ("/chunked", "/chunked-with-length"):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            if path == "/chunked-with-length":
                self.send_header("Content-Length", "3")  # wrong, and to be ignored with chunked
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\nX-Trailer: yes\r\n\r\n")
            return
        if path == "/close":
            self.send_response(201)
            self.send_header("X-Framing", "close")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until EOF" * 1000)
            self.close_connection = True
            return
        if path == "/big":
            data = os.urandom(3 << 20)
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("X-Sha", __import__("hashlib").sha256(data).hexdigest())
            self.end_headers()
            self.wfile.write(data)
            return
        if path == "/env":
            payload = json.dumps(dict(os.environ)).encode()
        else:
            payload = json.dumps(
                {
                    "method": self.command,
                    "path": path,
                    "query": query,
                    "headers": [[k.lower(), v] for k, v in self.headers.items()],
                    "body": body.decode("latin-1"),
                    "cwd": os.getcwd(),
                    "pid": os.getpid(),
                }
            ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Set-Cookie", "a=1")
        self.send_header("Set-Cookie", "b=2")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer


if __name__ == "__main__":
    port = int(sys.argv[1])
    bind = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer((bind, port), Handler).serve_forever()
