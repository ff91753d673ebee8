//! `ferry approve` and `ferry approvals`: decisions on deployments waiting at their gates.

use clap::Args;
use ferry_core::api::gates::{ApprovalStatus, ApproveRequest};
use ferry_core::endpoint as e;

use super::client::Client;
use super::output::print_json;
use super::{Format, OutputArg};

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The deployment awaiting approval.
    pub deployment: i64,
    /// Reject it instead (give the global --reason); the deployment ends `rejected`.
    #[arg(long)]
    pub reject: bool,
    /// Take back your own approval or rejection.
    #[arg(long, conflicts_with = "reject")]
    pub withdraw: bool,
    #[command(flatten)]
    pub out: OutputArg,
}

pub async fn approve(client: &Client, args: ApproveArgs) -> anyhow::Result<()> {
    let id = args.deployment.to_string();
    let status = if args.withdraw {
        client.call(e::ApproveWithdraw, &[&id], &[], &()).await?
    } else {
        // The reason travels in the X-Ferry-Reason header (the global --reason flag).
        let body = ApproveRequest {
            reject: args.reject,
            reason: None,
        };
        client.call(e::Approve, &[&id], &[], &body).await?
    };
    show(&status, args.out.output)
}

pub async fn approvals(client: &Client, deployment: i64, out: OutputArg) -> anyhow::Result<()> {
    let id = deployment.to_string();
    let status = client.call(e::Approvals, &[&id], &[], &()).await?;
    show(&status, out.output)
}

fn show(status: &ApprovalStatus, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(status);
    }
    let d = &status.deployment;
    println!(
        "deployment #{}: {} {} → {} ({}), requested by {}",
        d.id, d.app, d.version, d.env, d.state, d.requested_by
    );
    for a in &status.approvals {
        let verdict = if a.approved { "approved" } else { "rejected" };
        let reason = a
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        println!(
            "  {verdict} by {} ({}){reason}",
            a.approver,
            a.roles.join(", ")
        );
    }
    if let Some(rejected) = &status.rejected {
        println!("  {rejected}");
    } else if status.waiting_for.is_empty() {
        println!("  every approval it needs is in");
    } else {
        for line in &status.waiting_for {
            println!("  waiting for {line}");
        }
    }
    if !status.gates.is_empty() {
        print!("{}", super::gates::rows_table(&status.gates, 2));
    }
    Ok(())
}
