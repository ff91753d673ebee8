//! `ferry logs APP --env E --hook NAME [--deployment ID]` and the hook runs shown by
//! `ferry deployment ID`.

use ferry_core::api::HookRunView;
use ferry_core::endpoint as e;

use super::client::Client;
use super::output::{duration_ms, print_json};
use super::{Failure, exit};

/// How many recent deployments `ferry logs --hook` looks through for the hook.
const LOOK_BACK: u32 = 50;

/// Prints every attempt of hook `name` (a header line per attempt, then its output): of
/// deployment `deployment`, or of the latest deployment of app/env that ran it.
pub async fn logs(
    client: &Client,
    app: &str,
    env: &str,
    name: &str,
    deployment: Option<i64>,
    json: bool,
) -> anyhow::Result<()> {
    let id = match deployment {
        Some(id) => id,
        None => latest_with_hook(client, app, env, name).await?,
    };
    let outputs = client
        .call(e::DeploymentsHookOutput, &[&id.to_string(), name], &[], &())
        .await?;
    if json {
        return print_json(&outputs);
    }
    for (i, o) in outputs.iter().enumerate() {
        if i > 0 {
            println!();
        }
        println!("{}", header(&o.run));
        print!("{}", o.output);
        if !o.output.is_empty() && !o.output.ends_with('\n') {
            println!();
        }
    }
    Ok(())
}

async fn latest_with_hook(
    client: &Client,
    app: &str,
    env: &str,
    name: &str,
) -> anyhow::Result<i64> {
    let deployments = client
        .call(
            e::History,
            &[app, env],
            &[("limit", LOOK_BACK.to_string())],
            &(),
        )
        .await?;
    for d in &deployments {
        let runs = runs(client, d.id).await?;
        if runs.iter().any(|r| r.hook == name) {
            return Ok(d.id);
        }
    }
    Err(Failure::new(
        exit::NOT_FOUND,
        format!("no recent deployment of {app}/{env} ran a hook named {name:?}"),
    )
    .into())
}

/// `=== hook smoke (post_deploy) attempt 2 of deployment #12: failed (exit 3), 1.2s ===`
fn header(run: &HookRunView) -> String {
    let took = run
        .duration_ms
        .map(|ms| format!(", {}", duration_ms(ms)))
        .unwrap_or_default();
    let exit = run
        .exit_code
        .map(|c| format!(" (exit {c})"))
        .unwrap_or_default();
    format!(
        "=== hook {} ({}) attempt {} of deployment #{}: {}{exit}{took} ===",
        run.hook, run.phase, run.attempt, run.deployment_id, run.state
    )
}

/// The hook runs of a deployment, for `ferry deployment ID` (empty when it ran none).
pub async fn runs(client: &Client, id: i64) -> anyhow::Result<Vec<HookRunView>> {
    client
        .call(e::DeploymentsHooks, &[&id.to_string()], &[], &())
        .await
}

/// Prints a `hooks` table under a deployment's details.
pub fn print_runs(runs: &[HookRunView]) {
    if runs.is_empty() {
        return;
    }
    println!();
    println!("hooks");
    let width = runs.iter().map(|r| r.hook.len()).max().unwrap_or(4).max(4);
    for r in runs {
        let took = r
            .duration_ms
            .map(duration_ms)
            .unwrap_or_else(|| "-".to_string());
        let migration = r
            .migration
            .as_deref()
            .map(|m| format!(" [{m} migration]"))
            .unwrap_or_default();
        println!(
            "  {:<width$}  {:<14}  #{:<2}  {:<11}  {:>8}  {}{migration}",
            r.hook,
            r.phase,
            r.attempt,
            r.state,
            took,
            r.summary.as_deref().unwrap_or("")
        );
    }
}
