//! Hook runs: one row per attempt of a deployment hook.

use ferry_core::hooks::{HookPhase, RunState};
use serde::Serialize;
use sqlx::any::AnyRow;

use crate::{Ctx, Result, Store, StoreError, get};

/// An attempt about to start (recorded before its process exists).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewHookRun {
    pub deployment_id: i64,
    pub phase: HookPhase,
    pub hook: String,
    pub attempt: u32,
    pub output_path: Option<String>,
    /// `irreversible` or the JSON argv of a migration's `down` (see `ferry_core::hooks`).
    pub migration: Option<String>,
    pub now_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HookRunRecord {
    pub id: i64,
    pub deployment_id: i64,
    pub phase: HookPhase,
    pub hook: String,
    pub attempt: u32,
    pub state: RunState,
    pub started_at_ms: i64,
    pub finished_at_ms: Option<i64>,
    pub exit_code: Option<i64>,
    pub pid: Option<u32>,
    pub start_time: Option<u64>,
    pub output_path: Option<String>,
    pub summary: Option<String>,
    pub migration: Option<String>,
}

macro_rules! hook_cols {
    () => {
        "id, deployment_id, phase, hook, attempt, state, started_at_ms, finished_at_ms, \
         exit_code, pid, start_time, output_path, summary, migration"
    };
}

impl Store {
    /// Records an attempt as `running`. `Conflict` when this attempt was already recorded
    /// (so an attempt can never start twice), or when the fence no longer holds
    /// ([`Store::set_fence`]: a server that lost the lease starts no hook).
    pub async fn start_hook_run(&self, r: &NewHookRun) -> Result<HookRunRecord> {
        let op = || {
            format!(
                "recording the start of hook {} ({}) attempt {} of deployment {}",
                r.hook, r.phase, r.attempt, r.deployment_id
            )
        };
        let mut tx = self.pool.begin().await.ctx(op)?;
        self.check_fence(&mut tx).await?;
        let row = sqlx::query(concat!(
            "INSERT INTO hook_runs (deployment_id, phase, hook, attempt, state, started_at_ms, \
             output_path, migration) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING ",
            hook_cols!()
        ))
        .bind(r.deployment_id)
        .bind(r.phase.as_str())
        .bind(&r.hook)
        .bind(i64::from(r.attempt))
        .bind(RunState::Running.as_str())
        .bind(r.now_ms)
        .bind(r.output_path.as_deref())
        .bind(r.migration.as_deref())
        .fetch_one(&mut *tx)
        .await
        .ctx(op)?;
        let run = run_from_row(&row)?;
        tx.commit().await.ctx(op)?;
        Ok(run)
    }

    /// Records the process of a running attempt (for adoption checks after a crash).
    pub async fn set_hook_run_process(&self, id: i64, pid: u32, start_time: u64) -> Result<()> {
        let start_time = i64::try_from(start_time)
            .map_err(|_| StoreError::Corrupt(format!("start time {start_time} too large")))?;
        sqlx::query("UPDATE hook_runs SET pid = $1, start_time = $2 WHERE id = $3")
            .bind(i64::from(pid))
            .bind(start_time)
            .bind(id)
            .execute(&self.pool)
            .await
            .ctx(|| format!("recording the process of hook run {id}"))?;
        Ok(())
    }

