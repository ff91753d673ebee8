//! Feature flags over HTTP, three ways from one store:
//! - Ferry's API (`/v1/apps/{app}/envs/{env}/flags…`, through the gate: `view` to read,
//!   `manage_flags` to change; every change audited and kept with its before and after);
//! - Unleash's client API (`/api/client/features|register|metrics`) for Unleash SDKs;
//! - OpenFeature's remote evaluation (`/ofrep/v1/evaluate/flags[/{key}]`).
//!
//! The SDK endpoints authenticate with client tokens (one app environment each; they can
//! only read flags and post metrics). What they serve is versioned by the environment's
//! revision (bumped in the transaction of every change): the ETag is `"epoch-revision"`,
//! and the serialized document and the evaluation engine are built once per revision and
//! kept in [`FlagCache`] — a poll costs one indexed read: the client token and the revision
//! together ([`FlagCache::for_client`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ferry_core::analysis::AnalysisSpec;
use ferry_core::duration::HumanDuration;
use ferry_core::flags::edit::{self, FlagError};
use ferry_core::flags::guard::{self, GuardSpec, GuardState, Judge};
use ferry_core::flags::metrics::{MetricsReport, Registration};
use ferry_core::flags::ofrep::{self, ErrorCode, EvaluationError, OfrepRequest};
use ferry_core::flags::{ClientFeatures, Engine, EvalEnv, Feature, Payload};
use ferry_core::manifest::{Manifest, Strategy};
use ferry_store::{
    ChangeMeta, FlagChange, FlagClientScope, FlagGuardRecord, FlagMetricRow, FlagRecord, FlagWrite,
    GuardRefused, ServedFlags, Store, StoreError,
};
use rand::RngExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::access::{Access, AuditSlot, reason_header};
use crate::api::{ApiFailure, ApiResult, AppState};
use crate::auth;
use crate::clock::now_ms;

const HOUR_MS: i64 = 3_600_000;
/// Client tokens are this long; anything longer is refused before it is hashed.
const MAX_TOKEN_LEN: usize = 200;

// ---------------------------------------------------------------------------------------------
// What is served, per revision
// ---------------------------------------------------------------------------------------------

/// One environment's flags as served at one revision.
pub struct Snapshot {
    epoch: String,
    revision: i64,
    etag: String,
    /// The client-features document, serialized once.
    features_json: Bytes,
    engine: Engine,
}

/// The snapshots in use, one per app environment, replaced when the revision moves.
#[derive(Default)]
pub struct FlagCache {
    snapshots: Mutex<HashMap<(String, String), Arc<Snapshot>>>,
}

/// At most this many environments are cached (then the cache starts over).
const MAX_CACHED: usize = 1_024;

/// The reads the SDK endpoints make of the store (a test wraps it to count them).
pub(crate) trait FlagReads: Sync {
    /// A client token's app environment and its flags' revision, in one read.
    fn client_scope(
        &self,
        token_sha256: &str,
    ) -> impl Future<Output = Result<Option<FlagClientScope>, StoreError>> + Send;
    /// The revision (and epoch) of an app environment's flags.
    fn revision(
        &self,
        app: &str,
        env: &str,
    ) -> impl Future<Output = Result<Option<(i64, String)>, StoreError>> + Send;
    /// What an app environment serves, with its revision.
    fn served(
        &self,
        app: &str,
        env: &str,
    ) -> impl Future<Output = Result<Option<ServedFlags>, StoreError>> + Send;
}

impl FlagReads for Store {
    async fn client_scope(
        &self,
        token_sha256: &str,
    ) -> Result<Option<FlagClientScope>, StoreError> {
        self.flag_client_scope(token_sha256).await
    }

    async fn revision(&self, app: &str, env: &str) -> Result<Option<(i64, String)>, StoreError> {
        self.flag_revision(app, env).await
    }

    async fn served(&self, app: &str, env: &str) -> Result<Option<ServedFlags>, StoreError> {
        self.served_flags(app, env).await
    }
}

impl FlagCache {
    /// The snapshot of `app/env` at its current revision (an empty one before any flag).
    pub async fn current(
        &self,
        store: &impl FlagReads,
        app: &str,
        env: &str,
    ) -> ApiResult<Arc<Snapshot>> {
        let (revision, epoch) = store
            .revision(app, env)
            .await?
            .unwrap_or((0, "none".into()));
        self.at(store, app, env, revision, &epoch).await
    }

    /// What an SDK request is served: the snapshot of its client token's app environment,
    /// whose revision is read with the token — so a poll whose snapshot is cached (every
    /// poll but the first after a change) costs one read of the store, and its ETag derives
    /// from the revision read there. A 401 without a valid client token.
    pub(crate) async fn for_client(
        &self,
        store: &impl FlagReads,
        headers: &HeaderMap,
    ) -> Result<Arc<Snapshot>, Response> {
        let scope = client_scope(store, headers).await?;
        self.at(store, &scope.app, &scope.env, scope.revision, &scope.epoch)
            .await
            .map_err(IntoResponse::into_response)
    }

