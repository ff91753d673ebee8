//! What a newcomer sees when a replica fails: the exit and the last lines of its output on
//! the timeline, in `deploy --wait`, in `ferry status` and in `ferry logs` (also for
//! replicas that exited); what the health checks got.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{Ferry, SERIAL, Spec, bounded};
use ferry_core::model::DeploymentState;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const LIMIT: Duration = Duration::from_secs(240);

async fn deploy_fails(ferry: &Ferry, spec: &Spec, version: &str) -> (common::CliOutput, i64) {
    let out = ferry
        .cli(&[
            "deploy",
            &spec.app,
            "--env",
            &spec.env,
            "--version",
            version,
            "--wait",
            "--timeout",
            "90s",
        ])
        .await;
    assert_eq!(out.code, 3, "a rolled-back deployment exits 3:\n{out}");
    let status = ferry.env_status(spec).await;
    let latest = status.latest_deployment.expect("latest deployment");
    assert_eq!(latest.version, version);
    assert_eq!(latest.state, DeploymentState::RolledBack, "{latest:#?}");
    (out, latest.id)
}

/// A version that prints an error and exits 1 at once: its output is on the timeline, in
/// the failure reason `deploy --wait` and `status` print, and `ferry logs` shows the exited
/// replicas until the next deployment; a secret it prints is redacted everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_that_exits_at_start_shows_its_last_output() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.replicas = 1;
        spec.prelude = "if [ \"$VERSION\" = 2.0.0 ]; then echo 'starting on port $PORT'; \
                        echo \"db password $DB_PASSWORD refused\"; \
                        echo \"Error: '\\$PORT' is not a valid port number.\" >&2; exit 1; fi;"
            .to_string();
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        let secret = "hunter2-very-secret";
        let out = ferry
            .cli_with_stdin(
                &["secrets", "set", "shop", "--env", "production", "DB_PASSWORD"],
                secret,
            )
            .await;
        assert_eq!(out.code, 0, "{out}");
        ferry.deploy_ok(&spec, "1.0.0").await;

        let (out, id) = deploy_fails(&ferry, &spec, "2.0.0").await;
        let error_line = "Error: '$PORT' is not a valid port number.";
        assert!(
            out.stderr.contains("exit code 1") && out.stderr.contains(error_line),
            "deploy --wait says how it exited and what it said:\n{out}"
        );
        let timeline = ferry.timeline(id).await;
        assert!(
            timeline.contains(&format!(
                "exited (exit code 1); restarting; its last output:\n    starting on port $PORT\n    db password [redacted] refused\n    {error_line}"
            )),
            "{timeline}"
        );
        let text = ferry
            .cli(&["status", "shop", "--env", "production"])
            .await;
        assert!(text.stdout.contains(error_line), "{text}");
        let json = ferry
            .cli(&["status", "shop", "--env", "production", "-o", "json"])
            .await;
        assert!(json.stdout.contains("is not a valid port number"), "{json}");

        let logs = ferry.cli(&["logs", "shop", "--env", "production"]).await;
        assert_eq!(logs.code, 0, "{logs}");
        let exited: Vec<&str> = logs
            .stdout
            .lines()
            .filter(|l| l.starts_with("[web 2.0.0 ") && l.contains(" times, stopped] "))
            .collect();
        assert!(
            exited.iter().any(|l| l.ends_with(error_line))
                && exited.iter().any(|l| l.contains("exit code 1")),
            "`ferry logs` shows the exited replica's output and exit:\n{logs}"
        );
        for shown in [&out.stdout, &out.stderr, &timeline, &text.stdout, &json.stdout, &logs.stdout] {
            assert!(!shown.contains(secret), "a secret leaked:\n{shown}");
        }

        // The next deployment supersedes it: the exited replicas' logs go.
        ferry.deploy_ok(&spec, "3.0.0").await;
        let logs = ferry.cli(&["logs", "shop", "--env", "production"]).await;
        assert!(!logs.stdout.contains("2.0.0"), "{logs}");
        let left: Vec<String> = std::fs::read_dir(ferry.data.join("logs"))
            .expect("logs dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".2.0.0."))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    })
    .await;
}

