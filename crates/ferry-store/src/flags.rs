//! Feature flags: their state per app environment, the revision that versions what is
//! served, every change with its before and after, client tokens, registered SDKs and the
//! evaluation counts they report.

use ferry_core::flags::guard::Guard;
use ferry_core::flags::{Feature, Segment};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::any::AnyRow;

use crate::{Ctx, Result, Store, StoreError, get};

/// One flag of one environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagRecord {
    pub name: String,
    pub feature: Feature,
    pub archived: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub updated_by: String,
}

/// The new state of one flag, written by [`Store::write_flags`].
#[derive(Debug, Clone, PartialEq)]
pub struct FlagWrite {
    pub feature: Feature,
    pub archived: bool,
}

/// What the SDK endpoints serve for an environment: every flag that is not archived, the
/// segments, and the revision they are at.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedFlags {
    pub revision: i64,
    pub epoch: String,
    pub features: Vec<Feature>,
    pub segments: Vec<Segment>,
}

/// One change of one flag.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagChange {
    pub flag: String,
    pub revision: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    pub reason: Option<String>,
}

/// What an SDK request needs before anything else: whose client token it carries and the
/// revision of that app environment's flags (0 and epoch `none` before any flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagClientScope {
    pub app: String,
    pub env: String,
    pub revision: i64,
    pub epoch: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagTokenRecord {
    pub id: i64,
    pub app: String,
    pub env: String,
    pub name: String,
    pub created_by: String,
    pub created_at_ms: i64,
}

/// Evaluation counts of one flag in one hour.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagMetricRow {
    pub flag: String,
    pub bucket_ms: i64,
    pub yes: i64,
    pub no: i64,
    pub variants: std::collections::BTreeMap<String, i64>,
}

/// A guarded rollout of a flag, as stored (the latest of a flag is its current one).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlagGuardRecord {
    pub id: i64,
    pub app: String,
    pub env: String,
    pub flag: String,
    /// Bumped by every write: the compare-and-set of [`Store::update_flag_guard`].
    pub seq: i64,
    pub guard: Guard,
    pub started_by: String,
    pub started_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Given the stored flag, its new state; `None` writes nothing.
pub type FlagDecide<'a> = Box<dyn FnOnce(Option<FlagRecord>) -> Option<FlagWrite> + Send + 'a>;

/// Why [`Store::start_flag_guard`] wrote nothing.
#[derive(Debug)]
pub enum GuardRefused<E> {
    /// The flag has a running guarded rollout already.
    Running(Box<FlagGuardRecord>),
    /// `decide` refused.
    Refused(E),
}

/// Who changed what, and why (one per write).
pub struct ChangeMeta<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub reason: Option<&'a str>,
    pub now_ms: i64,
    /// The epoch of the environment's revision if this write creates it.
    pub new_epoch: &'a str,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// A JSON text column as `T` (a NULL is JSON `null`: `None` for an `Option`).
fn json_col<T: DeserializeOwned>(row: &AnyRow, col: &str, what: &dyn Fn() -> String) -> Result<T> {
    let text: Option<String> = get(row, col, what)?;
    serde_json::from_str(text.as_deref().unwrap_or("null"))
        .map_err(|e| corrupt(&format!("{}: column {col}", what()), e))
}

fn flag_from_row(row: &AnyRow) -> Result<FlagRecord> {
    let name: String = get(row, "name", &|| "flags row".to_string())?;
    let what = || format!("flag {name}");
    let archived: i64 = get(row, "archived", &what)?;
    Ok(FlagRecord {
        feature: json_col(row, "feature_json", &what)?,
        archived: archived != 0,
        created_at_ms: get(row, "created_at_ms", &what)?,
        updated_at_ms: get(row, "updated_at_ms", &what)?,
        updated_by: get(row, "updated_by", &what)?,
        name,
    })
}

