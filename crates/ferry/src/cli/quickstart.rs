//! `ferry quickstart`: a whole Ferry in one command — server in-process, the bundled demo
//! app applied, 1.0.0 deployed, 1.1.0 rolled out, then production switched to a canary and
//! the bad 1.2.0 rolled out under a small load the tour makes itself, until Ferry's analysis
//! rolls it back; then a one-time console login link, and everything kept running until
//! Ctrl-C, which tears down every process it started.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ferry_core::api::identity::{
    CreateBindingRequest, CreateUserRequest, LoginLinkRequest, Password,
};
use ferry_core::api::{ApplyRequest, ApplyResponse, DeployRequest, DeploymentView};
use ferry_core::endpoint::{self as e, Endpoint};

use super::client::Client;
use super::commands::print_apply;
use super::config::{self, ConfigFile, Connection};
use super::serve::{start_server, terminated};
use super::{Failure, exit, wait};

/// The bundled example manifest; `FERRY_DEMO_BIN` stands for the `ferry-demo` path.
const EXAMPLE: &str = include_str!("../../../../examples/quickstart/ferry.yaml");
const DEMO_BIN_PLACEHOLDER: &str = "FERRY_DEMO_BIN";
const VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];
/// The release the bundled manifest makes answer errors (`DEMO_ERROR_VERSIONS`).
const BAD_VERSION: &str = "1.2.0";
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(300);
/// Production's strategy in the bundled manifest, and the canary the tour switches it to
/// before the bad release: 20 % of the traffic, judged every second by its error rate.
const ROLLING: &str = "    strategy:\n      rolling: { max_surge: 1, max_unavailable: 0 }\n";
const CANARY: &str = "    strategy:
      canary:
        steps:
          - weight: 20
          - pause: 5s
          - weight: 50
          - pause: 5s
        analysis:
          interval: 1s
          metrics:
            - { name: errors, builtin: error_rate, max: 5% }
";
/// The console user the quickstart makes (an admin, with a random password nobody sees) and
/// logs in with the one-time link.
const CONSOLE_USER: &str = "quickstart";
/// The tour's load: this many requests at most, one every `LOAD_PAUSE` per worker.
const LOAD_WORKERS: usize = 2;
const LOAD_PAUSE: Duration = Duration::from_millis(40);
const LOAD_MAX_REQUESTS: u64 = 10_000;

/// Where the bundled manifest's environments listen (overridable: `--dev-listen`,
/// `--production-listen`).
pub const DEV_LISTEN: &str = "127.0.0.1:8080";
pub const PRODUCTION_LISTEN: &str = "127.0.0.1:8090";

