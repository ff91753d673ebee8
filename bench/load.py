# Bounded paced HTTP load on 127.0.0.1 for the bench scripts: one line per answer
# ("ms status x-version") written to OUT when SIGTERM arrives.
# usage: python3 bench/load.py OUT PORT RATE CLIENTS
import http.client, signal, sys, threading, time
out_path, port, rate, clients = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
lock = threading.Lock()
lines = []
def client():
    period = clients / rate
    conn = None
    nxt = time.monotonic()
    while not stop.is_set():
        nxt += period
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/")
            r = conn.getresponse()
            r.read()
            line = "%d %d %s" % (time.time() * 1000, r.status, r.getheader("x-version", "-"))
        except Exception as e:
            conn = None
            line = "%d 0 %s" % (time.time() * 1000, type(e).__name__)
        with lock:
            lines.append(line)
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            nxt = time.monotonic()
threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
for t in threads: t.start()
while not stop.is_set():
    time.sleep(0.2)
for t in threads: t.join(timeout=15)
with open(out_path, "w") as f:
    f.write("\n".join(lines) + "\n")
