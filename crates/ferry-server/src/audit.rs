//! The audit log's server side: the checkpoint key and task, the query/export/verify
//! endpoints and the change record of a deployment. Records are written by the gate
//! ([`crate::access::gate`]); the chain and signatures are `ferry_core::audit`.

use std::path::Path as FsPath;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ferry_core::api::EventView;
use ferry_core::api::audit::{ChangeRecord, ReleaseInfo, VerifyReport};
use ferry_core::audit::{self, AuditRecord, Break, Checkpoint};
use ferry_core::rbac::{Permission, Target};
use ferry_store::{AuditQuery, CheckpointRecord, Store, StoreError};
use rand::RngExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::access::Access;
use crate::api::{ApiFailure, ApiResult, AppState, internal};
use crate::auth::{self, rfc3339};
use crate::clock::now_ms;
use crate::error::ServerError;

/// How often the server checkpoints a grown chain.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(60);
const PAGE: u32 = 10_000;

/// Reads `DIR/audit.key` (64 hex characters), creating it (mode 0600) on first start.
pub fn load_or_create_key(data_dir: &FsPath) -> Result<[u8; 32], ServerError> {
    let path = data_dir.join("audit.key");
    let invalid = |why: &str| {
        ServerError::io(
            format!("reading {}", path.display()),
            std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string()),
        )
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let bytes = audit::from_hex(text.trim())
                .ok_or_else(|| invalid("the audit key must be 64 hex characters"))?;
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| invalid("the audit key must be 64 hex characters (32 bytes)"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::rng().random();
            auth::write_private(&path, &format!("{}\n", auth::hex(&key)))?;
            Ok(key)
        }
        Err(e) => Err(ServerError::io(format!("reading {}", path.display()), e)),
    }
}

/// Signs and stores a checkpoint if the chain grew since the last one; returns it.
pub async fn checkpoint_now(
    store: &Store,
    key: &[u8; 32],
) -> Result<Option<Checkpoint>, StoreError> {
    let Some((count, head_hash)) = store.audit_head().await? else {
        return Ok(None);
    };
    let last = store.latest_audit_checkpoint().await?;
    if last.is_some_and(|c| c.checkpoint.count >= count) {
        return Ok(None);
    }
    let checkpoint = audit::sign_checkpoint(key, count, &head_hash, now_ms());
    store.insert_audit_checkpoint(&checkpoint).await?;
    tracing::debug!(count, "audit checkpoint written");
    Ok(Some(checkpoint))
}

/// Background task: a checkpoint every [`CHECKPOINT_EVERY`] when the chain grew, and a
/// last one at shutdown.
pub async fn run_checkpoints(store: Store, key: [u8; 32], shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => {
                if let Err(e) = checkpoint_now(&store, &key).await {
                    tracing::warn!(error = %e, "audit checkpoint at shutdown failed");
                }
                return;
            }
        }
        if let Err(e) = checkpoint_now(&store, &key).await {
            tracing::warn!(error = %e, "audit checkpoint failed");
        }
    }
}

async fn all_records(store: &Store) -> Result<Vec<AuditRecord>, StoreError> {
    let mut records: Vec<AuditRecord> = Vec::new();
    let mut after = 0;
    loop {
        let page = store.audit_records(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let full = page.len() == PAGE as usize;
        records.extend(page);
        if !full {
            break;
        }
    }
    Ok(records)
}

fn break_seq(b: &Break) -> i64 {
    match *b {
        Break::Edited { seq } | Break::Reordered { seq } => seq,
        Break::Missing { after_seq, .. } => after_seq + 1,
        Break::HeadMismatch {
            expected_count,
            found_count,
        } => {
            if found_count < expected_count {
                found_count + 1
            } else {
                expected_count
            }
        }
    }
}

/// Verifies the whole chain, then against the newest checkpoint (signature first).
pub async fn verify_chain(store: &Store, key: &[u8; 32]) -> Result<VerifyReport, StoreError> {
    let records = all_records(store).await?;
    let checkpoint = store
        .latest_audit_checkpoint()
        .await?
        .map(|c: CheckpointRecord| c.checkpoint);
    let count = i64::try_from(records.len()).unwrap_or(i64::MAX);
    let head_hash = records
        .last()
        .map(|r| r.hash.clone())
        .unwrap_or_else(|| audit::GENESIS.to_string());
    let broken = |b: Break, checkpoint: Option<Checkpoint>| VerifyReport {
        ok: false,
        count,
        head_hash: head_hash.clone(),
        problem: Some(b.to_string()),
        broken_at_seq: Some(break_seq(&b)),
        checkpoint,
    };
    let result = match &checkpoint {
        Some(c) if !audit::check_checkpoint(key, c) => {
            return Ok(VerifyReport {
                ok: false,
                count,
                head_hash: head_hash.clone(),
                problem: Some(format!(
                    "the newest checkpoint (count {}) has an invalid signature: it was not \
                     written with this server's audit key",
                    c.count
                )),
                broken_at_seq: None,
                checkpoint,
            });
        }
        Some(c) => audit::verify_against_checkpoint(&records, c),
        None => audit::verify(&records),
    };
    Ok(match result {
        Ok(head) => VerifyReport {
            ok: true,
            count: head.count,
            head_hash: head.head_hash,
            problem: None,
            broken_at_seq: None,
            checkpoint,
        },
        Err(b) => broken(b, checkpoint),
    })
}

// ---------------------------------------------------------------------------------------------
// Endpoints
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize, Default)]
pub struct AuditParams {
    pub actor: Option<String>,
    pub app: Option<String>,
    pub env: Option<String>,
    pub action: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: Option<u32>,
}

