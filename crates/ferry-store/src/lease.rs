//! Leader leases and wake-ups between servers (migration 0020).
//!
//! A lease is one row per name: its holder (a server id, and the process holding it under
//! that id: its *instance*, new at every start, so two live servers given the same id are
//! two holders), a fencing token incremented at every acquisition (never reused, so an
//! action stamped with an old token is recognisably stale) and its expiry. Every decision is one compare-and-set statement judged by the
//! *database's* clock (`statement_timestamp()` on PostgreSQL, `julianday('now')` on
//! SQLite), never a server's: servers whose clocks disagree still agree on who holds it.
//! The pure rules of when to renew and when to stop acting are `ferry_core::lease`.
//!
//! Wake-ups: a server that wrote something the leader must act on calls
//! [`Store::wake_leader`]; on PostgreSQL that is a `NOTIFY` which [`Store::follow_wakes`]
//! (a `LISTEN`ing connection on the leader) turns into a call at once; on SQLite (one host,
//! one server) it does nothing and the in-process wake-up plus the leader's poll cover it.

use std::future::Future;
use std::time::Duration;

use sqlx::any::AnyRow;

use crate::{Ctx, Result, Store, StoreError, get};

/// The PostgreSQL channel servers wake the leader on.
pub const WAKE_CHANNEL: &str = "ferry_wake";

/// A lease granted to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The fencing token of this holding (greater than any earlier holding's).
    pub token: i64,
    /// When it ends, by the database's clock (Unix ms).
    pub expires_at_ms: i64,
    /// The database's clock when it granted (Unix ms).
    pub db_now_ms: i64,
}

/// A lease as stored, with the database's clock when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub name: String,
    pub holder: String,
    /// The process holding it under `holder` (empty: a holding older than migration 0021).
    pub instance: String,
    pub token: i64,
    pub expires_at_ms: i64,
    /// When the current holder acquired it (database clock).
    pub acquired_at_ms: i64,
    pub renewed_at_ms: i64,
    pub db_now_ms: i64,
}

impl LeaseRecord {
    /// Whether someone holds it now (by the database's clock when it was read).
    pub fn held(&self) -> bool {
        !self.holder.is_empty() && self.expires_at_ms > self.db_now_ms
    }
}

/// What an attempt to acquire met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquire {
    Granted(LeaseGrant),
    /// Another server holds it (as read right after the attempt).
    HeldBy(LeaseRecord),
}

/// The lease the holder's deployment transitions are fenced with (see
/// [`Store::set_fence`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub name: String,
    pub holder: String,
    pub token: i64,
}

/// Longest lease name and holder id the store accepts.
pub const MAX_LEASE_NAME_LEN: usize = 200;

fn check_ttl(ttl_ms: u64) -> Result<i64> {
    i64::try_from(ttl_ms)
        .ok()
        .filter(|ttl| (1..=86_400_000).contains(ttl))
        .ok_or_else(|| StoreError::Conflict(format!("lease TTL {ttl_ms}ms out of range")))
}

fn check_names(name: &str, holder: &str) -> Result<()> {
    if name.is_empty() || holder.is_empty() {
        return Err(StoreError::Conflict(
            "a lease needs a name and a holder".into(),
        ));
    }
    if name.len() > MAX_LEASE_NAME_LEN || holder.len() > MAX_LEASE_NAME_LEN {
        return Err(StoreError::Conflict(format!(
            "lease name and holder are at most {MAX_LEASE_NAME_LEN} bytes"
        )));
    }
    Ok(())
}

fn check_instance(instance: &str) -> Result<()> {
    if instance.is_empty() || instance.len() > MAX_LEASE_NAME_LEN {
        return Err(StoreError::Conflict(format!(
            "a lease holder's instance is 1 to {MAX_LEASE_NAME_LEN} bytes"
        )));
    }
    Ok(())
}

fn lease_from_row(row: &AnyRow) -> Result<LeaseRecord> {
    let name: String = get(row, "name", &|| "leases row".to_string())?;
    let what = || format!("lease {name}");
    Ok(LeaseRecord {
        holder: get(row, "holder", &what)?,
        instance: get(row, "instance", &what)?,
        token: get(row, "token", &what)?,
        expires_at_ms: get(row, "expires_at_ms", &what)?,
        acquired_at_ms: get(row, "acquired_at_ms", &what)?,
        renewed_at_ms: get(row, "renewed_at_ms", &what)?,
        db_now_ms: get(row, "db_now_ms", &what)?,
        name: name.clone(),
    })
}

fn grant_from_row(row: &AnyRow, name: &str) -> Result<LeaseGrant> {
    let what = || format!("lease {name}");
    Ok(LeaseGrant {
        token: get(row, "token", &what)?,
        expires_at_ms: get(row, "expires_at_ms", &what)?,
        db_now_ms: get(row, "renewed_at_ms", &what)?,
    })
}

