//! Audit commands: query, export and verify the audit log; print a deployment's change
//! record.

use std::io::Write;

use clap::{Args, Subcommand, ValueEnum};
use ferry_core::duration::HumanDuration;
use ferry_core::endpoint as e;

use super::client::Client;
use super::output::{Table, now_ms, print_json, timestamp};
use super::{Failure, Format, OutputArg, exit};

/// The audit commands, flattened into the top-level `ferry` commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Query the audit log (newest --limit matching records, oldest first);
    /// `ferry audit export` writes JSON lines, `ferry audit verify` checks the hash chain.
    Audit(Box<AuditArgs>),
    /// Print the change record of a deployment: release, requester, approvals, analysis,
    /// audit trail and outcome (Markdown by default, for a change-management ticket).
    ChangeRecord {
        /// Deployment id (as shown by `ferry history`).
        id: i64,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value_t = RecordFormat::Markdown)]
        output: RecordFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RecordFormat {
    Markdown,
    Json,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    sub: Option<AuditSub>,
    #[command(flatten)]
    filters: Filters,
    /// Show at most this many records (the newest; default 100, at most 10000).
    #[arg(long, value_name = "N")]
    limit: Option<u32>,
    #[command(flatten)]
    out: OutputArg,
}

#[derive(Debug, Subcommand)]
enum AuditSub {
    /// Write every matching record you may see as JSON lines (oldest first) to stdout.
    Export {
        #[command(flatten)]
        filters: Filters,
        /// Stop after this many records.
        #[arg(long, value_name = "N")]
        limit: Option<u32>,
    },
    /// Check the hash chain and the newest signed checkpoint; exit 1 and say where the
    /// log was edited, cut or reordered.
    Verify {
        #[command(flatten)]
        out: OutputArg,
    },
    /// List the signed checkpoints (count, head hash, time, HMAC), newest first — copy
    /// them somewhere else to detect a truncated or rewritten log later.
    Checkpoints {
        /// How many.
        #[arg(long, default_value_t = 20, value_name = "N")]
        limit: u32,
        #[command(flatten)]
        out: OutputArg,
    },
}

#[derive(Debug, Clone, Args, Default)]
struct Filters {
    /// Only this actor: `user:alice`, `token:ci`, `anonymous` (a bare name means `user:NAME`).
    #[arg(long, value_name = "ACTOR")]
    actor: Option<String>,
    /// Only this app.
    #[arg(long, value_name = "APP")]
    app: Option<String>,
    /// Only this environment.
    #[arg(long, value_name = "ENV")]
    env: Option<String>,
    /// Only this action: login, deploy, rollback, users.create, tokens.create, …
    #[arg(long, value_name = "ACTION")]
    action: Option<String>,
    /// From this time on: a duration back from now (2h, 7d) or RFC 3339
    /// (2026-04-01T12:00:00Z).
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Before this time (same forms as --since).
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
}

impl Filters {
    fn query(&self, limit: Option<u32>) -> anyhow::Result<Vec<(&'static str, String)>> {
        let now = now_ms();
        let time = |flag: &str, text: &Option<String>| -> anyhow::Result<Option<String>> {
            text.as_deref()
                .map(|t| {
                    parse_time(t, now)
                        .map(|ms| ms.to_string())
                        .map_err(|e| Failure::new(exit::INVALID, format!("{flag}: {e}")).into())
                })
                .transpose()
        };
        let mut q = Vec::new();
        q.extend(self.actor.as_deref().map(|a| ("actor", actor_name(a))));
        q.extend(self.app.clone().map(|a| ("app", a)));
        q.extend(self.env.clone().map(|e| ("env", e)));
        q.extend(self.action.clone().map(|a| ("action", a)));
        q.extend(time("--since", &self.since)?.map(|t| ("since_ms", t)));
        q.extend(time("--until", &self.until)?.map(|t| ("until_ms", t)));
        q.extend(limit.map(|l| ("limit", l.to_string())));
        Ok(q)
    }
}