/// Health checks that fail say what they got: the status and the body, a refused
/// connection (the app listens on another port), a timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_health_checks_say_what_they_got() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.replicas = 1;
        spec.start_timeout = "2s".to_string();
        // 2.x answers 503, 3.x listens on another port (an ephemeral one, so that it
        // never collides with a port in use), 4.x accepts and never answers.
        spec.prelude = "case \"$VERSION\" in \
             2.*) export DEMO_UNHEALTHY=1;; \
             3.*) PORT=0;; \
             4.*) exec python3 -c 'import socket,sys; s=socket.socket(); \
                  s.bind((\"127.0.0.1\", int(sys.argv[1]))); s.listen(100); c=[]; \
                  [c.append(s.accept()) for _ in iter(int, 1)]' \"$PORT\";; \
             esac;"
            .to_string();
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;

        for (version, expected) in [
            ("2.0.0", "/health: status 503, body \"{"),
            (
                "3.0.0",
                "/health: connection refused (nothing listens on that port: does the app listen on $PORT?)",
            ),
            ("4.0.0", "/health: no answer within 300 ms (timed out)"),
        ] {
            let (out, _) = deploy_fails(&ferry, &spec, version).await;
            assert!(
                out.stderr.contains("not healthy within 2s")
                    && out.stderr.contains("last health check: GET http://127.0.0.1:")
                    && out.stderr.contains(expected),
                "{version}: expected {expected:?} in:\n{out}"
            );
        }
        let status = ferry.cli(&["status", "shop", "--env", "production"]).await;
        assert!(status.stdout.contains("no answer within 300 ms"), "{status}");
    })
    .await;
}

/// An app that takes longer than one of the CLI's long polls (10 s) to listen: `deploy
/// --wait` follows it quietly to the end. (Each poll's request used to time out exactly
/// when the server answered, so the CLI said it had lost contact with a server that was
/// fine.) Ctrl-C while following says the deployment goes on, and it does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_start_is_followed_without_losing_contact_and_ctrl_c_says_it_goes_on() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("shop");
        spec.replicas = 1;
        spec.start_timeout = "60s".to_string();
        spec.prelude = "sleep 12;".to_string();
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        let out = ferry.deploy_ok(&spec, "1.0.0").await;
        assert!(
            !out.stderr.contains("lost contact") && !out.stderr.contains("reconnected"),
            "a server that answers every long poll is never reported lost:\n{out}"
        );

        let mut cmd = tokio::process::Command::new(common::FERRY);
        cmd.args([
            "deploy",
            "shop",
            "--env",
            "production",
            "--version",
            "2.0.0",
            "--wait",
        ])
        .env("FERRY_URL", &ferry.url)
        .env("FERRY_TOKEN", &ferry.token)
        .env("FERRY_CONFIG", ferry.dir.path().join("cli-config.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn ferry deploy --wait");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        // A timeline line is printed once the CLI follows (its Ctrl-C handler is set).
        let mut seen = String::new();
        while !seen.contains("rollout started") {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("a timeline line within 60 s")
                .expect("read stdout")
                .unwrap_or_else(|| panic!("stdout ended early:\n{seen}"));
            seen.push_str(&line);
            seen.push('\n');
        }
        let pid = Pid::from_raw(i32::try_from(child.id().expect("pid")).expect("pid"));
        signal::kill(pid, Signal::SIGINT).expect("SIGINT");
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .await
            .expect("read stderr");
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the CLI exits at Ctrl-C")
            .expect("wait");
        assert_eq!(status.code(), Some(130), "{seen}{stderr}");
        assert!(
            stderr.contains("stopped following deployment #")
                && stderr.contains("it goes on in the server")
                && stderr.contains("`ferry abort shop --env production`"),
            "{stderr}"
        );
        let latest = ferry
            .env_status(&spec)
            .await
            .latest_deployment
            .expect("latest deployment");
        assert_eq!(
            (latest.version.as_str(), latest.state),
            ("2.0.0", DeploymentState::Progressing),
            "Ctrl-C of the CLI leaves the deployment going"
        );
    })
    .await;
}

