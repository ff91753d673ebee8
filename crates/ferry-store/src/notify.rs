//! The notification outbox and its delivery history.
//!
//! - [`enqueue`] writes a notification inside the caller's transaction, so the event and
//!   its notification commit together (or neither does); a key already there is ignored.
//! - The dispatcher (one task in the server) routes each new notification into groups
//!   ([`Store::route_notification`]), turns due groups into deliveries
//!   ([`Store::flush_group`]), claims due deliveries ([`Store::claim_delivery`], which counts
//!   the attempt and schedules the next one before anything is sent, so a crash mid-send is
//!   retried, never lost) and records the outcome ([`Store::finish_delivery`]).

use ferry_core::notify::{DeliveryState, Notification};
use serde::Serialize;
use sqlx::any::AnyRow;
use std::sync::Arc;
use tokio::sync::Notify;

use crate::{Ctx, Result, Store, StoreError, get};

/// Enqueues `n` in the caller's transaction (which should already hold its write lock).
/// Returns `false` when a notification with the same key is already there (nothing written).
pub async fn enqueue(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    n: &Notification,
    now_ms: i64,
) -> Result<bool> {
    n.check()
        .map_err(|e| StoreError::Conflict(format!("enqueueing a notification: {e}")))?;
    let body = serde_json::to_string(n).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let done = sqlx::query(
        "INSERT INTO notifications (nkey, kind, app, env, fingerprint, body, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (nkey) DO NOTHING",
    )
    .bind(&n.key)
    .bind(n.kind.as_str())
    .bind(&n.app)
    .bind(&n.env)
    .bind(n.fingerprint())
    .bind(body)
    .bind(now_ms)
    .execute(&mut **tx)
    .await
    .ctx(|| format!("enqueueing notification {}", n.key))?;
    Ok(done.rows_affected() == 1)
}

/// A notification group's stored state (the JSON of `ferry_core::notify::route::Group`)
/// and when it is next due (`None`: idle).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupRow {
    pub app: String,
    pub receiver: String,
    pub group_key: String,
    pub state: String,
    pub due_at_ms: Option<i64>,
}

/// A delivery planned by the dispatcher (and the part of [`DeliveryRecord`] it wrote).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewDelivery {
    /// The idempotency key sent to the receiver.
    pub key: String,
    pub receiver: String,
    pub receiver_type: String,
    pub app: String,
    pub env: String,
    pub group_key: String,
    pub summary: String,
    pub notification_ids: Vec<i64>,
    /// Planned `Pending`, or `Inhibited` with the reason in `last_error`.
    pub state: DeliveryState,
    /// Why it was inhibited; once attempted, the last attempt's error.
    pub last_error: Option<String>,
}

/// One delivery as the history shows it (no receiver URL or credential is stored).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryRecord {
    pub id: i64,
    #[serde(flatten)]
    pub delivery: NewDelivery,
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
    pub created_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
}

/// Which deliveries [`Store::deliveries`] lists (newest first).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeliveryQuery {
    pub app: Option<String>,
    pub env: Option<String>,
    pub state: Option<DeliveryState>,
    /// Only deliveries of these (app, env) pairs (`None`: any); the limit applies after.
    pub scopes: Option<Vec<(String, String)>>,
    pub limit: u32,
}

/// What one [`Store::prune_notifications`] pass deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub deliveries: u64,
    pub notifications: u64,
}

/// What the routing of one notification changes about the alerts firing now.
#[derive(Debug, Clone, PartialEq)]
pub enum ActiveChange {
    None,
    /// An alert started firing (stored with its notification).
    Firing(Box<Notification>),
    /// The alert with this fingerprint resolved.
    Resolved(String),
}

macro_rules! delivery_cols {
    () => {
        "id, dkey, receiver, receiver_type, app, env, group_key, summary, notification_ids, \
         state, attempts, next_attempt_at_ms, last_error, created_at_ms, delivered_at_ms"
    };
}

