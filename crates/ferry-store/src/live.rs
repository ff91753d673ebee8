//! What the leader last saw of each environment (`env_live`: its replicas' live health and
//! its traffic, as JSON the server writes and reads), and the `ferry_changed` wake-ups by
//! which the leader tells the other servers' live views (`/watch`, waiting CLIs, the
//! console) to look again.

use crate::{Ctx, Result, Store, get};

/// The PostgreSQL channel of "the leader changed something" (timeline, live views).
pub const CHANGED_CHANNEL: &str = "ferry_changed";

/// One environment's live view as the leader stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveRecord {
    /// The server that saw it (the leader then).
    pub server: String,
    /// When, by that server's clock (Unix ms).
    pub observed_at_ms: i64,
    /// The view, as JSON.
    pub body: String,
}

impl Store {
    /// Stores what `server` sees of app/env now (replacing what was there).
    pub async fn save_live(
        &self,
        app: &str,
        env: &str,
        server: &str,
        observed_at_ms: i64,
        body: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO env_live (app, env, server, observed_at_ms, body) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (app, env) DO UPDATE SET \
             server = excluded.server, observed_at_ms = excluded.observed_at_ms, \
             body = excluded.body",
        )
        .bind(app)
        .bind(env)
        .bind(server)
        .bind(observed_at_ms)
        .bind(body)
        .execute(&self.pool)
        .await
        .ctx(|| format!("saving the live view of {app}/{env}"))?;
        Ok(())
    }

    /// What the leader last stored of app/env, if anything.
    pub async fn live(&self, app: &str, env: &str) -> Result<Option<LiveRecord>> {
        let what = || format!("live view of {app}/{env}");
        let row = sqlx::query(
            "SELECT server, observed_at_ms, body FROM env_live WHERE app = $1 AND env = $2",
        )
        .bind(app)
        .bind(env)
        .fetch_optional(&self.pool)
        .await
        .ctx(what)?;
        row.map(|row| {
            Ok(LiveRecord {
                server: get(&row, "server", &what)?,
                observed_at_ms: get(&row, "observed_at_ms", &what)?,
                body: get(&row, "body", &what)?,
            })
        })
        .transpose()
    }

    /// Tells the other servers that the leader changed something they may show: a `NOTIFY`
    /// on PostgreSQL; nothing on SQLite (they look every 500 ms there).
    pub async fn announce_change(&self) -> Result<()> {
        if self.postgres.is_none() {
            return Ok(());
        }
        sqlx::query(sqlx::AssertSqlSafe(format!("NOTIFY {CHANGED_CHANNEL}")))
            .execute(&self.pool)
            .await
            .ctx(|| "announcing a change".into())?;
        Ok(())
    }

    /// Whether other servers hear [`Store::announce_change`] (PostgreSQL).
    pub fn announces_changes(&self) -> bool {
        self.postgres.is_some()
    }

    /// Calls `on_change` for every [`Store::announce_change`] of any server until `stop`
    /// (and once after each reconnection), like [`Store::follow_wakes`].
    pub async fn follow_changes(
        &self,
        on_change: impl Fn() + Send,
        stop: impl std::future::Future<Output = ()>,
    ) {
        self.follow(CHANGED_CHANNEL, on_change, stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_live_view_is_replaced_whole_and_read_back_with_who_saw_it_when() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_sqlite_file(&dir.path().join("ferry.db"))
            .await
            .expect("store");
        assert_eq!(store.live("shop", "prod").await.expect("read"), None);
        store
            .save_live("shop", "prod", "a", 1_000, r#"{"replicas":[]}"#)
            .await
            .expect("save");
        store
            .save_live("shop", "prod", "b", 2_000, r#"{"replicas":[1]}"#)
            .await
            .expect("replace");
        store
            .save_live("shop", "dev", "a", 1_500, "{}")
            .await
            .expect("another environment");
        assert_eq!(
            store.live("shop", "prod").await.expect("read"),
            Some(LiveRecord {
                server: "b".into(),
                observed_at_ms: 2_000,
                body: r#"{"replicas":[1]}"#.into(),
            })
        );
        // SQLite has no wake-ups between servers: nothing to announce, nothing to hear.
        assert!(!store.announces_changes());
        store.announce_change().await.expect("a no-op");
    }
}