    /// The snapshot of `app/env` at `revision`/`epoch` (just read): the cached one when it
    /// is at that revision, else built from what the store serves now.
    async fn at(
        &self,
        store: &impl FlagReads,
        app: &str,
        env: &str,
        revision: i64,
        epoch: &str,
    ) -> ApiResult<Arc<Snapshot>> {
        let key = (app.to_string(), env.to_string());
        if let Some(s) = self.lock().get(&key)
            && s.revision == revision
            && s.epoch == epoch
        {
            return Ok(s.clone());
        }
        let served = store.served(app, env).await?;
        let (revision, epoch, doc) = match served {
            Some(s) => (
                s.revision,
                s.epoch,
                ClientFeatures {
                    version: 2,
                    features: s.features,
                    segments: s.segments,
                },
            ),
            None => (
                0,
                "none".to_string(),
                ClientFeatures {
                    version: 2,
                    ..ClientFeatures::default()
                },
            ),
        };
        let features_json = Bytes::from(serde_json::to_vec(&doc).map_err(crate::api::internal)?);
        let snapshot = Arc::new(Snapshot {
            etag: format!("\"{epoch}-{revision}\""),
            epoch,
            revision,
            features_json,
            engine: Engine::new(doc),
        });
        let mut snapshots = self.lock();
        if snapshots.len() >= MAX_CACHED {
            snapshots.clear();
        }
        snapshots.insert(key, snapshot.clone());
        Ok(snapshot)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<Snapshot>>> {
        self.snapshots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether `If-None-Match` names `etag` (a list, `*` and weak forms accepted).
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

fn with_etag(mut response: Response, etag: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(etag) {
        response.headers_mut().insert(header::ETAG, v);
    }
    response
}

fn eval_env_now(random: &mut dyn FnMut() -> u32) -> EvalEnv<'_> {
    EvalEnv {
        now: jiff::Timestamp::from_millisecond(now_ms()).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
        random,
    }
}

// ---------------------------------------------------------------------------------------------
// SDK endpoints (client tokens)
// ---------------------------------------------------------------------------------------------

/// The app environment (and flags' revision) of the client token the request carries
/// (`Authorization: TOKEN` as Unleash SDKs send it, or `Bearer TOKEN`); a 401 otherwise.
/// Ferry API tokens are not client tokens.
async fn client_scope(
    store: &impl FlagReads,
    headers: &HeaderMap,
) -> Result<FlagClientScope, Response> {
    let unauthorized = |message: &str| {
        ApiFailure::new(StatusCode::UNAUTHORIZED, "unauthorized", message).into_response()
    };
    let Some(raw) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(unauthorized(
            "a flag client token is required (Authorization header; `ferry flags token create`)",
        ));
    };
    let token = raw.strip_prefix("Bearer ").unwrap_or(raw).trim();
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(unauthorized("not a flag client token"));
    }
    match store.client_scope(&auth::token_hash(token)).await {
        Ok(Some(scope)) => Ok(scope),
        Ok(None) => Err(unauthorized("unknown or revoked flag client token")),
        Err(e) => Err(crate::api::internal(e).into_response()),
    }
}

/// `GET /api/client/features`: the environment's flags in Unleash's format; 304 when
/// `If-None-Match` names the current revision.
pub async fn client_features(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let snapshot = match state.flags.for_client(&state.store, &headers).await {
        Ok(snapshot) => snapshot,
        Err(r) => return r,
    };
    if not_modified(&headers, &snapshot.etag) {
        return with_etag(StatusCode::NOT_MODIFIED.into_response(), &snapshot.etag);
    }
    let response = (
        [(header::CONTENT_TYPE, "application/json")],
        snapshot.features_json.clone(),
    )
        .into_response();
    with_etag(response, &snapshot.etag)
}

/// `POST /api/client/register`: an SDK instance says hello (202).
pub async fn client_register(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let FlagClientScope { app, env, .. } = match client_scope(&state.store, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Ok(reg) = json_object::<Registration>(&body) else {
        return bad_request("the body must be an Unleash client registration (JSON)")
            .into_response();
    };
    let reg = reg.bounded();
    if let Err(e) = state
        .store
        .register_flag_client(
            &app,
            &env,
            &reg.app_name,
            &reg.instance_id,
            &reg.sdk_version,
            now_ms(),
        )
        .await
    {
        return crate::api::internal(e).into_response();
    }
    StatusCode::ACCEPTED.into_response()
}

/// `POST /api/client/metrics`: yes/no/variant counts, added to the hour they arrive in (202).
pub async fn client_metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let FlagClientScope { app, env, .. } = match client_scope(&state.store, &headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let report = match json_object::<MetricsReport>(&body) {
        Ok(r) => r,
        Err(e) => {
            return bad_request(format!("not an Unleash metrics report: {e}")).into_response();
        }
    };
    if let Err(e) = report.check() {
        return bad_request(e).into_response();
    }
    let bucket_ms = now_ms() / HOUR_MS * HOUR_MS;
    let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let rows: Vec<FlagMetricRow> = report
        .bucket
        .toggles
        .into_iter()
        .map(|(flag, c)| FlagMetricRow {
            flag,
            bucket_ms,
            yes: clamp(c.yes),
            no: clamp(c.no),
            variants: c.variants.into_iter().map(|(k, v)| (k, clamp(v))).collect(),
        })
        .collect();
    if let Err(e) = state.store.add_flag_metrics(&app, &env, &rows).await {
        return crate::api::internal(e).into_response();
    }
    StatusCode::ACCEPTED.into_response()
}

fn ofrep_error(
    status: StatusCode,
    key: Option<&str>,
    code: ErrorCode,
    details: String,
) -> Response {
    let mut body = json!({"errorCode": code, "errorDetails": details});
    if let Some(key) = key {
        body["key"] = key.into();
    }
    (status, Json(body)).into_response()
}

/// A body that must be a JSON object: serde reads an array into a struct's fields in order,
/// so `[]` would pass for a body whose fields are all optional.
fn json_object<T: serde::de::DeserializeOwned + Serialize>(body: &[u8]) -> Result<T, String> {
    match serde_json::from_slice::<Value>(body).map_err(|e| e.to_string())? {
        Value::Object(map) => ferry_core::strict::from_value(Value::Object(map)),
        _ => Err("not a JSON object".into()),
    }
}

/// The evaluation context of an OFREP body (empty: no context); `Err` is the error code.
fn ofrep_context(body: &Bytes) -> Result<ferry_core::flags::Context, (ErrorCode, String)> {
    let request: OfrepRequest = if body.is_empty() {
        OfrepRequest::default()
    } else {
        json_object(body).map_err(|e| {
            (
                ErrorCode::ParseError,
                format!("the body must be {{\"context\": {{…}}}}: {e}"),
            )
        })?
    };
    ofrep::context_from(request.context.as_ref())
}

/// `POST /ofrep/v1/evaluate/flags/{key}`.
pub async fn ofrep_one(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let snapshot = match state.flags.for_client(&state.store, &headers).await {
        Ok(snapshot) => snapshot,
        Err(r) => return r,
    };
    let ctx = match ofrep_context(&body) {
        Ok(c) => c,
        Err((code, details)) => {
            return ofrep_error(StatusCode::BAD_REQUEST, Some(&key), code, details);
        }
    };
    let mut rng = rand::rng();
    let mut random = || rng.random::<u32>();
    match ofrep::evaluate(&snapshot.engine, &key, &ctx, &mut eval_env_now(&mut random)) {
        Ok(evaluation) => Json(evaluation).into_response(),
        Err(EvaluationError {
            key,
            error_code,
            error_details,
        }) => ofrep_error(StatusCode::NOT_FOUND, Some(&key), error_code, error_details),
    }
}

/// `POST /ofrep/v1/evaluate/flags`: every flag for the context; 304 when `If-None-Match`
/// names the ETag of this revision and context.
pub async fn ofrep_all(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let snapshot = match state.flags.for_client(&state.store, &headers).await {
        Ok(snapshot) => snapshot,
        Err(r) => return r,
    };
    let ctx = match ofrep_context(&body) {
        Ok(c) => c,
        Err((code, details)) => return ofrep_error(StatusCode::BAD_REQUEST, None, code, details),
    };
    // The answer depends on the context as much as on the flags.
    let etag = {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        serde_json::to_string(&ctx).unwrap_or_default().hash(&mut h);
        format!(
            "\"{}-{}-{:016x}\"",
            snapshot.epoch,
            snapshot.revision,
            h.finish()
        )
    };
    if not_modified(&headers, &etag) {
        return with_etag(StatusCode::NOT_MODIFIED.into_response(), &etag);
    }
    let mut rng = rand::rng();
    let mut random = || rng.random::<u32>();
    let mut env_now = eval_env_now(&mut random);
    let flags: Vec<Value> = snapshot
        .engine
        .state()
        .features
        .iter()
        .map(
            |f| match ofrep::evaluate(&snapshot.engine, &f.name, &ctx, &mut env_now) {
                Ok(e) => serde_json::to_value(e).unwrap_or_default(),
                Err(e) => serde_json::to_value(e).unwrap_or_default(),
            },
        )
        .collect();
    with_etag(Json(json!({ "flags": flags })).into_response(), &etag)
}

// ---------------------------------------------------------------------------------------------
// Ferry API (through the gate)
// ---------------------------------------------------------------------------------------------

/// A flag operation's body, read as openapi.json describes it (an array where an object
/// belongs is refused, see [`ferry_core::strict`]): 422 naming what is wrong.
fn read_body<T: serde::de::DeserializeOwned + Serialize>(body: Value) -> ApiResult<T> {
    ferry_core::strict::from_value(body).map_err(|e| {
        ApiFailure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("invalid body: {e}"),
        )
    })
}

