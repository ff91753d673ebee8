//! Steering a canary or blue/green rollout (`promote`, `pause`, `resume`, `abort`,
//! `retry`) and following an environment live (`status --watch`, fed by server-sent events).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use ferry_core::api::{DeploymentView, EnvStatus, EventView, PromoteRequest, RolloutView};
use ferry_core::endpoint::{self as e, Empty};
use ferry_core::model::{DeploymentState, EventKind, ReplicaState};
use futures_util::StreamExt;
use tokio::time::Instant;

use super::client::{Client, LONG_POLL_MARGIN};
use super::commands::finish_request;
use super::output::{clock, duration_ms, event_line, listen_url, now_ms, print_json};
use super::{Failure, Format, WaitArgs, exit, wait};

/// A command that steers the rollout in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steer {
    Promote { full: bool },
    Pause,
    Resume,
}

impl Steer {
    fn verb(self) -> &'static str {
        match self {
            Steer::Promote { full: true } => "promote --full",
            Steer::Promote { full: false } => "promote",
            Steer::Pause => "pause",
            Steer::Resume => "resume",
        }
    }
}

/// How long `promote`/`pause`/`resume` wait to show what the controller did.
const APPLIED_WAIT: Duration = Duration::from_secs(3);

/// `ferry promote|pause|resume APP --env E`: queue the command, then show how the
/// controller applied it (its timeline lines) and where the rollout stands.
pub async fn steer(
    client: &Client,
    app: &str,
    env: &str,
    what: Steer,
    format: Format,
) -> anyhow::Result<()> {
    let at = [app, env];
    let dep: DeploymentView = match what {
        Steer::Promote { full } => {
            client
                .call(e::Promote, &at, &[], &PromoteRequest { full })
                .await?
        }
        Steer::Pause => client.call(e::Pause, &at, &[], &Empty {}).await?,
        Steer::Resume => client.call(e::Resume, &at, &[], &Empty {}).await?,
    };
    if format == Format::Json {
        return print_json(&dep);
    }
    println!("{}", wait::headline(&dep));
    let applied = applied_events(client, &dep).await;
    if applied.is_empty() {
        println!(
            "  {} requested; the controller applies it on its next pass (`ferry status {app} --env {env}` shows it)",
            what.verb()
        );
    }
    for event in &applied {
        println!("{}", event_line(event));
    }
    if let Ok(status) = env_status(client, app, env).await
        && let Some(rollout) = &status.rollout
    {
        println!("  now: {}", rollout.summary);
    }
    Ok(())
}

/// The timeline lines written after the request was recorded, up to the controller's
/// pass that applied the request (bounded by [`APPLIED_WAIT`]).
async fn applied_events(client: &Client, dep: &DeploymentView) -> Vec<EventView> {
    let id = dep.id.to_string();
    let Ok(detail) = client.call(e::DeploymentsGet, &[&id], &[], &()).await else {
        return Vec::new();
    };
    // The request itself is the last `request` line; start after it.
    let mut after = detail
        .events
        .iter()
        .rev()
        .find(|e| e.kind == EventKind::CommandRequested)
        .or(detail.events.last())
        .map(|e| e.seq)
        .unwrap_or(0);
    let deadline = Instant::now() + APPLIED_WAIT;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let query = [
            ("after", after.to_string()),
            ("wait_ms", remaining.as_millis().to_string()),
        ];
        let Ok(events) = client
            .call_within(
                e::DeploymentsEvents,
                &[&id],
                &query,
                &(),
                remaining + LONG_POLL_MARGIN,
            )
            .await
        else {
            break;
        };
        let mut done = false;
        for event in events {
            after = after.max(event.seq);
            // Applied, or the rollout moved on (replicas, traffic, the end) without it.
            done |= !matches!(event.kind, EventKind::State | EventKind::CommandRequested);
            seen.push(event);
        }
        if done {
            break;
        }
    }
    seen
}