fn delivery_from_row(row: &AnyRow) -> Result<DeliveryRecord> {
    let id: i64 = get(row, "id", &|| "notification_deliveries row".to_string())?;
    let what = move || format!("delivery {id}");
    let state: String = get(row, "state", &what)?;
    let ids: String = get(row, "notification_ids", &what)?;
    Ok(DeliveryRecord {
        id,
        delivery: NewDelivery {
            key: get(row, "dkey", &what)?,
            receiver: get(row, "receiver", &what)?,
            receiver_type: get(row, "receiver_type", &what)?,
            app: get(row, "app", &what)?,
            env: get(row, "env", &what)?,
            group_key: get(row, "group_key", &what)?,
            summary: get(row, "summary", &what)?,
            notification_ids: serde_json::from_str(&ids).map_err(|e| {
                StoreError::Corrupt(format!("delivery {id}: notification_ids: {e}"))
            })?,
            state: state
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("delivery {id}: {e}")))?,
            last_error: get(row, "last_error", &what)?,
        },
        attempts: get(row, "attempts", &what)?,
        next_attempt_at_ms: get(row, "next_attempt_at_ms", &what)?,
        created_at_ms: get(row, "created_at_ms", &what)?,
        delivered_at_ms: get(row, "delivered_at_ms", &what)?,
    })
}

fn notification_from_row(row: &AnyRow) -> Result<(i64, Notification)> {
    let id: i64 = get(row, "id", &|| "notifications row".to_string())?;
    let body: String = get(row, "body", &|| format!("notification {id}"))?;
    let n = serde_json::from_str(&body)
        .map_err(|e| StoreError::Corrupt(format!("notification {id}: {e}")))?;
    Ok((id, n))
}

async fn insert_delivery(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    d: &NewDelivery,
    now_ms: i64,
) -> Result<()> {
    let ids = serde_json::to_string(&d.notification_ids)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    sqlx::query(
        "INSERT INTO notification_deliveries (dkey, receiver, receiver_type, app, env, \
         group_key, summary, notification_ids, state, attempts, next_attempt_at_ms, last_error, \
         created_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0, $10, $11, $10) \
         ON CONFLICT (dkey) DO NOTHING",
    )
    .bind(&d.key)
    .bind(&d.receiver)
    .bind(&d.receiver_type)
    .bind(&d.app)
    .bind(&d.env)
    .bind(&d.group_key)
    .bind(&d.summary)
    .bind(ids)
    .bind(d.state.as_str())
    .bind(now_ms)
    .bind(d.last_error.as_deref())
    .execute(&mut **tx)
    .await
    .ctx(|| format!("planning delivery {}", d.key))?;
    Ok(())
}

async fn upsert_group(tx: &mut sqlx::Transaction<'static, sqlx::Any>, g: &GroupRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO notification_groups (app, receiver, group_key, state, due_at_ms) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (app, receiver, group_key) DO UPDATE \
         SET state = excluded.state, due_at_ms = excluded.due_at_ms",
    )
    .bind(&g.app)
    .bind(&g.receiver)
    .bind(&g.group_key)
    .bind(&g.state)
    .bind(g.due_at_ms)
    .execute(&mut **tx)
    .await
    .ctx(|| format!("saving notification group {}", g.group_key))?;
    Ok(())
}

impl Store {
    /// Enqueues notifications in a transaction of their own (for events that write nothing
    /// else). Returns how many were new.
    pub async fn enqueue_notifications(&self, ns: &[Notification], now_ms: i64) -> Result<usize> {
        let op = || "enqueueing notifications".to_string();
        let mut tx = self.pool.begin().await.ctx(op)?;
        let mut new = 0;
        for n in ns {
            new += usize::from(enqueue(&mut tx, n, now_ms).await?);
        }
        tx.commit().await.ctx(op)?;
        if new > 0 {
            self.outbox_committed();
        }
        Ok(new)
    }

    /// Signalled (a stored permit: a signal is never lost) after this process committed a
    /// transaction that enqueued notifications, so the dispatcher wakes at once. Writers
    /// in other processes are not seen: the dispatcher also polls.
    pub fn outbox_signal(&self) -> Arc<Notify> {
        self.outbox.clone()
    }

    /// Call after committing a transaction in which [`enqueue`] wrote something (the
    /// `Store` methods that enqueue do it themselves).
    pub fn outbox_committed(&self) {
        self.outbox.notify_one();
    }