fn guard_from_row(row: &AnyRow) -> Result<FlagGuardRecord> {
    let id: i64 = get(row, "id", &|| "flag_guards row".to_string())?;
    let what = || format!("guarded rollout {id}");
    Ok(FlagGuardRecord {
        id,
        app: get(row, "app", &what)?,
        env: get(row, "env", &what)?,
        flag: get(row, "flag", &what)?,
        seq: get(row, "seq", &what)?,
        guard: json_col(row, "guard_json", &what)?,
        started_by: get(row, "started_by", &what)?,
        started_at_ms: get(row, "started_at_ms", &what)?,
        updated_at_ms: get(row, "updated_at_ms", &what)?,
    })
}

fn change_from_row(row: &AnyRow) -> Result<FlagChange> {
    let what = || "flag_changes row".to_string();
    Ok(FlagChange {
        flag: get(row, "flag", &what)?,
        revision: get(row, "revision", &what)?,
        at_ms: get(row, "at_ms", &what)?,
        actor: get(row, "actor", &what)?,
        action: get(row, "action", &what)?,
        before: json_col(row, "before_json", &what)?,
        after: json_col(row, "after_json", &what)?,
        reason: get(row, "reason", &what)?,
    })
}

fn token_from_row(row: &AnyRow) -> Result<FlagTokenRecord> {
    let what = || "flag client token".to_string();
    Ok(FlagTokenRecord {
        id: get(row, "id", &what)?,
        app: get(row, "app", &what)?,
        env: get(row, "env", &what)?,
        name: get(row, "name", &what)?,
        created_by: get(row, "created_by", &what)?,
        created_at_ms: get(row, "created_at_ms", &what)?,
    })
}

fn metric_from_row(row: &AnyRow) -> Result<FlagMetricRow> {
    let what = || "flag_metrics row".to_string();
    Ok(FlagMetricRow {
        flag: get(row, "flag", &what)?,
        bucket_ms: get(row, "bucket_ms", &what)?,
        yes: get(row, "yes", &what)?,
        no: get(row, "no", &what)?,
        variants: Default::default(),
    })
}

const GUARD_COLS: &str =
    "id, app, env, flag, seq, guard_json, started_by, started_at_ms, updated_at_ms";

const FLAG_COLS: &str = "name, feature_json, archived, created_at_ms, updated_at_ms, updated_by";

/// One flag, read through the pool or inside a transaction.
async fn read_flag<'e>(
    ex: impl sqlx::Executor<'e, Database = sqlx::Any>,
    app: &str,
    env: &str,
    name: &str,
) -> Result<Option<FlagRecord>> {
    let sql = format!("SELECT {FLAG_COLS} FROM flags WHERE app = $1 AND env = $2 AND name = $3");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(app)
        .bind(env)
        .bind(name)
        .fetch_optional(ex)
        .await
        .ctx(|| format!("reading flag {name} of {app}/{env}"))?;
    row.as_ref().map(flag_from_row).transpose()
}