    /// Ends a `running` attempt. `Conflict` if it is not running any more (a run ends once).
    pub async fn finish_hook_run(
        &self,
        id: i64,
        state: RunState,
        exit_code: Option<i64>,
        summary: Option<&str>,
        now_ms: i64,
    ) -> Result<HookRunRecord> {
        let row = sqlx::query(concat!(
            "UPDATE hook_runs SET state = $1, exit_code = $2, summary = $3, finished_at_ms = $4 \
             WHERE id = $5 AND state = $6 RETURNING ",
            hook_cols!()
        ))
        .bind(state.as_str())
        .bind(exit_code)
        .bind(summary)
        .bind(now_ms)
        .bind(id)
        .bind(RunState::Running.as_str())
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("finishing hook run {id}"))?;
        match row {
            Some(row) => run_from_row(&row),
            None => Err(StoreError::Conflict(format!(
                "hook run {id} is not running (already finished, or unknown)"
            ))),
        }
    }

    /// Every attempt of a deployment's hooks, in the order they started.
    pub async fn hook_runs(&self, deployment_id: i64) -> Result<Vec<HookRunRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            hook_cols!(),
            " FROM hook_runs WHERE deployment_id = $1 ORDER BY id"
        ))
        .bind(deployment_id)
        .fetch_all(&self.pool)
        .await
        .ctx(|| format!("reading the hook runs of deployment {deployment_id}"))?;
        rows.iter().map(run_from_row).collect()
    }

    /// The deployment (other than `except`) of `version` in `app`/`env` where the
    /// irreversible migration `hook` already succeeded, if any: it never runs twice for
    /// one version in one environment.
    pub async fn irreversible_migration_ran(
        &self,
        app: &str,
        env: &str,
        version: &str,
        hook: &str,
        except: i64,
    ) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT h.deployment_id FROM hook_runs h JOIN deployments d ON d.id = h.deployment_id \
             WHERE d.app = $1 AND d.env = $2 AND d.version = $3 AND h.hook = $4 AND h.phase = $5 \
             AND h.state = $6 AND h.migration = $7 AND h.deployment_id <> $8 \
             ORDER BY h.id LIMIT 1",
        )
        .bind(app)
        .bind(env)
        .bind(version)
        .bind(hook)
        .bind(HookPhase::PreDeploy.as_str())
        .bind(RunState::Succeeded.as_str())
        .bind("irreversible")
        .bind(except)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| {
            format!("looking for earlier runs of migration {hook} for {app}/{env} {version}")
        })?;
        row.map(|r| get::<i64>(&r, "deployment_id", &|| "hook_runs row".to_string()))
            .transpose()
    }

    /// Attempts still recorded `running` (after a restart: those of the previous server).
    pub async fn running_hook_runs(&self) -> Result<Vec<HookRunRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            hook_cols!(),
            " FROM hook_runs WHERE state = $1 ORDER BY id"
        ))
        .bind(RunState::Running.as_str())
        .fetch_all(&self.pool)
        .await
        .ctx(|| "reading the running hook runs".to_string())?;
        rows.iter().map(run_from_row).collect()
    }
}

fn run_from_row(row: &AnyRow) -> Result<HookRunRecord> {
    let id: i64 = get(row, "id", &|| "hook_runs row".to_string())?;
    let what = move || format!("hook run {id}");
    let phase: String = get(row, "phase", &what)?;
    let state: String = get(row, "state", &what)?;
    let attempt: i64 = get(row, "attempt", &what)?;
    let pid: Option<i64> = get(row, "pid", &what)?;
    let start_time: Option<i64> = get(row, "start_time", &what)?;
    let corrupt = |field: &str, e: String| StoreError::Corrupt(format!("{}: {field}: {e}", what()));
    Ok(HookRunRecord {
        id,
        deployment_id: get(row, "deployment_id", &what)?,
        phase: phase.parse().map_err(|e| corrupt("phase", e))?,
        hook: get(row, "hook", &what)?,
        attempt: u32::try_from(attempt).map_err(|e| corrupt("attempt", e.to_string()))?,
        state: state.parse().map_err(|e| corrupt("state", e))?,
        started_at_ms: get(row, "started_at_ms", &what)?,
        finished_at_ms: get(row, "finished_at_ms", &what)?,
        exit_code: get(row, "exit_code", &what)?,
        pid: pid
            .map(u32::try_from)
            .transpose()
            .map_err(|e| corrupt("pid", e.to_string()))?,
        start_time: start_time
            .map(u64::try_from)
            .transpose()
            .map_err(|e| corrupt("start_time", e.to_string()))?,
        output_path: get(row, "output_path", &what)?,
        summary: get(row, "summary", &what)?,
        migration: get(row, "migration", &what)?,
    })
}
