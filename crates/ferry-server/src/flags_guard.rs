//! The driver of guarded flag rollouts: a thin shell around the pure decision
//! `ferry_core::flags::guard::advance`. Every 500 ms it reads the running guards, measures
//! their analysis when a round is due (the deployments' `Meter` and judges, over the
//! requests through the proxy whose answers carried the flag on — the proxy's per-flag
//! figures from the `Ferry-Flags` header, those that carried it off as `compare`'s baseline
//! — or, when the guard asks for it, the environment's whole traffic), asks the core what
//! to do, and stores the new guard together with the flag's new percentage in one
//! transaction (compare-and-set on the guard's `seq`), then writes the audit record (actor
//! `analysis`). All state is in the store, so a restarted server resumes every rollout.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::analysis;
use ferry_core::audit::AuditEntry;
use ferry_core::flags::edit;
use ferry_core::flags::guard::{self, Action, FlagNow, Judge, Observed};
use ferry_core::manifest::Manifest;
use ferry_proxy::stats::{StatsSnapshot, VersionStats};
use ferry_store::{ChangeMeta, FlagDecide, FlagGuardRecord, FlagWrite};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::controller::Controller;
use crate::error::ServerError;
use crate::progressive::{Meter, Subject};

/// How often the running guards are looked at.
const TICK: Duration = Duration::from_millis(500);

/// The actor of the driver's changes, in the flag's history and the audit log.
pub const ACTOR: &str = "analysis";

pub async fn run(controller: Arc<Controller>, shutdown: CancellationToken) {
    let meter = Meter::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        if let Err(e) = pass(&controller, &meter).await {
            tracing::warn!(error = %e, "guarded flag rollouts: pass failed (retried)");
        }
    }
}

async fn pass(controller: &Controller, meter: &Meter) -> Result<(), ServerError> {
    let guards = controller.store().running_flag_guards().await?;
    // One snapshot of the proxy's counters per pass, read only if a round is due.
    let mut stats = None;
    for record in guards {
        if let Err(e) = drive(controller, meter, &record, &mut stats).await {
            tracing::warn!(app = %record.app, env = %record.env, flag = %record.flag,
                error = %e, "guarded flag rollout: step failed (retried)");
        }
    }
    Ok(())
}

