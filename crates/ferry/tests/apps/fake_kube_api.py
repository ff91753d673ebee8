#!/usr/bin/env python3
"""A fake Kubernetes API server on 127.0.0.1 for `ferry server`'s end-to-end test
(tests/kubernetes.rs). Not Kubernetes: it keeps the objects it is sent (server-side apply is
a JSON merge), adds a resourceVersion, lists by label selector, holds watches until something
changes, and plays the Deployment, kubelet and EndpointSlice controllers: a Deployment's
pods are ready at once (one pod address per replica in its Service's EndpointSlice) unless
its version label contains "bad". `GET /fake/writes` answers every write it took, in order.

Prints its port on the first line of stdout.
"""
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COLLECTIONS = {"namespaces", "services", "secrets", "pods", "deployments", "endpointslices",
               "jobs", "httproutes"}
objects = {}
writes = []
version = [0]
changed = threading.Condition()


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


def settle(path):
    """What the Deployment controller, the kubelet and the EndpointSlice controller do."""
    live = objects[path]
    meta = live["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    replicas = live.get("spec", {}).get("replicas", 1)
    labels = live["spec"]["template"]["metadata"]["labels"]
    ready = "bad" not in labels.get("ferry.dev/version", "")
    live["status"] = {"replicas": replicas, "readyReplicas": replicas if ready else 0,
                      "observedGeneration": 1}
    meta["resourceVersion"] = bump()
    net = sum(name.encode()) % 250
    slice_labels = dict(labels)
    slice_labels["kubernetes.io/service-name"] = name
    objects[f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{name}-auto"] = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": f"{name}-auto", "namespace": namespace, "labels": slice_labels,
                     "resourceVersion": bump()},
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [f"10.77.{net}.{i}"], "conditions": {"ready": ready}}
                      for i in range(1, replicas + 1)],
    }
    objects[f"/api/v1/namespaces/{namespace}/pods/{name}-pod0"] = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{name}-pod0", "namespace": namespace, "labels": labels,
                     "resourceVersion": bump()},
    }


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
            live = objects.pop(path, None)
            if live is None:
                return self.answer(*status(404, "NotFound"))
            if live.get("kind") == "Deployment":
                meta = live["metadata"]
                for key in [k for k in objects if k.endswith(f"/{meta['name']}-auto")
                            or k.endswith(f"/{meta['name']}-pod0")]:
                    del objects[key]
            changed.notify_all()
            return self.answer(200, live)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