pub async fn run(
    data: PathBuf,
    listen: SocketAddr,
    [dev_listen, production_listen]: [SocketAddr; 2],
) -> anyhow::Result<()> {
    let manifest_text = with_demo_command(EXAMPLE)?
        .replace(
            &format!("listen: {DEV_LISTEN}\n"),
            &format!("listen: {dev_listen}\n"),
        )
        .replace(
            &format!("listen: {PRODUCTION_LISTEN}\n"),
            &format!("listen: {production_listen}\n"),
        );
    std::fs::create_dir_all(&data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    let data = std::fs::canonicalize(&data)
        .with_context(|| format!("cannot resolve {}", data.display()))?;

    // The app's directory (its replicas' working directory) lies beside the private data
    // directory, not in it: run as root, Ferry starts the replicas as `nobody`.
    let app_dir = data.with_file_name(format!(
        "{}-app",
        data.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::create_dir_all(&app_dir)
        .and_then(|()| std::fs::set_permissions(&app_dir, std::fs::Permissions::from_mode(0o755)))
        .with_context(|| format!("cannot create {}", app_dir.display()))?;

    // Everything that can be checked before starting processes is checked first.
    let manifest_path = app_dir.join("ferry.yaml");
    let manifest =
        ferry_core::manifest::parse(&manifest_text, &manifest_path.display().to_string()).map_err(
            |errors| {
                Failure::new(exit::ERROR, "the bundled quickstart manifest is invalid")
                    .with_details(errors.errors.iter().map(ToString::to_string).collect())
            },
        )?;
    std::fs::write(&manifest_path, &manifest_text)
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    let env = if manifest.environments.get("production").is_some() {
        "production".to_string()
    } else {
        manifest
            .environments
            .keys()
            .last()
            .context("the bundled quickstart manifest has no environment")?
            .to_string()
    };
    let listener = manifest
        .environments
        .get(&env)
        .map(|e| e.listen.clone())
        .unwrap_or_default();

    crate::say!("Starting Ferry (data in {})", data.display());
    let server = start_server(
        &data,
        listen,
        None,
        None,
        None,
        None,
        Default::default(),
        Default::default(),
    )
    .await?;
    let url = format!("http://{}", server.addr());
    let token = server.admin_token();
    crate::say!("  API      {url}");
    let config_note = match config::save(&ConfigFile {
        url: Some(url.clone()),
        token: Some(token.clone()),
    }) {
        Ok(path) => format!(
            "config   {} (ferry commands now talk to this server)",
            path.display()
        ),
        Err(e) => format!(
            "could not save the CLI config ({e:#}); export FERRY_URL={url} FERRY_TOKEN=$(cat {}/admin.token)",
            data.display()
        ),
    };
    crate::say!("  {config_note}");

    let client = Client::new(&Connection {
        url: url.clone(),
        token: Some(token),
    })?;
    let tour = Tour {
        client: &client,
        app: &manifest.app,
        env: &env,
        listener: &listener,
        manifest_path: &manifest_path,
        manifest_text: &manifest_text,
        data: &data,
        api_url: &url,
    };

    // Ok(true): the tour finished, keep serving until Ctrl-C.
    // A closed stdout (`quickstart | tee log`, then Ctrl-C) panics a print in the tour:
    // caught here, so that the cleanup below always runs.
    let tour_run = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(tour.run()));
    let outcome = tokio::select! {
        result = tour_run => match result {
            Ok(result) => result.map(|()| true),
            Err(_) => Ok(false),
        },
        signal = terminated() => {
            crate::say!();
            crate::say!("{}: interrupted", signal.unwrap_or("signal"));
            Ok(false)
        }
    };
    let mut stopped_by_api = false;
    if let Ok(true) = outcome {
        tokio::select! {
            _ = terminated() => crate::say!(),
            () = server.stopped() => stopped_by_api = true,
        }
    }
    if stopped_by_api {
        crate::say!("Teardown requested through the API; stopping the server.");
        server.stop().await;
    } else {
        crate::say!("Stopping the replicas, the proxy and the server…");
        server.teardown().await;
    }
    crate::say!("Stopped everything quickstart started.");
    outcome.map(|_| ())
}

struct Tour<'a> {
    client: &'a Client,
    app: &'a str,
    env: &'a str,
    listener: &'a str,
    manifest_path: &'a Path,
    manifest_text: &'a str,
    data: &'a Path,
    api_url: &'a str,
}

impl Tour<'_> {
    async fn run(&self) -> anyhow::Result<()> {
        println!();
        println!("==> Applying {}", self.manifest_path.display());
        let applied: ApplyResponse = self
            .client
            .call(e::Apply, &[], &[], &self.apply_request(self.manifest_text))
            .await?;
        print_apply(&applied);

        for (i, version) in VERSIONS.iter().enumerate() {
            println!();
            let how = if i == 0 { "Deploying" } else { "Rolling out" };
            println!("==> {how} {} {version} to {}", self.app, self.env);
            let dep: DeploymentView = self
                .client
                .call(
                    e::Deploy,
                    &[self.app, self.env],
                    &[],
                    &DeployRequest {
                        version: (*version).to_string(),
                        ..Default::default()
                    },
                )
                .await?;
            println!("{}", wait::headline(&dep));
            let done = wait::follow(self.client, &dep, DEPLOY_TIMEOUT, true).await?;
            wait::outcome(&done)?;
            self.probe().await;
        }
        self.bad_canary().await?;
        let link = self.console_link().await?;
        self.print_try(&link);
        Ok(())
    }

    /// Production becomes a canary judged by its error rate; the bad release goes out under
    /// a small load the tour makes, and the analysis rolls it back by itself.
    async fn bad_canary(&self) -> anyhow::Result<()> {
        println!();
        println!(
            "==> Switching {} to canary releases judged by their error rate ({})",
            self.env,
            self.manifest_path.display()
        );
        let text = canary_manifest(self.manifest_text)?;
        std::fs::write(self.manifest_path, &text)
            .with_context(|| format!("cannot write {}", self.manifest_path.display()))?;
        let applied: ApplyResponse = self
            .client
            .call(e::Apply, &[], &[], &self.apply_request(&text))
            .await?;
        print_apply(&applied);

        println!();
        println!(
            "==> Sending a small load to http://{}/ and rolling out {} {BAD_VERSION}, a bad release (30% errors), as a canary",
            self.listener, self.app
        );
        let load = Load::start(self.listener);
        let outcome = async {
            let dep: DeploymentView = self
                .client
                .call(
                    e::Deploy,
                    &[self.app, self.env],
                    &[],
                    &DeployRequest {
                        version: BAD_VERSION.to_string(),
                        ..Default::default()
                    },
                )
                .await?;
            println!("{}", wait::headline(&dep));
            wait::follow(self.client, &dep, DEPLOY_TIMEOUT, true).await
        }
        .await;
        let tally = load.stop().await;
        let done = outcome?;
        println!("  load: {tally}");
        if done.state != ferry_core::model::DeploymentState::RolledBack {
            return Err(Failure::new(
                exit::ERROR,
                format!(
                    "the bad release {BAD_VERSION} was not rolled back (it ended {})",
                    done.state
                ),
            )
            .into());
        }
        println!(
            "Ferry's analysis rolled {BAD_VERSION} back by itself: {}",
            done.reason.as_deref().unwrap_or("no reason recorded")
        );
        self.probe().await;
        Ok(())
    }

    fn apply_request(&self, manifest: &str) -> ApplyRequest {
        ApplyRequest {
            manifest: manifest.to_string(),
            file_name: Some(self.manifest_path.display().to_string()),
            base_dir: self
                .manifest_path
                .parent()
                .map(|dir| dir.display().to_string()),
            dry_run: false,
            prune: false,
        }
    }

    /// A console user (an admin, once per data directory) and a one-time link that logs
    /// it in.
    async fn console_link(&self) -> anyhow::Result<String> {
        // Nobody needs it: the link logs in (`ferry passwd quickstart` sets one).
        let password: String = rand::random::<[u8; 24]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let user = CreateUserRequest {
            username: CONSOLE_USER.to_string(),
            password: Password::new(password),
        };
        match self.client.call(e::UsersCreate, &[], &[], &user).await {
            Ok(_) => {
                let binding = CreateBindingRequest {
                    user: CONSOLE_USER.to_string(),
                    role: "admin".to_string(),
                    app: None,
                    envs: Vec::new(),
                    allow_missing: false,
                };
                self.client
                    .call(e::BindingsCreate, &[], &[], &binding)
                    .await?;
            }
            // made by an earlier quickstart in this data directory
            Err(e)
                if e.downcast_ref::<Failure>()
                    .is_some_and(|f| f.code == exit::CONFLICT) => {}
            Err(e) => return Err(e),
        }
        let request = LoginLinkRequest {
            user: CONSOLE_USER.to_string(),
        };
        let link = self
            .client
            .call(e::LoginLinksCreate, &[], &[], &request)
            .await?;
        Ok(format!("{}{}", self.api_url, link.path))
    }

    /// One request through the proxy, to show what answers.
    async fn probe(&self) {
        let url = format!("http://{}/", self.listener);
        let answer = async {
            let resp = reqwest::Client::new()
                .get(&url)
                .timeout(Duration::from_secs(3))
                .send()
                .await?;
            let status = resp.status();
            let body = resp.text().await?;
            anyhow::Ok(format!(
                "{status} {}",
                body.lines().next().unwrap_or("").trim()
            ))
        }
        .await;
        match answer {
            Ok(text) => println!("  curl {url}  →  {text}"),
            Err(e) => println!("  curl {url}  →  failed: {e:#}"),
        }
    }

    fn print_try(&self, console_link: &str) {
        let ferry = ferry_command();
        let token_file = self.data.join("admin.token");
        let listener = format!("http://{}/", self.listener);
        println!();
        println!(
            "Ferry is running {} {} in {}. Try:",
            self.app, VERSIONS[1], self.env
        );
        let lines = [
            (format!("curl {listener}"), "the app through Ferry's proxy"),
            (format!("{ferry} status {}", self.app), "what runs where"),
            (
                format!("{ferry} history {} --env {}", self.app, self.env),
                "past deployments",
            ),
            (
                format!("{ferry} logs {} --env {} --follow", self.app, self.env),
                "replica output",
            ),
            (
                format!(
                    "{ferry} deploy {} --env {} --version 1.3.0",
                    self.app, self.env
                ),
                "a canary, judged on the traffic it gets",
            ),
            (
                format!("{ferry} rollback {} --env {} --wait", self.app, self.env),
                "back to the previous release",
            ),
            (
                format!(
                    "curl -H \"Authorization: Bearer $(cat {})\" {}{}",
                    token_file.display(),
                    self.api_url,
                    e::Status::SPEC.path.replace("{app}", self.app)
                ),
                "the API",
            ),
            (
                format!("curl {}/openapi.json", self.api_url),
                "the OpenAPI spec",
            ),
            // console:
            (
                format!("{ferry} users login-link {CONSOLE_USER}"),
                "a new console login link",
            ),
        ];
        let width = lines
            .iter()
            .map(|(_, what)| what.chars().count())
            .max()
            .unwrap_or(0);
        for (cmd, what) in &lines {
            let pad = width - what.chars().count();
            println!("  {what}{}   {cmd}", " ".repeat(pad));
        }
        println!();
        println!("Open the web console (a one-time login link, valid 10 minutes):");
        println!("  {console_link}");
        println!();
        println!("Press Ctrl-C to stop everything.");
    }
}

