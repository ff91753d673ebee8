//! `ferry alerts [APP] [--env ENV]` (firing, pending and recently resolved alerts, then their
//! history), `ferry alerts silence APP --env ENV --alert NAME --for 2h --reason "…"`,
//! `ferry alerts silences [APP]` and `ferry alerts unsilence ID`.

use clap::{Args, Subcommand};
use ferry_core::alerts::{AlertStatus, AlertsAnswer, Silence, SilenceRequest};
use ferry_core::endpoint as e;

use super::client::Client;
use super::output::{Table, age, clock, now_ms, print_json, timestamp};
use super::{Format, OutputArg};

/// History lines printed under the alerts.
const HISTORY_LINES: usize = 20;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AlertsArgs {
    #[command(subcommand)]
    pub action: Option<AlertsAction>,
    /// Only this app (default: every app you may view).
    pub app: Option<String>,
    /// Only this environment (needs APP).
    #[arg(long)]
    pub env: Option<String>,
    #[command(flatten)]
    pub out: OutputArg,
}

#[derive(Debug, Subcommand)]
pub enum AlertsAction {
    /// Silence an alert in one environment for a while: no notification and no action
    /// (rollback, pause, promotion block) until it expires. Needs the global --reason and
    /// the rollback permission; audited.
    Silence {
        /// The app.
        app: String,
        /// The environment.
        #[arg(long)]
        env: String,
        /// The alert (its rule's name).
        #[arg(long)]
        alert: String,
        /// How long: `30m`, `2h`, `1d` (at most 30 days).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Silences in force.
    Silences {
        /// Only this app.
        app: Option<String>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Lift a silence before it expires (audited).
    Unsilence {
        /// The silence's id (`ferry alerts silences`).
        id: i64,
        #[command(flatten)]
        out: OutputArg,
    },
}

pub async fn run(client: &Client, args: AlertsArgs, reason: Option<&str>) -> anyhow::Result<()> {
    match args.action {
        None => {
            if args.env.is_some() && args.app.is_none() {
                anyhow::bail!("--env needs an app: `ferry alerts APP --env ENV`");
            }
            let mut query = Vec::new();
            if let Some(app) = args.app {
                query.push(("app", app));
            }
            if let Some(env) = args.env {
                query.push(("env", env));
            }
            let answer = client.call(e::AlertsList, &[], &query, &()).await?;
            if args.out.output == Format::Json {
                return print_json(&answer);
            }
            print!("{}", render(&answer, now_ms()));
            Ok(())
        }
        Some(AlertsAction::Silence {
            app,
            env,
            alert,
            duration,
            out,
        }) => {
            let reason = reason
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .ok_or_else(|| anyhow::anyhow!("a silence needs a reason: add --reason \"why\""))?;
            let request = SilenceRequest {
                alert,
                duration,
                reason: reason.to_string(),
            };
            let silence = client
                .call(e::SilencesCreate, &[&app, &env], &[], &request)
                .await?;
            if out.output == Format::Json {
                return print_json(&silence);
            }
            println!(
                "silence #{}: alert {} in {}/{} until {} ({})",
                silence.id,
                silence.alert,
                silence.app,
                silence.env,
                timestamp(silence.until_ms),
                silence.reason
            );
            Ok(())
        }
        Some(AlertsAction::Silences { app, out }) => {
            let silences = silences(client, app).await?;
            if out.output == Format::Json {
                return print_json(&silences);
            }
            if silences.is_empty() {
                println!("no silence in force");
                return Ok(());
            }
            let mut table = Table::new(&["ID", "APP/ENV", "ALERT", "UNTIL", "BY", "REASON"]);
            for s in &silences {
                table.row(vec![
                    format!("#{}", s.id),
                    format!("{}/{}", s.app, s.env),
                    s.alert.clone(),
                    timestamp(s.until_ms),
                    s.created_by.clone(),
                    s.reason.clone(),
                ]);
            }
            print!("{}", table.render());
            Ok(())
        }
        Some(AlertsAction::Unsilence { id, out }) => {
            let found = silences(client, None)
                .await?
                .into_iter()
                .find(|s| s.id == id)
                .ok_or_else(|| anyhow::anyhow!("no silence #{id} in force that you may see"))?;
            let id_text = id.to_string();
            let ended = client
                .call(
                    e::SilencesDelete,
                    &[&found.app, &found.env, &id_text],
                    &[],
                    &(),
                )
                .await?;
            if out.output == Format::Json {
                return print_json(&ended);
            }
            println!(
                "silence #{id} lifted: alert {} in {}/{} notifies and acts again",
                ended.alert, ended.app, ended.env
            );
            Ok(())
        }
    }
}

async fn silences(client: &Client, app: Option<String>) -> anyhow::Result<Vec<Silence>> {
    let query: Vec<(&str, String)> = app.map(|a| ("app", a)).into_iter().collect();
    client.call(e::SilencesList, &[], &query, &()).await
}

/// The alerts as a table, then the latest history lines.
fn render(answer: &AlertsAnswer, now: i64) -> String {
    let mut out = String::new();
    if answer.alerts.is_empty() {
        out.push_str("no alert is firing, pending or recently resolved\n");
    } else {
        let mut table = Table::new(&[
            "STATUS", "SEVERITY", "APP/ENV", "ALERT", "SERIES", "VALUE", "SINCE", "SUMMARY",
        ]);
        for a in &answer.alerts {
            let since = match a.status {
                AlertStatus::Firing => a.fired_at_ms.unwrap_or(a.active_since_ms),
                AlertStatus::Resolved => a.resolved_at_ms.unwrap_or(a.active_since_ms),
                _ => a.active_since_ms,
            };
            let series: Vec<String> = a
                .labels
                .iter()
                .filter(|(k, _)| !["alertname", "app", "env", "severity"].contains(&k.as_str()))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let status = match a.silenced_by {
                Some(id) => format!("{} (silenced #{id})", a.status),
                None => a.status.to_string(),
            };
            let value = match (&a.fired_value, a.status) {
                (Some(fired), AlertStatus::Firing) if *fired != a.value => {
                    format!("{} (fired at {fired})", a.value)
                }
                _ => a.value.clone(),
            };
            table.row(vec![
                status,
                a.severity.to_string(),
                format!("{}/{}", a.app, a.env),
                a.alert.clone(),
                series.join(","),
                value,
                age(since, now),
                a.annotations.get("summary").cloned().unwrap_or_default(),
            ]);
        }
        out.push_str(&table.render());
    }
    if !answer.history.is_empty() {
        out.push_str("\nhistory (newest first):\n");
        for e in answer.history.iter().take(HISTORY_LINES) {
            out.push_str(&format!(
                "  {}  {}/{}  {}  {}\n",
                clock(e.at_ms),
                e.app,
                e.env,
                e.alert,
                e.message
            ));
        }
    }
    out
}
