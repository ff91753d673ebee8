//! The client commands: each one a few API calls and some printing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use ferry_core::api::MAX_REQUEST_BYTES;
use ferry_core::api::{
    ApplyRequest, ApplyResponse, DeployRequest, DeploymentView, EnvStatus, RollbackRequest,
};
use ferry_core::endpoint::{self as e, Empty};
use ferry_core::model::DeploymentState;
use futures_util::StreamExt;

use super::client::Client;
use super::config::{self, ConfigFile, Connection};
use super::output::{
    Table, age, duration_ms, event_line, listen_url, now_ms, print_json, timestamp,
};
use super::{DEFAULT_URL, Failure, Format, WaitArgs, exit, wait};

pub fn schema() -> anyhow::Result<()> {
    print_json(&ferry_core::manifest::json_schema())
}

pub async fn login(url: Option<String>, token: Option<String>) -> anyhow::Result<()> {
    let token = token.filter(|t| !t.trim().is_empty()).ok_or_else(|| {
        Failure::new(
            exit::INVALID,
            "`ferry login` needs --token TOKEN (the admin token is in DATA_DIR/admin.token)",
        )
    })?;
    let existing = config::load();
    let url = url
        .or(existing.url)
        .unwrap_or_else(|| DEFAULT_URL.to_string());
    let conn = Connection {
        url: url.trim_end_matches('/').to_string(),
        token: Some(token.trim().to_string()),
    };
    let client = Client::new(&conn)?;
    let me = client.call(e::Whoami, &[], &[], &()).await?;
    let path = config::save(&ConfigFile {
        url: Some(conn.url.clone()),
        token: conn.token.clone(),
    })?;
    println!(
        "logged in to {} as {} ({}); saved in {}",
        conn.url,
        me.name,
        me.role,
        path.display()
    );
    Ok(())
}

/// Reads and parses a manifest file: the located errors, exit 2, on a bad one.
pub(super) fn parse_manifest_file(
    file: &Path,
    nothing: &str,
) -> anyhow::Result<(String, ferry_core::manifest::Manifest)> {
    let text = read_manifest(file)?;
    let file_name = file.display().to_string();
    match ferry_core::manifest::parse(&text, &file_name) {
        Ok(manifest) => Ok((text, manifest)),
        Err(errors) => {
            let count = errors.errors.len();
            Err(Failure::new(
                exit::INVALID,
                format!(
                    "{file_name} is not a valid manifest ({count} error{}); {nothing}",
                    if count == 1 { "" } else { "s" }
                ),
            )
            .with_details(errors.errors.iter().map(ToString::to_string).collect())
            .into())
        }
    }
}

