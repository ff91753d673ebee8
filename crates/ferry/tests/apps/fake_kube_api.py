#!/usr/bin/env python3
"""A fake Kubernetes API server on 127.0.0.1 for `ferry server`'s end-to-end tests
(tests/kubernetes.rs). Not Kubernetes: it keeps the objects it is sent (server-side apply is
a JSON merge), adds a resourceVersion and a uid, lists by label selector, holds watches until
something changes, honours a DELETE's uid precondition (409 otherwise), and plays the
Deployment, kubelet and EndpointSlice controllers with real processes on loopback:

- each pod gets its own address 127.B.C.n (B.C from this server's port, so two fakes never
  share one; n counts pods);
- an app's pod (a Deployment with `ferry.dev/version`) is a small HTTP server on port 8080 of
  its address answering every request with its version (`/health` too), ready at once —
  unless its version contains "bad": then it never becomes ready and serves nothing;
- a proxy pod (a Deployment with `ferry.dev/proxy`) is a real `ferry proxy` ($FERRY_BIN)
  started from the Deployment's own args, with what the kubelet would give it: `$(POD_IP)`,
  the admin token from the Secret `ferry-proxy-admin` as a file, the route table from the
  ConfigMap `ferry-proxy-routes` as a file (if there is one), an empty state directory, the
  admin API on port 9901 of its address. It is ready once its `/healthz` answers; the
  EndpointSlice of the headless Service `ferry-proxy-admin` then lists it (port `admin`);
- a Deployment's `status` and the EndpointSlice of its Service list its pods; a scale or a
  DELETE stops the pods that go (a proxy gets SIGTERM, then SIGKILL after 5 s).

Proxy pods die with this process (PR_SET_PDEATHSIG). `GET /fake/writes` answers every write
it took, in order. Prints its port on the first line of stdout.
"""
import base64
import concurrent.futures
import ctypes
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COLLECTIONS = {"namespaces", "services", "secrets", "configmaps", "pods", "deployments",
               "endpointslices", "jobs", "httproutes", "networkpolicies"}
FERRY = os.environ.get("FERRY_BIN")
WORK = tempfile.mkdtemp(prefix="fake-kube-")
objects = {}
writes = []
version = [0]
changed = threading.Condition()
# Deployment path -> its pods, in order.
pods = {}
next_pod = [0]
# The one thread that starts processes: a child's death signal fires when the thread that
# forked it ends, so it must be a thread that lives as long as this server.
KUBELET = concurrent.futures.ThreadPoolExecutor(max_workers=1)
LIBC = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def bump():
    version[0] += 1
    return str(version[0])


def merge(into, frm):
    for key, value in frm.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


def selected(obj, selector):
    labels = obj.get("metadata", {}).get("labels") or {}
    for pair in filter(None, selector.split(",")):
        key, _, value = pair.partition("=")
        if labels.get(key) != value:
            return False
    return True


class AppHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = self.server.version.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Pod:
    def __init__(self, deployment, kind):
        next_pod[0] += 1
        n = next_pod[0]
        port = server.server_address[1]
        self.ip = f"127.{port >> 8}.{port & 255}.{n}"
        self.name = f"{deployment['metadata']['name']}-{n}"
        self.namespace = deployment["metadata"]["namespace"]
        self.kind = kind
        self.ready = False
        self.server = None
        self.process = None
        template = deployment["spec"]["template"]
        labels = template["metadata"]["labels"]
        if kind == "app":
            self.port = 8080
            if "bad" not in labels.get("ferry.dev/version", ""):
                self.server = ThreadingHTTPServer((self.ip, 8080), AppHandler)
                self.server.daemon_threads = True
                self.server.version = labels.get("ferry.dev/version", "")
                threading.Thread(target=self.server.serve_forever, daemon=True).start()
                self.ready = True
        else:
            self.port = 9901
            if FERRY:
                self.start_proxy(template["spec"]["containers"][0]["args"])

    def start_proxy(self, args):
        home = os.path.join(WORK, self.name)
        os.makedirs(os.path.join(home, "state"))
        token = os.path.join(home, "token")
        secret = objects.get(f"/api/v1/namespaces/{self.namespace}/secrets/ferry-proxy-admin")
        with open(token, "wb") as f:
            f.write(base64.b64decode(((secret or {}).get("data") or {}).get("token", "")))
        routes = objects.get(f"/api/v1/namespaces/{self.namespace}/configmaps/ferry-proxy-routes")
        seed = os.path.join(home, "routes.json")
        if routes:
            with open(seed, "w") as f:
                f.write(routes["data"]["routes.json"])
        given = {"--state-dir": os.path.join(home, "state"),
                 "--admin-listen": f"{self.ip}:9901",
                 "--admin-token-file": token, "--seed-routes": seed,
                 "--listen-ip": self.ip}
        argv = [FERRY]
        for i, arg in enumerate(args):
            argv.append(given.get(args[i - 1], arg) if i > 0 else arg)
        log = open(os.path.join(home, "log"), "wb")

        def start():
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                preexec_fn=lambda: LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL))
        self.process = KUBELET.submit(start).result()
        threading.Thread(target=self.probe, daemon=True).start()

    def probe(self):
        """The readiness probe: ready once the admin API's /healthz answers."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://{self.ip}:9901/healthz", timeout=2):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            with changed:
                if self.process.poll() is None:
                    self.ready = True
                    for path, its in pods.items():
                        if self in its:
                            publish(path)
                    changed.notify_all()
            return

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
        if self.process and self.process.poll() is None:
            self.process.terminate()
            process = self.process
            threading.Thread(target=lambda: reap(process), daemon=True).start()
        self.ready = False


def reap(process):
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def publish(path):
    """The Deployment's status, its Service's EndpointSlice and its pods' objects."""
    live = objects[path]
    meta = live["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    its = pods.get(path, [])
    labels = live["spec"]["template"]["metadata"]["labels"]
    live["status"] = {"replicas": len(its), "readyReplicas": sum(p.ready for p in its),
                      "observedGeneration": 1}
    meta["resourceVersion"] = bump()
    proxy = "ferry.dev/proxy" in labels
    service, port = ("ferry-proxy-admin", "admin") if proxy else (name, "http")
    slice_labels = dict(labels)
    slice_labels["kubernetes.io/service-name"] = service
    objects[f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{service}-auto"] = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": f"{service}-auto", "namespace": namespace, "labels": slice_labels,
                     "resourceVersion": bump()},
        "ports": [{"name": port, "port": 9901 if proxy else 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [p.ip], "conditions": {"ready": p.ready},
                       "targetRef": {"kind": "Pod", "name": p.name}} for p in its],
    }
    for p in its:
        objects[f"/api/v1/namespaces/{namespace}/pods/{p.name}"] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": p.name, "namespace": namespace, "labels": labels,
                         "resourceVersion": bump()},
        }