fn bad_request(message: impl Into<String>) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn invalid(e: FlagError) -> ApiFailure {
    ApiFailure::with_details(
        StatusCode::BAD_REQUEST,
        "invalid_flag",
        e.to_string(),
        vec![e.at],
    )
}

fn not_found(message: impl Into<String>) -> ApiFailure {
    ApiFailure::new(StatusCode::NOT_FOUND, "not_found", message)
}

/// The app must exist and declare the environment; its manifest.
async fn check_env(state: &AppState, app: &str, env: &str) -> ApiResult<Manifest> {
    let record = state
        .store
        .get_app(app)
        .await?
        .ok_or_else(|| not_found(format!("app {app:?} not found")))?;
    serde_json::from_str::<Manifest>(&record.manifest_json)
        .ok()
        .filter(|m| m.environments.get(env).is_some())
        .ok_or_else(|| not_found(format!("app {app} has no environment {env:?}")))
}

/// A flag as listed.
#[derive(Debug, Serialize)]
pub struct FlagSummary {
    pub name: String,
    pub enabled: bool,
    pub archived: bool,
    /// The gradual rollout percentage (100 when no `flexibleRollout` strategy limits it).
    pub rollout: u32,
    pub strategies: Vec<String>,
    pub variants: Vec<String>,
    pub description: Option<String>,
    pub updated_at_ms: i64,
    pub updated_by: String,
    /// The latest guarded rollout (state, step, percentages), in lists.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guarded_rollout: Option<Value>,
}

fn summary(r: &FlagRecord) -> FlagSummary {
    FlagSummary {
        name: r.name.clone(),
        enabled: r.feature.enabled,
        archived: r.archived,
        rollout: edit::rollout_of(&r.feature),
        strategies: r
            .feature
            .strategies
            .iter()
            .map(|s| s.name.clone())
            .collect(),
        variants: r.feature.variants.iter().map(|v| v.name.clone()).collect(),
        description: r.feature.description.clone(),
        updated_at_ms: r.updated_at_ms,
        updated_by: r.updated_by.clone(),
        guarded_rollout: None,
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub archived: bool,
}

/// `GET …/flags`
pub async fn list(
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    check_env(&state, &app, &env).await?;
    // Guards before flags, as in `show`.
    let guards = state.store.latest_flag_guards(&app, &env, None).await?;
    let flags = state.store.list_flags(&app, &env, q.archived).await?;
    let revision = state
        .store
        .flag_revision(&app, &env)
        .await?
        .map_or(0, |r| r.0);
    let flags: Vec<FlagSummary> = flags
        .iter()
        .map(|f| {
            let mut s = summary(f);
            s.guarded_rollout = guards.iter().find(|g| g.flag == f.name).map(|g| {
                let mut view = guard_view(g);
                if let Some(o) = view.as_object_mut() {
                    o.remove("analysis");
                    o.remove("measurements");
                }
                view
            });
            s
        })
        .collect();
    Ok(Json(json!({ "revision": revision, "flags": flags })))
}

/// `GET …/flags/{flag}`: the flag, its last changes and the last day of counts.
pub async fn show(
    State(state): State<AppState>,
    Path((app, env, flag)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    check_env(&state, &app, &env).await?;
    // The guard is read before the flag: a guard step writes both in one transaction, so
    // an ended guard is never shown beside the flag as it was before its last step.
    let guard = state
        .store
        .latest_flag_guards(&app, &env, Some(&flag))
        .await?
        .pop()
        .map(|g| guard_view(&g));
    let record = state
        .store
        .get_flag(&app, &env, &flag)
        .await?
        .ok_or_else(|| not_found(format!("{app}/{env} has no flag {flag:?}")))?;
    let changes = state
        .store
        .flag_changes(&app, &env, Some(&flag), 50)
        .await?;
    let since = now_ms() / HOUR_MS * HOUR_MS - 23 * HOUR_MS;
    let metrics = state
        .store
        .flag_metrics(&app, &env, Some(&flag), since)
        .await?;
    Ok(Json(json!({
        "summary": summary(&record),
        "feature": record.feature,
        "changes": changes,
        "metrics": metrics,
        "guarded_rollout": guard,
    })))
}

/// Who, why, and the epoch a new revision row gets.
struct Change<'a> {
    access: &'a Access,
    action: &'a str,
    reason: Option<String>,
    epoch: String,
}

impl<'a> Change<'a> {
    fn new(
        access: &'a Access,
        action: &'a str,
        headers: &HeaderMap,
        body_reason: Option<String>,
    ) -> Self {
        let bytes: [u8; 8] = rand::rng().random();
        Change {
            access,
            action,
            reason: body_reason
                .filter(|r| !r.trim().is_empty())
                .or_else(|| reason_header(headers).filter(|r| !r.trim().is_empty())),
            epoch: auth::hex(&bytes),
        }
    }

    fn meta(&self) -> ChangeMeta<'_> {
        ChangeMeta {
            actor: &self.access.caller.name,
            action: self.action,
            reason: self.reason.as_deref(),
            now_ms: now_ms(),
            new_epoch: &self.epoch,
        }
    }
}

