//! `ferry quickstart` end to end on free ports: the tour deploys and serves, its bad canary
//! is rolled back by the analysis under the tour's own load, its one-time console login
//! link works once, and Ctrl-C (SIGINT) stops everything it started — no replica, proxy or
//! server left, ports free.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Processes (other than this test) whose command line or working directory mentions `path`.
fn processes_under(path: &std::path::Path) -> Vec<String> {
    let needle = path.to_string_lossy().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let cwd = std::fs::read_link(entry.path().join("cwd"))
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_default();
        if cmdline.contains(&needle) || cwd.starts_with(&needle) {
            found.push(format!("{pid}: {cmdline} (cwd {cwd})"));
        }
    }
    found
}

/// The link logs in once (a session cookie, then the dashboard), is refused the second
/// time, and both uses are in the audit log.
fn check_login_link(link: &str, api: u16, data: &std::path::Path) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        // Opening the link (as a chat app's preview bot would) shows a "Sign in" button and
        // uses nothing up; the button (a POST with the page's CSRF token) signs in.
        let sign_in = || async {
            let page = http.get(link).send().await.expect("open the link");
            assert_eq!(page.status(), reqwest::StatusCode::OK);
            let cookie = page
                .headers()
                .get_all(reqwest::header::SET_COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find(|c| c.starts_with("ferry_login="))
                .and_then(|c| c.split(';').next())
                .expect("the sign-in form's cookie")
                .to_string();
            let body = page.text().await.unwrap_or_default();
            assert!(body.contains(">Sign in</button>"), "{body}");
            let csrf = body
                .split("name=\"csrf\" value=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .expect("the sign-in form's CSRF field")
                .to_string();
            http.post(link)
                .header(reqwest::header::COOKIE, cookie)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(format!("csrf={csrf}"))
                .send()
                .await
                .expect("sign in")
        };
        let preview = http.get(link).send().await.expect("preview the link");
        assert_eq!(preview.status(), reqwest::StatusCode::OK);
        let first = sign_in().await;
        assert_eq!(first.status(), reqwest::StatusCode::SEE_OTHER);
        let session = first
            .headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|c| c.starts_with("ferry_session=") && !c.contains("Max-Age=0"))
            .and_then(|c| c.split(';').next())
            .expect("a session cookie")
            .to_string();
        let dashboard = http
            .get(format!("http://127.0.0.1:{api}/"))
            .header(reqwest::header::COOKIE, &session)
            .send()
            .await
            .expect("dashboard");
        assert_eq!(dashboard.status(), reqwest::StatusCode::OK);
        let body = dashboard.text().await.unwrap_or_default();
        assert!(
            body.contains("quickstart"),
            "logged in as quickstart: {body}"
        );
        assert!(body.contains("demo"), "the dashboard shows the app: {body}");

        let again = sign_in().await;
        assert_eq!(again.status(), reqwest::StatusCode::UNAUTHORIZED);
        assert!(!again.headers().contains_key(reqwest::header::LOCATION));
        let body = again.text().await.unwrap_or_default();
        assert!(body.contains("used already"), "{body}");

        let token = std::fs::read_to_string(data.join("admin.token")).expect("admin token");
        let audit: serde_json::Value = http
            .get(format!("http://127.0.0.1:{api}/v1/audit?limit=500"))
            .bearer_auth(token.trim())
            .send()
            .await
            .expect("audit")
            .json()
            .await
            .expect("audit JSON");
        let uses: Vec<(String, String)> = audit
            .as_array()
            .expect("records")
            .iter()
            .filter(|r| r["action"] == "login.link")
            .map(|r| {
                (
                    r["actor"].as_str().unwrap_or_default().to_string(),
                    r["outcome"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        assert_eq!(uses.len(), 2, "{uses:?}");
        assert_eq!(uses[0], ("user:quickstart".to_string(), "ok".to_string()));
        assert!(uses[1].1.starts_with("failed: "), "{uses:?}");
        assert!(
            audit
                .as_array()
                .expect("records")
                .iter()
                .any(|r| r["action"] == "login_links.create" && r["outcome"] == "ok"),
            "the link's creation is audited"
        );
    });
}

#[test]
fn ctrl_c_stops_everything_the_quickstart_started() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory `nobody` can reach: when root, Ferry runs the replicas as nobody.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let (api, dev, production) = (free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("quickstart")
        .arg("--data")
        .arg(dir.path().join("qs"))
        .args(["--listen", &format!("127.0.0.1:{api}")])
        .args(["--dev-listen", &format!("127.0.0.1:{dev}")])
        .args(["--production-listen", &format!("127.0.0.1:{production}")])
        // its CLI config goes to the temp dir, not the user's
        .env("FERRY_CONFIG", dir.path().join("cli-config.json"))
        .env("HOME", dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ferry quickstart");

    // Read its output until the tour ends ("Press Ctrl-C"), bounded.
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let deadline = started + Duration::from_secs(180);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains("Press Ctrl-C to stop everything");
                seen.push(line);
                if done {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the quickstart did not finish its tour:\n{}",
                    seen.join("\n")
                );
            }
        }
    }
    let tour = started.elapsed();
    eprintln!("the quickstart's tour took {tour:?}");
    let output = seen.join("\n");
    assert!(
        output.contains(&format!("127.0.0.1:{production}")),
        "{output}"
    );
    // The bad canary went out under the tour's load and the analysis rolled it back.
    assert!(
        output.contains("Ferry's analysis rolled 1.2.0 back by itself"),
        "{output}"
    );
    let load = seen
        .iter()
        .find(|l| l.trim_start().starts_with("load: "))
        .unwrap_or_else(|| panic!("no load line:\n{output}"));
    assert!(
        load.contains("1.2.0"),
        "the canary got some of the load: {load}"
    );
    // The last screen's one-time console link logs in once.
    let link = seen
        .iter()
        .map(|l| l.trim())
        .find(|l| l.starts_with(&format!("http://127.0.0.1:{api}/login/link/")))
        .unwrap_or_else(|| panic!("no console login link:\n{output}"))
        .to_string();
    check_login_link(&link, api, &dir.path().join("qs"));
    assert!(
        processes_under(dir.path()).len() >= 2,
        "the server, proxy and replicas run under {}",
        dir.path().display()
    );
    // The app answers through the proxy on the port given.
    let answer = std::process::Command::new("python3")
        .args([
            "-c",
            &format!(
                "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{production}/', timeout=10).read().decode())"
            ),
        ])
        .output()
        .expect("python3");
    assert!(
        String::from_utf8_lossy(&answer.stdout).contains("hello from"),
        "{answer:?}"
    );

    // Ctrl-C.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the quickstart does not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr).ok();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        status.success(),
        "exit {status:?}\n{stderr}\n{}",
        rest.join("\n")
    );
    assert!(
        rest.iter()
            .any(|l| l.contains("Stopped everything quickstart started")),
        "{}\n{stderr}",
        rest.join("\n")
    );
    // Nothing it started is left, and its ports are free again.
    let left = processes_under(dir.path());
    assert!(left.is_empty(), "left behind: {left:#?}");
    for port in [api, dev, production] {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} is still taken"
        );
    }
}
