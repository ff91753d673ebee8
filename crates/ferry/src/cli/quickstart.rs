//! `ferry quickstart`: a whole Ferry in one command — server in-process, the bundled demo
//! app applied, 1.0.0 deployed, 1.1.0 rolled out, then everything kept running until
//! Ctrl-C, which tears down every process it started.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ferry_core::api::{ApplyRequest, ApplyResponse, DeployRequest, DeploymentView};

use super::client::Client;
use super::commands::print_apply;
use super::config::{self, ConfigFile, Connection};
use super::serve::{start_server, terminated};
use super::{Failure, exit, wait};

/// The bundled example manifest; `FERRY_DEMO_BIN` stands for the `ferry-demo` path.
const EXAMPLE: &str = include_str!("../../../../examples/quickstart/ferry.yaml");
const DEMO_BIN_PLACEHOLDER: &str = "FERRY_DEMO_BIN";
const VERSIONS: [&str; 2] = ["1.0.0", "1.1.0"];
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(300);

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
    let server = start_server(&data, listen, None, None, None).await?;
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
            .post(
                &["v1", "apps"],
                &ApplyRequest {
                    manifest: self.manifest_text.to_string(),
                    file_name: Some(self.manifest_path.display().to_string()),
                    base_dir: self
                        .manifest_path
                        .parent()
                        .map(|dir| dir.display().to_string()),
                    dry_run: false,
                    prune: false,
                },
            )
            .await?;
        print_apply(&applied);

        for (i, version) in VERSIONS.iter().enumerate() {
            println!();
            let how = if i == 0 { "Deploying" } else { "Rolling out" };
            println!("==> {how} {} {version} to {}", self.app, self.env);
            let dep: DeploymentView = self
                .client
                .post(
                    &["v1", "apps", self.app, "envs", self.env, "deployments"],
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
        self.print_try();
        Ok(())
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

    fn print_try(&self) {
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
                    "{ferry} deploy {} --env {} --version 1.2.0 --wait",
                    self.app, self.env
                ),
                "another rolling update",
            ),
            (
                format!("{ferry} rollback {} --env {} --wait", self.app, self.env),
                "back to the previous release",
            ),
            (
                format!(
                    "curl -H \"Authorization: Bearer $(cat {})\" {}/v1/apps/{}/status",
                    token_file.display(),
                    self.api_url,
                    self.app
                ),
                "the API",
            ),
            (
                format!("curl {}/openapi.json", self.api_url),
                "the OpenAPI spec",
            ),
            // console:
            (
                format!(
                    "{ferry} users add me && {ferry} grant me admin, then open {}/",
                    self.api_url
                ),
                "the web console",
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
        println!("Press Ctrl-C to stop everything.");
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
    fn paths_are_escaped_for_yaml() {
        assert_eq!(yaml_escape(Path::new("/a\"b\\c")), "/a\\\"b\\\\c");
    }
}
