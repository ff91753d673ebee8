//! A webhook receiver on loopback (python3) that records every POST as a JSON line: its
//! path, `Idempotency-Key`, whether `X-Ferry-Signature` verifies with the signing key
//! (HMAC-SHA256 over `TIMESTAMP.BODY`, `null` when unsigned), and its body. It listens on a
//! port the system picks and tells it on stdout. `/pagerduty` is answered 202 and `/fail`
//! 500; with a hold, the first POST to `/held` is recorded, then answered only after it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use super::Ferry;

const SCRIPT: &str = r#"
import hashlib, hmac, http.server, json, sys, threading, time
log, key, hold = sys.argv[1], sys.argv[2].encode(), float(sys.argv[3])
lock = threading.Lock()
held = []
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('content-length', 0)))
        ts, sig = self.headers.get('X-Ferry-Timestamp'), self.headers.get('X-Ferry-Signature')
        ok = None
        if sig is not None:
            want = 'v1=' + hmac.new(key, ts.encode() + b'.' + body, hashlib.sha256).hexdigest()
            ok = hmac.compare_digest(want, sig) and abs(time.time() - int(ts)) < 300
        line = {'path': self.path, 'key': self.headers.get('Idempotency-Key'), 'sig_ok': ok,
                'body': json.loads(body)}
        with lock:
            with open(log, 'a') as f:
                f.write(json.dumps(line) + '\n')
            wait = self.path == '/held' and not held
            if wait:
                held.append(1)
        if wait:
            time.sleep(hold)
        self.send_response({'/pagerduty': 202, '/fail': 500}.get(self.path, 200))
        self.send_header('content-length', '0')
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Hook)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

pub struct WebhookReceiver {
    child: Child,
    log: PathBuf,
    pub port: u16,
}

impl WebhookReceiver {
    /// Starts a receiver that verifies signatures made with `signing_key`.
    pub fn start(dir: &Path, signing_key: &str) -> WebhookReceiver {
        Self::start_holding(dir, signing_key, 0)
    }

    /// [`WebhookReceiver::start`], holding the first POST to `/held` for `hold_secs`.
    pub fn start_holding(dir: &Path, signing_key: &str, hold_secs: u32) -> WebhookReceiver {
        let log = dir.join(format!("receiver-{}.log", std::process::id()));
        let mut child = Command::new("python3")
            .args(["-c", SCRIPT])
            .arg(&log)
            .arg(signing_key)
            .arg(hold_secs.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the webhook receiver");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the receiver's port");
        let port = line.trim().parse().expect("a port");
        WebhookReceiver { child, log, port }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Every POST received so far, in order.
    pub fn lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    /// Waits (at most `limit`) until `ready` holds for the lines received.
    pub async fn wait(
        &self,
        what: &str,
        ferry: &Ferry,
        limit: Duration,
        ready: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + limit;
        loop {
            let lines = self.lines();
            if ready(&lines) {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "receiver: {what} did not happen within {limit:?}; it got {lines:#?}\n{}",
                ferry.server_logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
