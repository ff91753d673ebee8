//! `ferry quickstart` end to end on free ports: the tour deploys and serves, and Ctrl-C
//! (SIGINT) stops everything it started — no replica, proxy or server left, ports free.

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
    let deadline = Instant::now() + Duration::from_secs(180);
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
    let output = seen.join("\n");
    assert!(
        output.contains(&format!("127.0.0.1:{production}")),
        "{output}"
    );
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