impl Store {
    /// The flags of an environment, by name (archived ones too when asked).
    pub async fn list_flags(
        &self,
        app: &str,
        env: &str,
        include_archived: bool,
    ) -> Result<Vec<FlagRecord>> {
        let sql = format!(
            "SELECT {FLAG_COLS} FROM flags WHERE app = $1 AND env = $2 {} ORDER BY name",
            if include_archived {
                ""
            } else {
                "AND archived = 0"
            }
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(app)
            .bind(env)
            .fetch_all(&self.pool)
            .await
            .ctx(|| format!("listing the flags of {app}/{env}"))?;
        rows.iter().map(flag_from_row).collect()
    }

    pub async fn get_flag(&self, app: &str, env: &str, name: &str) -> Result<Option<FlagRecord>> {
        read_flag(&self.pool, app, env, name).await
    }

    /// `(revision, epoch)` of an environment's flags; `None` before its first flag.
    pub async fn flag_revision(&self, app: &str, env: &str) -> Result<Option<(i64, String)>> {
        let row = sqlx::query("SELECT revision, epoch FROM flag_envs WHERE app = $1 AND env = $2")
            .bind(app)
            .bind(env)
            .fetch_optional(&self.pool)
            .await
            .ctx(|| format!("reading the flag revision of {app}/{env}"))?;
        let what = || format!("flag revision of {app}/{env}");
        row.map(|r| Ok((get(&r, "revision", &what)?, get(&r, "epoch", &what)?)))
            .transpose()
    }

    /// Everything the SDK endpoints serve, read in one transaction (so the revision matches
    /// the flags).
    pub async fn served_flags(&self, app: &str, env: &str) -> Result<Option<ServedFlags>> {
        let op = || format!("reading the served flags of {app}/{env}");
        let mut tx = self.pool.begin().await.ctx(op)?;
        let Some(row) = sqlx::query(
            "SELECT revision, epoch, segments_json FROM flag_envs WHERE app = $1 AND env = $2",
        )
        .bind(app)
        .bind(env)
        .fetch_optional(&mut *tx)
        .await
        .ctx(op)?
        else {
            return Ok(None);
        };
        let what = || format!("flag revision of {app}/{env}");
        let rows = sqlx::query(
            "SELECT feature_json FROM flags WHERE app = $1 AND env = $2 AND archived = 0 \
             ORDER BY name",
        )
        .bind(app)
        .bind(env)
        .fetch_all(&mut *tx)
        .await
        .ctx(op)?;
        tx.commit().await.ctx(op)?;
        let features = rows
            .iter()
            .map(|r| json_col(r, "feature_json", &op))
            .collect::<Result<Vec<Feature>>>()?;
        Ok(Some(ServedFlags {
            revision: get(&row, "revision", &what)?,
            epoch: get(&row, "epoch", &what)?,
            segments: json_col(&row, "segments_json", &what)?,
            features,
        }))
    }

    /// Changes flags of an environment in one transaction: bumps the revision first (which
    /// takes the write lock), hands the current state of the named flags to `decide`, writes
    /// what it returns (`None` leaves a flag as it is) and records each change. `decide`'s
    /// error aborts everything. Returns the new revision and the changes made.
    pub async fn write_flags<E: Send>(
        &self,
        app: &str,
        env: &str,
        names: &[String],
        segments: Option<&[Segment]>,
        meta: ChangeMeta<'_>,
        decide: impl FnOnce(Vec<Option<FlagRecord>>) -> std::result::Result<Vec<Option<FlagWrite>>, E>
        + Send,
    ) -> Result<std::result::Result<(i64, Vec<FlagChange>), E>> {
        let op = || format!("changing flags of {app}/{env}");
        let mut tx = self.pool.begin().await.ctx(op)?;
        let written = write_flags_in(&mut tx, app, env, names, segments, &meta, decide).await?;
        if written.is_ok() {
            tx.commit().await.ctx(op)?;
        }
        Ok(written)
    }

    /// The changes of a flag (or of every flag of the environment), newest first.
    pub async fn flag_changes(
        &self,
        app: &str,
        env: &str,
        flag: Option<&str>,
        limit: i64,
    ) -> Result<Vec<FlagChange>> {
        let rows = sqlx::query(
            "SELECT flag, revision, at_ms, actor, action, before_json, after_json, reason \
             FROM flag_changes WHERE app = $1 AND env = $2 AND ($3 IS NULL OR flag = $3) \
             ORDER BY id DESC LIMIT $4",
        )
        .bind(app)
        .bind(env)
        .bind(flag)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .ctx(|| format!("reading the flag changes of {app}/{env}"))?;
        rows.iter().map(change_from_row).collect()
    }

    // -- guarded rollouts ------------------------------------------------------------------

    /// Starts a guarded rollout of `flag`: in one transaction, writes the flag as `decide`
    /// says (its first step) and stores `guard` — unless the flag has a running one.
    pub async fn start_flag_guard<E: Send>(
        &self,
        app: &str,
        env: &str,
        flag: &str,
        guard: &Guard,
        meta: ChangeMeta<'_>,
        decide: impl FnOnce(Option<FlagRecord>) -> std::result::Result<FlagWrite, E> + Send,
    ) -> Result<std::result::Result<(FlagGuardRecord, i64, Vec<FlagChange>), GuardRefused<E>>> {
        let op = || format!("starting a guarded rollout of {flag} in {app}/{env}");
        let json = serde_json::to_string(guard).map_err(|e| corrupt(&op(), e))?;
        let mut tx = self.pool.begin().await.ctx(op)?;
        // The revision is bumped first: that takes the write lock before the check below.
        let written = write_flags_in(
            &mut tx,
            app,
            env,
            &[flag.to_string()],
            None,
            &meta,
            |mut c| decide(c.pop().flatten()).map(|w| vec![Some(w)]),
        )
        .await?;
        let (revision, changes) = match written {
            Ok(w) => w,
            Err(e) => return Ok(Err(GuardRefused::Refused(e))),
        };
        let sql = format!(
            "SELECT {GUARD_COLS} FROM flag_guards WHERE app = $1 AND env = $2 AND flag = $3 \
             AND running = 1"
        );
        let running = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(app)
            .bind(env)
            .bind(flag)
            .fetch_optional(&mut *tx)
            .await
            .ctx(op)?;
        if let Some(row) = running {
            return Ok(Err(GuardRefused::Running(Box::new(guard_from_row(&row)?))));
        }
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO flag_guards (app, env, flag, running, seq, guard_json, started_by, \
             started_at_ms, updated_at_ms) VALUES ($1, $2, $3, 1, 1, $4, $5, $6, $6) RETURNING id",
        )
        .bind(app)
        .bind(env)
        .bind(flag)
        .bind(&json)
        .bind(meta.actor)
        .bind(meta.now_ms)
        .fetch_one(&mut *tx)
        .await
        .ctx(op)?;
        tx.commit().await.ctx(op)?;
        let record = FlagGuardRecord {
            id,
            app: app.into(),
            env: env.into(),
            flag: flag.into(),
            seq: 1,
            guard: guard.clone(),
            started_by: meta.actor.into(),
            started_at_ms: meta.now_ms,
            updated_at_ms: meta.now_ms,
        };
        Ok(Ok((record, revision, changes)))
    }