impl Store {
    /// The database's clock in Unix milliseconds, as SQL (one value per statement).
    pub(crate) fn db_now_sql(&self) -> &'static str {
        if self.postgres.is_some() {
            "CAST(EXTRACT(EPOCH FROM statement_timestamp()) * 1000 AS BIGINT)"
        } else {
            "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)"
        }
    }

    /// Takes the lease `name` for `holder` (its process `instance`) for `ttl_ms` if it is
    /// free or expired (by the database's clock), or already this very holder's (same id
    /// and instance): each acquisition gets a new fencing token. Held under the same id by
    /// another instance is [`Acquire::HeldBy`], like any other holder.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        instance: &str,
        ttl_ms: u64,
    ) -> Result<Acquire> {
        check_names(name, holder)?;
        check_instance(instance)?;
        let ttl = check_ttl(ttl_ms)?;
        let op = || format!("acquiring lease {name} for {holder}");
        sqlx::query(
            "INSERT INTO leases (name, holder, token, expires_at_ms, acquired_at_ms, renewed_at_ms) \
             VALUES ($1, '', 0, 0, 0, 0) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .execute(&self.pool)
        .await
        .ctx(op)?;
        let now = self.db_now_sql();
        let sql = format!(
            "UPDATE leases SET holder = $2, instance = $4, token = token + 1, \
             expires_at_ms = {now} + $3, acquired_at_ms = {now}, renewed_at_ms = {now} \
             WHERE name = $1 AND ((holder = $2 AND instance = $4) OR expires_at_ms <= {now}) \
             RETURNING token, expires_at_ms, renewed_at_ms"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .bind(holder)
            .bind(ttl)
            .bind(instance)
            .fetch_optional(&self.pool)
            .await
            .ctx(op)?;
        match row {
            Some(row) => Ok(Acquire::Granted(grant_from_row(&row, name)?)),
            None => match self.lease(name).await? {
                Some(record) => Ok(Acquire::HeldBy(record)),
                None => Err(StoreError::NotFound(format!("lease {name}"))),
            },
        }
    }

    /// Takes the lease from the holding `from` (as read) before it expires: for a holder
    /// known to be dead (a server on this host whose process is gone). Only that exact
    /// holding (holder, instance and token) is replaced; a new one is not.
    pub async fn take_over_lease(
        &self,
        name: &str,
        holder: &str,
        instance: &str,
        ttl_ms: u64,
        from: &LeaseRecord,
    ) -> Result<Acquire> {
        check_names(name, holder)?;
        check_instance(instance)?;
        let ttl = check_ttl(ttl_ms)?;
        let now = self.db_now_sql();
        let sql = format!(
            "UPDATE leases SET holder = $2, instance = $6, token = token + 1, \
             expires_at_ms = {now} + $3, acquired_at_ms = {now}, renewed_at_ms = {now} \
             WHERE name = $1 AND holder = $4 AND token = $5 AND instance = $7 \
             RETURNING token, expires_at_ms, renewed_at_ms"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .bind(holder)
            .bind(ttl)
            .bind(&from.holder)
            .bind(from.token)
            .bind(instance)
            .bind(&from.instance)
            .fetch_optional(&self.pool)
            .await
            .ctx(|| format!("taking lease {name} over from {}", from.holder))?;
        match row {
            Some(row) => Ok(Acquire::Granted(grant_from_row(&row, name)?)),
            None => match self.lease(name).await? {
                Some(record) => Ok(Acquire::HeldBy(record)),
                None => Err(StoreError::NotFound(format!("lease {name}"))),
            },
        }
    }

    /// Extends `holder`'s lease by `ttl_ms` from the database's now, if it still holds it
    /// with `token` and it has not expired. `None`: the lease is lost (stop acting).
    pub async fn renew_lease(
        &self,
        name: &str,
        holder: &str,
        token: i64,
        ttl_ms: u64,
    ) -> Result<Option<LeaseGrant>> {
        check_names(name, holder)?;
        let ttl = check_ttl(ttl_ms)?;
        let now = self.db_now_sql();
        let sql = format!(
            "UPDATE leases SET expires_at_ms = {now} + $4, renewed_at_ms = {now} \
             WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at_ms > {now} \
             RETURNING token, expires_at_ms, renewed_at_ms"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .bind(holder)
            .bind(token)
            .bind(ttl)
            .fetch_optional(&self.pool)
            .await
            .ctx(|| format!("renewing lease {name} for {holder}"))?;
        row.map(|row| grant_from_row(&row, name)).transpose()
    }

    /// Gives the lease up at once (a clean shutdown), if `holder` still holds it with
    /// `token`; the next acquisition needs no wait. Returns whether it was released.
    pub async fn release_lease(&self, name: &str, holder: &str, token: i64) -> Result<bool> {
        check_names(name, holder)?;
        let now = self.db_now_sql();
        let sql = format!(
            "UPDATE leases SET expires_at_ms = {now} \
             WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at_ms > {now}"
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .bind(holder)
            .bind(token)
            .execute(&self.pool)
            .await
            .ctx(|| format!("releasing lease {name} for {holder}"))?;
        Ok(done.rows_affected() == 1)
    }

    /// The lease `name` as stored, with the database's clock now.
    pub async fn lease(&self, name: &str) -> Result<Option<LeaseRecord>> {
        let sql = format!(
            "SELECT name, holder, instance, token, expires_at_ms, acquired_at_ms, \
             renewed_at_ms, {} AS db_now_ms FROM leases WHERE name = $1",
            self.db_now_sql()
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .ctx(|| format!("reading lease {name}"))?;
        row.as_ref().map(lease_from_row).transpose()
    }

    /// From now on the leader's writes through this store (and its clones) commit only while
    /// `fence`'s holder still holds the lease with its token, unexpired (checked in the
    /// write's own transaction; on PostgreSQL the lease row is locked `FOR SHARE` until the
    /// commit, so a takeover waits for it): every deployment transition, and the writes
    /// whose double execution a user would see — a replica's row (written before it
    /// starts), a hook attempt's (before it runs), a notification delivery's claim (before
    /// it is sent), the alerts of a rule with their notifications, a guarded flag
    /// rollout's step. `None` lifts it.
    pub fn set_fence(&self, fence: Option<Fence>) {
        *self
            .fence
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fence;
    }

    /// Fails with `Conflict` (a lost compare-and-set: the caller drops what followed) unless
    /// the fence set by [`Store::set_fence`] still holds, inside `tx`.
    pub(crate) async fn check_fence(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    ) -> Result<()> {
        let fence = self
            .fence
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(fence) = fence else {
            return Ok(());
        };
        let lock = if self.postgres.is_some() {
            " FOR SHARE"
        } else {
            ""
        };
        let sql = format!(
            "SELECT token FROM leases WHERE name = $1 AND holder = $2 AND token = $3 \
             AND expires_at_ms > {}{lock}",
            self.db_now_sql()
        );
        let held = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&fence.name)
            .bind(&fence.holder)
            .bind(fence.token)
            .fetch_optional(&mut **tx)
            .await
            .ctx(|| format!("checking lease {}", fence.name))?;
        match held {
            Some(_) => Ok(()),
            None => Err(StoreError::Conflict(format!(
                "fenced: {} no longer holds lease {} with token {}",
                fence.holder, fence.name, fence.token
            ))),
        }
    }

    /// Wakes the leader (any server's, this one's included) after a write it must act on:
    /// a `NOTIFY` on PostgreSQL; nothing on SQLite (one server: its in-process wake-up).
    pub async fn wake_leader(&self) -> Result<()> {
        if self.postgres.is_none() {
            return Ok(());
        }
        sqlx::query(sqlx::AssertSqlSafe(format!("NOTIFY {WAKE_CHANNEL}")))
            .execute(&self.pool)
            .await
            .ctx(|| "waking the leader".into())?;
        Ok(())
    }

    /// Calls `on_wake` for every [`Store::wake_leader`] of any server, until `stop`
    /// resolves: a `LISTEN`ing PostgreSQL connection of its own, reconnected with backoff
    /// (100 ms doubling to 5 s) when lost, and `on_wake` called once after each reconnection
    /// (a wake-up may have been missed meanwhile). On SQLite it only waits for `stop`.
    pub async fn follow_wakes(&self, on_wake: impl Fn() + Send, stop: impl Future<Output = ()>) {
        self.follow(WAKE_CHANNEL, on_wake, stop).await;
    }

    /// [`Store::follow_wakes`] for any `channel` (`ferry_changed`: see `live.rs`).
    pub(crate) async fn follow(
        &self,
        channel: &'static str,
        on_wake: impl Fn() + Send,
        stop: impl Future<Output = ()>,
    ) {
        let Some(url) = self.postgres.clone() else {
            stop.await;
            return;
        };
        let follow = async move {
            let mut failures = 0u32;
            loop {
                match listen(&url.0, channel).await {
                    Ok(mut listener) => {
                        if failures > 0 {
                            tracing::info!("listening for wake-ups again");
                            on_wake();
                        }
                        failures = 0;
                        loop {
                            match listener.try_recv().await {
                                Ok(Some(_)) => on_wake(),
                                Ok(None) => {
                                    tracing::warn!("lost the wake-up connection");
                                    break;
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, "lost the wake-up connection");
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot listen for wake-ups"),
                }
                let wait = 100u64.saturating_mul(1 << failures.min(6)).min(5_000);
                failures = failures.saturating_add(1);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        };
        tokio::select! {
            () = stop => {}
            () = follow => {}
        }
    }
}

async fn listen(
    url: &str,
    channel: &str,
) -> std::result::Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    // A lost connection ends `try_recv` with `None`; the caller reconnects with backoff.
    listener.eager_reconnect(false);
    listener.listen(channel).await?;
    Ok(listener)
}

/// A PostgreSQL URL kept for the wake-up listener; never printed (it may hold a password).
#[derive(Clone)]
pub(crate) struct PostgresUrl(pub(crate) String);

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::redact(&self.0))
    }
}