/// Changes one flag with `decide` (given the stored flag, `None` if absent) and answers
/// the new state; the audit summary says what moved.
async fn change_one(
    state: &AppState,
    slot: &AuditSlot,
    app: &str,
    env: &str,
    flag: &str,
    change: Change<'_>,
    decide: impl FnOnce(Option<FlagRecord>) -> ApiResult<FlagWrite> + Send,
) -> ApiResult<Json<Value>> {
    slot.with(|n| n.target = Some(format!("flag {flag}")));
    edit::check_name(flag).map_err(invalid)?;
    check_env(state, app, env).await?;
    let outcome = state
        .store
        .write_flags(
            app,
            env,
            &[flag.to_string()],
            None,
            change.meta(),
            |mut current| {
                let write = decide(current.pop().flatten())?;
                edit::validate(&write.feature).map_err(invalid)?;
                Ok::<_, ApiFailure>(vec![Some(write)])
            },
        )
        .await??;
    let (revision, changes) = outcome;
    let text = changes.first().map(describe).unwrap_or_default();
    slot.with(|n| n.summary = Some(format!("flag {flag}: {text} (revision {revision})")));
    let record = state
        .store
        .get_flag(app, env, flag)
        .await?
        .ok_or_else(|| crate::api::internal("a flag just written is missing"))?;
    Ok(Json(json!({
        "revision": revision,
        "summary": summary(&record),
        "feature": record.feature,
    })))
}

/// What a change moved, in a few words: `enabled false → true`, `rollout 5% → 25%`.
fn describe(c: &FlagChange) -> String {
    let field = |v: &Option<Value>, k: &str| v.as_ref().and_then(|v| v.get(k).cloned());
    let rollout = |v: &Option<Value>| {
        v.as_ref()
            .and_then(|v| serde_json::from_value::<Feature>(v.clone()).ok())
            .map(|f| edit::rollout_of(&f))
    };
    let Some(_) = &c.before else {
        return format!("created ({})", c.action);
    };
    let mut parts = Vec::new();
    for k in ["enabled", "archived"] {
        let (b, a) = (field(&c.before, k), field(&c.after, k));
        if b != a {
            parts.push(format!(
                "{k} {} → {}",
                b.unwrap_or(Value::Null),
                a.unwrap_or(Value::Null)
            ));
        }
    }
    let (b, a) = (rollout(&c.before), rollout(&c.after));
    if b != a {
        parts.push(format!(
            "rollout {}% → {}%",
            b.unwrap_or_default(),
            a.unwrap_or_default()
        ));
    }
    for k in ["strategies", "variants", "dependencies"] {
        if field(&c.before, k) != field(&c.after, k) && !(k == "strategies" && b != a) {
            parts.push(format!("{k} changed"));
        }
    }
    if parts.is_empty() {
        "unchanged".into()
    } else {
        parts.join(", ")
    }
}

fn require<T>(current: Option<T>, flag: &str) -> ApiResult<T> {
    current.ok_or_else(|| {
        not_found(format!(
            "no flag {flag:?} here (create it first: ferry flags create)"
        ))
    })
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateFlag {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: bool,
    /// A whole definition (Unleash format); its name is the flag's.
    #[serde(default)]
    pub feature: Option<Feature>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `POST …/flags`: a new flag (off unless `enabled`; on for everyone once enabled unless
/// `feature` says otherwise). 409 if the name is taken, archived or not.
pub async fn create(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body: CreateFlag = read_body(body)?;
    if let Some(f) = &body.feature {
        // The flag's name takes its place, but a name openapi.json refuses is refused.
        edit::check_name(&f.name).map_err(invalid)?;
    }
    let name = body.name.clone();
    let change = Change::new(&access, "create", &headers, body.reason.clone());
    let answer = change_one(&state, &slot, &app, &env, &name, change, |current| {
        if let Some(c) = current {
            return Err(ApiFailure::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "flag {name} exists{}",
                    if c.archived { " (archived)" } else { "" }
                ),
            ));
        }
        let mut feature = body
            .feature
            .unwrap_or_else(|| edit::new_flag(&name, body.description.clone()));
        feature.name = name.clone();
        if body.enabled {
            feature.enabled = true;
        }
        Ok(FlagWrite {
            feature,
            archived: false,
        })
    })
    .await?;
    Ok((StatusCode::CREATED, answer))
}

#[derive(Debug, Default, Deserialize)]
pub struct ReasonBody {
    #[serde(default)]
    pub reason: Option<String>,
}

/// An empty body or `{"reason": …}`. A body of only whitespace is not JSON, so it is refused
/// like any other (schemathesis sent `' '` as application/json).
fn reason_of(body: &Bytes) -> ApiResult<Option<String>> {
    if body.is_empty() {
        return Ok(None);
    }
    serde_json::from_slice::<ReasonBody>(body)
        .map(|b| b.reason)
        .map_err(|_| bad_request("the body must be empty or {\"reason\": \"…\"}"))
}

/// The on/off switches: `enable` (also brings an archived flag back), `disable` (the kill
/// switch), `archive` (off and no longer served).
#[derive(Debug, Clone, Copy)]
enum Switch {
    Enable,
    Disable,
    Archive,
}

impl Switch {
    fn action(self) -> &'static str {
        match self {
            Switch::Enable => "enable",
            Switch::Disable => "disable",
            Switch::Archive => "archive",
        }
    }

    fn apply(self, current: FlagRecord) -> FlagWrite {
        let mut feature = current.feature;
        feature.enabled = matches!(self, Switch::Enable);
        let archived = match self {
            Switch::Enable => false,
            Switch::Disable => current.archived,
            Switch::Archive => true,
        };
        FlagWrite { feature, archived }
    }
}

