//! `ferry config` (effective variables per service, with their sources), `ferry config diff`
//! (two environments compared) and `ferry redeploy` (roll out a configuration change).
//! Secrets show only as `(secret)` with their version and fingerprint.

use clap::{Args, Subcommand};
use ferry_core::api::{RedeployAnswer, RedeployRequest};
use ferry_core::config::{self, EnvConfig, Source};
use ferry_core::endpoint as e;

use super::client::Client;
use super::commands::finish_request;
use super::output::{Table, print_json};
use super::{Format, OutputArg, WaitArgs};

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: Option<ConfigCommand>,
    /// App name.
    #[arg(required = true)]
    app: Option<String>,
    /// Environment.
    #[arg(long, value_name = "ENV", required = true)]
    env: Option<String>,
    /// Only this service.
    #[arg(long, value_name = "SERVICE")]
    service: Option<String>,
    #[command(flatten)]
    out: OutputArg,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Compare the effective configuration of two environments: variables set in only one,
    /// and different values (secrets: presence and version only).
    Diff {
        /// App name.
        app: String,
        /// First environment.
        left: String,
        /// Second environment.
        right: String,
        #[command(flatten)]
        out: OutputArg,
    },
}

#[derive(Debug, Args)]
pub struct RedeployArgs {
    /// App name.
    app: String,
    /// Environment.
    #[arg(long, value_name = "ENV")]
    env: String,
    /// Supersede a deployment of another version that has not ended yet (e.g. a promotion
    /// waiting for approval: its approvals and freeze override are lost).
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    wait: WaitArgs,
    #[command(flatten)]
    out: OutputArg,
}

async fn fetch(
    client: &Client,
    app: &str,
    env: &str,
    service: Option<&str>,
) -> anyhow::Result<EnvConfig> {
    let query: Vec<(&str, String)> = service
        .map(|s| ("service", s.to_string()))
        .into_iter()
        .collect();
    client.call(e::ConfigGet, &[app, env], &query, &()).await
}

pub async fn config(client: &Client, args: ConfigArgs) -> anyhow::Result<()> {
    if let Some(ConfigCommand::Diff {
        app,
        left,
        right,
        out,
    }) = args.command
    {
        return diff(client, &app, &left, &right, out.output).await;
    }
    let (Some(app), Some(env)) = (args.app, args.env) else {
        anyhow::bail!("usage: ferry config APP --env ENV");
    };
    let cfg = fetch(client, &app, &env, args.service.as_deref()).await?;
    if args.out.output == Format::Json {
        return print_json(&cfg);
    }
    println!(
        "{app}/{env} (version {})",
        cfg.version.as_deref().unwrap_or("none deployed yet")
    );
    for service in &cfg.services {
        println!();
        println!("service {}", service.service);
        let mut table = Table::new(&["NAME", "VALUE", "SOURCE"]).indent(2);
        for v in &service.vars {
            let source = match (&v.source, service.secrets.iter().find(|s| s.name == v.name)) {
                (Source::Secret, Some(s)) => format!("secret v{} ({})", s.version, s.fingerprint),
                (source, _) => source.to_string(),
            };
            table.row(vec![v.name.clone(), v.value.clone(), source]);
        }
        print!("{}", table.render());
        for e in &service.errors {
            println!("  error: {e}");
        }
        let stale: Vec<&str> = service
            .replicas
            .iter()
            .filter(|r| !r.up_to_date)
            .map(|r| r.id.as_str())
            .collect();
        if !stale.is_empty() {
            println!(
                "  {} of {} replica(s) run an older configuration; `ferry redeploy {app} --env {env}` replaces them",
                stale.len(),
                service.replicas.len()
            );
        }
    }
    println!();
    println!(
        "PORT is set per replica; precedence: app vars < service env < environment vars < secrets"
    );
    Ok(())
}

async fn diff(
    client: &Client,
    app: &str,
    left: &str,
    right: &str,
    format: Format,
) -> anyhow::Result<()> {
    let a = fetch(client, app, left, None).await?;
    let b = fetch(client, app, right, None).await?;
    let differences = config::diff(&a, &b);
    if format == Format::Json {
        return print_json(&differences);
    }
    if differences.is_empty() {
        println!("{app}: {left} and {right} have the same configuration (built-ins aside)");
        return Ok(());
    }
    let mut table = Table::new(&["SERVICE", "NAME", left, right]);
    let absent = || "-".to_string();
    for d in differences {
        table.row(vec![
            d.service,
            d.name,
            d.left.unwrap_or_else(absent),
            d.right.unwrap_or_else(absent),
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

/// Nothing changed: says so, exits 0, and no deployment exists.
pub async fn redeploy(client: &Client, args: RedeployArgs) -> anyhow::Result<()> {
    let answer = client
        .call(
            e::Redeploy,
            &[&args.app, &args.env],
            &[],
            &RedeployRequest { force: args.force },
        )
        .await?;
    match answer {
        RedeployAnswer::Started(dep) => {
            finish_request(client, dep, args.wait, args.out.output).await
        }
        RedeployAnswer::Unchanged(unchanged) => {
            if args.out.output == Format::Json {
                return print_json(&unchanged);
            }
            println!("{}", unchanged.message);
            Ok(())
        }
    }
}
