//! The hash-chained audit log and its signed checkpoints.
//!
//! [`Store::append_audit`] seals each entry against the current head inside one write
//! transaction (the `audit_lock` row is written first, so concurrent appenders queue up on
//! every engine): seq increases by one without gaps and every record links to the previous
//! one. Verification is `ferry_core::audit::verify` over [`Store::audit_records`].

use ferry_core::audit::{self, AuditEntry, AuditRecord, Checkpoint};
use serde::Serialize;
use sqlx::any::AnyRow;

use crate::{Ctx, Result, Store, get};

/// A search of the audit log. Every filter is optional; results are newest first.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct AuditQuery {
    pub actor: Option<String>,
    pub app: Option<String>,
    pub env: Option<String>,
    pub action: Option<String>,
    /// Records at or after this time.
    pub since_ms: Option<i64>,
    /// Records before this time.
    pub until_ms: Option<i64>,
    /// Only records with a smaller seq (paging backwards).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// A stored checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointRecord {
    pub id: i64,
    #[serde(flatten)]
    pub checkpoint: Checkpoint,
}

macro_rules! audit_cols {
    () => {
        "seq, at_ms, actor, source, action, app, env, target, summary, reason, outcome, \
         prev_hash, hash"
    };
}

fn record_from_row(row: &AnyRow) -> Result<AuditRecord> {
    let seq: i64 = get(row, "seq", &|| "audit_log row".to_string())?;
    let what = || format!("audit record {seq}");
    Ok(AuditRecord {
        seq,
        entry: AuditEntry {
            at_ms: get(row, "at_ms", &what)?,
            actor: get(row, "actor", &what)?,
            source: get(row, "source", &what)?,
            action: get(row, "action", &what)?,
            app: get(row, "app", &what)?,
            env: get(row, "env", &what)?,
            target: get(row, "target", &what)?,
            summary: get(row, "summary", &what)?,
            reason: get(row, "reason", &what)?,
            outcome: get(row, "outcome", &what)?,
        },
        prev_hash: get(row, "prev_hash", &what)?,
        hash: get(row, "hash", &what)?,
    })
}

fn checkpoint_from_row(row: &AnyRow) -> Result<CheckpointRecord> {
    let id: i64 = get(row, "id", &|| "audit_checkpoints row".to_string())?;
    let what = || format!("audit checkpoint {id}");
    Ok(CheckpointRecord {
        id,
        checkpoint: Checkpoint {
            count: get(row, "count", &what)?,
            head_hash: get(row, "head_hash", &what)?,
            at_ms: get(row, "at_ms", &what)?,
            signature: get(row, "signature", &what)?,
        },
    })
}

impl Store {
    /// Seals `entry` as the next record of the chain and stores it, atomically: the head is
    /// read and the record inserted in one write transaction, so concurrent appends get
    /// consecutive seqs and each links to the one before.
    pub async fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord> {
        let action = entry.action.clone();
        let op = || format!("appending audit record {action}");
        let mut tx = self.pool.begin().await.ctx(op)?;
        // write first: the write lock (SQLite) / row lock (PostgreSQL) serialises appenders
        sqlx::query("UPDATE audit_lock SET bumps = bumps + 1 WHERE id = 1")
            .execute(&mut *tx)
            .await
            .ctx(op)?;
        let head = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await
            .ctx(op)?;
        let (seq, prev_hash) = match &head {
            Some(row) => {
                let what = || "audit head".to_string();
                let seq: i64 = get(row, "seq", &what)?;
                let hash: String = get(row, "hash", &what)?;
                (seq + 1, hash)
            }
            None => (1, audit::GENESIS.to_string()),
        };
        let record = audit::seal(seq, &prev_hash, entry);
        let e = &record.entry;
        sqlx::query(concat!(
            "INSERT INTO audit_log (",
            audit_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
        ))
        .bind(record.seq)
        .bind(e.at_ms)
        .bind(&e.actor)
        .bind(e.source.as_deref())
        .bind(&e.action)
        .bind(e.app.as_deref())
        .bind(e.env.as_deref())
        .bind(e.target.as_deref())
        .bind(&e.summary)
        .bind(e.reason.as_deref())
        .bind(&e.outcome)
        .bind(&record.prev_hash)
        .bind(&record.hash)
        .execute(&mut *tx)
        .await
        .ctx(op)?;
        tx.commit().await.ctx(op)?;
        Ok(record)
    }

    /// Records with `seq > after_seq`, in seq order, at most `limit` (for verification and
    /// export, page by page).
    pub async fn audit_records(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            audit_cols!(),
            " FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2"
        ))
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx(|| "reading the audit log".into())?;
        rows.iter().map(record_from_row).collect()
    }

    /// Records matching the query, newest first.
    pub async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            audit_cols!(),
            " FROM audit_log WHERE ($1 IS NULL OR actor = $1) AND ($2 IS NULL OR app = $2) ",
            "AND ($3 IS NULL OR env = $3) AND ($4 IS NULL OR action = $4) ",
            "AND ($5 IS NULL OR at_ms >= $5) AND ($6 IS NULL OR at_ms < $6) ",
            "AND ($7 IS NULL OR seq < $7) ORDER BY seq DESC LIMIT $8"
        ))
        .bind(q.actor.as_deref())
        .bind(q.app.as_deref())
        .bind(q.env.as_deref())
        .bind(q.action.as_deref())
        .bind(q.since_ms)
        .bind(q.until_ms)
        .bind(q.before_seq)
        .bind(i64::from(q.limit))
        .fetch_all(&self.pool)
        .await
        .ctx(|| "searching the audit log".into())?;
        rows.iter().map(record_from_row).collect()
    }

    /// The newest record's `(seq, hash)`, if any.
    pub async fn audit_head(&self) -> Result<Option<(i64, String)>> {
        let row = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await
            .ctx(|| "reading the audit head".into())?;
        row.as_ref()
            .map(|row| {
                let what = || "audit head".to_string();
                Ok((get(row, "seq", &what)?, get(row, "hash", &what)?))
            })
            .transpose()
    }

    /// Stores a signed checkpoint; returns its id.
    pub async fn insert_audit_checkpoint(&self, c: &Checkpoint) -> Result<i64> {
        let row = sqlx::query(
            "INSERT INTO audit_checkpoints (count, head_hash, at_ms, signature) \
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(c.count)
        .bind(&c.head_hash)
        .bind(c.at_ms)
        .bind(&c.signature)
        .fetch_one(&self.pool)
        .await
        .ctx(|| format!("storing the audit checkpoint at {}", c.count))?;
        get(&row, "id", &|| "audit checkpoint".to_string())
    }

    /// Checkpoints, newest first, at most `limit`.
    pub async fn list_audit_checkpoints(&self, limit: u32) -> Result<Vec<CheckpointRecord>> {
        let rows = sqlx::query(
            "SELECT id, count, head_hash, at_ms, signature FROM audit_checkpoints \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .ctx(|| "listing audit checkpoints".into())?;
        rows.iter().map(checkpoint_from_row).collect()
    }

    /// The newest checkpoint, if any.
    pub async fn latest_audit_checkpoint(&self) -> Result<Option<CheckpointRecord>> {
        Ok(self.list_audit_checkpoints(1).await?.into_iter().next())
    }
}