type FlagPath = Path<(String, String, String)>;

async fn switch(
    state: AppState,
    access: Access,
    slot: AuditSlot,
    (app, env, flag): (String, String, String),
    headers: HeaderMap,
    body: Bytes,
    how: Switch,
) -> ApiResult<Json<Value>> {
    let change = Change::new(&access, how.action(), &headers, reason_of(&body)?);
    let name = flag.clone();
    change_one(&state, &slot, &app, &env, &flag, change, move |current| {
        Ok(how.apply(require(current, &name)?))
    })
    .await
}

/// One handler per switch (the route names the switch).
macro_rules! switch_handlers {
    ($($(#[doc = $doc:literal])* $name:ident => $how:ident;)*) => {$(
        $(#[doc = $doc])*
        pub async fn $name(
            State(state): State<AppState>,
            Extension(access): Extension<Access>,
            Extension(slot): Extension<AuditSlot>,
            Path(path): FlagPath,
            headers: HeaderMap,
            body: Bytes,
        ) -> ApiResult<Json<Value>> {
            switch(state, access, slot, path, headers, body, Switch::$how).await
        }
    )*};
}

switch_handlers! {
    /// `POST …/flags/{flag}/enable`
    enable => Enable;
    /// `POST …/flags/{flag}/disable`: the kill switch.
    disable => Disable;
    /// `POST …/flags/{flag}/archive`
    archive => Archive;
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetFlag {
    pub feature: Feature,
    #[serde(default)]
    pub archived: Option<bool>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `PUT …/flags/{flag}`: replaces a flag's definition (creates it when absent).
pub async fn set(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env, flag)): Path<(String, String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    let body: SetFlag = read_body(body)?;
    edit::check_name(&body.feature.name).map_err(invalid)?;
    let change = Change::new(&access, "set", &headers, body.reason.clone());
    let name = flag.clone();
    change_one(&state, &slot, &app, &env, &flag, change, move |current| {
        let mut feature = body.feature;
        feature.name = name;
        Ok(FlagWrite {
            feature,
            archived: body
                .archived
                .unwrap_or_else(|| current.is_some_and(|c| c.archived)),
        })
    })
    .await
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// A whole number from 0 to 100 (`25` or `25.0`).
    pub percent: f64,
    #[serde(default)]
    pub stickiness: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `PUT …/flags/{flag}/rollout`: the gradual rollout percentage.
pub async fn rollout(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env, flag)): Path<(String, String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    let body: Rollout = read_body(body)?;
    if body
        .stickiness
        .as_ref()
        .is_some_and(|s| s.is_empty() || s.len() > edit::MAX_NAME)
    {
        return Err(bad_request(
            "stickiness: a context field name (default, userId, sessionId, random, …)",
        ));
    }
    if body.percent.fract() != 0.0 || !(0.0..=100.0).contains(&body.percent) {
        return Err(bad_request(format!(
            "percent: {} is not a whole percentage from 0 to 100",
            body.percent
        )));
    }
    let percent = body.percent as u32;
    let change = Change::new(&access, "rollout", &headers, body.reason.clone());
    let name = flag.clone();
    change_one(&state, &slot, &app, &env, &flag, change, move |current| {
        let current = require(current, &name)?;
        let feature = edit::set_rollout(current.feature, percent, body.stickiness.as_deref())
            .map_err(invalid)?;
        Ok(FlagWrite {
            feature,
            archived: current.archived,
        })
    })
    .await
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    pub name: String,
    #[serde(default)]
    pub percent: Option<f64>,
    #[serde(default)]
    pub payload: Option<Payload>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetVariants {
    pub variants: Vec<VariantSpec>,
    #[serde(default)]
    pub stickiness: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// `PUT …/flags/{flag}/variants`: the flag's variants (an empty list removes them).
pub async fn variants(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env, flag)): Path<(String, String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    let body: SetVariants = read_body(body)?;
    if body.variants.len() > edit::MAX_VARIANTS {
        return Err(bad_request(format!(
            "at most {} variants",
            edit::MAX_VARIANTS
        )));
    }
    let entries: Vec<_> = body
        .variants
        .into_iter()
        .map(|v| (v.name, v.percent, v.payload))
        .collect();
    let change = Change::new(&access, "variants", &headers, body.reason.clone());
    let name = flag.clone();
    change_one(&state, &slot, &app, &env, &flag, change, move |current| {
        // A flag that is not there is 404 whatever the variants (then their rules: 400).
        let current = require(current, &name)?;
        let variants =
            edit::variants_from(&entries, body.stickiness.as_deref()).map_err(invalid)?;
        let mut feature = current.feature;
        feature.variants = variants;
        Ok(FlagWrite {
            feature,
            archived: current.archived,
        })
    })
    .await
}

/// `GET …/features`: the environment's flags (not archived) in Unleash's client-features
/// format, as `ferry flags export` writes them.
pub async fn export(
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Response> {
    check_env(&state, &app, &env).await?;
    let snapshot = state.flags.current(&state.store, &app, &env).await?;
    let response = (
        [(header::CONTENT_TYPE, "application/json")],
        snapshot.features_json.clone(),
    )
        .into_response();
    Ok(with_etag(response, &snapshot.etag))
}

/// `POST …/features`: creates or replaces every flag of a client-features document (and
/// replaces the segments) in one transaction, one revision.
pub async fn import(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    check_env(&state, &app, &env).await?;
    let doc: ClientFeatures = serde_json::from_slice(&body)
        .map_err(|e| e.to_string())
        .and_then(ferry_core::strict::from_value)
        .map_err(|e| bad_request(format!("not an Unleash client-features document: {e}")))?;
    edit::validate_document(&doc).map_err(invalid)?;
    let body_reason = serde_json::from_slice::<ReasonBody>(&body)
        .ok()
        .and_then(|b| b.reason);
    let change = Change::new(&access, "import", &headers, body_reason);
    let names: Vec<String> = doc.features.iter().map(|f| f.name.clone()).collect();
    let (revision, changes) = state
        .store
        .write_flags(
            &app,
            &env,
            &names,
            Some(&doc.segments),
            change.meta(),
            |_| {
                Ok::<_, ApiFailure>(
                    doc.features
                        .into_iter()
                        .map(|feature| {
                            Some(FlagWrite {
                                feature,
                                archived: false,
                            })
                        })
                        .collect(),
                )
            },
        )
        .await??;
    let created = changes.iter().filter(|c| c.before.is_none()).count();
    slot.with(|n| {
        n.summary = Some(format!(
            "import {} flag(s) ({created} new) and {} segment(s) (revision {revision})",
            changes.len(),
            doc.segments.len()
        ))
    });
    Ok(Json(json!({
        "revision": revision,
        "imported": changes.len(),
        "created": created,
    })))
}

/// (A `reason` in the body is read by the gate, for the audit record.)
#[derive(Debug, Serialize, Deserialize)]
pub struct CreateClientToken {
    #[serde(default)]
    pub name: Option<String>,
}

/// `POST …/flag-tokens`: a client token for the SDKs of this environment (shown once).
pub async fn create_token(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env)): Path<(String, String)>,
    Json(body): Json<Value>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body: CreateClientToken = read_body(body)?;
    check_env(&state, &app, &env).await?;
    let name = body.name.unwrap_or_else(|| "sdk".into());
    if name.trim().is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(bad_request(
            "token name: 1 to 64 characters, no control characters",
        ));
    }
    let bytes: [u8; 32] = rand::rng().random();
    let token = format!("ferry_flags_{}", auth::hex(&bytes));
    let record = state
        .store
        .create_flag_token(
            &app,
            &env,
            &name,
            &auth::token_hash(&token),
            &access.caller.name,
            now_ms(),
        )
        .await?;
    slot.with(|n| {
        n.target = Some(format!("flag client token {}", record.id));
        n.summary = Some(format!("flag client token {} ({name}) created", record.id));
    });
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": token, "id": record.id, "app": app, "env": env, "name": name })),
    ))
}

