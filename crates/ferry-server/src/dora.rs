//! DORA metrics over HTTP, shaped like GitLab's DORA API (`metric`, `interval`,
//! `start_date`, `end_date`), and the incidents a deploy's `fix_of` records. The computation
//! is `ferry_core::dora`; this reads the facts.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_core::dora::{self, DoraQuery, DoraReport, Interval, Metric};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::api::{ApiFailure, ApiResult, AppState};
use crate::clock::now_ms;

/// Most deployments (and incidents) of one app/env read for the metrics (the newest are
/// kept).
const MAX_FACTS: u32 = 200_000;

/// The query parameters as text: each is checked (and named when wrong) below.
#[derive(Debug, Default, Deserialize)]
pub struct DoraParams {
    metric: Option<String>,
    interval: Option<String>,
    start_date: Option<String>,
    end_date: Option<String>,
}

fn bad_request(message: impl Into<String>) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn not_found(message: impl Into<String>) -> ApiFailure {
    ApiFailure::new(StatusCode::NOT_FOUND, "not_found", message)
}

/// One of an enum's names, or a 400 naming the field and the names allowed.
fn one_of<T: DeserializeOwned>(field: &str, text: &str, allowed: &[&str]) -> ApiResult<T> {
    serde_json::from_value(serde_json::Value::String(text.to_string())).map_err(|_| {
        bad_request(format!(
            "{field}: {:?} is not one of {}",
            text.chars().take(64).collect::<String>(),
            allowed.join(", ")
        ))
    })
}

/// The report of app/env over the window, or 404 naming what is unknown.
pub async fn report(
    state: &AppState,
    app: &str,
    env: &str,
    start_ms: i64,
    end_ms: i64,
    interval: Interval,
) -> ApiResult<DoraReport> {
    let manifest = crate::releases::manifest_of(&state.store, app).await?;
    if manifest.environments.get(env).is_none() {
        let known: Vec<&str> = manifest.environments.keys().collect();
        return Err(not_found(format!(
            "app {app} has no environment {env:?} (it has: {})",
            known.join(", ")
        )));
    }
    let facts = state.store.dora_facts(app, env, MAX_FACTS).await?;
    let query = DoraQuery {
        app: app.to_string(),
        env: env.to_string(),
        start_ms,
        end_ms,
        interval,
    };
    dora::compute(&facts.deployments, &facts.incidents, &query)
        .map_err(|e| bad_request(e.to_string()))
}

/// `GET /v1/apps/{app}/envs/{env}/dora`: the whole report, or with `metric` GitLab's
/// `[{date, value}]`.
pub async fn metrics(
    State(state): State<AppState>,
    Path((app, env)): Path<(String, String)>,
    params: Result<Query<DoraParams>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(params) = params.map_err(|e| bad_request(e.body_text()))?;
    let metric: Option<Metric> = params
        .metric
        .as_deref()
        .map(|m| one_of("metric", m, Metric::NAMES))
        .transpose()?;
    let interval: Interval = params
        .interval
        .as_deref()
        .map(|i| one_of("interval", i, Interval::NAMES))
        .transpose()?
        .unwrap_or(Interval::Daily);
    let (start_ms, end_ms) = dora::window(
        params.start_date.as_deref(),
        params.end_date.as_deref(),
        now_ms(),
    )
    .map_err(|e| bad_request(e.to_string()))?;
    let report = report(&state, &app, &env, start_ms, end_ms, interval).await?;
    Ok(match metric {
        Some(metric) => Json(dora::series(&report, metric)).into_response(),
        None => Json(report).into_response(),
    })
}

/// A deploy's `fix_of`: deployment N must be an earlier production deployment of the app in
/// the same environment (400 naming the field otherwise).
pub async fn check_fix_of(state: &AppState, app: &str, env: &str, fix_of: i64) -> ApiResult<()> {
    let refused = |why: String| bad_request(format!("fix_of: deployment {fix_of} {why}"));
    let Some(target) = state.store.get_deployment(fix_of).await? else {
        return Err(refused("does not exist".into()));
    };
    if target.app != app || target.env != env {
        return Err(refused(format!(
            "is a deployment of {}/{}, not of {app}/{env}",
            target.app, target.env
        )));
    }
    if !dora::is_production(target.kind, target.state) {
        return Err(refused(format!(
            "is a {} that ended {}: only a deployment that reached production (succeeded, \
             rolled back, failed or aborted) can need a fix",
            target.kind, target.state
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use ferry_core::dora::{DoraReport, MetricPoint};
    use schemars::generate::SchemaSettings;
    use serde_json::Value;

    /// openapi.json describes the answers as the types serialize them (schemathesis in
    /// `.ci/run` then checks real answers against it); the schemas are generated from the
    /// types, and this test says what to paste when they change.
    #[test]
    fn the_openapi_document_describes_the_dora_answers() {
        let mut generator = SchemaSettings::draft2020_12()
            .with(|s| {
                s.definitions_path = "/components/schemas".into();
                s.meta_schema = None;
            })
            .for_serialize()
            .into_generator();
        let report = generator.subschema_for::<DoraReport>();
        let series = generator.subschema_for::<Vec<MetricPoint>>();
        let definitions = generator.take_definitions(true);
        let spec: Value = serde_json::from_str(crate::api::OPENAPI).unwrap();
        let differing: Vec<String> = definitions
            .iter()
            .filter(|(name, schema)| spec["components"]["schemas"][name.as_str()] != **schema)
            .map(|(name, schema)| {
                format!(
                    "\"{name}\": {}",
                    serde_json::to_string_pretty(schema).unwrap()
                )
            })
            .collect();
        assert!(
            differing.is_empty(),
            "openapi.json's components.schemas should have:\n{}",
            differing.join(",\n")
        );
        let answer = &spec["paths"]["/v1/apps/{app}/envs/{env}/dora"]["get"]["responses"]["200"]["content"]
            ["application/json"]["schema"];
        let want = serde_json::json!({"oneOf": [report, series]});
        assert_eq!(answer, &want, "the 200 answer's schema should be {want}");
    }
}