    /// Stores `next` as the new state of guarded rollout `current` if nobody wrote it since
    /// (`current.seq`), and in the same transaction writes the flag as `write` says (its
    /// `decide` may refuse: nothing is written). `false` when nothing was written. Fenced
    /// ([`Store::set_fence`]: a guard step is applied by the leader only).
    pub async fn update_flag_guard(
        &self,
        current: &FlagGuardRecord,
        next: &Guard,
        now_ms: i64,
        write: Option<(ChangeMeta<'_>, FlagDecide<'_>)>,
    ) -> Result<bool> {
        let (app, env, flag) = (&current.app, &current.env, &current.flag);
        let op = || format!("updating guarded rollout {} of {flag}", current.id);
        let json = serde_json::to_string(next).map_err(|e| corrupt(&op(), e))?;
        let mut tx = self.pool.begin().await.ctx(op)?;
        self.check_fence(&mut tx).await?;
        if let Some((meta, decide)) = write {
            let written = write_flags_in(
                &mut tx,
                app,
                env,
                std::slice::from_ref(flag),
                None,
                &meta,
                |mut c| decide(c.pop().flatten()).map(|w| vec![Some(w)]).ok_or(()),
            )
            .await?;
            if written.is_err() {
                return Ok(false);
            }
        }
        let done = sqlx::query(
            "UPDATE flag_guards SET guard_json = $1, running = $2, seq = seq + 1, \
             updated_at_ms = $3 WHERE id = $4 AND seq = $5",
        )
        .bind(&json)
        .bind(i64::from(next.state.is_running()))
        .bind(now_ms)
        .bind(current.id)
        .bind(current.seq)
        .execute(&mut *tx)
        .await
        .ctx(op)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        tx.commit().await.ctx(op)?;
        Ok(true)
    }

