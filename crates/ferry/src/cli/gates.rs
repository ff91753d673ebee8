//! `ferry gates DEPLOYMENT` (every gate of a deployment with its state) and
//! `ferry gates override DEPLOYMENT --gate freeze --reason "…"`.

use clap::{Args, Subcommand};
use ferry_core::api::gates::{GatesStatus, OverrideRequest};
use ferry_core::endpoint as e;
use ferry_core::gates::GateRow;

use super::client::Client;
use super::output::{Table, print_json, timestamp};
use super::{Format, OutputArg};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct GatesArgs {
    #[command(subcommand)]
    pub action: Option<GatesAction>,
    /// The deployment whose gates to show.
    #[arg(required = true)]
    pub deployment: Option<i64>,
    #[command(flatten)]
    pub out: OutputArg,
}

#[derive(Debug, Subcommand)]
pub enum GatesAction {
    /// Lift a gate (only `freeze`) for one waiting deployment. Needs the override_freeze
    /// permission and the global --reason; recorded, audited and shown on the timeline.
    Override {
        /// The waiting deployment (pending, awaiting-approval or blocked).
        deployment: i64,
        /// The gate to lift: `freeze`.
        #[arg(long, value_name = "GATE")]
        gate: String,
        #[command(flatten)]
        out: OutputArg,
    },
}

pub async fn run(client: &Client, args: GatesArgs) -> anyhow::Result<()> {
    match (args.action, args.deployment) {
        (
            Some(GatesAction::Override {
                deployment,
                gate,
                out,
            }),
            _,
        ) => {
            let id = deployment.to_string();
            // The reason travels as X-Ferry-Reason (the global --reason flag).
            let body = OverrideRequest {
                gate: Some(gate),
                reason: None,
            };
            let status = client.call(e::GatesOverride, &[&id], &[], &body).await?;
            show(&status, out.output)
        }
        (None, Some(deployment)) => {
            let id = deployment.to_string();
            let status = client.call(e::Gates, &[&id], &[], &()).await?;
            show(&status, args.out.output)
        }
        (None, None) => Err(anyhow::anyhow!("name a deployment: `ferry gates ID`")),
    }
}

fn show(status: &GatesStatus, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(status);
    }
    let d = &status.deployment;
    println!(
        "deployment #{}: {} {} → {} ({}), gates {}",
        d.id, d.app, d.version, d.env, d.state, status.verdict
    );
    if let Some(at) = status.passed_at_ms {
        println!(
            "  passed its gates at {}; as they stood then:",
            timestamp(at)
        );
    }
    if status.gates.is_empty() {
        println!("  no gates configured");
    } else {
        print!("{}", rows_table(&status.gates, 0));
    }
    for o in &status.overrides {
        println!(
            "  {} overridden by {} at {}: {}",
            o.gate,
            o.by,
            timestamp(o.at_ms),
            o.reason
        );
    }
    Ok(())
}

/// The GATE / STATE / DETAIL table (shared with `ferry approvals` and `ferry status`).
pub fn rows_table(rows: &[GateRow], indent: usize) -> String {
    let mut table = Table::new(&["GATE", "STATE", "DETAIL"]).indent(indent);
    for r in rows {
        table.row(vec![r.gate.clone(), r.state.to_string(), r.detail.clone()]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};
    use super::*;

    fn parse(args: &[&str]) -> GatesArgs {
        match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Gates(args)) => args,
            other => panic!("{args:?} parsed as {other:?}"),
        }
    }

    #[test]
    fn gates_show_and_override_parse() {
        let shown = parse(&["ferry", "gates", "42", "-o", "json"]);
        assert_eq!(shown.deployment, Some(42));
        assert!(shown.action.is_none());
        assert_eq!(shown.out.output, Format::Json);
        let lifted = parse(&[
            "ferry", "gates", "override", "42", "--gate", "freeze", "--reason", "hotfix",
        ]);
        match lifted.action {
            Some(GatesAction::Override {
                deployment, gate, ..
            }) => {
                assert_eq!(deployment, 42);
                assert_eq!(gate, "freeze");
            }
            None => panic!("override"),
        }
        assert!(Cli::try_parse_from(["ferry", "gates"]).is_err());
        assert!(Cli::try_parse_from(["ferry", "gates", "override", "42"]).is_err());
    }

    #[test]
    fn the_table_has_one_line_per_gate() {
        let rows = vec![
            GateRow {
                gate: "freeze".into(),
                state: ferry_core::gates::GateState::Overridden,
                detail: "overridden by bob: hotfix".into(),
                key: String::new(),
            },
            GateRow {
                gate: "checks:ci".into(),
                state: ferry_core::gates::GateState::Failed,
                detail: "expected status 200, got 503".into(),
                key: String::new(),
            },
        ];
        let text = rows_table(&rows, 2);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].trim_start().starts_with("GATE"), "{text}");
        assert!(lines[1].contains("overridden by bob: hotfix"), "{text}");
        assert!(lines[2].contains("failed"), "{text}");
    }
}