/// `$PORT` without braces in `run` is a located warning of `validate` and `apply` (stderr,
/// and `-o json`'s `warnings`); `ferry status` shows each version's traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn apply_warns_and_status_shows_traffic() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let spec = Spec::new("shop");
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        let warned = ferry.dir.path().join("warned.yaml");
        let services = text.find("services:").unwrap();
        std::fs::write(
            &warned,
            format!(
                "{}services:\n  api:\n    run: [\"./api\", \"--port\", \"$PORT\"]\n    route: /api\n{}",
                &text[..services],
                &text[services + "services:\n".len()..]
            ),
        )
        .unwrap();
        let file = warned.display().to_string();
        let expected = "services.api.run[2]: `$PORT` is passed on as it is: did you mean `${PORT}`?";
        let out = ferry.cli(&["validate", "-f", &file]).await;
        assert_eq!(out.code, 0, "{out}");
        assert!(out.stderr.contains("warning: ") && out.stderr.contains(expected), "{out}");
        let out = ferry.cli(&["apply", "-f", &file, "-o", "json"]).await;
        assert_eq!(out.code, 0, "{out}");
        assert!(out.stderr.contains(expected), "{out}");
        let warnings = out.json()["warnings"].clone();
        assert!(
            warnings[0].as_str().is_some_and(|w| w.contains(expected)),
            "{out}"
        );
        let out = ferry.cli(&["apply", "-f", &manifest.display().to_string()]).await;
        assert_eq!(out.code, 0, "{out}");
        assert!(!out.stderr.contains("warning"), "{out}");

        ferry.deploy_ok(&spec, "1.0.0").await;
        for _ in 0..40 {
            let resp = ferry
                .http
                .get(format!("http://{}/", spec.listener()))
                .send()
                .await
                .expect("GET through the proxy");
            assert!(resp.status().is_success());
        }
        let status = ferry
            .wait_status(&spec, Duration::from_secs(60), "40 requests in the traffic", |s| {
                s.traffic.as_ref().is_some_and(|t| {
                    t.versions
                        .iter()
                        .any(|v| v.version == "1.0.0" && v.requests >= 40 && v.p50_ms.is_some())
                })
            })
            .await;
        let traffic = status.traffic.expect("traffic");
        assert!(traffic.window_s > 0.0, "{traffic:?}");
        let text = ferry.cli(&["status", "shop", "--env", "production"]).await;
        assert!(
            text.stdout.contains("traffic") && text.stdout.contains("REQ/S"),
            "{text}"
        );
    })
    .await;
}

/// `ferry server --ports` (here `FERRY_PORTS`): replicas and the proxy's admin API get
/// ports from the operator's range only (firewalls allow a range).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_and_the_proxy_admin_take_ports_from_the_operators_range() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        // Twenty ports that are free now (a replica and the admin API need five).
        let first = (21_000..60_000u16)
            .step_by(97)
            .find(|p| (0..20).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()))
            .expect("twenty free ports in a row");
        let last = first + 19;
        let range = format!("{first}-{last}");
        let ferry = Ferry::start_with_env(&[("FERRY_PORTS", range.as_str())]).await;
        let mut spec = Spec::new("shop");
        spec.replicas = 2;
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;
        ferry.deploy_ok(&spec, "1.0.0").await;
        ferry.deploy_ok(&spec, "2.0.0").await;
        let status = ferry.env_status(&spec).await;
        assert!(!status.replicas.is_empty());
        for replica in &status.replicas {
            assert!(
                (first..=last).contains(&replica.port),
                "replica {} got port {} outside {range}",
                replica.id,
                replica.port
            );
        }
        let pid_file = ferry.dir.path().join("data/proxy/proxy.json");
        let proxy: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&pid_file).expect("proxy.json")).expect("json");
        let admin = proxy["admin_addr"].as_str().expect("admin_addr");
        let admin_port: u16 = admin
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        assert!(
            (first..=last).contains(&admin_port),
            "proxy admin on {admin}, outside {range}"
        );
    })
    .await;
}

/// A malformed `--ports` is refused before the server starts, saying what is wrong.
#[tokio::test]
async fn a_malformed_port_range_is_refused_with_its_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["server", "--data"])
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--ports", "30000-20000"])
        .output()
        .expect("run ferry server");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--ports") && stderr.contains("the first port is above the last"),
        "{stderr}"
    );
    assert!(!dir.path().join("data").exists(), "nothing was created");
}