    /// The guarded rollouts the server drives.
    pub async fn running_flag_guards(&self) -> Result<Vec<FlagGuardRecord>> {
        let sql = format!("SELECT {GUARD_COLS} FROM flag_guards WHERE running = 1 ORDER BY id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .ctx(|| "listing the running guarded rollouts".to_string())?;
        rows.iter().map(guard_from_row).collect()
    }

    /// The latest guarded rollout of each flag of an environment (of one flag if named).
    pub async fn latest_flag_guards(
        &self,
        app: &str,
        env: &str,
        flag: Option<&str>,
    ) -> Result<Vec<FlagGuardRecord>> {
        let sql = format!(
            "SELECT {GUARD_COLS} FROM flag_guards WHERE id IN (SELECT MAX(id) FROM flag_guards \
             WHERE app = $1 AND env = $2 AND ($3 IS NULL OR flag = $3) GROUP BY flag) \
             ORDER BY flag"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(app)
            .bind(env)
            .bind(flag)
            .fetch_all(&self.pool)
            .await
            .ctx(|| format!("reading the guarded rollouts of {app}/{env}"))?;
        rows.iter().map(guard_from_row).collect()
    }

    // -- client tokens ---------------------------------------------------------------------

    pub async fn create_flag_token(
        &self,
        app: &str,
        env: &str,
        name: &str,
        token_sha256: &str,
        created_by: &str,
        now_ms: i64,
    ) -> Result<FlagTokenRecord> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO flag_tokens (app, env, name, token_sha256, created_by, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        )
        .bind(app)
        .bind(env)
        .bind(name)
        .bind(token_sha256)
        .bind(created_by)
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await
        .ctx(|| format!("creating a flag client token for {app}/{env}"))?;
        Ok(FlagTokenRecord {
            id,
            app: app.into(),
            env: env.into(),
            name: name.into(),
            created_by: created_by.into(),
            created_at_ms: now_ms,
        })
    }

    /// The app environment of a client token and its flags' revision, in one read (an SDK's
    /// poll answered 304 reads nothing else).
    pub async fn flag_client_scope(&self, token_sha256: &str) -> Result<Option<FlagClientScope>> {
        let row = sqlx::query(
            "SELECT t.app AS app, t.env AS env, e.revision AS revision, e.epoch AS epoch \
             FROM flag_tokens t LEFT JOIN flag_envs e ON e.app = t.app AND e.env = t.env \
             WHERE t.token_sha256 = $1",
        )
        .bind(token_sha256)
        .fetch_optional(&self.pool)
        .await
        .ctx(|| "looking up a flag client token".to_string())?;
        let what = || "flag client token".to_string();
        row.map(|r| {
            let revision: Option<i64> = get(&r, "revision", &what)?;
            let epoch: Option<String> = get(&r, "epoch", &what)?;
            Ok(FlagClientScope {
                app: get(&r, "app", &what)?,
                env: get(&r, "env", &what)?,
                revision: revision.unwrap_or(0),
                epoch: epoch.unwrap_or_else(|| "none".to_string()),
            })
        })
        .transpose()
    }

    pub async fn list_flag_tokens(&self, app: &str, env: &str) -> Result<Vec<FlagTokenRecord>> {
        let rows = sqlx::query(
            "SELECT id, app, env, name, created_by, created_at_ms FROM flag_tokens \
             WHERE app = $1 AND env = $2 ORDER BY id",
        )
        .bind(app)
        .bind(env)
        .fetch_all(&self.pool)
        .await
        .ctx(|| format!("listing the flag client tokens of {app}/{env}"))?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes a client token; `false` if the environment has no such token.
    pub async fn delete_flag_token(&self, app: &str, env: &str, id: i64) -> Result<bool> {
        let done = sqlx::query("DELETE FROM flag_tokens WHERE id = $1 AND app = $2 AND env = $3")
            .bind(id)
            .bind(app)
            .bind(env)
            .execute(&self.pool)
            .await
            .ctx(|| format!("revoking flag client token {id} of {app}/{env}"))?;
        Ok(done.rows_affected() > 0)
    }

    // -- SDKs and their metrics ------------------------------------------------------------

    pub async fn register_flag_client(
        &self,
        app: &str,
        env: &str,
        app_name: &str,
        instance_id: &str,
        sdk_version: &str,
        now_ms: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO flag_clients (app, env, app_name, instance_id, sdk_version, seen_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (app, env, app_name, instance_id) \
             DO UPDATE SET sdk_version = excluded.sdk_version, seen_at_ms = excluded.seen_at_ms",
        )
        .bind(app)
        .bind(env)
        .bind(app_name)
        .bind(instance_id)
        .bind(sdk_version)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .ctx(|| format!("registering an SDK of {app}/{env}"))?;
        Ok(())
    }

    /// Adds reported counts (one transaction for the whole report).
    pub async fn add_flag_metrics(
        &self,
        app: &str,
        env: &str,
        rows: &[FlagMetricRow],
    ) -> Result<()> {
        let op = || format!("recording flag metrics of {app}/{env}");
        let mut tx = self.pool.begin().await.ctx(op)?;
        for row in rows {
            sqlx::query(
                "INSERT INTO flag_metrics (app, env, flag, bucket_ms, yes, no) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (app, env, flag, bucket_ms) \
                 DO UPDATE SET yes = flag_metrics.yes + excluded.yes, \
                 no = flag_metrics.no + excluded.no",
            )
            .bind(app)
            .bind(env)
            .bind(&row.flag)
            .bind(row.bucket_ms)
            .bind(row.yes)
            .bind(row.no)
            .execute(&mut *tx)
            .await
            .ctx(op)?;
            for (variant, count) in &row.variants {
                sqlx::query(
                    "INSERT INTO flag_metric_variants (app, env, flag, bucket_ms, variant, count) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (app, env, flag, bucket_ms, variant) \
                     DO UPDATE SET count = flag_metric_variants.count + excluded.count",
                )
                .bind(app)
                .bind(env)
                .bind(&row.flag)
                .bind(row.bucket_ms)
                .bind(variant)
                .bind(*count)
                .execute(&mut *tx)
                .await
                .ctx(op)?;
            }
        }
        tx.commit().await.ctx(op)?;
        Ok(())
    }

    /// Counts since `since_ms`, per flag (all flags when `flag` is `None`) and hour, oldest
    /// first.
    pub async fn flag_metrics(
        &self,
        app: &str,
        env: &str,
        flag: Option<&str>,
        since_ms: i64,
    ) -> Result<Vec<FlagMetricRow>> {
        let op = || format!("reading flag metrics of {app}/{env}");
        let rows = sqlx::query(
            "SELECT flag, bucket_ms, yes, no FROM flag_metrics WHERE app = $1 AND env = $2 \
             AND ($3 IS NULL OR flag = $3) AND bucket_ms >= $4 ORDER BY flag, bucket_ms",
        )
        .bind(app)
        .bind(env)
        .bind(flag)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await
        .ctx(op)?;
        let mut out = rows
            .iter()
            .map(metric_from_row)
            .collect::<Result<Vec<_>>>()?;
        let variants = sqlx::query(
            "SELECT flag, bucket_ms, variant, count FROM flag_metric_variants \
             WHERE app = $1 AND env = $2 AND ($3 IS NULL OR flag = $3) AND bucket_ms >= $4",
        )
        .bind(app)
        .bind(env)
        .bind(flag)
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await
        .ctx(op)?;
        for v in &variants {
            let (f, b): (String, i64) = (get(v, "flag", &op)?, get(v, "bucket_ms", &op)?);
            if let Some(row) = out.iter_mut().find(|r| r.flag == f && r.bucket_ms == b) {
                row.variants
                    .insert(get(v, "variant", &op)?, get(v, "count", &op)?);
            }
        }
        Ok(out)
    }
}

/// [`Store::write_flags`] inside a transaction the caller commits.
async fn write_flags_in<E: Send>(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    app: &str,
    env: &str,
    names: &[String],
    segments: Option<&[Segment]>,
    meta: &ChangeMeta<'_>,
    decide: impl FnOnce(Vec<Option<FlagRecord>>) -> std::result::Result<Vec<Option<FlagWrite>>, E>
    + Send,
) -> Result<std::result::Result<(i64, Vec<FlagChange>), E>> {
    let op = || format!("changing flags of {app}/{env}");
    let segments_json = match segments {
        Some(s) => Some(serde_json::to_string(s).map_err(|e| corrupt(&op(), e))?),
        None => None,
    };
    let revision: i64 = sqlx::query_scalar(
        "INSERT INTO flag_envs (app, env, revision, epoch, segments_json, updated_at_ms) \
         VALUES ($1, $2, 1, $3, COALESCE($4, '[]'), $5) \
         ON CONFLICT (app, env) DO UPDATE SET revision = flag_envs.revision + 1, \
         segments_json = COALESCE($4, flag_envs.segments_json), updated_at_ms = $5 \
         RETURNING revision",
    )
    .bind(app)
    .bind(env)
    .bind(meta.new_epoch)
    .bind(segments_json.as_deref())
    .bind(meta.now_ms)
    .fetch_one(&mut **tx)
    .await
    .ctx(op)?;
    let mut current = Vec::with_capacity(names.len());
    for name in names {
        current.push(read_flag(&mut **tx, app, env, name).await?);
    }
    let writes = match decide(current.clone()) {
        Ok(w) => w,
        Err(e) => return Ok(Err(e)),
    };
    let mut changes = Vec::new();
    for ((name, before), write) in names.iter().zip(current).zip(writes) {
        let Some(write) = write else { continue };
        let json = serde_json::to_string(&write.feature).map_err(|e| corrupt(&op(), e))?;
        sqlx::query(
            "INSERT INTO flags (app, env, name, feature_json, archived, created_at_ms, \
             updated_at_ms, updated_by) VALUES ($1, $2, $3, $4, $5, $6, $6, $7) \
             ON CONFLICT (app, env, name) DO UPDATE SET feature_json = excluded.feature_json, \
             archived = excluded.archived, updated_at_ms = excluded.updated_at_ms, \
             updated_by = excluded.updated_by",
        )
        .bind(app)
        .bind(env)
        .bind(name)
        .bind(&json)
        .bind(i64::from(write.archived))
        .bind(meta.now_ms)
        .bind(meta.actor)
        .execute(&mut **tx)
        .await
        .ctx(op)?;
        let as_value = |f: &Feature, archived: bool| {
            let mut v = serde_json::to_value(f).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("archived".into(), archived.into());
            }
            v
        };
        let change = FlagChange {
            flag: name.clone(),
            revision,
            at_ms: meta.now_ms,
            actor: meta.actor.to_string(),
            action: meta.action.to_string(),
            before: before.as_ref().map(|b| as_value(&b.feature, b.archived)),
            after: Some(as_value(&write.feature, write.archived)),
            reason: meta.reason.map(str::to_string),
        };
        sqlx::query(
            "INSERT INTO flag_changes (app, env, flag, revision, at_ms, actor, action, \
             before_json, after_json, reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(app)
        .bind(env)
        .bind(name)
        .bind(revision)
        .bind(meta.now_ms)
        .bind(meta.actor)
        .bind(meta.action)
        .bind(change.before.as_ref().map(|v| v.to_string()))
        .bind(change.after.as_ref().map(|v| v.to_string()))
        .bind(meta.reason)
        .execute(&mut **tx)
        .await
        .ctx(op)?;
        changes.push(change);
    }
    Ok(Ok((revision, changes)))
}