/// `ferry abort APP --env E [--wait]`: all traffic back to the stable version now.
pub async fn abort(
    client: &Client,
    app: &str,
    env: &str,
    wait_args: WaitArgs,
    format: Format,
) -> anyhow::Result<()> {
    let dep = client.call(e::Abort, &[app, env], &[], &Empty {}).await?;
    let json = format == Format::Json;
    if !wait_args.wait {
        if json {
            return print_json(&dep);
        }
        println!("{}", wait::headline(&dep));
        match &dep.previous_version {
            Some(previous) if dep.state != DeploymentState::Aborted => println!(
                "aborting: all traffic back to {previous} now, {} being stopped; follow it with `ferry deployment {}`",
                dep.version, dep.id
            ),
            _ => println!("aborted: {}", dep.reason.as_deref().unwrap_or("by hand")),
        }
        return Ok(());
    }
    if !json {
        println!("{}", wait::headline(&dep));
    }
    let done = wait::follow_interruptible(client, &dep, wait_args.timeout.get(), !json).await?;
    if json {
        print_json(&done)?;
    }
    if done.state == DeploymentState::Aborted {
        if !json {
            let took = done
                .finished_at_ms
                .map(|end| format!(" in {}", duration_ms(end - done.created_at_ms)))
                .unwrap_or_default();
            let serving = done
                .previous_version
                .as_deref()
                .map(|v| format!("; {} is serving {v}", done.env))
                .unwrap_or_default();
            println!(
                "deployment #{} aborted{took}: {} {} stopped{serving}",
                done.id, done.app, done.version
            );
        }
        return Ok(());
    }
    wait::outcome(&done)
}

/// `ferry retry APP --env E [--wait]`: the aborted (or rolled-back) release again.
pub async fn retry(
    client: &Client,
    app: &str,
    env: &str,
    wait_args: WaitArgs,
    format: Format,
) -> anyhow::Result<()> {
    let dep = client.call(e::Retry, &[app, env], &[], &Empty {}).await?;
    finish_request(client, dep, wait_args, format).await
}

async fn env_status(client: &Client, app: &str, env: &str) -> anyhow::Result<EnvStatus> {
    let status = client
        .call(e::Status, &[app], &[("env", env.to_string())], &())
        .await?;
    status
        .environments
        .into_iter()
        .find(|e| e.env == env)
        .ok_or_else(|| {
            Failure::new(
                exit::NOT_FOUND,
                format!("app {app} has no environment {env:?}"),
            )
            .into()
        })
}

/// The rollout block of `ferry status`, one line per entry, indented by two spaces.
pub fn rollout_lines(r: &RolloutView) -> Vec<String> {
    let strategy = r.strategy.replace('_', "/");
    let mut lines = vec![format!(
        "  rollout   {strategy} #{}, stage {}/{}: {}",
        r.deployment_id, r.stage, r.stages, r.stage_name
    )];
    let new_weight = r.canary_weight.clamp(0.0, 100.0);
    let width = r.canary_version.len().max(r.stable_version.len());
    lines.push(format!(
        "            new     {:<width$}  {:>6}  {}",
        r.canary_version,
        percent(new_weight),
        bar(new_weight)
    ));
    lines.push(format!(
        "            stable  {:<width$}  {:>6}  {}",
        r.stable_version,
        percent(100.0 - new_weight),
        bar(100.0 - new_weight)
    ));
    if r.paused_by_hand {
        lines.push(
            "  paused    by hand (`ferry resume` continues; background analysis keeps watching)"
                .into(),
        );
    } else if r.paused {
        lines.push(
            "  paused    analysis could not judge (`ferry resume` measures again, `ferry \
             promote` goes on without a verdict, `ferry abort` rolls back)"
                .into(),
        );
    }
    if let Some(waiting) = &r.waiting_for {
        lines.push(format!("  waiting   {waiting}"));
    }
    if !r.analysis.is_empty() {
        let mut first = true;
        for line in &r.analysis {
            let label = if first {
                "  analysis  "
            } else {
                "            "
            };
            first = false;
            lines.push(format!("{label}{line}"));
        }
    }
    lines
}

/// `10%`, `12.5%`.
fn percent(value: f64) -> String {
    let rounded = (value * 100.0).round() / 100.0;
    if rounded.fract() == 0.0 {
        format!("{rounded:.0}%")
    } else {
        format!("{rounded}%")
    }
}

/// `[##........]` for a share in percent (20 cells).
fn bar(value: f64) -> String {
    const CELLS: f64 = 20.0;
    let filled = ((value / 100.0) * CELLS).round().clamp(0.0, CELLS) as usize;
    format!(
        "[{}{}]",
        "#".repeat(filled),
        ".".repeat(CELLS as usize - filled)
    )
}

/// A compact view of an environment for `status --watch`.
fn watch_block(status: &EnvStatus, events: &[EventView], now: i64) -> Vec<String> {
    let mut lines = vec![format!(
        "{}/{}  {}  (at {} UTC)",
        status.app,
        status.env,
        listen_url(&status.listen),
        clock(now)
    )];
    lines.extend(super::commands::summary_lines(status, now));
    lines.push(format!("  replicas  {}", replica_summary(status)));
    if !events.is_empty() {
        lines.push("  timeline (UTC)".into());
        lines.extend(events.iter().map(|e| format!("  {}", event_line(e))));
    }
    lines
}

