//! Alerts: the state the evaluator left (one row per alert, JSON of the pure core's
//! `AlertInstance`), their history, and silences.

use ferry_core::alerts::{AlertInstance, Silence};
use ferry_core::notify::Notification;

use crate::{Ctx, Result, Store, StoreError, get};

/// A stored alert with its app and environment.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAlert {
    pub app: String,
    pub env: String,
    pub alert: AlertInstance,
}

/// A history line of an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertEvent {
    pub id: i64,
    pub app: String,
    pub env: String,
    pub rule: String,
    pub series: String,
    /// `pending`, `firing`, `resolved`, `inactive`, `action`.
    pub kind: String,
    pub message: String,
    pub at_ms: i64,
}

/// What an alert does to the incidents the DORA metrics count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncidentChange {
    /// It fired: deployment `deployment_id` caused an incident from `at_ms` (once per
    /// `alert_key`, the alert's episode).
    Open {
        alert_key: String,
        deployment_id: i64,
        at_ms: i64,
    },
    /// It resolved: its incident (if any) is restored at `at_ms`.
    Restore { alert_key: String, at_ms: i64 },
}

/// What one evaluation of a rule writes, together ([`Store::save_alerts`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct AlertWrite<'a> {
    /// Every alert of the rule in the environment (replacing the stored ones).
    pub alerts: &'a [AlertInstance],
    /// History lines to append.
    pub events: &'a [AlertEvent],
    /// Notifications to enqueue in the outbox.
    pub notifications: &'a [Notification],
    pub incidents: &'a [IncidentChange],
}