/// The manifest with production's rolling strategy replaced by the tour's canary.
fn canary_manifest(manifest: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        manifest.matches(ROLLING).count() == 1,
        "the quickstart manifest has no rolling strategy for production to replace"
    );
    Ok(manifest.replace(ROLLING, CANARY))
}

/// The tour's own load on the production listener: a few workers on loopback, bounded in
/// count, until stopped.
struct Load {
    stop: tokio_util::sync::CancellationToken,
    workers: Vec<tokio::task::JoinHandle<Tally>>,
}

/// Answers per version (`X-Version`), and requests that got no answer.
#[derive(Default)]
struct Tally {
    by_version: std::collections::BTreeMap<String, (u64, u64)>,
    failed: u64,
}

impl Load {
    fn start(listener: &str) -> Load {
        let stop = tokio_util::sync::CancellationToken::new();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let url = format!("http://{listener}/");
        let workers = (0..LOAD_WORKERS)
            .map(|_| {
                let (stop, sent, url) = (stop.clone(), sent.clone(), url.clone());
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(2))
                        .build()
                        .unwrap_or_default();
                    while !stop.is_cancelled()
                        && sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                            < LOAD_MAX_REQUESTS
                    {
                        match client.get(&url).send().await {
                            Ok(answer) => {
                                let version = answer
                                    .headers()
                                    .get("x-version")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("?")
                                    .to_string();
                                let entry = tally.by_version.entry(version).or_default();
                                entry.0 += 1;
                                if answer.status().is_server_error() {
                                    entry.1 += 1;
                                }
                            }
                            Err(_) => tally.failed += 1,
                        }
                        tokio::select! {
                            () = stop.cancelled() => break,
                            () = tokio::time::sleep(LOAD_PAUSE) => {}
                        }
                    }
                    tally
                })
            })
            .collect();
        Load { stop, workers }
    }

    async fn stop(self) -> Tally {
        self.stop.cancel();
        let mut total = Tally::default();
        for worker in self.workers {
            if let Ok(tally) = worker.await {
                for (version, (answers, errors)) in tally.by_version {
                    let entry = total.by_version.entry(version).or_default();
                    entry.0 += answers;
                    entry.1 += errors;
                }
                total.failed += tally.failed;
            }
        }
        total
    }
}