/// `ferry validate -f FILE`: the manifest checked offline, as `apply` checks it first.
pub fn validate(file: &Path) -> anyhow::Result<()> {
    let (text, manifest) = parse_manifest_file(file, "see docs/manifest.md")?;
    let warnings: Vec<String> =
        ferry_core::manifest::warnings(&text, &file.display().to_string(), &manifest)
            .iter()
            .map(ToString::to_string)
            .collect();
    print_warnings(&warnings);
    println!(
        "{}: valid manifest of app {} ({} service(s): {}; {} environment(s): {}); role names are checked by the server at apply time",
        file.display(),
        manifest.app,
        manifest.services.len(),
        manifest
            .services
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        manifest.environments.len(),
        manifest.environments.keys().collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

/// Reads and validates the manifest locally, then sends it.
pub async fn apply(
    client: &Client,
    file: &Path,
    dry_run: bool,
    prune: bool,
    format: Format,
) -> anyhow::Result<()> {
    let (text, _) = parse_manifest_file(file, "nothing was sent")?;
    let base_dir = absolute_dir_of(file)?;
    let request = ApplyRequest {
        manifest: text,
        file_name: Some(file.display().to_string()),
        base_dir: Some(base_dir.display().to_string()),
        dry_run,
        prune,
    };
    let size = serde_json::to_vec(&request).map_or(0, |body| body.len());
    if size > MAX_REQUEST_BYTES {
        return Err(too_large(file, size).into());
    }
    let resp = client.call(e::Apply, &[], &[], &request).await?;
    print_warnings(&resp.warnings);
    if format == Format::Json {
        return print_json(&resp);
    }
    print_apply(&resp);
    Ok(())
}

/// Warnings go to stderr (also with `-o json`, whose answer carries them too).
pub fn print_warnings(warnings: &[String]) {
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
}

/// Reads a manifest, refusing (before reading it) a file that could not be sent anyway.
pub fn read_manifest(file: &Path) -> anyhow::Result<String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| {
        Failure::new(
            exit::INVALID,
            format!("cannot read {}: {e}", file.display()),
        )
    };
    let mut text = String::new();
    std::fs::File::open(file)
        .map_err(cannot)?
        .take(MAX_REQUEST_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(cannot)?;
    if text.len() > MAX_REQUEST_BYTES {
        let size = std::fs::metadata(file).map_or(text.len(), |m| m.len() as usize);
        return Err(too_large(file, size).into());
    }
    Ok(text)
}

fn too_large(file: &Path, size: usize) -> Failure {
    Failure::new(
        exit::INVALID,
        format!(
            "{} is too large to send: {size} bytes, the server accepts at most {MAX_REQUEST_BYTES} bytes per request; nothing was sent",
            file.display()
        ),
    )
    .with_details(vec![
        "keep large data out of the manifest (e.g. in a file the service reads)".into(),
    ])
}

/// `ferry version`: this client's, and the server's when it answers.
pub async fn version(client: &Client, format: Format) -> anyhow::Result<()> {
    let ours = env!("CARGO_PKG_VERSION");
    let server = client.call(e::Version, &[], &[], &()).await;
    if format == Format::Json {
        return print_json(&serde_json::json!({
            "client": ours,
            "server": server.ok().map(|v| v.version),
            "url": client.base_url(),
        }));
    }
    println!("client  ferry {ours}");
    match server {
        Ok(v) => println!("server  ferry {} at {}", v.version, client.base_url()),
        Err(e) => println!("server  unknown: {e:#}"),
    }
    Ok(())
}

/// `ferry apps delete APP [--yes]`.
pub async fn delete_app(client: &Client, app: &str, yes: bool) -> anyhow::Result<()> {
    let query = [("confirm", yes.to_string())];
    let answer = client.call(e::AppsDelete, &[app], &query, &()).await?;
    println!("app {app} deleted");
    for line in answer.stopped {
        println!("  stopped: {line}");
    }
    Ok(())
}

pub fn print_apply(resp: &ApplyResponse) {
    let n = resp.changes.len();
    let plural = if n == 1 { "" } else { "s" };
    match (resp.dry_run, n) {
        (true, 0) => println!("app {}: no changes (dry run)", resp.app),
        (true, _) => println!(
            "app {}: {n} change{plural} would be applied (dry run)",
            resp.app
        ),
        (false, 0) => println!("app {}: no changes (revision {})", resp.app, resp.revision),
        (false, _) => println!(
            "app {}: applied revision {} ({n} change{plural})",
            resp.app, resp.revision
        ),
    }
    for change in &resp.changes {
        println!("  {change}");
    }
    if !resp.stops.is_empty() {
        println!(
            "{}",
            match resp.dry_run {
                true => "would stop at once (apply needs --prune to confirm):",
                false => "stopped (--prune):",
            }
        );
        for stop in &resp.stops {
            println!("  {stop}");
        }
    }
    if !resp.next_deployment.is_empty() {
        println!("nothing restarts now; these take effect with the next deployment:");
        for pending in &resp.next_deployment {
            println!("  {pending}");
        }
    }
}

fn absolute_dir_of(file: &Path) -> anyhow::Result<PathBuf> {
    let abs = std::fs::canonicalize(file)
        .with_context(|| format!("cannot resolve {}", file.display()))?;
    Ok(abs
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/")))
}

pub async fn deploy(
    client: &Client,
    app: &str,
    env: &str,
    request: &DeployRequest,
    wait: WaitArgs,
    format: Format,
) -> anyhow::Result<()> {
    let dep = client.call(e::Deploy, &[app, env], &[], request).await?;
    finish_request(client, dep, wait, format).await
}

pub async fn rollback(
    client: &Client,
    app: &str,
    env: &str,
    to: Option<String>,
    force: bool,
    wait: WaitArgs,
    format: Format,
) -> anyhow::Result<()> {
    let dep = client
        .call(
            e::Rollback,
            &[app, env],
            &[],
            &RollbackRequest {
                to,
                force,
                reason: None,
            },
        )
        .await?;
    if dep.kind == ferry_core::model::DeploymentKind::Rollback {
        return finish_request(client, dep, wait, format).await;
    }
    // Mid-rollout the server sends the rollout in progress straight back to the version
    // that was serving: `rolled-back` is the success of this command.
    let json = format == Format::Json;
    if !json {
        println!("{}", wait::headline(&dep));
    }
    if !wait.wait {
        if json {
            return print_json(&dep);
        }
        if let Some(previous) = &dep.previous_version {
            println!(
                "rolling back: all traffic back to {previous} now, {} being stopped; follow it with `ferry deployment {}`",
                dep.version, dep.id
            );
        }
        return Ok(());
    }
    let done = wait::follow_interruptible(client, &dep, wait.timeout.get(), !json).await?;
    if json {
        print_json(&done)?;
    }
    if done.state == DeploymentState::RolledBack {
        if !json {
            let serving = done
                .previous_version
                .as_deref()
                .unwrap_or("the previous version");
            println!(
                "deployment #{} ({} {}) rolled back: {} is serving {serving}",
                done.id, done.app, done.version, done.env
            );
        }
        return Ok(());
    }
    wait::outcome(&done)
}

/// After a deploy or rollback request: print it, and with --wait follow it to the end.
pub(super) async fn finish_request(
    client: &Client,
    dep: DeploymentView,
    wait: WaitArgs,
    format: Format,
) -> anyhow::Result<()> {
    let json = format == Format::Json;
    if !wait.wait {
        if json {
            return print_json(&dep);
        }
        println!("{}", wait::headline(&dep));
        println!(
            "started; follow it with `ferry deployment {}` or `ferry status {} --env {}`",
            dep.id, dep.app, dep.env
        );
        return Ok(());
    }
    if !json {
        println!("{}", wait::headline(&dep));
    }
    let done = wait::follow_interruptible(client, &dep, wait.timeout.get(), !json).await?;
    if json {
        print_json(&done)?;
        // stdout stays one JSON value; a failure still says why on stderr (and exit code).
        if done.state == DeploymentState::Succeeded {
            return Ok(());
        }
    }
    wait::outcome(&done)
}

pub async fn status(
    client: &Client,
    app: &str,
    env: Option<&str>,
    format: Format,
) -> anyhow::Result<()> {
    let query: Vec<(&str, String)> = env.map(|e| ("env", e.to_string())).into_iter().collect();
    let status = client.call(e::Status, &[app], &query, &()).await?;
    if let Some(env) = env {
        let env_status = status
            .environments
            .iter()
            .find(|e| e.env == env)
            .ok_or_else(|| {
                let known: Vec<&str> = status.environments.iter().map(|e| e.env.as_str()).collect();
                Failure::new(
                    exit::NOT_FOUND,
                    format!("app {app} has no environment {env:?}"),
                )
                .with_details(vec![format!("environments: {}", known.join(", "))])
            })?;
        if format == Format::Json {
            return print_json(env_status);
        }
        println!("{} (revision {})", status.app, status.revision);
        print_env_status(env_status, now_ms());
        return Ok(());
    }
    if format == Format::Json {
        return print_json(&status);
    }
    println!("{} (revision {})", status.app, status.revision);
    let now = now_ms();
    for env_status in &status.environments {
        print_env_status(env_status, now);
    }
    Ok(())
}

/// The current version, the latest deployment and the rollout in progress: shared by
/// `status` and `status --watch`.
pub(super) fn summary_lines(status: &EnvStatus, now: i64) -> Vec<String> {
    let mut lines = vec![format!(
        "  current   {}{}",
        status
            .current_version
            .as_deref()
            .unwrap_or("(nothing deployed)"),
        // releases:
        status
            .release_tag
            .as_deref()
            .map(|tag| format!("  ({tag})"))
            .unwrap_or_default()
    )];
    if let Some(dep) = &status.latest_deployment {
        let mut line = format!(
            "  latest    #{}  {} {}  {}  {}",
            dep.id,
            dep.kind,
            dep.version,
            dep.state,
            age(dep.created_at_ms, now)
        );
        if let Some(reason) = &dep.reason {
            line.push_str(&format!("  ({reason})"));
        }
        lines.push(line);
    }
    if let Some(rollout) = &status.rollout {
        lines.extend(super::progressive::rollout_lines(rollout));
    }
    // gates: the gates a waiting deployment is held at
    if let Some(dep) = &status.latest_deployment
        && !dep.gates.is_empty()
    {
        lines.push("  gates".to_string());
        lines.extend(
            super::gates::rows_table(&dep.gates, 4)
                .lines()
                .map(str::to_string),
        );
    }
    lines
}

fn print_env_status(status: &EnvStatus, now: i64) {
    println!();
    println!("{}  {}", status.env, listen_url(&status.listen));
    for line in summary_lines(status, now) {
        println!("{line}");
    }
    if let Some(traffic) = status.traffic.as_ref().filter(|t| !t.versions.is_empty()) {
        print!("{}", traffic_table(traffic));
    }
    // leader: a follower's answer says whose view of the replicas it is, and how old.
    let seen = match &status.observed {
        Some(o) if !o.live => format!(
            "  (as the leader {} saw them{})",
            o.server,
            o.age_ms
                .map(|ms| format!(" {} ago", duration_ms(ms)))
                .unwrap_or_default()
        ),
        _ => String::new(),
    };
    if status.replicas.is_empty() {
        println!("  replicas  none{seen}");
        return;
    }
    println!("  replicas{seen}");
    let mut table = Table::new(&[
        "ID", "SERVICE", "VERSION", "STATE", "PORT", "PID", "RESTARTS", "TRAFFIC",
    ])
    .indent(4);
    for r in &status.replicas {
        table.row(vec![
            r.id.clone(),
            r.service.clone(),
            r.version.clone(),
            r.state.to_string(),
            r.port.to_string(),
            r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            r.restarts.to_string(),
            if r.in_traffic { "yes" } else { "no" }.to_string(),
        ]);
    }
    print!("{}", table.render());
    for line in replica_diagnosis(&status.replicas) {
        println!("{line}");
    }
}

/// Requests per second, 5xx and latency per service and version, as the proxy saw them.
fn traffic_table(traffic: &ferry_core::api::TrafficStatus) -> String {
    let window = if traffic.since_proxy_start {
        format!("since the proxy started {:.0}s ago", traffic.window_s)
    } else {
        format!("last {:.0}s", traffic.window_s)
    };
    let mut out = format!("  traffic   {window}\n");
    let mut table = Table::new(&[
        "SERVICE", "VERSION", "REQUESTS", "REQ/S", "5XX", "P50", "P95", "P99",
    ])
    .indent(4);
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |ms| format!("{ms:.1}ms"));
    for v in &traffic.versions {
        table.row(vec![
            v.service.clone(),
            v.version.clone(),
            v.requests.to_string(),
            format!("{:.1}", v.rate_per_s),
            format!("{:.1}% ({})", v.error_rate * 100.0, v.errors_5xx),
            ms(v.p50_ms),
            ms(v.p95_ms),
            ms(v.p99_ms),
        ]);
    }
    out.push_str(&table.render());
    out
}

/// Why replicas are not well, under the table: the last exit with the last lines of output,
/// the latest failing health check.
fn replica_diagnosis(replicas: &[ferry_core::api::ReplicaView]) -> Vec<String> {
    let mut lines = Vec::new();
    for r in replicas {
        let short = r.id.rsplit('.').next().unwrap_or(&r.id);
        if let Some(exit) = &r.last_exit {
            lines.push(format!("    {short} last exit: {exit}"));
            lines.extend(r.last_output.iter().map(|l| format!("      | {l}")));
        }
        if let Some(check) = &r.last_health_check {
            lines.push(format!("    {short} last health check: {check}"));
        }
    }
    lines
}

pub async fn history(
    client: &Client,
    app: &str,
    env: &str,
    limit: u32,
    format: Format,
) -> anyhow::Result<()> {
    let query = [("limit", limit.to_string())];
    let deployments = client.call(e::History, &[app, env], &query, &()).await?;
    if format == Format::Json {
        return print_json(&deployments);
    }
    if deployments.is_empty() {
        println!("no deployments of {app} to {env} yet");
        return Ok(());
    }
    let now = now_ms();
    let mut table = Table::new(&[
        "ID", "VERSION", "KIND", "STATE", "STARTED", "DURATION", "BY", "REASON",
    ]);
    for d in &deployments {
        let duration = match d.finished_at_ms {
            Some(end) => duration_ms(end - d.created_at_ms),
            None => format!("{} so far", duration_ms(now - d.created_at_ms)),
        };
        table.row(vec![
            format!("#{}", d.id),
            d.version.clone(),
            d.kind.to_string(),
            d.state.to_string(),
            age(d.created_at_ms, now),
            duration,
            d.requested_by.clone(),
            d.reason.clone().unwrap_or_default(),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

pub async fn logs(
    client: &Client,
    app: &str,
    env: &str,
    service: Option<&str>,
    tail: Option<u32>,
    follow: bool,
) -> anyhow::Result<()> {
    let mut query = vec![("follow", follow.to_string())];
    if let Some(service) = service {
        query.push(("service", service.to_string()));
    }
    if let Some(tail) = tail {
        query.push(("tail", tail.to_string()));
    }
    let resp = client.open(e::Logs, &[app, env], &query).await?;
    let mut stream = resp.bytes_stream();
    let mut stdout = std::io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| client.transport_error(&e))?;
        if stdout
            .write_all(&chunk)
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // stdout closed (e.g. piped into `head`): stop quietly.
            return Ok(());
        }
    }
    Ok(())
}

pub async fn apps(client: &Client, format: Format) -> anyhow::Result<()> {
    let apps = client.call(e::AppsList, &[], &[], &()).await?;
    if format == Format::Json {
        return print_json(&apps);
    }
    if apps.is_empty() {
        println!("no apps yet: `ferry apply -f ferry.yaml` adds one");
        return Ok(());
    }
    let now = now_ms();
    let mut table = Table::new(&["APP", "REVISION", "SERVICES", "ENVIRONMENTS", "UPDATED"]);
    for a in &apps {
        table.row(vec![
            a.name.clone(),
            a.revision.to_string(),
            a.services.join(","),
            a.environments.join(","),
            age(a.updated_at_ms, now),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

pub async fn deployment(client: &Client, id: i64, format: Format) -> anyhow::Result<()> {
    let detail = client
        .call(e::DeploymentsGet, &[&id.to_string()], &[], &())
        .await?;
    // hooks:
    let hook_runs = super::hooks::runs(client, id).await.unwrap_or_default();
    if format == Format::Json {
        let mut value = serde_json::to_value(&detail)?;
        if let Some(object) = value.as_object_mut() {
            object.insert("hooks".into(), serde_json::to_value(&hook_runs)?);
        }
        return print_json(&value);
    }
    let d = &detail.deployment;
    let now = now_ms();
    println!("{}", wait::headline(d));
    println!("  state      {}", d.state);
    if let Some(reason) = &d.reason {
        println!("  reason     {reason}");
    }
    println!(
        "  requested  by {}, {}",
        d.requested_by,
        age(d.created_at_ms, now)
    );
    println!("  started    {}", timestamp(d.created_at_ms));
    match d.finished_at_ms {
        Some(end) => println!(
            "  finished   {} (took {})",
            timestamp(end),
            duration_ms(end - d.created_at_ms)
        ),
        None => println!("  running    for {}", duration_ms(now - d.created_at_ms)),
    }
    println!();
    println!("timeline (UTC)");
    if detail.events.is_empty() {
        println!("  (no events yet)");
    }
    for event in &detail.events {
        println!("{}", event_line(event));
    }
    super::hooks::print_runs(&hook_runs);
    Ok(())
}

pub async fn teardown(client: &Client, yes: bool) -> anyhow::Result<()> {
    if !yes {
        return Err(Failure::new(
            exit::INVALID,
            "teardown stops every replica, the proxy and the server: traffic to every environment stops",
        )
        .with_details(vec!["run `ferry teardown --yes` to confirm".into()])
        .into());
    }
    client
        .call_within(e::Teardown, &[], &[], &Empty {}, Duration::from_secs(120))
        .await?;
    println!(
        "stopped every replica and the proxy; the Ferry server at {} shuts down too",
        client.base_url()
    );
    Ok(())
}
