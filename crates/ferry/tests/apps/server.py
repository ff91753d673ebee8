#!/usr/bin/env python3
"""A small HTTP/1.1 keep-alive server that treats SIGTERM like common servers do.

  server.py --port P --version V --on-sigterm exit|finish

- `exit`: the default action of SIGTERM; the process dies at once, dropping every request
  in flight and every open connection (like a naive Node/Flask dev server).
- `finish`: stops accepting connections, finishes the requests it is working on (telling
  their clients `Connection: close`), refuses new work (a new request on a kept-alive
  connection is answered by closing it, as gunicorn's sync workers drop what is queued),
  then exits.

GET /            -> 200, body and X-Version: the version
GET /slow?ms=N   -> the same after N ms (a long request)
GET /health      -> 200
"""
import argparse
import http.server
import signal
import socketserver
import sys
import threading
import time
import urllib.parse

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--version", required=True)
parser.add_argument("--on-sigterm", choices=["exit", "finish"], required=True)
args = parser.parse_args()

stopping = threading.Event()
busy = 0
busy_lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Idle kept-alive connections close after 2 s (gunicorn's default keepalive).
    timeout = 2

    def log_message(self, *a):
        pass

    def do_GET(self):
        global busy
        if stopping.is_set():
            # Refused: the connection closes without an answer.
            self.close_connection = True
            return
        with busy_lock:
            busy += 1
        try:
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/slow":
                ms = int(urllib.parse.parse_qs(url.query).get("ms", ["1000"])[0])
                time.sleep(ms / 1000)
            body = (args.version + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Version", args.version)
            if stopping.is_set():
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(body)
        finally:
            with busy_lock:
                busy -= 1


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


server = Server(("127.0.0.1", args.port), Handler)


def on_term(signum, frame):
    stopping.set()
    # shutdown() waits for serve_forever to return: not from its own thread.
    threading.Thread(target=server.shutdown).start()


if args.on_sigterm == "finish":
    signal.signal(signal.SIGTERM, on_term)

print(f"listening on 127.0.0.1:{args.port} as {args.version}", flush=True)
server.serve_forever(poll_interval=0.05)
server.server_close()
# Finish what was accepted, then exit.
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    with busy_lock:
        if busy == 0:
            break
    time.sleep(0.01)
print("finished in-flight requests; exiting", flush=True)
sys.exit(0)