/// Whether the caller may see a record: `view` on its app/env, or for a record about no
/// app (logins, users, roles, tokens) `manage_users`.
fn visible(access: &Access, r: &AuditRecord) -> bool {
    match r.entry.app.as_deref() {
        Some(app) => access.allows(
            Permission::View,
            Target {
                app: Some(app),
                env: r.entry.env.as_deref(),
            },
        ),
        None => access.allows(Permission::ManageUsers, Target::global()),
    }
}

/// `GET /v1/audit`: the newest `limit` (default 100, at most 10 000) matching records the
/// caller may see, oldest first.
pub async fn query(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Query(p): Query<AuditParams>,
) -> ApiResult<Json<Vec<AuditRecord>>> {
    let limit = p.limit.unwrap_or(100).clamp(1, 10_000);
    let mut q = AuditQuery {
        actor: p.actor,
        app: p.app,
        env: p.env,
        action: p.action,
        since_ms: p.since_ms,
        until_ms: p.until_ms,
        before_seq: None,
        limit: limit.max(500),
    };
    let mut found = Vec::new();
    // page backwards, filtering by visibility, until enough or the start of the log
    for _ in 0..1_000 {
        let page = state.store.query_audit(&q).await.map_err(internal)?;
        let Some(last) = page.last() else { break };
        q.before_seq = Some(last.seq);
        let exhausted = page.len() < q.limit as usize;
        found.extend(page.into_iter().filter(|r| visible(&access, r)));
        if found.len() >= limit as usize || exhausted {
            break;
        }
    }
    found.truncate(limit as usize);
    found.reverse();
    Ok(Json(found))
}

/// `GET /v1/audit/export`: every matching record the caller may see, oldest first, one
/// JSON object per line.
pub async fn export(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Query(p): Query<AuditParams>,
) -> ApiResult<Response> {
    let matches = |r: &AuditRecord| {
        let e = &r.entry;
        p.actor.as_ref().is_none_or(|a| &e.actor == a)
            && p.app.as_ref().is_none_or(|a| e.app.as_ref() == Some(a))
            && p.env.as_ref().is_none_or(|v| e.env.as_ref() == Some(v))
            && p.action.as_ref().is_none_or(|a| &e.action == a)
            && p.since_ms.is_none_or(|t| e.at_ms >= t)
            && p.until_ms.is_none_or(|t| e.at_ms < t)
    };
    let limit = p.limit.map(|l| l as usize).unwrap_or(usize::MAX);
    let mut out = String::new();
    let mut n = 0usize;
    for r in all_records(&state.store).await.map_err(internal)? {
        if n >= limit {
            break;
        }
        if matches(&r) && visible(&access, &r) {
            out.push_str(&serde_json::to_string(&r).map_err(internal)?);
            out.push('\n');
            n += 1;
        }
    }
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson; charset=utf-8")],
        out,
    )
        .into_response())
}

pub async fn verify(State(state): State<AppState>) -> ApiResult<Json<VerifyReport>> {
    Ok(Json(
        verify_chain(&state.store, &state.gov.audit_key)
            .await
            .map_err(internal)?,
    ))
}

#[derive(Deserialize)]
pub struct CheckpointParams {
    pub limit: Option<u32>,
}

