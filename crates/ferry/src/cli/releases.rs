//! `ferry release create|show`, `ferry releases`, the release flags of `ferry deploy`, and
//! `ferry promote --from --to`.

use clap::{Args, Subcommand};
use ferry_core::api::{PromotionRequest, ReleaseRequest, ReleaseView};
use ferry_core::endpoint as e;
use ferry_core::release::{self, ReleaseData};

use super::client::Client;
use super::commands::finish_request;
use super::output::{Table, age, now_ms, print_json, timestamp};
use super::{Failure, Format, OutputArg, WaitArgs, exit};

/// What a release carries besides its version (`release create`, `deploy`).
#[derive(Debug, Clone, Default, Args)]
pub struct ReleaseFlags {
    /// Commit the version was built from (7–40 hex characters).
    #[arg(long, value_name = "SHA")]
    pub commit: Option<String>,
    /// Artifact of a service, SERVICE=REF (repeatable); the service must be in the manifest.
    #[arg(long = "artifact", value_name = "SERVICE=REF")]
    pub artifacts: Vec<String>,
    /// Release notes.
    #[arg(long, value_name = "TEXT")]
    pub notes: Option<String>,
    /// When the commit was made, RFC 3339 with an offset (e.g. from
    /// `git show -s --format=%cI`); DORA's lead time for changes starts there.
    #[arg(long, value_name = "RFC3339")]
    pub commit_time: Option<String>,
}

impl ReleaseFlags {
    /// The flags as release data (bad `SERVICE=REF` → exit 2).
    pub fn data(&self) -> anyhow::Result<ReleaseData> {
        let mut artifacts = std::collections::BTreeMap::new();
        for text in &self.artifacts {
            let (service, reference) = release::parse_artifact(text)
                .map_err(|e| Failure::new(exit::INVALID, e.to_string()))?;
            if artifacts.insert(service.clone(), reference).is_some() {
                return Err(Failure::new(
                    exit::INVALID,
                    format!("--artifact {service}=… is given twice"),
                )
                .into());
            }
        }
        Ok(ReleaseData {
            commit: self.commit.clone(),
            artifacts,
            notes: self.notes.clone(),
            commit_time: self.commit_time.clone(),
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record an immutable release: creating it again with the same data is a no-op, with
    /// different data a conflict (exit 7). The version must be a semantic version.
    Create {
        /// App name.
        app: String,
        /// Semantic version, e.g. 1.4.2 or 1.4.2-rc.1.
        #[arg(long, value_name = "VERSION")]
        version: String,
        #[command(flatten)]
        flags: ReleaseFlags,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Show one release: commit, notes, artifacts, and its deployments per environment.
    Show {
        /// App name.
        app: String,
        /// Version.
        version: String,
        #[command(flatten)]
        out: OutputArg,
    },
}

pub async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Create {
            app,
            version,
            flags,
            out,
        } => {
            if flags.commit.is_none() {
                return Err(Failure::new(
                    exit::INVALID,
                    "`ferry release create` needs --commit SHA (the commit the version was built from)",
                )
                .into());
            }
            let request = ReleaseRequest {
                version,
                data: flags.data()?,
            };
            let created = client
                .call(e::ReleasesCreate, &[&app], &[], &request)
                .await?;
            if out.output == Format::Json {
                return print_json(&created);
            }
            let r = &created.release;
            let commit = r
                .commit
                .as_deref()
                .map(release::short_commit)
                .unwrap_or("-");
            match created.outcome.as_str() {
                "exists" => println!(
                    "release {} {} already exists with the same data (commit {commit}); nothing changed",
                    r.app, r.version
                ),
                "completed" => println!(
                    "release {} {} (deployed before without release data) now records commit {commit}",
                    r.app, r.version
                ),
                _ => println!("release {} {} created (commit {commit})", r.app, r.version),
            }
            Ok(())
        }
        Command::Show { app, version, out } => {
            let r = client
                .call(e::ReleasesGet, &[&app, &version], &[], &())
                .await?;
            if out.output == Format::Json {
                return print_json(&r);
            }
            print_release(&r);
            Ok(())
        }
    }
}

fn created_line(r: &ReleaseView, now: i64) -> String {
    format!(
        "{} ({}) by {}",
        timestamp(r.created_at_ms),
        age(r.created_at_ms, now),
        r.created_by.as_deref().unwrap_or("-")
    )
}

fn print_release(r: &ReleaseView) {
    let now = now_ms();
    println!("{} {}", r.app, r.version);
    println!("  commit     {}", r.commit.as_deref().unwrap_or("-"));
    if let Some(at) = &r.commit_time {
        println!("  committed  {at}");
    }
    println!("  created    {}", created_line(r, now));
    if r.artifacts.is_empty() {
        println!("  artifacts  -");
    } else {
        println!("  artifacts");
        for (service, reference) in &r.artifacts {
            println!("    {service}  {reference}");
        }
    }
    match &r.notes {
        Some(notes) => {
            println!("  notes");
            for line in notes.lines() {
                println!("    {line}");
            }
        }
        None => println!("  notes      -"),
    }
    if r.environments.is_empty() {
        println!("  deployed   nowhere yet");
        return;
    }
    println!("  deployed");
    let mut table = Table::new(&["ENV", "STATUS", "TAG", "DEPLOYMENTS"]).indent(4);
    for e in &r.environments {
        table.row(vec![
            e.env.clone(),
            e.placement.as_str().to_string(),
            e.tag.clone().unwrap_or_else(|| "-".into()),
            e.deployments
                .iter()
                .map(|id| format!("#{id}"))
                .collect::<Vec<_>>()
                .join(" "),
        ]);
    }
    print!("{}", table.render());
}

/// `ferry releases APP`.
pub async fn list(client: &Client, app: &str, format: Format) -> anyhow::Result<()> {
    let releases = client.call(e::ReleasesList, &[app], &[], &()).await?;
    if format == Format::Json {
        return print_json(&releases);
    }
    if releases.is_empty() {
        println!("no releases of {app} yet: `ferry release create` or `ferry deploy` records one");
        return Ok(());
    }
    let now = now_ms();
    let mut table = Table::new(&["VERSION", "COMMIT", "CREATED", "BY", "DEPLOYED"]);
    for r in &releases {
        let deployed = if r.environments.is_empty() {
            "-".to_string()
        } else {
            r.environments
                .iter()
                .map(|e| match &e.tag {
                    Some(tag) => format!("{}: {} [{tag}]", e.env, e.placement.as_str()),
                    None => format!("{}: {}", e.env, e.placement.as_str()),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        table.row(vec![
            r.version.clone(),
            r.commit
                .as_deref()
                .map(release::short_commit)
                .unwrap_or("-")
                .to_string(),
            age(r.created_at_ms, now),
            r.created_by.clone().unwrap_or_else(|| "-".into()),
            deployed,
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

/// `ferry promote APP --from A --to B`.
pub async fn promote(
    client: &Client,
    app: &str,
    from: &str,
    to: &str,
    wait: WaitArgs,
    format: Format,
) -> anyhow::Result<()> {
    let dep = client
        .call(
            e::PromotionsCreate,
            &[app],
            &[],
            &PromotionRequest {
                from: from.to_string(),
                to: to.to_string(),
            },
        )
        .await?;
    if format == Format::Text {
        println!("promoting {app} {} from {from} to {to}", dep.version);
    }
    finish_request(client, dep, wait, format).await
}
