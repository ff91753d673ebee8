//! `ferry flags`: feature flags of an app environment — list, show, create, the switches
//! (enable, disable = kill switch, archive), rollout percentage, variants, client tokens
//! for SDKs, SDK metrics, and import/export in Unleash's client-features JSON.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use ferry_core::endpoint::{self as e, Empty};
use serde_json::{Value, json};

use super::client::Client;
use super::output::{Table, print_json, timestamp};
use super::{Failure, Format, OutputArg, exit};

#[derive(Debug, Args)]
pub struct Target {
    app: String,
    #[arg(long)]
    env: String,
}

#[derive(Debug, Args)]
pub struct FlagTarget {
    app: String,
    #[arg(long)]
    env: String,
    /// The flag's name.
    flag: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The environment's flags: on/off, rollout, strategies, variants.
    List {
        #[command(flatten)]
        at: Target,
        /// Archived flags too.
        #[arg(long)]
        archived: bool,
        #[command(flatten)]
        out: OutputArg,
    },
    /// A flag: its definition, its changes (who, before → after, why) and the SDKs' counts.
    Show {
        #[command(flatten)]
        at: FlagTarget,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Create a flag: off, on for everyone once enabled (or as --file defines it).
    Create {
        #[command(flatten)]
        at: FlagTarget,
        #[arg(long)]
        description: Option<String>,
        /// Enabled at once.
        #[arg(long)]
        enabled: bool,
        /// The whole definition, one flag in Unleash's format (JSON).
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Switch a flag on (also brings an archived flag back).
    Enable {
        #[command(flatten)]
        at: FlagTarget,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Switch a flag off for everyone: the kill switch.
    Disable {
        #[command(flatten)]
        at: FlagTarget,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Archive a flag: off and no longer served to SDKs (its history stays).
    Archive {
        #[command(flatten)]
        at: FlagTarget,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Set the gradual rollout percentage (0-100), or move it in steps judged by analysis
    /// (--guarded), back to 0% by itself when the analysis fails.
    Rollout {
        #[command(flatten)]
        at: FlagTarget,
        /// The percentage (with --guarded: where the steps end, default 100).
        #[arg(required_unless_present_any = ["guarded", "stop"])]
        percent: Option<u32>,
        /// What keeps a user in or out: default (userId, else sessionId, else random),
        /// userId, sessionId, random or any context field.
        #[arg(long)]
        stickiness: Option<String>,
        /// A guarded rollout: step by step, each step held --pause and until the analysis
        /// passes; a failed analysis sets the flag back to 0%.
        #[arg(long, conflicts_with = "stop")]
        guarded: bool,
        /// The steps of a guarded rollout (default 1,5,25,100, up to PERCENT).
        #[arg(
            long,
            value_delimiter = ',',
            requires = "guarded",
            value_name = "PERCENT,…"
        )]
        steps: Vec<u32>,
        /// The least time at each step (default 30s).
        #[arg(long, requires = "guarded", value_name = "DURATION")]
        pause: Option<String>,
        /// The analysis (YAML or JSON, the shape of a canary's `analysis:` block); default:
        /// the environment's canary analysis, else its error rate ≤ 1%.
        #[arg(long, requires = "guarded", value_name = "FILE")]
        analysis: Option<PathBuf>,
        /// Whose requests the proxy metrics judge: `flag` (default), those whose answer
        /// carried the flag on in a `Ferry-Flags` header; `environment`, all of its traffic.
        #[arg(long, requires = "guarded", value_parser = ["flag", "environment"])]
        judge: Option<String>,
        /// Stop the running guarded rollout (the flag stays where it is).
        #[arg(long)]
        stop: bool,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Set the variants: NAME or NAME=PERCENT (the rest is shared evenly); none removes them.
    Variants {
        #[command(flatten)]
        at: FlagTarget,
        /// e.g. blue=30 red
        #[arg(value_name = "NAME[=PERCENT]")]
        variants: Vec<String>,
        /// A variant's payload: NAME=TYPE:VALUE, TYPE one of string, json, csv, number.
        #[arg(long, value_name = "NAME=TYPE:VALUE")]
        payload: Vec<String>,
        #[arg(long)]
        stickiness: Option<String>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Client tokens for the SDK endpoints of one environment.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Yes/no/variant counts the SDKs reported, per flag and hour.
    Metrics {
        #[command(flatten)]
        at: Target,
        /// One flag only.
        flag: Option<String>,
        /// This many hours back (default 24).
        #[arg(long, default_value_t = 24)]
        hours: u32,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Create or replace flags from Unleash's client-features JSON (one revision).
    Import {
        #[command(flatten)]
        at: Target,
        file: PathBuf,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Write the environment's flags as Unleash's client-features JSON (stdout without FILE).
    Export {
        #[command(flatten)]
        at: Target,
        file: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// A new client token (shown once): it reads this environment's flags and posts
    /// metrics, nothing else.
    Create {
        #[command(flatten)]
        at: Target,
        #[arg(long, default_value = "sdk")]
        name: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// The environment's client tokens (never their values).
    List {
        #[command(flatten)]
        at: Target,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Revoke a client token.
    Revoke {
        #[command(flatten)]
        at: Target,
        id: i64,
    },
}

fn invalid(message: impl Into<String>) -> anyhow::Error {
    Failure::new(exit::INVALID, message).into()
}

fn read_json(path: &PathBuf) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("reading {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| invalid(format!("{}: not JSON: {e}", path.display())))
}

/// `blue=30` → ("blue", Some(30.0)); `red` → ("red", None).
fn variant_arg(text: &str) -> anyhow::Result<(String, Option<f64>)> {
    match text.split_once('=') {
        None => Ok((text.to_string(), None)),
        Some((name, pct)) => {
            let pct: f64 = pct
                .trim()
                .trim_end_matches('%')
                .parse()
                .map_err(|_| invalid(format!("{text}: NAME=PERCENT, e.g. blue=30")))?;
            Ok((name.to_string(), Some(pct)))
        }
    }
}

/// `blue=json:{"a":1}` → ("blue", {type, value}).
fn payload_arg(text: &str) -> anyhow::Result<(String, Value)> {
    let (name, rest) = text
        .split_once('=')
        .ok_or_else(|| invalid(format!("{text}: NAME=TYPE:VALUE, e.g. blue=string:dark")))?;
    let (kind, value) = rest
        .split_once(':')
        .ok_or_else(|| invalid(format!("{text}: NAME=TYPE:VALUE, e.g. blue=string:dark")))?;
    Ok((name.to_string(), json!({"type": kind, "value": value})))
}

impl FlagTarget {
    /// The path parameters of an endpoint on the flag (`{app}`, `{env}`, `{flag}`).
    fn flag_params(&self) -> [&str; 3] {
        [&self.app, &self.env, &self.flag]
    }

    /// The path parameters of an endpoint on the flag's environment (`{app}`, `{env}`).
    fn env_params(&self) -> [&str; 2] {
        [&self.app, &self.env]
    }
}

impl Target {
    /// The path parameters of an endpoint on the environment (`{app}`, `{env}`).
    fn env_params(&self) -> [&str; 2] {
        [&self.app, &self.env]
    }
}

/// One line for a changed flag, or its JSON.
fn changed(answer: &Value, format: Format, at: &FlagTarget, what: &str) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(answer);
    }
    let s = &answer["summary"];
    println!(
        "flag {} of {}/{} {what}: {}, rollout {}%{} (revision {})",
        at.flag,
        at.app,
        at.env,
        if s["enabled"] == true { "on" } else { "off" },
        s["rollout"],
        if s["archived"] == true {
            ", archived"
        } else {
            ""
        },
        answer["revision"]
    );
    Ok(())
}

/// The steps of a guarded rollout: as given, or the default ones below `percent`, then it.
fn guarded_steps(steps: Vec<u32>, percent: Option<u32>) -> anyhow::Result<Vec<u32>> {
    if !steps.is_empty() {
        if let Some(p) = percent
            && steps.last() != Some(&p)
        {
            return Err(invalid(format!(
                "{p}: the last of --steps is where the rollout ends; give one or the other"
            )));
        }
        return Ok(steps);
    }
    let end = percent.unwrap_or(100);
    if end == 0 {
        return Err(invalid(
            "a guarded rollout goes up: give a percentage from 1 to 100",
        ));
    }
    let mut out: Vec<u32> = ferry_core::flags::guard::DEFAULT_STEPS
        .into_iter()
        .filter(|s| *s < end)
        .collect();
    out.push(end);
    Ok(out)
}

/// `guarded rollout of checkout in shop/prod: running, step 2/4 at 5% (1% → 5% → …)`.
fn guarded_text(g: &Value) -> String {
    let steps: Vec<String> = g["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| format!("{p}%"))
        .collect();
    let mut line = format!(
        "{}, step {}/{} at {}% ({}), pause {}, started by {}",
        g["state"].as_str().unwrap_or("?"),
        g["step"],
        steps.len(),
        g["percent"],
        steps.join(" → "),
        g["pause"].as_str().unwrap_or("?"),
        g["started_by"].as_str().unwrap_or("?"),
    );
    line.push_str(match g["judge"].as_str() {
        Some("environment") => "\n  judged on: the environment's whole traffic",
        _ => "\n  judged on: the requests that carried the flag (Ferry-Flags header)",
    });
    if let Some(reason) = g["reason"].as_str() {
        line.push_str(&format!("\n  why: {reason}"));
    }
    for m in g["measurements"].as_array().into_iter().flatten() {
        line.push_str(&format!(
            "\n  {} {} (sample {}): {}",
            m["metric"].as_str().unwrap_or("?"),
            m["verdict"].as_str().unwrap_or("?"),
            m["sample_size"],
            m["reason"].as_str().unwrap_or("")
        ));
    }
    line
}

fn guarded_line(answer: &Value, format: Format, at: &FlagTarget) -> anyhow::Result<()> {
    if format == Format::Json {
        return print_json(answer);
    }
    println!(
        "guarded rollout of {} in {}/{}: {}",
        at.flag,
        at.app,
        at.env,
        guarded_text(&answer["guarded_rollout"])
    );
    Ok(())
}

fn names(v: &Value) -> String {
    let list: Vec<&str> = v
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if list.is_empty() {
        "-".into()
    } else {
        list.join(",")
    }
}

fn metrics_table(rows: &Value) -> String {
    let mut table = Table::new(&["FLAG", "HOUR", "YES", "NO", "VARIANTS"]);
    for r in rows.as_array().into_iter().flatten() {
        let variants = r["variants"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        table.row(vec![
            r["flag"].as_str().unwrap_or_default().to_string(),
            timestamp(r["bucket_ms"].as_i64().unwrap_or_default()),
            r["yes"].to_string(),
            r["no"].to_string(),
            variants,
        ]);
    }
    table.render()
}

pub async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::List { at, archived, out } => {
            let query = [("archived", archived.to_string())];
            let answer = client
                .call(e::FlagsList, &at.env_params(), &query, &())
                .await?;
            if out.output == Format::Json {
                return print_json(&answer);
            }
            let flags = answer["flags"].as_array().cloned().unwrap_or_default();
            if flags.is_empty() {
                println!("{}/{} has no flags", at.app, at.env);
                return Ok(());
            }
            let mut table = Table::new(&[
                "FLAG",
                "STATE",
                "ROLLOUT",
                "STRATEGIES",
                "VARIANTS",
                "UPDATED",
                "BY",
            ]);
            for f in flags {
                let state = match (f["archived"] == true, f["enabled"] == true) {
                    (true, _) => "archived",
                    (false, true) => "on",
                    (false, false) => "off",
                };
                table.row(vec![
                    f["name"].as_str().unwrap_or_default().to_string(),
                    state.to_string(),
                    format!("{}%", f["rollout"]),
                    names(&f["strategies"]),
                    names(&f["variants"]),
                    timestamp(f["updated_at_ms"].as_i64().unwrap_or_default()),
                    f["updated_by"].as_str().unwrap_or_default().to_string(),
                ]);
            }
            print!("{}", table.render());
            println!("revision {}", answer["revision"]);
            Ok(())
        }
        Command::Show { at, out } => {
            let answer = client
                .call(e::FlagsGet, &at.flag_params(), &[], &())
                .await?;
            if out.output == Format::Json {
                return print_json(&answer);
            }
            let s = &answer["summary"];
            println!(
                "flag {} of {}/{}: {}{}, rollout {}%",
                at.flag,
                at.app,
                at.env,
                if s["enabled"] == true { "on" } else { "off" },
                if s["archived"] == true {
                    " (archived)"
                } else {
                    ""
                },
                s["rollout"]
            );
            if answer["guarded_rollout"].is_object() {
                println!(
                    "guarded rollout: {}",
                    guarded_text(&answer["guarded_rollout"])
                );
            }
            println!(
                "definition:\n{}",
                serde_json::to_string_pretty(&answer["feature"])?
            );
            println!("changes (newest first):");
            let mut table = Table::new(&["REVISION", "AT", "BY", "ACTION", "REASON"]).indent(2);
            for c in answer["changes"].as_array().into_iter().flatten() {
                table.row(vec![
                    c["revision"].to_string(),
                    timestamp(c["at_ms"].as_i64().unwrap_or_default()),
                    c["actor"].as_str().unwrap_or_default().to_string(),
                    c["action"].as_str().unwrap_or_default().to_string(),
                    c["reason"].as_str().unwrap_or("-").to_string(),
                ]);
            }
            print!("{}", table.render());
            if answer["metrics"].as_array().is_some_and(|m| !m.is_empty()) {
                println!("SDK counts (last 24 hours):");
                print!("{}", metrics_table(&answer["metrics"]));
            }
            Ok(())
        }
        Command::Create {
            at,
            description,
            enabled,
            file,
            out,
        } => {
            let feature = file.as_ref().map(read_json).transpose()?;
            let body = json!({
                "name": at.flag,
                "description": description,
                "enabled": enabled,
                "feature": feature,
            });
            let answer = client
                .call(e::FlagsCreate, &at.env_params(), &[], &body)
                .await?;
            changed(&answer, out.output, &at, "created")
        }
        Command::Enable { at, out } => {
            let answer = client
                .call(e::FlagsEnable, &at.flag_params(), &[], &Empty {})
                .await?;
            changed(&answer, out.output, &at, "enabled")
        }
        Command::Disable { at, out } => {
            let answer = client
                .call(e::FlagsDisable, &at.flag_params(), &[], &Empty {})
                .await?;
            changed(&answer, out.output, &at, "disabled")
        }
        Command::Archive { at, out } => {
            let answer = client
                .call(e::FlagsArchive, &at.flag_params(), &[], &Empty {})
                .await?;
            changed(&answer, out.output, &at, "archived")
        }
        Command::Rollout {
            at,
            percent,
            stickiness,
            guarded,
            steps,
            pause,
            analysis,
            judge,
            stop,
            out,
        } => {
            if let Some(p) = percent.filter(|p| *p > 100) {
                return Err(invalid(format!("{p}: a percentage from 0 to 100")));
            }
            if stop {
                let answer = client
                    .call(e::FlagsGuardedRolloutStop, &at.flag_params(), &[], &())
                    .await?;
                return guarded_line(&answer, out.output, &at);
            }
            if !guarded {
                let body = json!({"percent": percent, "stickiness": stickiness});
                let answer = client
                    .call(e::FlagsRollout, &at.flag_params(), &[], &body)
                    .await?;
                return changed(&answer, out.output, &at, "rolled out");
            }
            let steps = guarded_steps(steps, percent)?;
            let analysis = analysis
                .map(|path| {
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| invalid(format!("reading {}: {e}", path.display())))?;
                    ferry_core::flags::guard::parse_analysis(&text)
                        .map_err(|e| invalid(format!("{}: {e}", path.display())))
                })
                .transpose()?;
            let body = json!({
                "steps": steps,
                "pause": pause,
                "analysis": analysis,
                "stickiness": stickiness,
                "judge": judge,
            });
            let answer = client
                .call(e::FlagsGuardedRolloutStart, &at.flag_params(), &[], &body)
                .await?;
            guarded_line(&answer, out.output, &at)
        }
        Command::Variants {
            at,
            variants,
            payload,
            stickiness,
            out,
        } => {
            let payloads = payload
                .iter()
                .map(|p| payload_arg(p))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let mut list = Vec::new();
            for v in &variants {
                let (name, percent) = variant_arg(v)?;
                let payload = payloads
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, p)| p.clone());
                list.push(json!({"name": name, "percent": percent, "payload": payload}));
            }
            if let Some((name, _)) = payloads
                .iter()
                .find(|(n, _)| !list.iter().any(|v| v["name"] == n.as_str()))
            {
                return Err(invalid(format!("--payload {name}=…: no variant {name}")));
            }
            let body = json!({"variants": list, "stickiness": stickiness});
            let answer = client
                .call(e::FlagsVariants, &at.flag_params(), &[], &body)
                .await?;
            changed(&answer, out.output, &at, "variants set")
        }
        Command::Token(TokenCommand::Create { at, name, out }) => {
            let body = json!({"name": name});
            let answer = client
                .call(e::FlagsTokensCreate, &at.env_params(), &[], &body)
                .await?;
            if out.output == Format::Json {
                return print_json(&answer);
            }
            println!("{}", answer["token"].as_str().unwrap_or_default());
            eprintln!(
                "client token {} for the SDKs of {}/{} (shown once): Unleash SDKs at {}/api, OpenFeature OFREP at {}",
                answer["id"],
                at.app,
                at.env,
                client.base_url().trim_end_matches('/'),
                client.base_url().trim_end_matches('/'),
            );
            Ok(())
        }
        Command::Token(TokenCommand::List { at, out }) => {
            let answer = client
                .call(e::FlagsTokensList, &at.env_params(), &[], &())
                .await?;
            if out.output == Format::Json {
                return print_json(&answer);
            }
            let mut table = Table::new(&["ID", "NAME", "CREATED", "BY"]);
            for t in answer["tokens"].as_array().into_iter().flatten() {
                table.row(vec![
                    t["id"].to_string(),
                    t["name"].as_str().unwrap_or_default().to_string(),
                    timestamp(t["created_at_ms"].as_i64().unwrap_or_default()),
                    t["created_by"].as_str().unwrap_or_default().to_string(),
                ]);
            }
            print!("{}", table.render());
            Ok(())
        }
        Command::Token(TokenCommand::Revoke { at, id }) => {
            let id = id.to_string();
            let [app, env] = at.env_params();
            client
                .call(e::FlagsTokensDelete, &[app, env, &id], &[], &())
                .await?;
            println!("client token {id} of {}/{} revoked", at.app, at.env);
            Ok(())
        }
        Command::Metrics {
            at,
            flag,
            hours,
            out,
        } => {
            let mut query = vec![("hours", hours.to_string())];
            if let Some(flag) = flag {
                query.push(("flag", flag));
            }
            let answer = client
                .call(e::FlagsMetrics, &at.env_params(), &query, &())
                .await?;
            if out.output == Format::Json {
                return print_json(&answer);
            }
            print!("{}", metrics_table(&answer["metrics"]));
            Ok(())
        }
        Command::Import { at, file, out } => {
            let doc = read_json(&file)?;
            let answer = client
                .call(e::FlagsImport, &at.env_params(), &[], &doc)
                .await?;
            if out.output == Format::Json {
                return print_json(&answer);
            }
            println!(
                "imported {} flag(s) into {}/{} ({} new), revision {}",
                answer["imported"], at.app, at.env, answer["created"], answer["revision"]
            );
            Ok(())
        }
        Command::Export { at, file } => {
            let doc = client
                .call(e::FlagsExport, &at.env_params(), &[], &())
                .await?;
            let text = serde_json::to_string_pretty(&doc)? + "\n";
            match file {
                Some(path) if path.as_os_str() != "-" => {
                    std::fs::write(&path, text)
                        .map_err(|e| invalid(format!("writing {}: {e}", path.display())))?;
                    eprintln!(
                        "{} flag(s) of {}/{} written to {}",
                        doc["features"].as_array().map_or(0, Vec::len),
                        at.app,
                        at.env,
                        path.display()
                    );
                }
                _ => print!("{text}"),
            }
            Ok(())
        }
    }
}