/// `1.1.0: 1 healthy · 1.0.0: 2 healthy, 1 starting`.
fn replica_summary(status: &EnvStatus) -> String {
    let mut versions: Vec<(String, Vec<(ReplicaState, usize)>)> = Vec::new();
    for r in &status.replicas {
        let entry = match versions.iter_mut().position(|(v, _)| v == &r.version) {
            Some(i) => &mut versions[i].1,
            None => {
                versions.push((r.version.clone(), Vec::new()));
                let last = versions.len() - 1;
                &mut versions[last].1
            }
        };
        match entry.iter_mut().find(|(s, _)| *s == r.state) {
            Some((_, n)) => *n += 1,
            None => entry.push((r.state, 1)),
        }
    }
    if versions.is_empty() {
        return "none".into();
    }
    versions
        .iter()
        .map(|(version, states)| {
            let states: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
            format!("{version}: {}", states.join(", "))
        })
        .collect::<Vec<_>>()
        .join(" · ")
}

/// Server-sent events, parsed incrementally from a byte stream.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

/// One dispatched event: its `event:` name (default `message`) and its `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

impl SseParser {
    /// Feeds bytes; returns the events completed by them.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if let Some(event) = self.line_done(&String::from_utf8_lossy(&line)) {
                    out.push(event);
                }
            } else {
                self.line.push(b);
            }
        }
        out
    }

    fn line_done(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = self.event.take();
            if self.data.is_empty() {
                return None;
            }
            let data = std::mem::take(&mut self.data).join("\n");
            return Some(SseEvent {
                event: event.unwrap_or_else(|| "message".into()),
                data,
            });
        }
        if line.starts_with(':') {
            return None; // a comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "data" => self.data.push(value.to_string()),
            _ => {}
        }
        None
    }
}

/// How many timeline lines the live view shows.
const WATCH_EVENTS: usize = 8;

