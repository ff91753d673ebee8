#!/usr/bin/env python3
"""An app that reads a feature flag through Ferry's OFREP endpoint on every request, like an
app with an OpenFeature SDK configured without a cache.

  flag_app.py --port P --version V --ferry URL --token-file PATH

GET /?flag=NAME  -> evaluates NAME (context: the `user` query parameter as targetingKey);
                    when it is on and NAME starts with `bad-`, the new code path is broken:
                    500; otherwise 200. A failed evaluation counts as off (the SDK default).
                    The answer names the evaluated flag in `Ferry-Flags: NAME=on|off`, as the
                    middleware in docs/flags.md does, so Ferry judges the flag on its requests.
GET /health      -> 200 (no flag read)
Dies at once on SIGTERM.
"""
import argparse
import http.server
import json
import socketserver
import urllib.parse
import urllib.request

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--version", required=True)
parser.add_argument("--ferry", required=True)
parser.add_argument("--token-file", required=True)
args = parser.parse_args()
with open(args.token_file) as f:
    token = f.read().strip()


def flag_on(name, user):
    body = json.dumps({"context": {"targetingKey": user}}).encode()
    request = urllib.request.Request(
        f"{args.ferry}/ofrep/v1/evaluate/flags/{urllib.parse.quote(name)}",
        data=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as answer:
            return json.load(answer).get("value") is True
    except Exception:
        return False


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 2

    def log_message(self, *a):
        pass

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        status = 200
        evaluated = []
        if url.path != "/health":
            name = query.get("flag", [""])[0]
            user = query.get("user", ["anonymous"])[0]
            on = bool(name) and flag_on(name, user)
            if name:
                evaluated.append(f"{name}={'on' if on else 'off'}")
            if on and name.startswith("bad-"):
                status = 500
        body = f"{args.version} {status}\n".encode()
        self.send_response(status)
        if evaluated:
            self.send_header("Ferry-Flags", ", ".join(evaluated))
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Version", args.version)
        self.end_headers()
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


Server(("127.0.0.1", args.port), Handler).serve_forever()