/// `GET /v1/audit/checkpoints`: newest first (default 100).
pub async fn checkpoints(
    State(state): State<AppState>,
    Query(p): Query<CheckpointParams>,
) -> ApiResult<Json<Vec<Checkpoint>>> {
    Ok(Json(
        state
            .store
            .list_audit_checkpoints(p.limit.unwrap_or(100).clamp(1, 10_000))
            .await
            .map_err(internal)?
            .into_iter()
            .map(|c| c.checkpoint)
            .collect(),
    ))
}

// ---------------------------------------------------------------------------------------------
// Change record
// ---------------------------------------------------------------------------------------------

#[derive(Deserialize)]
pub struct FormatParam {
    pub format: Option<String>,
}

pub async fn change_record(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(format): Query<FormatParam>,
) -> ApiResult<Response> {
    let markdown = match format.format.as_deref() {
        None | Some("json") => false,
        Some("markdown") | Some("md") => true,
        Some(other) => {
            return Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("format {other:?}: use json or markdown"),
            ));
        }
    };
    let record = build_change_record(&state.store, id).await?;
    if markdown {
        Ok((
            [(header::CONTENT_TYPE, "text/markdown; charset=utf-8")],
            render_markdown(&record),
        )
            .into_response())
    } else {
        Ok(Json(record).into_response())
    }
}

async fn build_change_record(store: &Store, id: i64) -> ApiResult<ChangeRecord> {
    let d = store
        .get_deployment(id)
        .await
        .map_err(internal)?
        .ok_or_else(|| {
            ApiFailure::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("deployment {id} not found"),
            )
        })?;
    let timeline = store.events_after(id, 0, 100_000).await.map_err(internal)?;
    let of_kind = |pred: &dyn Fn(&EventView) -> bool| {
        timeline
            .iter()
            .filter(|e| pred(e))
            .cloned()
            .collect::<Vec<_>>()
    };
    let state_changes = of_kind(&|e| e.kind == "state");
    let analysis = of_kind(&|e| {
        e.kind == ferry_core::model::EventKind::Analysis
            || e.kind.as_str().contains("verdict")
            || e.message.to_ascii_lowercase().contains("analysis")
    });
    let traffic = of_kind(&|e| e.kind == "traffic");
    let release_created = store
        .list_releases(&d.app)
        .await
        .map_err(internal)?
        .into_iter()
        .find(|r| r.version == d.version)
        .map(|r| r.created_at_ms);
    let target = format!("deployment {id}");
    let mut audit_records = Vec::new();
    let mut q = AuditQuery {
        app: Some(d.app.clone()),
        env: Some(d.env.clone()),
        since_ms: Some(d.created_at_ms.saturating_sub(1_000)),
        limit: 1_000,
        ..AuditQuery::default()
    };
    for _ in 0..100 {
        let page = store.query_audit(&q).await.map_err(internal)?;
        let Some(last) = page.last() else { break };
        q.before_seq = Some(last.seq);
        let exhausted = page.len() < q.limit as usize;
        audit_records.extend(
            page.into_iter()
                .filter(|r| r.entry.target.as_deref() == Some(target.as_str())),
        );
        if exhausted {
            break;
        }
    }
    audit_records.reverse();
    Ok(ChangeRecord {
        release: ReleaseInfo {
            app: d.app.clone(),
            version: d.version.clone(),
            previous_version: d.previous_version.clone(),
            created_at_ms: release_created,
        },
        requested_by: d.requested_by.clone(),
        created_at_ms: d.created_at_ms,
        finished_at_ms: d.finished_at_ms,
        outcome: d.state.to_string(),
        reason: d.reason.clone(),
        manifest_revision: d.manifest_revision,
        deployment: d.view(),
        timeline,
        state_changes,
        analysis,
        traffic,
        audit: audit_records,
        approvals: store.approvals(id).await.map_err(internal)?,
        gates: store
            .passed_gates(id)
            .await
            .map_err(internal)?
            .map(|(rows, _)| rows)
            .unwrap_or_default(),
        overrides: store.overrides(id).await.map_err(internal)?,
        hooks: store
            .hook_runs(id)
            .await
            .map_err(internal)?
            .iter()
            .map(crate::api_hooks::view)
            .collect(),
        generated_at_ms: now_ms(),
    })
}