/// `ferry status APP --env E --watch`: redraw on every status event until the latest
/// deployment is terminal (exit code as `deploy --wait`), Ctrl-C, or `timeout`.
pub async fn watch(
    client: &Client,
    app: &str,
    env: &str,
    format: Format,
    timeout: Option<Duration>,
) -> anyhow::Result<()> {
    let deadline = timeout.map(|t| Instant::now() + t);
    let follow = async {
        let mut view = View::new(format);
        let mut lost_contact = false;
        loop {
            let resp = match client.open(e::Watch, &[app, env], &[]).await {
                Ok(resp) => resp,
                Err(err) if Failure::is_transient(&err) && view.drawn > 0 => {
                    if !lost_contact {
                        eprintln!(
                            "  (lost contact with Ferry at {}; reconnecting)",
                            client.base_url()
                        );
                        lost_contact = true;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(err) => return Err(err),
            };
            if lost_contact {
                eprintln!("  (reconnected to Ferry)");
                lost_contact = false;
            }
            let mut parser = SseParser::default();
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let Ok(chunk) = chunk else { break };
                for event in parser.push(&chunk) {
                    if event.event != "status" {
                        continue;
                    }
                    let status: EnvStatus = serde_json::from_str(&event.data).map_err(|e| {
                        Failure::new(
                            exit::ERROR,
                            format!("unexpected status event from {} ({e})", client.base_url()),
                        )
                    })?;
                    if let Some(done) = view.update(client, &status).await? {
                        return Ok(done);
                    }
                }
            }
            // The stream ended (server restarted?): reconnect.
            if !lost_contact {
                eprintln!(
                    "  (lost contact with Ferry at {}; reconnecting)",
                    client.base_url()
                );
                lost_contact = true;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    let limited = async {
        match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, follow).await {
                Ok(result) => result.map(Some),
                Err(_) => Err(Failure::new(
                    exit::TIMED_OUT,
                    format!("stopped watching {app}/{env} after the timeout"),
                )
                .into()),
            },
            None => follow.await.map(Some),
        }
    };
    let done: Option<DeploymentView> = tokio::select! {
        result = limited => result?,
        _ = tokio::signal::ctrl_c() => None,
    };
    match done {
        // -o json: the stream already went to stdout; only the exit code tells the end.
        Some(dep) if format == Format::Json && dep.state == DeploymentState::Succeeded => Ok(()),
        Some(dep) => wait::outcome(&dep),
        None => Ok(()),
    }
}

/// What `watch` has shown so far.
struct View {
    format: Format,
    tty: bool,
    drawn: u64,
    last_seq: Option<(i64, i64)>,
}

impl View {
    fn new(format: Format) -> View {
        View {
            format,
            tty: std::io::stdout().is_terminal(),
            drawn: 0,
            last_seq: None,
        }
    }

    /// Shows one status; returns the latest deployment once it is terminal.
    async fn update(
        &mut self,
        client: &Client,
        status: &EnvStatus,
    ) -> anyhow::Result<Option<DeploymentView>> {
        let latest = status.latest_deployment.clone();
        let done = latest.filter(|d| d.state.is_terminal());
        self.drawn += 1;
        if self.format == Format::Json {
            println!("{}", serde_json::to_string(status)?);
            let _ = std::io::stdout().flush();
            return Ok(done);
        }
        let events = match &status.latest_deployment {
            Some(dep) => client
                .call(e::DeploymentsGet, &[&dep.id.to_string()], &[], &())
                .await
                .map(|d| d.events)
                .unwrap_or_default(),
            None => Vec::new(),
        };
        let shown: Vec<EventView> = if self.tty {
            events[events.len().saturating_sub(WATCH_EVENTS)..].to_vec()
        } else {
            // One block per event: only the timeline lines not printed before.
            let id = status.latest_deployment.as_ref().map(|d| d.id).unwrap_or(0);
            let new: Vec<EventView> = events
                .iter()
                .filter(|e| match self.last_seq {
                    Some((last_id, seq)) if last_id == id => e.seq > seq,
                    _ => true,
                })
                .cloned()
                .collect();
            let start = new.len().saturating_sub(WATCH_EVENTS * 4);
            new[start..].to_vec()
        };
        if let (Some(dep), Some(last)) = (&status.latest_deployment, events.last()) {
            self.last_seq = Some((dep.id, last.seq));
        }
        let block = watch_block(status, &shown, now_ms());
        let mut stdout = std::io::stdout().lock();
        let mut text = String::new();
        if self.tty {
            // Home the cursor and clear the screen, then draw.
            text.push_str("\x1b[H\x1b[2J");
        } else if self.drawn > 1 {
            text.push('\n');
        }
        for line in block {
            text.push_str(&line);
            text.push('\n');
        }
        let _ = stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush());
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_sent_events_across_chunks() {
        let mut parser = SseParser::default();
        assert!(parser.push(b"event: sta").is_empty());
        assert!(parser.push(b"tus\ndata: {\"a\":").is_empty());
        let events = parser.push(b"1}\n\n:keep-alive\n\ndata: x\r\ndata: y\r\n\r\n");
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: "status".into(),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: "message".into(),
                    data: "x\ny".into()
                },
            ]
        );
    }

    fn rollout() -> RolloutView {
        RolloutView {
            deployment_id: 7,
            strategy: "canary".into(),
            stage: 3,
            stages: 9,
            stage_name: "step 2 pause".into(),
            canary_version: "1.1.0".into(),
            stable_version: "1.0.0".into(),
            canary_weight: 12.5,
            paused: false,
            paused_by_hand: false,
            waiting_for: Some("step 2 pause: waiting for `ferry promote`".into()),
            analysis: vec!["errors Pass: error rate 0 (0/120) ≤ max 0.05".into()],
            summary: "stage 3/9".into(),
        }
    }

    #[test]
    fn rollout_block_shows_versions_weights_and_why_it_waits() {
        let lines = rollout_lines(&rollout());
        assert_eq!(lines[0], "  rollout   canary #7, stage 3/9: step 2 pause");
        assert!(lines[1].contains("new     1.1.0   12.5%"), "{lines:#?}");
        assert!(lines[2].contains("stable  1.0.0   87.5%"), "{lines:#?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("  waiting   step 2 pause")),
            "{lines:#?}"
        );
        assert!(
            lines.iter().any(|l| l.contains("errors Pass")),
            "{lines:#?}"
        );
    }

    #[test]
    fn a_rollout_paused_by_its_analysis_says_paused_and_how_to_go_on() {
        let mut r = rollout();
        r.paused = true;
        r.waiting_for = Some("step 1 analysis at 5%: errors: inconclusive 13 times".into());
        let lines = rollout_lines(&r);
        let paused = lines
            .iter()
            .find(|l| l.starts_with("  paused    "))
            .expect("a paused line");
        assert!(
            paused.contains("analysis could not judge")
                && paused.contains("`ferry resume` measures again"),
            "{paused}"
        );
        r.paused_by_hand = true;
        let lines = rollout_lines(&r);
        assert!(
            lines.iter().any(|l| l.starts_with("  paused    by hand")),
            "{lines:#?}"
        );
    }

    #[test]
    fn bars_and_percentages() {
        assert_eq!(bar(10.0), "[##..................]");
        assert_eq!(bar(100.0), "[####################]");
        assert_eq!(percent(90.0), "90%");
        assert_eq!(percent(0.25), "0.25%");
    }
}