/// `GET …/flag-tokens`: the client tokens (never their values).
pub async fn list_tokens(
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    check_env(&state, &app, &env).await?;
    Ok(Json(
        json!({ "tokens": state.store.list_flag_tokens(&app, &env).await? }),
    ))
}

/// `DELETE …/flag-tokens/{id}`: revokes a client token.
pub async fn delete_token(
    State(state): State<AppState>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env, id)): Path<(String, String, i64)>,
) -> ApiResult<Json<Value>> {
    slot.with(|n| n.target = Some(format!("flag client token {id}")));
    if !state.store.delete_flag_token(&app, &env, id).await? {
        return Err(not_found(format!(
            "{app}/{env} has no flag client token {id}"
        )));
    }
    slot.with(|n| n.summary = Some(format!("flag client token {id} revoked")));
    Ok(Json(json!({ "id": id, "deleted": true })))
}

#[derive(Debug, Deserialize)]
pub struct MetricsQuery {
    #[serde(default)]
    pub flag: Option<String>,
    #[serde(default)]
    pub hours: Option<u32>,
}

/// `GET …/flag-metrics`: yes/no/variant counts per flag and hour (the last 24 hours by
/// default, at most 30 days).
pub async fn metrics(
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
    Query(q): Query<MetricsQuery>,
) -> ApiResult<Json<Value>> {
    check_env(&state, &app, &env).await?;
    let hours = i64::from(q.hours.unwrap_or(24).clamp(1, 720));
    let since = now_ms() / HOUR_MS * HOUR_MS - (hours - 1) * HOUR_MS;
    let rows = state
        .store
        .flag_metrics(&app, &env, q.flag.as_deref(), since)
        .await?;
    Ok(Json(json!({ "since_ms": since, "metrics": rows })))
}

// ---------------------------------------------------------------------------------------------
// Guarded rollouts (driven by `flags_guard`)
// ---------------------------------------------------------------------------------------------