/// A Markdown section `title` with one table row per entry of `rows` (cells escaped), or
/// "_None recorded._".
fn table(out: &mut String, title: &str, headers: &[&str], rows: Vec<Vec<String>>) {
    use std::fmt::Write;
    let _ = writeln!(out, "\n## {title}\n");
    if rows.is_empty() {
        let _ = writeln!(out, "_None recorded._");
        return;
    }
    let _ = writeln!(out, "| {} |", headers.join(" | "));
    let _ = writeln!(out, "|{}", " --- |".repeat(headers.len()));
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| cell(c)).collect();
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// A change record as Markdown, for pasting into a change-management ticket.
pub fn render_markdown(c: &ChangeRecord) -> String {
    use std::fmt::Write;
    let d = &c.deployment;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Change record: {} {} → {} (deployment #{})\n",
        d.app, d.version, d.env, d.id
    );
    let _ = writeln!(out, "| Field | Value |\n| --- | --- |");
    let rows: Vec<(&str, String)> = vec![
        ("App", d.app.clone()),
        ("Environment", d.env.clone()),
        (
            "Release",
            match &c.release.previous_version {
                Some(prev) => format!("{} (previous: {prev})", d.version),
                None => d.version.clone(),
            },
        ),
        ("Kind", d.kind.to_string()),
        ("Strategy", d.strategy.clone()),
        ("Manifest revision", c.manifest_revision.to_string()),
        ("Requested by", c.requested_by.clone()),
        ("Created", rfc3339(c.created_at_ms)),
        (
            "Finished",
            c.finished_at_ms
                .map(rfc3339)
                .unwrap_or_else(|| "(in progress)".to_string()),
        ),
        ("Outcome", c.outcome.clone()),
        (
            "Reason",
            c.reason.clone().unwrap_or_else(|| "-".to_string()),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "| {k} | {} |", cell(&v));
    }
    let events = |out: &mut String, title: &str, list: &[EventView]| {
        let _ = writeln!(out, "\n## {title}\n");
        if list.is_empty() {
            let _ = writeln!(out, "_None recorded._");
        }
        for e in list {
            let _ = writeln!(out, "- {} — {}", rfc3339(e.at_ms), cell(&e.message));
        }
    };
    let _ = writeln!(out, "\n## Approvals\n");
    if c.approvals.is_empty() {
        let _ = writeln!(out, "_None recorded._");
    }
    for a in &c.approvals {
        let verdict = if a.approved { "approved" } else { "rejected" };
        let reason = a
            .reason
            .as_deref()
            .map(|r| format!(": {}", cell(r)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "- {} — {verdict} by {} ({}){reason}",
            rfc3339(a.at_ms),
            cell(&a.approver),
            a.roles.join(", ")
        );
    }
    table(
        &mut out,
        "Gates passed",
        &["Gate", "State", "Detail"],
        c.gates
            .iter()
            .map(|g| vec![g.gate.clone(), g.state.to_string(), g.detail.clone()])
            .collect(),
    );
    events(&mut out, "Analysis verdicts", &c.analysis);
    events(&mut out, "Traffic", &c.traffic);
    table(
        &mut out,
        "Hooks",
        &[
            "Phase", "Hook", "Attempt", "State", "Started", "Duration", "Result",
        ],
        c.hooks
            .iter()
            .map(|h| {
                vec![
                    h.phase.clone(),
                    h.hook.clone(),
                    h.attempt.to_string(),
                    h.state.clone(),
                    rfc3339(h.started_at_ms),
                    h.duration_ms
                        .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                        .unwrap_or_else(|| "-".to_string()),
                    h.summary.clone().unwrap_or_else(|| "-".to_string()),
                ]
            })
            .collect(),
    );
    table(
        &mut out,
        "Audit trail",
        &[
            "#", "Time", "Actor", "Action", "Outcome", "Summary", "Reason",
        ],
        c.audit
            .iter()
            .map(|r| {
                let e = &r.entry;
                vec![
                    r.seq.to_string(),
                    rfc3339(e.at_ms),
                    e.actor.clone(),
                    e.action.clone(),
                    e.outcome.clone(),
                    e.summary.clone(),
                    e.reason.clone().unwrap_or_else(|| "-".to_string()),
                ]
            })
            .collect(),
    );
    let _ = writeln!(
        out,
        "\n## Timeline\n\n| Time | Kind | Event |\n| --- | --- | --- |"
    );
    for e in &c.timeline {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            rfc3339(e.at_ms),
            cell(e.kind.as_str()),
            cell(&e.message)
        );
    }
    let _ = writeln!(
        out,
        "\n_Generated by Ferry at {}._",
        rfc3339(c.generated_at_ms)
    );
    out
}