    /// Notifications not routed yet, oldest first.
    pub async fn unrouted_notifications(&self, limit: u32) -> Result<Vec<(i64, Notification)>> {
        let rows = sqlx::query(
            "SELECT id, body FROM notifications WHERE routed_at_ms IS NULL ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx(|| "reading the notification outbox".into())?;
        rows.iter().map(notification_from_row).collect()
    }

    /// Notifications by id (in id order; missing ids are left out).
    pub async fn notifications_by_id(&self, ids: &[i64]) -> Result<Vec<(i64, Notification)>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(100) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT id, body FROM notifications WHERE id IN ({}) ORDER BY id",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                query = query.bind(*id);
            }
            let rows = query
                .fetch_all(&self.pool)
                .await
                .ctx(|| "reading notifications".into())?;
            for row in &rows {
                out.push(notification_from_row(row)?);
            }
        }
        out.sort_by_key(|(id, _)| *id);
        Ok(out)
    }

    /// The notification stored under idempotency key `key`, if it is still there.
    pub async fn notification_by_key(&self, key: &str) -> Result<Option<Notification>> {
        let row = sqlx::query("SELECT id, body FROM notifications WHERE nkey = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .ctx(|| format!("reading notification {key}"))?;
        row.as_ref()
            .map(|row| notification_from_row(row).map(|(_, n)| n))
            .transpose()
    }

    /// The alerts of `app` firing now (as their firing notifications).
    pub async fn active_alerts(&self, app: &str) -> Result<Vec<Notification>> {
        let rows = sqlx::query(
            "SELECT body FROM notification_active_alerts WHERE app = $1 ORDER BY since_ms",
        )
        .bind(app)
        .fetch_all(&self.pool)
        .await
        .ctx(|| format!("reading the firing alerts of {app}"))?;
        rows.iter()
            .map(|row| {
                let body: String = get(row, "body", &|| "active alert".to_string())?;
                serde_json::from_str(&body)
                    .map_err(|e| StoreError::Corrupt(format!("active alert of {app}: {e}")))
            })
            .collect()
    }

    /// A notification group's state, if it exists.
    pub async fn group(
        &self,
        app: &str,
        receiver: &str,
        group_key: &str,
    ) -> Result<Option<GroupRow>> {
        let row = sqlx::query(
            "SELECT app, receiver, group_key, state, due_at_ms FROM notification_groups \
             WHERE app = $1 AND receiver = $2 AND group_key = $3",
        )
        .bind(app)
        .bind(receiver)
        .bind(group_key)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| format!("reading notification group {group_key}"))?;
        row.as_ref().map(group_from_row).transpose()
    }

    /// Groups due at `now_ms` or before, soonest first.
    pub async fn due_groups(&self, now_ms: i64, limit: u32) -> Result<Vec<GroupRow>> {
        let rows = sqlx::query(
            "SELECT app, receiver, group_key, state, due_at_ms FROM notification_groups \
             WHERE due_at_ms IS NOT NULL AND due_at_ms <= $1 ORDER BY due_at_ms LIMIT $2",
        )
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx(|| "reading due notification groups".into())?;
        rows.iter().map(group_from_row).collect()
    }

    /// When the next group is due (to sleep until then).
    pub async fn next_group_due(&self) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MIN(due_at_ms) AS due FROM notification_groups WHERE due_at_ms IS NOT NULL",
        )
        .fetch_one(&self.pool)
        .await
        .ctx(|| "reading the next due notification group".into())?;
        get(&row, "due", &|| "notification groups".to_string())
    }

    /// Records the routing of notification `id` in one transaction: its groups' new states,
    /// the change to the firing alerts, and the notification marked routed (so it is
    /// routed once).
    pub async fn route_notification(
        &self,
        id: i64,
        groups: &[GroupRow],
        active: &ActiveChange,
        now_ms: i64,
    ) -> Result<()> {
        let op = || format!("routing notification {id}");
        let mut tx = self.pool.begin().await.ctx(op)?;
        let marked = sqlx::query(
            "UPDATE notifications SET routed_at_ms = $1 WHERE id = $2 AND routed_at_ms IS NULL",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&mut *tx)
        .await
        .ctx(op)?;
        if marked.rows_affected() == 0 {
            return Err(StoreError::Conflict(format!(
                "notification {id} is already routed"
            )));
        }
        for g in groups {
            upsert_group(&mut tx, g).await?;
        }
        match active {
            ActiveChange::None => {}
            ActiveChange::Firing(n) => {
                let body =
                    serde_json::to_string(n).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                sqlx::query(
                    "INSERT INTO notification_active_alerts (fingerprint, app, body, since_ms) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (fingerprint) DO UPDATE \
                     SET body = excluded.body",
                )
                .bind(n.fingerprint())
                .bind(&n.app)
                .bind(body)
                .bind(n.at_ms)
                .execute(&mut *tx)
                .await
                .ctx(op)?;
            }
            ActiveChange::Resolved(fingerprint) => {
                sqlx::query("DELETE FROM notification_active_alerts WHERE fingerprint = $1")
                    .bind(fingerprint)
                    .execute(&mut *tx)
                    .await
                    .ctx(op)?;
            }
        }
        tx.commit().await.ctx(op)
    }

    /// Saves a group's new state after a flush, with the deliveries the flush planned, in
    /// one transaction; `state: None` deletes an idle group.
    pub async fn flush_group(
        &self,
        group: &GroupRow,
        state: Option<&GroupRow>,
        deliveries: &[NewDelivery],
        now_ms: i64,
    ) -> Result<()> {
        let op = || format!("flushing notification group {}", group.group_key);
        let mut tx = self.pool.begin().await.ctx(op)?;
        match state {
            Some(g) => upsert_group(&mut tx, g).await?,
            None => {
                sqlx::query(
                    "DELETE FROM notification_groups \
                     WHERE app = $1 AND receiver = $2 AND group_key = $3",
                )
                .bind(&group.app)
                .bind(&group.receiver)
                .bind(&group.group_key)
                .execute(&mut *tx)
                .await
                .ctx(op)?;
            }
        }
        for d in deliveries {
            insert_delivery(&mut tx, d, now_ms).await?;
        }
        tx.commit().await.ctx(op)
    }

    /// Pending deliveries due at `now_ms` or before, oldest first.
    pub async fn due_deliveries(&self, now_ms: i64, limit: u32) -> Result<Vec<DeliveryRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            delivery_cols!(),
            " FROM notification_deliveries WHERE state = $1 AND next_attempt_at_ms <= $2 \
             ORDER BY next_attempt_at_ms, id LIMIT $3"
        ))
        .bind(DeliveryState::Pending.as_str())
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx(|| "reading due deliveries".into())?;
        rows.iter().map(delivery_from_row).collect()
    }

    /// When the next pending delivery is due.
    pub async fn next_delivery_due(&self) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MIN(next_attempt_at_ms) AS due FROM notification_deliveries WHERE state = $1",
        )
        .bind(DeliveryState::Pending.as_str())
        .fetch_one(&self.pool)
        .await
        .ctx(|| "reading the next due delivery".into())?;
        get(&row, "due", &|| "notification deliveries".to_string())
    }

    /// Claims an attempt of delivery `id` before it is made: counts it and schedules the
    /// next one at `retry_at_ms` (so a crash during the attempt retries it then). `false`
    /// when the delivery is no longer pending with `attempts` attempts (someone else
    /// claimed it); `Conflict` when the fence no longer holds ([`Store::set_fence`]: a server
    /// that lost the lease sends nothing).
    pub async fn claim_delivery(&self, id: i64, attempts: i64, retry_at_ms: i64) -> Result<bool> {
        let op = || format!("claiming delivery {id}");
        let mut tx = self.pool.begin().await.ctx(op)?;
        self.check_fence(&mut tx).await?;
        let done = sqlx::query(
            "UPDATE notification_deliveries SET attempts = attempts + 1, next_attempt_at_ms = $1 \
             WHERE id = $2 AND attempts = $3 AND state = $4",
        )
        .bind(retry_at_ms)
        .bind(id)
        .bind(attempts)
        .bind(DeliveryState::Pending.as_str())
        .execute(&mut *tx)
        .await
        .ctx(op)?;
        tx.commit().await.ctx(op)?;
        Ok(done.rows_affected() == 1)
    }

    /// Records an attempt's outcome: delivered (`error: None`), or its error with the next
    /// attempt at `retry_at_ms`, or (`retry_at_ms: None`) the delivery `failed`. Only a
    /// pending delivery changes.
    pub async fn finish_delivery(
        &self,
        id: i64,
        error: Option<&str>,
        retry_at_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<()> {
        let (state, delivered_at) = match (error, retry_at_ms) {
            (None, _) => (DeliveryState::Delivered, Some(now_ms)),
            (Some(_), None) => (DeliveryState::Failed, None),
            (Some(_), Some(_)) => (DeliveryState::Pending, None),
        };
        sqlx::query(
            "UPDATE notification_deliveries SET state = $1, last_error = COALESCE($2, last_error), \
             delivered_at_ms = $3, next_attempt_at_ms = COALESCE($4, next_attempt_at_ms) \
             WHERE id = $5 AND state = $6",
        )
        .bind(state.as_str())
        .bind(error)
        .bind(delivered_at)
        .bind(retry_at_ms)
        .bind(id)
        .bind(DeliveryState::Pending.as_str())
        .execute(&self.pool)
        .await
        .ctx(|| format!("recording the outcome of delivery {id}"))?;
        Ok(())
    }

    /// The delivery history, newest first.
    pub async fn deliveries(&self, q: &DeliveryQuery) -> Result<Vec<DeliveryRecord>> {
        let scopes = q.scopes.as_deref().unwrap_or_default();
        if q.scopes.is_some() && scopes.is_empty() {
            return Ok(Vec::new());
        }
        // $1..$4 are the fixed filters, then one (app, env) pair per two placeholders
        let pairs: Vec<String> = (0..scopes.len())
            .map(|i| format!("(app = ${} AND env = ${})", 5 + 2 * i, 6 + 2 * i))
            .collect();
        let scoped = match pairs.is_empty() {
            true => String::new(),
            false => format!(" AND ({})", pairs.join(" OR ")),
        };
        let sql = format!(
            concat!(
                "SELECT ",
                delivery_cols!(),
                " FROM notification_deliveries WHERE ($1 IS NULL OR app = $1) \
                 AND ($2 IS NULL OR env = $2) AND ($3 IS NULL OR state = $3){} \
                 ORDER BY id DESC LIMIT $4"
            ),
            scoped
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(q.app.as_deref())
            .bind(q.env.as_deref())
            .bind(q.state.map(|s| s.as_str()))
            .bind(i64::from(q.limit));
        for (app, env) in scopes {
            query = query.bind(app).bind(env);
        }
        let rows = query
            .fetch_all(&self.pool)
            .await
            .ctx(|| "reading the delivery history".into())?;
        rows.iter().map(delivery_from_row).collect()
    }

    /// The (app, env) pairs that have deliveries (to decide which of them a caller sees).
    pub async fn delivery_scopes(&self) -> Result<Vec<(String, String)>> {
        let rows =
            sqlx::query("SELECT DISTINCT app, env FROM notification_deliveries ORDER BY app, env")
                .fetch_all(&self.pool)
                .await
                .ctx(|| "reading the apps and environments of the delivery history".into())?;
        rows.iter()
            .map(|row| {
                let what = || "notification_deliveries".to_string();
                Ok((get(row, "app", &what)?, get(row, "env", &what)?))
            })
            .collect()
    }

    /// Deletes at most `limit` deliveries that are done (delivered, failed, inhibited) and
    /// were created before `before_ms`, then at most `limit` routed notifications created
    /// before then that no pending delivery needs and that are not an alert firing now
    /// (a group repeats those). Call again while a count reaches `limit`.
    pub async fn prune_notifications(&self, before_ms: i64, limit: u32) -> Result<Pruned> {
        let op = || "pruning the notification history".to_string();
        let limit = i64::from(limit);
        let deliveries = sqlx::query(
            "DELETE FROM notification_deliveries WHERE id IN (SELECT id FROM \
             notification_deliveries WHERE created_at_ms < $1 AND state <> $2 \
             ORDER BY created_at_ms LIMIT $3)",
        )
        .bind(before_ms)
        .bind(DeliveryState::Pending.as_str())
        .bind(limit)
        .execute(&self.pool)
        .await
        .ctx(op)?;
        // A pending delivery is younger than its attempts' schedule (minutes), so one
        // created before the cutoff keeps its notifications.
        let oldest_pending: Option<i64> = get(
            &sqlx::query(
                "SELECT MIN(created_at_ms) AS oldest FROM notification_deliveries \
                 WHERE state = $1",
            )
            .bind(DeliveryState::Pending.as_str())
            .fetch_one(&self.pool)
            .await
            .ctx(op)?,
            "oldest",
            &op,
        )?;
        let cutoff = oldest_pending.map_or(before_ms, |t| t.min(before_ms));
        let notifications = sqlx::query(
            "DELETE FROM notifications WHERE id IN (SELECT n.id FROM notifications n \
             WHERE n.created_at_ms < $1 AND n.routed_at_ms IS NOT NULL \
             AND NOT (n.kind = $2 AND n.fingerprint IN \
             (SELECT fingerprint FROM notification_active_alerts)) \
             ORDER BY n.created_at_ms LIMIT $3)",
        )
        .bind(cutoff)
        .bind(ferry_core::notify::Kind::AlertFiring.as_str())
        .bind(limit)
        .execute(&self.pool)
        .await
        .ctx(op)?;
        Ok(Pruned {
            deliveries: deliveries.rows_affected(),
            notifications: notifications.rows_affected(),
        })
    }
}

fn group_from_row(row: &AnyRow) -> Result<GroupRow> {
    let what = || "notification group".to_string();
    Ok(GroupRow {
        app: get(row, "app", &what)?,
        receiver: get(row, "receiver", &what)?,
        group_key: get(row, "group_key", &what)?,
        state: get(row, "state", &what)?,
        due_at_ms: get(row, "due_at_ms", &what)?,
    })
}
