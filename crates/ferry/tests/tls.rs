//! Ferry's outgoing HTTP speaks TLS: a deployment's webhook notification reaches an
//! `https://` receiver whose certificate the server trusts (here through `SSL_CERT_FILE`,
//! the standard way to add a private CA), and never one it does not trust.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Ferry, SERIAL, Spec, bounded, free_port};
use tokio::time::Instant;

const LIMIT: Duration = Duration::from_secs(90);

/// A self-signed certificate for 127.0.0.1 (`cert.pem`, `key.pem` in `dir`) whose subject
/// and issuer are `/CN={cn}`: its own CA.
fn self_signed(dir: &Path, cn: &str) {
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl could not make a certificate");
}

/// An HTTPS receiver (python3's ssl module) appending every POST body as a line to `log`.
struct Receiver(std::process::Child);

impl Receiver {
    fn start(dir: &Path, port: u16, log: &Path) -> Receiver {
        let script = r#"
import http.server, ssl, sys
port, cert, key, log = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get('content-length', 0)))
        with open(log, 'ab') as f:
            f.write(body + b'\n')
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(('127.0.0.1', port), Hook)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;
        let child = Command::new("python3")
            .args(["-c", script, &port.to_string()])
            .arg(dir.join("cert.pem"))
            .arg(dir.join("key.pem"))
            .arg(log)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the HTTPS receiver");
        Receiver(child)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_for_line(log: &Path, needle: &str, ferry: &Ferry) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no webhook with {needle:?} reached the HTTPS receiver; it got:\n{text}\n{}",
            ferry.server_logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhooks_are_delivered_over_https_to_trusted_receivers_only() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let certs = tempfile::tempdir().expect("tempdir");
        self_signed(certs.path(), "127.0.0.1");
        // Another self-signed certificate for the same address: a CA the server never trusts.
        let stranger = tempfile::tempdir().expect("tempdir");
        self_signed(stranger.path(), "Stranger CA");
        let (trusted_port, untrusted_port, stranger_port) = (free_port(), free_port(), free_port());
        let trusted_log = certs.path().join("trusted.log");
        let untrusted_log = certs.path().join("untrusted.log");
        let stranger_log = certs.path().join("stranger.log");
        // Same certificate on the first two; the second is addressed by a name it does not
        // carry. The third is addressed correctly but signed by an unknown CA.
        let _trusted = Receiver::start(certs.path(), trusted_port, &trusted_log);
        let _untrusted = Receiver::start(certs.path(), untrusted_port, &untrusted_log);
        let _stranger = Receiver::start(stranger.path(), stranger_port, &stranger_log);

        let cert_file = certs.path().join("cert.pem");
        let ferry =
            Ferry::start_with_env(&[("SSL_CERT_FILE", &cert_file.display().to_string())]).await;
        let mut spec = Spec::new("secure");
        spec.replicas = 1;
        spec.extra_service_yaml = format!(
            "notifications:\n  - webhook: https://127.0.0.1:{trusted_port}/hook\n    states: [succeeded]\n  - webhook: https://localhost:{untrusted_port}/hook\n    states: [succeeded]\n  - webhook: https://127.0.0.1:{stranger_port}/hook\n    states: [succeeded]\n"
        );
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;

        let text = wait_for_line(&trusted_log, "\"succeeded\"", &ferry).await;
        let event: serde_json::Value = serde_json::from_str(text.lines().next().expect("a line"))
            .expect("the webhook body is JSON");
        assert_eq!(event["app"], "secure");
        assert_eq!(event["version"], "1.0.0");
        assert_eq!(event["state"], "succeeded");

        // The name check fails for `localhost` (the certificate names 127.0.0.1 only), and
        // the stranger's CA is unknown: the server refuses to talk to either, so nothing
        // arrives; its log says why, for each.
        let deadline = Instant::now() + Duration::from_secs(30);
        let refused = |logs: &str, url: &str, why: &str| {
            logs.lines().any(|l| {
                l.contains("notification not delivered")
                    && l.contains(url)
                    && l.contains("certificate")
                    && l.to_ascii_lowercase().contains(why)
            })
        };
        let wrong_name = format!("localhost:{untrusted_port}");
        let unknown_ca = format!("127.0.0.1:{stranger_port}");
        while !(refused(&ferry.server_logs(), &wrong_name, "not valid for name")
            && refused(&ferry.server_logs(), &unknown_ca, "unknownissuer"))
        {
            assert!(
                Instant::now() < deadline,
                "both refused webhooks must be logged with their certificate error:\n{}",
                ferry.server_logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            std::fs::read_to_string(&untrusted_log).unwrap_or_default(),
            "",
            "a receiver whose certificate does not match got the notification"
        );
        assert_eq!(
            std::fs::read_to_string(&stranger_log).unwrap_or_default(),
            "",
            "a receiver whose certificate comes from an untrusted CA got the notification"
        );
    })
    .await;
}