impl std::fmt::Display for Tally {
    /// `412 requests: 1.1.0 330 (0 errors), 1.2.0 82 (25 errors)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let answered: u64 = self.by_version.values().map(|(n, _)| n).sum();
        write!(f, "{} requests:", answered + self.failed)?;
        let mut first = true;
        for (version, (answers, errors)) in &self.by_version {
            let sep = if first { " " } else { ", " };
            first = false;
            let plural = if *errors == 1 { "" } else { "s" };
            write!(f, "{sep}{version} {answers} ({errors} error{plural})")?;
        }
        if self.failed > 0 {
            write!(f, ", {} without an answer", self.failed)?;
        }
        Ok(())
    }
}

/// The example with its demo command filled in: the `ferry-demo` binary next to this
/// executable, or else this executable's hidden `demo` command.
fn with_demo_command(example: &str) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("cannot find the ferry executable")?;
    let demo = exe.with_file_name("ferry-demo");
    if demo.is_file() {
        return Ok(example.replace(DEMO_BIN_PLACEHOLDER, &yaml_escape(&demo)));
    }
    let quoted = format!("\"{DEMO_BIN_PLACEHOLDER}\"");
    if example.contains(&quoted) {
        let argv = format!("\"{}\", \"demo\"", yaml_escape(&exe));
        return Ok(example.replace(&quoted, &argv));
    }
    Err(Failure::new(
        exit::ERROR,
        format!(
            "the quickstart needs the ferry-demo binary next to ferry, but {} does not exist",
            demo.display()
        ),
    )
    .with_details(vec![
        "build it with `cargo build --release` (builds both ferry and ferry-demo), then run ./target/release/ferry quickstart".into(),
    ])
    .into())
}