/// `alice` → `user:alice`; `token:ci`, `anonymous` and `system` as they are.
fn actor_name(actor: &str) -> String {
    let actor = actor.trim();
    if actor.contains(':') || matches!(actor, "anonymous" | "system") {
        actor.to_string()
    } else {
        format!("user:{actor}")
    }
}

/// A duration back from `now_ms` (`2h`) or an RFC 3339 time, as epoch milliseconds.
fn parse_time(text: &str, now_ms: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(d) = text.parse::<HumanDuration>() {
        let ms = i64::try_from(d.get().as_millis()).unwrap_or(i64::MAX);
        return Ok(now_ms.saturating_sub(ms));
    }
    parse_rfc3339(text).ok_or_else(|| {
        format!(
            "{text:?} is neither a duration (30m, 2h, 7d) nor an RFC 3339 time \
             (2026-04-01T12:00:00Z)"
        )
    })
}

/// `YYYY-MM-DD[(T| )HH:MM[:SS[.frac]]][Z|±HH:MM]` (no zone = UTC) → epoch milliseconds.
fn parse_rfc3339(text: &str) -> Option<i64> {
    let num = |s: &str| -> Option<i64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    let (date, rest) = if text.len() > 10 {
        (text.get(..10)?, text.get(10..)?)
    } else {
        (text, "")
    };
    let mut parts = date.split('-');
    let (y, m, d) = (
        num(parts.next()?)?,
        num(parts.next()?)?,
        num(parts.next()?)?,
    );
    if parts.next().is_some() || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let mut ms = days_from_civil(y, m, d) * 86_400_000;
    if rest.is_empty() {
        return Some(ms);
    }
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let (clock, offset_ms) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else if rest.len() > 6 && matches!(rest.as_bytes()[rest.len() - 6], b'+' | b'-') {
        let (c, zone) = rest.split_at(rest.len() - 6);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let (hh, mm) = zone.get(1..)?.split_once(':')?;
        (c, sign * (num(hh)? * 3_600_000 + num(mm)? * 60_000))
    } else {
        (rest, 0)
    };
    let (clock, frac) = match clock.split_once('.') {
        Some((c, f)) => (c, f),
        None => (clock, ""),
    };
    let mut hms = clock.split(':');
    let h = num(hms.next()?)?;
    let min = num(hms.next()?)?;
    let s = match hms.next() {
        Some(s) => num(s)?,
        None => 0,
    };
    if hms.next().is_some() || h > 23 || min > 59 || s > 60 {
        return None;
    }
    let frac_ms = if frac.is_empty() {
        0
    } else {
        let digits: String = frac.chars().chain("000".chars()).take(3).collect();
        num(&digits)?
    };
    ms += h * 3_600_000 + min * 60_000 + s * 1000 + frac_ms;
    Some(ms - offset_ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Runs an audit command.
pub async fn run(client: &Client, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Audit(args) => audit(client, *args).await,
        Command::ChangeRecord { id, output } => change_record(client, id, output).await,
    }
}

async fn audit(client: &Client, args: AuditArgs) -> anyhow::Result<()> {
    match args.sub {
        None => query(client, &args.filters, args.limit, args.out.output).await,
        Some(AuditSub::Export { filters, limit }) => {
            let text = client
                .text(e::AuditExport, &[], &filters.query(limit)?)
                .await?;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(text.as_bytes())?;
            stdout.flush()?;
            Ok(())
        }
        Some(AuditSub::Verify { out }) => verify(client, out.output).await,
        Some(AuditSub::Checkpoints { limit, out }) => {
            let query = [("limit", limit.to_string())];
            let list = client.call(e::AuditCheckpoints, &[], &query, &()).await?;
            if out.output == Format::Json {
                return print_json(&list);
            }
            if list.is_empty() {
                println!("no checkpoints yet (one is written every minute while the log grows)");
                return Ok(());
            }
            let mut table = Table::new(&["COUNT", "TIME", "HEAD HASH", "SIGNATURE"]);
            for c in &list {
                table.row(vec![
                    c.count.to_string(),
                    timestamp(c.at_ms),
                    c.head_hash.clone(),
                    c.signature.clone(),
                ]);
            }
            print!("{}", table.render());
            Ok(())
        }
    }
}

async fn change_record(client: &Client, id: i64, output: RecordFormat) -> anyhow::Result<()> {
    let id = id.to_string();
    match output {
        RecordFormat::Markdown => {
            let query = [("format", "markdown".to_string())];
            let text = client.text(e::ChangeRecord, &[&id], &query).await?;
            print!("{text}");
            if !text.ends_with('\n') {
                println!();
            }
            Ok(())
        }
        RecordFormat::Json => {
            let record = client.call(e::ChangeRecord, &[&id], &[], &()).await?;
            print_json(&record)
        }
    }
}

async fn query(
    client: &Client,
    filters: &Filters,
    limit: Option<u32>,
    format: Format,
) -> anyhow::Result<()> {
    let records = client
        .call(e::AuditQuery, &[], &filters.query(limit)?, &())
        .await?;
    if format == Format::Json {
        return print_json(&records);
    }
    if records.is_empty() {
        println!("no audit records match");
        return Ok(());
    }
    let mut table = Table::new(&[
        "SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "SUMMARY",
    ]);
    for r in &records {
        let e = &r.entry;
        let target = match (&e.target, &e.app, &e.env) {
            (Some(t), _, _) => t.clone(),
            (None, Some(a), Some(v)) => format!("{a}/{v}"),
            (None, Some(a), None) => a.clone(),
            _ => "-".to_string(),
        };
        let summary = match &e.reason {
            Some(reason) => format!("{} (reason: {reason})", e.summary),
            None => e.summary.clone(),
        };
        table.row(vec![
            r.seq.to_string(),
            timestamp(e.at_ms),
            e.actor.clone(),
            e.action.clone(),
            target,
            e.outcome.clone(),
            summary,
        ]);
    }
    print!("{}", table.render());
    Ok(())
}

async fn verify(client: &Client, format: Format) -> anyhow::Result<()> {
    let report = client.call(e::AuditVerify, &[], &[], &()).await?;
    if format == Format::Json {
        print_json(&report)?;
    } else if report.ok {
        println!(
            "audit log ok: {} records, head {}",
            report.count, report.head_hash
        );
        match &report.checkpoint {
            Some(c) => println!(
                "matches the newest signed checkpoint ({} records, {})",
                c.count,
                timestamp(c.at_ms)
            ),
            None => println!("no signed checkpoint yet (one is written every minute)"),
        }
    }
    if report.ok {
        return Ok(());
    }
    let problem = report
        .problem
        .unwrap_or_else(|| "the chain does not verify".to_string());
    let message = match report.broken_at_seq {
        Some(seq) => format!("audit log broken at record #{seq}: {problem}"),
        None => format!("audit log broken: {problem}"),
    };
    Err(Failure::new(exit::ERROR, message)
        .with_details(vec![format!(
            "{} records, head {}",
            report.count, report.head_hash
        )])
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_times() {
        let now = 1_000_000_000;
        assert_eq!(parse_time("2h", now), Ok(now - 7_200_000));
        assert_eq!(parse_time("1970-01-01T00:00:00Z", now), Ok(0));
        assert_eq!(
            parse_time("2024-02-29T13:05:09.25Z", now),
            Ok(1_709_211_909_250)
        );
        assert_eq!(
            parse_time("2024-02-29T15:05:09+02:00", now),
            Ok(1_709_211_909_000)
        );
        assert_eq!(parse_time("2024-02-29", now), Ok(1_709_164_800_000));
        assert!(parse_time("yesterday", now).is_err());
        assert!(parse_time("2024-13-01", now).is_err());
    }

    #[test]
    fn bare_actor_names_are_users() {
        assert_eq!(actor_name("alice"), "user:alice");
        assert_eq!(actor_name("token:ci"), "token:ci");
        assert_eq!(actor_name("anonymous"), "anonymous");
    }
}