async fn drive(
    controller: &Controller,
    meter: &Meter,
    record: &FlagGuardRecord,
    stats: &mut Option<Option<StatsSnapshot>>,
) -> Result<(), ServerError> {
    let store = controller.store();
    let (app, env, flag) = (&record.app, &record.env, &record.flag);
    let now = now_ms();
    let current = store.get_flag(app, env, flag).await?;
    let flag_now = current.as_ref().map(|r| FlagNow {
        enabled: r.feature.enabled,
        archived: r.archived,
        percent: edit::rollout_of(&r.feature),
    });
    let guard = &record.guard;
    let key = (-record.id, guard.step as u64);
    let mut measurements = None;
    if analysis::due(&guard.run, &guard.spec.analysis, now) || meter_is_closed(meter, record) {
        if stats.is_none() {
            *stats = Some(controller.proxy().stats().await.ok());
        }
        if let Some(Some(snapshot)) = stats.as_ref() {
            let app_record = store.get_app(app).await?;
            let manifest = app_record
                .as_ref()
                .and_then(|a| serde_json::from_str::<Manifest>(&a.manifest_json).ok());
            let version = store
                .env_current(app, env)
                .await?
                .and_then(|e| e.current_version)
                .unwrap_or_default();
            let listener = format!("{app}/{env}");
            let attributed;
            let (snapshot, stable) = match guard.spec.judge {
                Judge::Flag => {
                    attributed = attributed_to(snapshot, flag, &version);
                    (&attributed, FLAG_OFF)
                }
                Judge::Environment => (snapshot, version.as_str()),
            };
            let subject = Subject {
                app,
                env,
                listener: &listener,
                canary: &version,
                stable,
                base_dir: app_record
                    .as_ref()
                    .and_then(|a| a.base_dir.as_ref())
                    .map(PathBuf::from),
                runtime: controller.runtime(),
                run_as: match &manifest {
                    Some(m) => controller
                        .workloads()
                        .run_as(m, env)
                        .map_err(|e| e.to_string()),
                    None => Err(format!("app {app} has no readable manifest")),
                },
            };
            meter.open(key, &guard.run, snapshot, &subject);
            if analysis::due(&guard.run, &guard.spec.analysis, now) {
                measurements = meter
                    .measure(key, &guard.spec.analysis, snapshot, &subject)
                    .await;
                if let Some(round) = measurements.as_mut() {
                    guard::attribute(round, &guard.spec, flag);
                }
            }
        }
    }
    let observed = Observed {
        flag: flag_now,
        measurements: measurements.as_deref(),
    };
    let (next, action) = guard::advance(guard, &observed, now);
    let (percent, summary) = match &action {
        Action::Hold => return Ok(()),
        Action::Record => (None, None),
        Action::Step { percent, why } => (Some(*percent), Some(why.clone())),
        Action::Complete { why } => (None, Some(format!("completed: {why}"))),
        Action::RollBack { reason, .. } => (
            Some(0),
            Some(format!("analysis failed, rolled back to 0%: {reason}")),
        ),
    };
    let summary = summary.or_else(|| match &next.state {
        guard::GuardState::Paused { reason } => Some(format!("paused: {reason}")),
        guard::GuardState::Cancelled { reason } => Some(format!("stopped: {reason}")),
        _ => None,
    });
    let epoch = crate::auth::hex(&rand::random::<[u8; 8]>());
    let write = percent.map(|percent| {
        let expected = guard.percent();
        let stickiness = guard.spec.stickiness.clone();
        let meta = ChangeMeta {
            actor: ACTOR,
            action: "guarded-rollout",
            reason: summary.as_deref(),
            now_ms: now,
            new_epoch: &epoch,
        };
        let decide = move |current: Option<ferry_store::FlagRecord>| {
            // A person changed the flag since it was read: write nothing (the next pass
            // sees the change and stops the guard).
            let current = current.filter(|c| edit::rollout_of(&c.feature) == expected)?;
            let feature =
                edit::set_rollout(current.feature, percent, stickiness.as_deref()).ok()?;
            Some(FlagWrite {
                feature,
                archived: current.archived,
            })
        };
        (meta, Box::new(decide) as FlagDecide<'_>)
    });
    if !store.update_flag_guard(record, &next, now, write).await? {
        return Ok(());
    }
    if !next.state.is_running() {
        meter.forget(-record.id);
    }
    if let Some(summary) = summary {
        tracing::info!(app = %app, env = %env, flag = %flag, "guarded rollout: {summary}");
        let entry = AuditEntry {
            at_ms: now,
            actor: ACTOR.to_string(),
            source: None,
            action: "flags.guarded_rollout".to_string(),
            app: Some(app.clone()),
            env: Some(env.clone()),
            target: Some(format!("flag {flag}")),
            summary: format!("flag {flag}: {summary}"),
            reason: None,
            outcome: "ok".to_string(),
        };
        store.append_audit(entry).await?;
    }
    Ok(())
}

/// The side the requests that carried the flag off are counted under (never a version).
const FLAG_OFF: &str = "(flag off)";

/// The proxy's per-flag figures of `flag` as a snapshot the `Meter` reads like versions':
/// the answers that carried it on under `version` (whichever version served them), those
/// that carried it off under [`FLAG_OFF`]. The `Meter` keeps the environment's listener.
fn attributed_to(stats: &StatsSnapshot, flag: &str, version: &str) -> StatsSnapshot {
    let versions = stats
        .flags
        .iter()
        .filter(|f| f.flag == flag)
        .map(|f| VersionStats {
            listener: f.listener.clone(),
            service: f.service.clone(),
            version: if guard::carried_on(&f.variant) {
                version.to_string()
            } else {
                FLAG_OFF.to_string()
            },
            requests: f.requests,
            errors_5xx: f.errors_5xx,
            client_errors: 0,
            in_flight: 0,
            latency_ms: Default::default(),
            histogram_us: f.histogram_us.clone(),
            endpoints: Vec::new(),
        })
        .collect();
    StatsSnapshot {
        started_at_ms: stats.started_at_ms,
        taken_at_ms: stats.taken_at_ms,
        generation: stats.generation,
        versions,
        ..Default::default()
    }
}

/// Whether this guard's current step has no analysis window open yet (a new step, or a
/// restarted server): it is opened right away so the first round covers a full interval.
fn meter_is_closed(meter: &Meter, record: &FlagGuardRecord) -> bool {
    !meter.is_open((-record.id, record.guard.step as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proxy::stats::FlagStats;

    fn carried(listener: &str, version: &str, flag: &str, variant: &str, n: u64) -> FlagStats {
        FlagStats {
            listener: listener.into(),
            service: "web".into(),
            version: version.into(),
            flag: flag.into(),
            variant: variant.into(),
            requests: n,
            errors_5xx: n / 2,
            histogram_us: String::new(),
        }
    }

    #[test]
    fn only_the_guarded_flags_requests_are_judged_split_on_and_off() {
        let stats = StatsSnapshot {
            taken_at_ms: 7,
            flags: vec![
                carried("shop/prod", "1.0", "checkout", "on", 10),
                carried("shop/prod", "1.1", "checkout", "blue", 4),
                carried("shop/prod", "1.0", "checkout", "off", 100),
                carried("shop/prod", "1.0", "search", "on", 1_000),
            ],
            ..Default::default()
        };
        let view = attributed_to(&stats, "checkout", "1.1");
        assert_eq!(view.taken_at_ms, 7);
        let sides: Vec<(&str, u64)> = view
            .versions
            .iter()
            .map(|v| (v.version.as_str(), v.requests))
            .collect();
        assert_eq!(sides, [("1.1", 10), ("1.1", 4), (FLAG_OFF, 100)]);
        assert!(attributed_to(&stats, "other", "1.1").versions.is_empty());
    }
}