/// A path as the inside of a double-quoted YAML string.
fn yaml_escape(path: &Path) -> String {
    path.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

/// How the user should type `ferry`: `ferry` when that is on PATH, else the path to it.
fn ferry_command() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "ferry".into();
    };
    let exe = std::fs::canonicalize(&exe).unwrap_or(exe);
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths)
            .any(|dir| std::fs::canonicalize(dir.join("ferry")).is_ok_and(|found| found == exe))
    });
    if on_path {
        return "ferry".into();
    }
    if let Ok(cwd) = std::env::current_dir()
        && let Ok(rel) = exe.strip_prefix(&cwd)
    {
        return format!("./{}", rel.display());
    }
    exe.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_example_gets_a_runnable_demo_command() {
        let text = with_demo_command(EXAMPLE).unwrap();
        assert!(!text.contains(DEMO_BIN_PLACEHOLDER));
        let manifest = ferry_core::manifest::parse(&text, "ferry.yaml").unwrap();
        let exe = std::env::current_exe().unwrap();
        for service in manifest.services.values() {
            let program = PathBuf::from(&service.run[0]);
            assert_eq!(program.parent(), exe.parent(), "{:?}", service.run);
            if program.file_name() != Some("ferry-demo".as_ref()) {
                assert_eq!(service.run[1], "demo", "{:?}", service.run);
            }
        }
        assert!(manifest.environments.get("production").is_some());
    }

    #[test]
    fn the_bundled_listeners_are_the_ones_the_flags_replace() {
        for listen in [DEV_LISTEN, PRODUCTION_LISTEN] {
            assert_eq!(
                EXAMPLE.matches(&format!("listen: {listen}\n")).count(),
                1,
                "{listen} in examples/quickstart/ferry.yaml"
            );
        }
    }

    #[test]
    fn the_tour_switches_production_to_a_canary_that_judges_errors() {
        let text = canary_manifest(&with_demo_command(EXAMPLE).unwrap()).unwrap();
        let manifest = ferry_core::manifest::parse(&text, "ferry.yaml").unwrap();
        let production = manifest.environments.get("production").unwrap();
        assert_eq!(production.strategy.name(), "canary");
        let dev = manifest.environments.get("dev").unwrap();
        assert_eq!(dev.strategy.name(), "rolling", "only production changes");
        let web = manifest.services.get("web").unwrap();
        assert_eq!(
            web.env.get("DEMO_ERROR_VERSIONS").map(String::as_str),
            Some(BAD_VERSION)
        );
        assert!(!VERSIONS.contains(&BAD_VERSION));
    }

    #[test]
    fn the_load_tally_reads_per_version() {
        let mut tally = Tally::default();
        tally.by_version.insert("1.1.0".into(), (330, 0));
        tally.by_version.insert("1.2.0".into(), (82, 25));
        tally.failed = 1;
        assert_eq!(
            tally.to_string(),
            "413 requests: 1.1.0 330 (0 errors), 1.2.0 82 (25 errors), 1 without an answer"
        );
    }

    #[test]
    fn paths_are_escaped_for_yaml() {
        assert_eq!(yaml_escape(Path::new("/a\"b\\c")), "/a\\\"b\\\\c");
    }
}