/// A guarded rollout as answered: its state (and why, once ended), the step, the
/// percentages, the last measurements.
fn guard_view(r: &FlagGuardRecord) -> Value {
    let g = &r.guard;
    let mut view = serde_json::to_value(&g.state).unwrap_or_else(|_| json!({}));
    if let Some(o) = view.as_object_mut() {
        o.insert("id".into(), r.id.into());
        o.insert("flag".into(), r.flag.clone().into());
        o.insert("step".into(), (g.step + 1).into());
        o.insert("steps".into(), json!(g.spec.steps));
        o.insert("percent".into(), g.percent().into());
        o.insert("pause".into(), json!(g.spec.pause));
        o.insert("step_started_ms".into(), g.step_started_ms.into());
        o.insert("started_by".into(), r.started_by.clone().into());
        o.insert("started_at_ms".into(), r.started_at_ms.into());
        o.insert("updated_at_ms".into(), r.updated_at_ms.into());
        o.insert("measurements".into(), json!(g.last));
        o.insert("analysis".into(), json!(g.spec.analysis));
        o.insert("judge".into(), g.spec.judge.as_str().into());
    }
    view
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartGuard {
    /// Whole percentages (`25` or `25.0`), increasing, the last where it ends.
    #[serde(default)]
    pub steps: Option<Vec<f64>>,
    /// Read by [`guard::parse_pause`]: the pattern openapi.json gives, a located 400.
    #[serde(default)]
    pub pause: Option<String>,
    /// An analysis block as in a manifest; read by the handler, so that a block the
    /// manifest's schema refuses is a located 400 like every other rule of the request.
    #[serde(default)]
    pub analysis: Option<Value>,
    #[serde(default)]
    pub stickiness: Option<String>,
    /// Whose requests the proxy metrics judge (default: those that carried the flag).
    #[serde(default)]
    pub judge: Option<Judge>,
    #[serde(default)]
    pub reason: Option<String>,
}

/// A guarded rollout's `analysis`: an object (openapi.json), read as a manifest's block.
fn analysis_of(value: Value) -> Result<AnalysisSpec, String> {
    if !value.is_object() {
        return Err("an object is expected".into());
    }
    ferry_core::strict::from_value(value)
}

/// The least time at each step when the request names none.
const DEFAULT_GUARD_PAUSE: Duration = Duration::from_secs(30);

/// `POST …/flags/{flag}/guarded-rollout`: enables the flag at the first step's percentage
/// and lets the analysis move it (201); 409 while one runs.
pub async fn guard_start(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env, flag)): Path<(String, String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body: StartGuard = read_body(body)?;
    slot.with(|n| n.target = Some(format!("flag {flag}")));
    edit::check_name(&flag).map_err(invalid)?;
    let manifest = check_env(&state, &app, &env).await?;
    let steps = match &body.steps {
        None => guard::DEFAULT_STEPS.to_vec(),
        Some(steps) if steps.len() > guard::MAX_STEPS => {
            return Err(bad_request(format!(
                "steps: at most {} percentages",
                guard::MAX_STEPS
            )));
        }
        Some(steps) => steps
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                if p.fract() == 0.0 && (0.0..=100.0).contains(&p) {
                    Ok(p as u32)
                } else {
                    Err(bad_request(format!(
                        "steps[{i}]: {p} is not a whole percentage from 1 to 100"
                    )))
                }
            })
            .collect::<ApiResult<Vec<u32>>>()?,
    };
    let from_strategy = manifest
        .environments
        .get(&env)
        .and_then(|e| match &e.strategy {
            Strategy::Canary(c) => c.analysis.clone(),
            Strategy::BlueGreen(b) => b.post_promotion_analysis.clone(),
            _ => None,
        });
    let analysis = match body.analysis {
        Some(value) => Some(analysis_of(value).map_err(|e| {
            ApiFailure::with_details(
                StatusCode::BAD_REQUEST,
                "invalid_guarded_rollout",
                format!("guarded rollout of {flag}: analysis: {e}"),
                vec!["analysis".into()],
            )
        })?),
        None => from_strategy,
    };
    let pause = match &body.pause {
        Some(text) => guard::parse_pause(text).map_err(|e| {
            ApiFailure::with_details(
                StatusCode::BAD_REQUEST,
                "invalid_guarded_rollout",
                format!("guarded rollout of {flag}: pause: {e}"),
                vec!["pause".into()],
            )
        })?,
        None => HumanDuration(DEFAULT_GUARD_PAUSE),
    };
    let spec = GuardSpec {
        steps,
        pause,
        analysis: analysis.unwrap_or_else(guard::default_analysis),
        stickiness: body.stickiness,
        judge: body.judge.unwrap_or_default(),
    };
    let problems = spec.validate();
    if let Some(first) = problems.first() {
        return Err(ApiFailure::with_details(
            StatusCode::BAD_REQUEST,
            "invalid_guarded_rollout",
            format!("guarded rollout of {flag}: {first}"),
            problems.iter().map(|p| p.at.clone()).collect(),
        ));
    }
    let guard = guard::start(spec, now_ms());
    let first = guard.percent();
    let stickiness = guard.spec.stickiness.clone();
    let change = Change::new(&access, "guarded-rollout", &headers, body.reason);
    let name = flag.clone();
    let started = state
        .store
        .start_flag_guard(&app, &env, &flag, &guard, change.meta(), |current| {
            let current = require(current, &name)?;
            let mut feature = edit::set_rollout(current.feature, first, stickiness.as_deref())
                .map_err(invalid)?;
            feature.enabled = true;
            edit::validate(&feature).map_err(invalid)?;
            Ok::<_, ApiFailure>(FlagWrite {
                feature,
                archived: false,
            })
        })
        .await?;
    let (record, revision, _) = match started {
        Ok(done) => done,
        Err(GuardRefused::Refused(e)) => return Err(e),
        Err(GuardRefused::Running(r)) => {
            return Err(ApiFailure::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "flag {flag} has a guarded rollout running (step {}/{}, {}%); stop it \
                     first: ferry flags rollout {app} --env {env} {flag} --stop",
                    r.guard.step + 1,
                    r.guard.spec.steps.len(),
                    r.guard.percent()
                ),
            ));
        }
    };
    let steps: Vec<String> = guard.spec.steps.iter().map(|p| format!("{p}%")).collect();
    slot.with(|n| {
        n.summary = Some(format!(
            "flag {flag}: guarded rollout {} (pause {}) started at {first}% (revision {revision})",
            steps.join(" → "),
            guard.spec.pause
        ))
    });
    Ok((
        StatusCode::CREATED,
        Json(json!({ "revision": revision, "guarded_rollout": guard_view(&record) })),
    ))
}