def settle(path):
    """What the Deployment controller and the kubelet do with `spec.replicas`."""
    live = objects[path]
    replicas = live.get("spec", {}).get("replicas", 1)
    kind = "proxy" if "ferry.dev/proxy" in live["spec"]["template"]["metadata"]["labels"] else "app"
    its = pods.setdefault(path, [])
    while len(its) < replicas:
        its.append(Pod(live, kind))
    while len(its) > replicas:
        gone = its.pop()
        gone.stop()
        objects.pop(f"/api/v1/namespaces/{gone.namespace}/pods/{gone.name}", None)
    publish(path)


def remove(path):
    """A Deployment deleted: its pods and its EndpointSlice go."""
    live = objects.pop(path)
    for p in pods.pop(path, []):
        p.stop()
        objects.pop(f"/api/v1/namespaces/{p.namespace}/pods/{p.name}", None)
    labels = live["spec"]["template"]["metadata"]["labels"]
    service = "ferry-proxy-admin" if "ferry.dev/proxy" in labels else live["metadata"]["name"]
    namespace = live["metadata"]["namespace"]
    objects.pop(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{service}-auto",
                None)
    return live


def status(code, reason):
    return code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                  "reason": reason, "message": reason}


def under(path, selector, newer_than=None):
    prefix = path + "/"
    items = []
    for key, obj in sorted(objects.items()):
        if key.startswith(prefix) and "/" not in key[len(prefix):] and selected(obj, selector):
            if newer_than is None or int(obj["metadata"].get("resourceVersion", "0")) > newer_than:
                items.append(obj)
    return items


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, code, body):
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def parts(self):
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null") if length else None
        return url.path, query, body

    def do_GET(self):
        path, query, _ = self.parts()
        if path == "/fake/writes":
            with changed:
                return self.answer(200, writes)
        if path.endswith("/log"):
            return self.answer(200, "serving\n")
        selector = query.get("labelSelector", "")
        if query.get("watch") == "true":
            since = int(query.get("resourceVersion") or "0")
            with changed:
                changed.wait_for(lambda: under(path, selector, since), timeout=3)
                events = under(path, selector, since)
            lines = "".join(json.dumps({"type": "MODIFIED", "object": o}) + "\n" for o in events)
            return self.answer(200, lines)
        with changed:
            if path in objects:
                return self.answer(200, objects[path])
            if path.rsplit("/", 1)[-1] not in COLLECTIONS:
                return self.answer(*status(404, "NotFound"))
            return self.answer(200, {"apiVersion": "v1", "kind": "List",
                                     "metadata": {"resourceVersion": str(version[0])},
                                     "items": under(path, selector)})

    def do_PATCH(self):
        path, _, body = self.parts()
        with changed:
            writes.append({"method": "PATCH", "path": path, "body": body})
            if path.endswith("/scale"):
                target = path[: -len("/scale")]
                if target not in objects:
                    return self.answer(*status(404, "NotFound"))
                merge(objects[target], body)
                settle(target)
                changed.notify_all()
                return self.answer(200, {"apiVersion": "autoscaling/v1", "kind": "Scale",
                                         "metadata": {"name": objects[target]["metadata"]["name"]},
                                         "spec": body.get("spec", {})})
            live = objects.setdefault(path, {})
            merge(live, body)
            live.setdefault("metadata", {})["resourceVersion"] = bump()
            live["metadata"]["uid"] = "uid-" + path
            if live.get("kind") == "Deployment":
                settle(path)
            changed.notify_all()
            return self.answer(200, live)

    def do_POST(self):
        path, _, body = self.parts()
        with changed:
            writes.append({"method": "POST", "path": path, "body": body})
            target = f"{path}/{body['metadata']['name']}"
            if target in objects:
                return self.answer(*status(409, "AlreadyExists"))
            body["metadata"]["resourceVersion"] = bump()
            objects[target] = body
            changed.notify_all()
            return self.answer(201, body)

    def do_DELETE(self):
        path, _, body = self.parts()
        with changed:
            writes.append({"method": "DELETE", "path": path, "body": body})
            live = objects.get(path)
            if live is None:
                return self.answer(*status(404, "NotFound"))
            uid = ((body or {}).get("preconditions") or {}).get("uid")
            if uid is not None and uid != live["metadata"].get("uid"):
                return self.answer(*status(409, "Conflict"))
            if live.get("kind") == "Deployment":
                remove(path)
            else:
                del objects[path]
            changed.notify_all()
            return self.answer(200, live)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