impl Store {
    /// Replaces the stored alerts of `rule` in app/env with `write.alerts`, appends its
    /// history lines, enqueues its notifications in the outbox and opens or restores its
    /// incidents, in one transaction: a restart finds all or none (a firing alert is never
    /// stored without its notification, nor a resolve). Fenced ([`Store::set_fence`]).
    pub async fn save_alerts(
        &self,
        app: &str,
        env: &str,
        rule: &str,
        write: &AlertWrite<'_>,
        now_ms: i64,
    ) -> Result<()> {
        let op = || format!("saving the alerts of {rule} in {app}/{env}");
        let mut tx = self.pool.begin().await.ctx(op)?;
        self.check_fence(&mut tx).await?;
        sqlx::query("DELETE FROM alert_states WHERE app = $1 AND env = $2 AND rule = $3")
            .bind(app)
            .bind(env)
            .bind(rule)
            .execute(&mut *tx)
            .await
            .ctx(op)?;
        for a in write.alerts {
            let json = serde_json::to_string(a).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            sqlx::query(
                "INSERT INTO alert_states (app, env, rule, series, status, alert_json, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(app)
            .bind(env)
            .bind(rule)
            .bind(&a.series)
            .bind(a.status.as_str())
            .bind(json)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .ctx(op)?;
        }
        for e in write.events {
            sqlx::query(
                "INSERT INTO alert_events (app, env, rule, series, kind, message, at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(app)
            .bind(env)
            .bind(rule)
            .bind(&e.series)
            .bind(&e.kind)
            .bind(&e.message)
            .bind(e.at_ms)
            .execute(&mut *tx)
            .await
            .ctx(op)?;
        }
        for n in write.notifications {
            crate::notify::enqueue(&mut tx, n, now_ms).await?;
        }
        for change in write.incidents {
            let query = match change {
                IncidentChange::Open {
                    alert_key,
                    deployment_id,
                    at_ms,
                } => sqlx::query(
                    "INSERT INTO incidents (deployment_id, opened_at_ms, opened_by, alert_key) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (alert_key) DO NOTHING",
                )
                .bind(*deployment_id)
                .bind(*at_ms)
                .bind(format!("alert:{rule}"))
                .bind(alert_key),
                IncidentChange::Restore { alert_key, at_ms } => sqlx::query(
                    "UPDATE incidents SET restored_at_ms = $1 \
                     WHERE alert_key = $2 AND restored_at_ms IS NULL",
                )
                .bind(*at_ms)
                .bind(alert_key),
            };
            query.execute(&mut *tx).await.ctx(op)?;
        }
        tx.commit().await.ctx(op)?;
        if !write.notifications.is_empty() {
            self.outbox_committed();
        }
        Ok(())
    }

    /// The stored alerts, of one app (and environment) or all.
    pub async fn alerts(&self, app: Option<&str>, env: Option<&str>) -> Result<Vec<StoredAlert>> {
        let rows = sqlx::query(
            "SELECT app, env, alert_json FROM alert_states \
             WHERE ($1 = '' OR app = $1) AND ($2 = '' OR env = $2) ORDER BY app, env, rule, series",
        )
        .bind(app.unwrap_or(""))
        .bind(env.unwrap_or(""))
        .fetch_all(&self.pool)
        .await
        .ctx(|| "reading alerts".to_string())?;
        let what = || "alert_states row".to_string();
        rows.iter()
            .map(|row| {
                let json: String = get(row, "alert_json", &what)?;
                let alert = serde_json::from_str(&json)
                    .map_err(|e| StoreError::Corrupt(format!("stored alert: {e}")))?;
                Ok(StoredAlert {
                    app: get(row, "app", &what)?,
                    env: get(row, "env", &what)?,
                    alert,
                })
            })
            .collect()
    }

    /// The latest `limit` history lines (newest first), of one app (and environment) or all.
    pub async fn alert_events(
        &self,
        app: Option<&str>,
        env: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AlertEvent>> {
        let rows = sqlx::query(
            "SELECT id, app, env, rule, series, kind, message, at_ms FROM alert_events \
             WHERE ($1 = '' OR app = $1) AND ($2 = '' OR env = $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(app.unwrap_or(""))
        .bind(env.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .ctx(|| "reading alert history".to_string())?;
        let what = || "alert_events row".to_string();
        rows.iter()
            .map(|row| {
                Ok(AlertEvent {
                    id: get(row, "id", &what)?,
                    app: get(row, "app", &what)?,
                    env: get(row, "env", &what)?,
                    rule: get(row, "rule", &what)?,
                    series: get(row, "series", &what)?,
                    kind: get(row, "kind", &what)?,
                    message: get(row, "message", &what)?,
                    at_ms: get(row, "at_ms", &what)?,
                })
            })
            .collect()
    }

    /// Records a silence; returns it with its id.
    pub async fn create_silence(&self, silence: &Silence) -> Result<Silence> {
        let op = || {
            format!(
                "silencing {} in {}/{}",
                silence.alert, silence.app, silence.env
            )
        };
        let row = sqlx::query(
            "INSERT INTO alert_silences (app, env, alert, created_by, reason, created_at_ms, until_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(&silence.app)
        .bind(&silence.env)
        .bind(&silence.alert)
        .bind(&silence.created_by)
        .bind(&silence.reason)
        .bind(silence.created_at_ms)
        .bind(silence.until_ms)
        .fetch_one(&self.pool)
        .await
        .ctx(op)?;
        let id: i64 = get(&row, "id", &|| "new silence".to_string())?;
        Ok(Silence {
            id,
            ..silence.clone()
        })
    }

    /// Silences of one app (or all) that end after `after_ms`, newest first (at most 500).
    pub async fn silences(&self, app: Option<&str>, after_ms: i64) -> Result<Vec<Silence>> {
        let rows = sqlx::query(
            "SELECT id, app, env, alert, created_by, reason, created_at_ms, until_ms, ended_by \
             FROM alert_silences WHERE ($1 = '' OR app = $1) AND until_ms > $2 \
             ORDER BY id DESC LIMIT 500",
        )
        .bind(app.unwrap_or(""))
        .bind(after_ms)
        .fetch_all(&self.pool)
        .await
        .ctx(|| "reading silences".to_string())?;
        rows.iter().map(silence_from_row).collect()
    }

    /// One silence by id.
    pub async fn silence(&self, id: i64) -> Result<Option<Silence>> {
        let row = sqlx::query(
            "SELECT id, app, env, alert, created_by, reason, created_at_ms, until_ms, ended_by \
             FROM alert_silences WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("reading silence {id}"))?;
        row.as_ref().map(silence_from_row).transpose()
    }

    /// Ends silence `id` early (once); false when it had already ended.
    pub async fn end_silence(&self, id: i64, by: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE alert_silences SET ended_by = $1 WHERE id = $2 AND ended_by IS NULL",
        )
        .bind(by)
        .bind(id)
        .execute(&self.pool)
        .await
        .ctx(|| format!("ending silence {id}"))?;
        Ok(done.rows_affected() == 1)
    }
}

fn silence_from_row(row: &sqlx::any::AnyRow) -> Result<Silence> {
    let what = || "alert_silences row".to_string();
    Ok(Silence {
        id: get(row, "id", &what)?,
        app: get(row, "app", &what)?,
        env: get(row, "env", &what)?,
        alert: get(row, "alert", &what)?,
        created_by: get(row, "created_by", &what)?,
        reason: get(row, "reason", &what)?,
        created_at_ms: get(row, "created_at_ms", &what)?,
        until_ms: get(row, "until_ms", &what)?,
        ended_by: get(row, "ended_by", &what)?,
    })
}
