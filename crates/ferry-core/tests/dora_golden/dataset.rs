//! The golden DORA dataset, shared by the core's golden test (`tests/dora_golden.rs`) and the
//! store's (`ferry-store/tests/contract.rs`, which inserts it through `Store` on SQLite and
//! PostgreSQL and expects the same report).

#![allow(dead_code)] // each includer uses its part

use ferry_core::dora::{DeploymentFact, DoraQuery, IncidentFact, Interval};
use ferry_core::model::{DeploymentKind, DeploymentState};

pub const MIN: i64 = 60_000;
pub const HOUR: i64 = 60 * MIN;
pub const DAY: i64 = 24 * HOUR;
/// 2026-03-02T00:00:00Z, a Monday.
pub const T0: i64 = 1_772_409_600_000;
pub const DAYS: i64 = 28;

pub fn fact(
    id: i64,
    kind: DeploymentKind,
    state: DeploymentState,
    start: i64,
    end: i64,
) -> DeploymentFact {
    DeploymentFact {
        id,
        app: "shop".into(),
        env: "production".into(),
        kind,
        state,
        started_at_ms: start,
        finished_at_ms: Some(end),
        commit_at_ms: None,
    }
}

/// Day d, k = 0..9: deployment id d*100+k starts at (1+2k):00, ends ten minutes later, its
/// commit made k+1 hours before the start (lead time (k+1)h10m). k = 4 rolls back every day.
/// Each day a deployment id d*100+50 starts 23:55 and ends 00:05 the next day (lead 40 min).
/// Even days: k = 7 causes two incidents (16:00 and 17:00). Day 3: k = 0's commit is an
/// hour after its start. Day 10: a rollback request (id 1060) at 20:00–20:05 rolls k = 9
/// away. Day 27: k = 9 fails.
pub fn dataset() -> (Vec<DeploymentFact>, Vec<IncidentFact>) {
    let mut deployments = Vec::new();
    let mut incidents = Vec::new();
    for d in 0..DAYS {
        let day = T0 + d * DAY;
        for k in 0..10 {
            let start = day + (1 + 2 * k) * HOUR;
            let state = match (d, k) {
                (_, 4) => DeploymentState::RolledBack,
                (27, 9) => DeploymentState::Failed,
                _ => DeploymentState::Succeeded,
            };
            let mut f = fact(
                d * 100 + k,
                DeploymentKind::Deploy,
                state,
                start,
                start + 10 * MIN,
            );
            f.commit_at_ms = Some(if (d, k) == (3, 0) {
                start + HOUR
            } else {
                start - (k + 1) * HOUR
            });
            deployments.push(f);
        }
        let start = day + 23 * HOUR + 55 * MIN;
        let mut late = fact(
            d * 100 + 50,
            DeploymentKind::Deploy,
            DeploymentState::Succeeded,
            start,
            start + 10 * MIN,
        );
        late.commit_at_ms = Some(start - 30 * MIN);
        deployments.push(late);
        if d % 2 == 0 {
            for hour in [16, 17] {
                incidents.push(IncidentFact {
                    deployment_id: d * 100 + 7,
                    opened_at_ms: day + hour * HOUR,
                    restored_at_ms: None,
                });
            }
        }
    }
    let day10 = T0 + 10 * DAY;
    deployments.push(fact(
        1060,
        DeploymentKind::Rollback,
        DeploymentState::Succeeded,
        day10 + 20 * HOUR,
        day10 + 20 * HOUR + 5 * MIN,
    ));
    // Never reached production, or not finished: not counted.
    let day5 = T0 + 5 * DAY;
    deployments.push(fact(
        90_001,
        DeploymentKind::Deploy,
        DeploymentState::Superseded,
        day5 + 2 * HOUR,
        day5 + 2 * HOUR + MIN,
    ));
    deployments.push(fact(
        90_002,
        DeploymentKind::Deploy,
        DeploymentState::Rejected,
        day5 + 4 * HOUR,
        day5 + 4 * HOUR + MIN,
    ));
    let mut running = fact(
        90_003,
        DeploymentKind::Deploy,
        DeploymentState::Progressing,
        day5 + 6 * HOUR,
        0,
    );
    running.finished_at_ms = None;
    deployments.push(running);
    // Other environments and apps, failing a lot: ignored.
    for (i, (app, env)) in [("shop", "staging"), ("other", "production")]
        .into_iter()
        .enumerate()
    {
        for d in 0..DAYS {
            let start = T0 + d * DAY + 12 * HOUR;
            let id = 200_000 + i as i64 * 1000 + d;
            let mut f = fact(
                id,
                DeploymentKind::Deploy,
                DeploymentState::Failed,
                start,
                start + MIN,
            );
            f.app = app.into();
            f.env = env.into();
            deployments.push(f);
            incidents.push(IncidentFact {
                deployment_id: id,
                opened_at_ms: start,
                restored_at_ms: None,
            });
        }
    }
    (deployments, incidents)
}

pub fn query(start: i64, end: i64, interval: Interval) -> DoraQuery {
    DoraQuery {
        app: "shop".into(),
        env: "production".into(),
        start_ms: start,
        end_ms: end,
        interval,
    }
}
