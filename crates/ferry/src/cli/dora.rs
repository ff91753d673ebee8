//! `ferry dora APP [--env production] [--since 90d] [--interval all] [-o json]`: the five
//! DORA metrics of an app in an environment, from Ferry's own history.

use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, ValueEnum};
use ferry_core::dora::{self, DoraReport, Figures, Level};
use ferry_core::duration::HumanDuration;
use ferry_core::endpoint as e;

use super::client::Client;
use super::output::{Table, print_json};
use super::{Format, OutputArg};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum IntervalArg {
    All,
    Daily,
    Weekly,
    Monthly,
}

#[derive(Debug, Args)]
pub struct DoraArgs {
    /// The app.
    pub app: String,
    /// The environment.
    #[arg(long, default_value = "production")]
    pub env: String,
    /// How far back, up to today (UTC) included: `90d`, `4w`, `12h`…
    #[arg(long, default_value = "90d")]
    pub since: HumanDuration,
    /// One figure for the window, or a row per day/week/month (UTC).
    #[arg(long, value_enum, default_value_t = IntervalArg::All)]
    pub interval: IntervalArg,
    /// Also list the deployments behind each figure of the whole window.
    #[arg(long)]
    pub show_deployments: bool,
    #[command(flatten)]
    pub out: OutputArg,
}

pub async fn run(client: &Client, args: DoraArgs) -> anyhow::Result<()> {
    let now_ms = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis())?;
    let since_ms = i64::try_from(args.since.get().as_millis())?;
    let start = dora::date_of(now_ms.saturating_sub(since_ms))
        .ok_or_else(|| anyhow::anyhow!("--since {} reaches before year -9999", args.since))?;
    let interval = match args.interval {
        IntervalArg::All => "all",
        IntervalArg::Daily => "daily",
        IntervalArg::Weekly => "weekly",
        IntervalArg::Monthly => "monthly",
    };
    let report = client
        .call(
            e::Dora,
            &[&args.app, &args.env],
            &[("start_date", start), ("interval", interval.to_string())],
            &(),
        )
        .await?;
    if args.out.output == Format::Json {
        return print_json(&report);
    }
    print!("{}", render(&report));
    if args.show_deployments {
        print!("{}", behind(&report.summary));
    }
    Ok(())
}

fn level(level: Option<Level>) -> String {
    level.map_or("-", Level::as_str).to_string()
}

fn duration(ms: Option<i64>) -> String {
    ms.map_or("-".into(), dora::human_duration)
}

fn percent(rate: Option<f64>) -> String {
    rate.map_or("-".into(), dora::human_rate)
}

/// One row per metric (and per bucket with an interval).
fn render(report: &DoraReport) -> String {
    let mut table = Table::new(&["FROM", "METRIC", "VALUE", "LEVEL", "BASED ON"]);
    let mut add = |from: String, f: &Figures| {
        let freq = &f.deployment_frequency;
        let lead = &f.lead_time_for_changes;
        let cfr = &f.change_failure_rate;
        let rec = &f.failed_deployment_recovery_time;
        let rework = &f.deployment_rework_rate;
        let rows = [
            (
                "deployment frequency",
                format!("{} ({:.2}/day)", freq.count, freq.per_day),
                freq.level,
                format!("{} succeeded", freq.count),
            ),
            (
                "lead time for changes",
                duration(lead.median_ms),
                lead.level,
                format!("{} with a commit time (median)", lead.samples.len()),
            ),
            (
                "change failure rate",
                percent(cfr.rate),
                cfr.level,
                format!("{} of {} failed", cfr.count, cfr.total),
            ),
            (
                "failed deployment recovery time",
                duration(rec.median_ms),
                rec.level,
                format!(
                    "{} recovered, {} not yet (median)",
                    rec.samples.len(),
                    rec.unrecovered.len()
                ),
            ),
            (
                "deployment rework rate",
                percent(rework.rate),
                rework.level,
                format!("{} fixes of {}", rework.count, rework.total),
            ),
        ];
        for (name, value, lvl, basis) in rows {
            table.row(vec![from.clone(), name.into(), value, level(lvl), basis]);
        }
    };
    if report.buckets.is_empty() {
        add(
            dora::date_of(report.start_ms).unwrap_or_default(),
            &report.summary,
        );
    }
    for bucket in &report.buckets {
        add(
            dora::date_of(bucket.start_ms).unwrap_or_default(),
            &bucket.figures,
        );
    }
    let count = report.summary.production_deployments.len();
    format!(
        "{} in {}, {} to {} (UTC), {count} production deployment{}; `--show-deployments` lists the deployments behind each figure\n{}",
        report.app,
        report.env,
        dora::date_of(report.start_ms).unwrap_or_default(),
        dora::date_of(report.end_ms - 1).unwrap_or_default(),
        if count == 1 { "" } else { "s" },
        table.render()
    )
}

fn ids(ids: &[i64]) -> String {
    if ids.is_empty() {
        return "-".into();
    }
    ids.iter()
        .map(|id| format!("#{id}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn samples(samples: &[dora::Sample]) -> String {
    if samples.is_empty() {
        return "-".into();
    }
    samples
        .iter()
        .map(|s| format!("#{} ({})", s.deployment, duration(Some(s.ms))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The deployments behind each figure (`ferry deployment ID` shows one).
fn behind(f: &Figures) -> String {
    let lead = &f.lead_time_for_changes;
    let rec = &f.failed_deployment_recovery_time;
    let mut table = Table::new(&["METRIC", "DEPLOYMENTS"]);
    for (name, list) in [
        ("production deployments", ids(&f.production_deployments)),
        (
            "deployment frequency",
            ids(&f.deployment_frequency.deployments),
        ),
        ("lead time for changes", samples(&lead.samples)),
        (
            "  dropped (commit after the deployment)",
            ids(&lead.dropped_negative),
        ),
        (
            "change failure rate",
            ids(&f.change_failure_rate.deployments),
        ),
        ("failed deployment recovery time", samples(&rec.samples)),
        ("  not recovered yet", ids(&rec.unrecovered)),
        (
            "deployment rework rate",
            ids(&f.deployment_rework_rate.deployments),
        ),
    ] {
        table.row(vec![name.into(), list]);
    }
    format!(
        "\nthe deployments behind each figure (`ferry deployment ID` shows one):\n{}",
        table.render()
    )
}