/// The latest guarded rollout of a flag; 404 when it never had one.
async fn latest_guard(
    state: &AppState,
    app: &str,
    env: &str,
    flag: &str,
) -> ApiResult<FlagGuardRecord> {
    check_env(state, app, env).await?;
    state
        .store
        .latest_flag_guards(app, env, Some(flag))
        .await?
        .pop()
        .ok_or_else(|| not_found(format!("flag {flag} of {app}/{env} had no guarded rollout")))
}

/// `GET …/flags/{flag}/guarded-rollout`: the flag's latest guarded rollout.
pub async fn guard_show(
    State(state): State<AppState>,
    Path((app, env, flag)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    let record = latest_guard(&state, &app, &env, &flag).await?;
    Ok(Json(json!({ "guarded_rollout": guard_view(&record) })))
}

/// `DELETE …/flags/{flag}/guarded-rollout`: stops the running guarded rollout; the flag
/// stays at the percentage it reached.
pub async fn guard_stop(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env, flag)): Path<(String, String, String)>,
) -> ApiResult<Json<Value>> {
    slot.with(|n| n.target = Some(format!("flag {flag}")));
    let record = latest_guard(&state, &app, &env, &flag).await?;
    if !record.guard.state.is_running() {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "the guarded rollout of {flag} is not running (it is {})",
                record.guard.state.label()
            ),
        ));
    }
    let mut next = record.guard.clone();
    next.state = GuardState::Cancelled {
        reason: format!("stopped by {}", access.caller.name),
    };
    if !state
        .store
        .update_flag_guard(&record, &next, now_ms(), None)
        .await?
    {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "conflict",
            "the guarded rollout moved meanwhile; try again",
        ));
    }
    let percent = next.percent();
    slot.with(|n| {
        n.summary = Some(format!(
            "flag {flag}: guarded rollout stopped at {percent}%"
        ))
    });
    let mut record = record;
    record.guard = next;
    Ok(Json(json!({ "guarded_rollout": guard_view(&record) })))
}

/// The SDK endpoints: outside the gate (client tokens, not Ferry credentials; not audited).
pub const SDK_PATHS: [&str; 5] = [
    "/api/client/features",
    "/api/client/register",
    "/api/client/metrics",
    "/ofrep/v1/evaluate/flags",
    "/ofrep/v1/evaluate/flags/{key}",
];

pub fn sdk_routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route(SDK_PATHS[0], get(client_features))
        .route(SDK_PATHS[1], post(client_register))
        .route(SDK_PATHS[2], post(client_metrics))
        .route(SDK_PATHS[3], post(ofrep_all))
        .route(SDK_PATHS[4], post(ofrep_one))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_switch_body_is_empty_or_a_reason_and_whitespace_is_not_json() {
        assert_eq!(reason_of(&Bytes::new()).unwrap(), None);
        assert_eq!(
            reason_of(&Bytes::from_static(br#"{"reason": "incident 42"}"#)).unwrap(),
            Some("incident 42".to_string())
        );
        assert!(reason_of(&Bytes::from_static(b" ")).is_err());
    }

    /// The store, counting the reads made through it.
    struct Counting {
        store: Store,
        reads: AtomicUsize,
    }

    impl Counting {
        fn take(&self) -> usize {
            self.reads.swap(0, Ordering::SeqCst)
        }
    }

    impl FlagReads for Counting {
        async fn client_scope(&self, token: &str) -> Result<Option<FlagClientScope>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.store.client_scope(token).await
        }
        async fn revision(
            &self,
            app: &str,
            env: &str,
        ) -> Result<Option<(i64, String)>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.store.revision(app, env).await
        }
        async fn served(&self, app: &str, env: &str) -> Result<Option<ServedFlags>, StoreError> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            self.store.served(app, env).await
        }
    }

    fn authorization(token: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(token).unwrap());
        headers
    }

    #[tokio::test]
    async fn an_sdk_poll_of_an_unchanged_environment_reads_the_store_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_sqlite_file(&dir.path().join("ferry.db"))
            .await
            .unwrap();
        let token = "ferry_client_0123456789";
        store
            .create_flag_token("shop", "prod", "web", &auth::token_hash(token), "alice", 1)
            .await
            .unwrap();
        let reads = Counting {
            store,
            reads: AtomicUsize::new(0),
        };
        let cache = FlagCache::default();
        let headers = authorization(token);

        // the first poll builds the snapshot: the token with the revision, then the flags
        let first = cache.for_client(&reads, &headers).await.ok().unwrap();
        assert_eq!((first.etag.as_str(), reads.take()), ("\"none-0\"", 2));
        // every later poll at that revision: one read, the same snapshot
        for _ in 0..3 {
            let again = cache.for_client(&reads, &headers).await.ok().unwrap();
            assert!(Arc::ptr_eq(&first, &again));
            assert_eq!(reads.take(), 1);
        }
        // a change moves the revision read with the token: a new snapshot, a new ETag
        reads
            .store
            .write_flags(
                "shop",
                "prod",
                &["a".to_string()],
                None,
                ChangeMeta {
                    actor: "alice",
                    action: "create",
                    reason: None,
                    now_ms: 2,
                    new_epoch: "e1",
                },
                |_| {
                    Ok::<_, ()>(vec![Some(FlagWrite {
                        feature: Feature {
                            name: "a".into(),
                            enabled: true,
                            ..Feature::default()
                        },
                        archived: false,
                    })])
                },
            )
            .await
            .unwrap()
            .unwrap();
        let changed = cache.for_client(&reads, &headers).await.ok().unwrap();
        assert_eq!((changed.etag.as_str(), reads.take()), ("\"e1-1\"", 2));
        assert_eq!(changed.engine.state().features.len(), 1);
        let again = cache.for_client(&reads, &headers).await.ok().unwrap();
        assert!(Arc::ptr_eq(&changed, &again));
        assert_eq!(reads.take(), 1);
        // an unknown token: refused after its one read
        let refused = cache
            .for_client(&reads, &authorization("ferry_client_nope"))
            .await
            .err()
            .unwrap();
        assert_eq!(
            (refused.status(), reads.take()),
            (StatusCode::UNAUTHORIZED, 1)
        );
    }
}
