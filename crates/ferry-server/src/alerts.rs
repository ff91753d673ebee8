//! Alerts in the server: the evaluator (one loop for every app and environment) that
//! measures, calls the pure `ferry_core::alerts::evaluate`, persists the alerts with their
//! history in one transaction, then carries out the actions of firing alerts through the
//! controller's command API (audited as `alert:NAME`); the facts of the `alerts` gate; and
//! the API (`GET /v1/alerts`, silences).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use ferry_core::alerts::{
    self, ActionPlan, AlertEventView, AlertInstance, AlertRule, AlertStatus, AlertsAnswer,
    BlockingAlert, Evaluation, Input, Silence, SilenceRequest,
};
use ferry_core::api::EnvStatus;
use ferry_core::audit::AuditEntry;
use ferry_core::manifest::{Manifest, RuntimeKind};
use ferry_core::notify::Kind;
use ferry_core::rbac::{Permission, Target};
use ferry_store::{AlertEvent, AlertWrite, IncidentChange, Store, StoreError};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::access::{Access, AuditSlot};
use crate::api::{ApiFailure, ApiResult, AppState};
use crate::clock::now_ms;
use crate::controller::Controller;
use crate::error::ServerError;
use crate::progressive::CommandName;

/// How often the evaluator looks for rules that are due.
const TICK: Duration = Duration::from_millis(500);
/// History lines `GET /v1/alerts` returns.
const HISTORY: i64 = 100;

/// Evaluates every alert rule of every app until `shutdown`.
pub async fn run(controller: Arc<Controller>, shutdown: CancellationToken) {
    let mut evaluator = Evaluator {
        controller,
        http: reqwest::Client::new(),
        last: HashMap::new(),
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = evaluator.pass(now_ms()).await {
            tracing::error!(error = %e, "alert evaluation failed; retrying");
        }
    }
}

type RuleKey = (String, String, String);

struct Evaluator {
    controller: Arc<Controller>,
    http: reqwest::Client,
    /// When each (app, env, rule) was last evaluated (in memory: a restart evaluates at once).
    last: HashMap<RuleKey, i64>,
}

impl Evaluator {
    fn store(&self) -> &Store {
        self.controller.store()
    }

    async fn pass(&mut self, now: i64) -> Result<(), ServerError> {
        let apps = self.controller.apps().await?;
        let mut stored: BTreeMap<RuleKey, Vec<AlertInstance>> = BTreeMap::new();
        for s in self.store().alerts(None, None).await? {
            stored
                .entry((s.app, s.env, s.alert.rule.clone()))
                .or_default()
                .push(s.alert);
        }
        let silences = self.store().silences(None, now).await?;
        // Alerts of rules that are gone (or no longer watch their environment) resolve.
        for ((app, env, rule), previous) in &stored {
            let live = apps.get(app).is_some_and(|(_, m)| {
                m.environments.get(env).is_some()
                    && m.alerts.iter().any(|r| r.name == *rule && r.watches(env))
            });
            if !live {
                let evaluation = alerts::retire(previous, now);
                let events: Vec<AlertEvent> = evaluation
                    .transitions
                    .iter()
                    .map(|t| event(t, format!("{}: its rule was removed", t.to)))
                    .collect();
                // Its rule is gone: each firing alert resolves, with a resolve notification
                // made from its firing one (the rule's labels and annotations went with the
                // rule), unless it is silenced; its incidents are restored.
                let silenced = alerts::silenced_by(&silences, app, env, rule, now).is_some();
                let mut incidents = Vec::new();
                let mut notifications = Vec::new();
                for a in evaluation
                    .transitions
                    .iter()
                    .filter(|t| t.to == AlertStatus::Resolved)
                    .filter_map(|t| previous.iter().find(|a| a.series == t.series))
                {
                    incidents.push(IncidentChange::Restore {
                        alert_key: alerts::episode_key(app, env, a),
                        at_ms: now,
                    });
                    let firing = alerts::notification_key(app, env, a, Kind::AlertFiring);
                    if !silenced
                        && let Some(firing) = self.store().notification_by_key(&firing).await?
                    {
                        notifications.push(alerts::retired_notification(&firing, a, now));
                    }
                }
                let write = AlertWrite {
                    events: &events,
                    incidents: &incidents,
                    notifications: &notifications,
                    ..AlertWrite::default()
                };
                self.store()
                    .save_alerts(app, env, rule, &write, now)
                    .await?;
                self.last.remove(&(app.clone(), env.clone(), rule.clone()));
            }
        }
        for (app, (_, manifest)) in &apps {
            let due: Vec<(&str, &AlertRule)> = manifest
                .environments
                .keys()
                .flat_map(|env| {
                    manifest
                        .alerts
                        .iter()
                        .filter(move |r| r.watches(env))
                        .map(move |r| (env, r))
                })
                .filter(|(env, rule)| {
                    let key = (app.clone(), env.to_string(), rule.name.clone());
                    let every = i64::try_from(rule.interval().as_millis()).unwrap_or(i64::MAX);
                    self.last.get(&key).is_none_or(|at| now - at >= every)
                })
                .collect();
            if due.is_empty() {
                continue;
            }
            let status = match self.controller.status(app, None).await {
                Ok(status) => status,
                Err(e) => {
                    tracing::warn!(app = %app, error = %e, "no status to evaluate alerts on");
                    continue;
                }
            };
            for (env, rule) in due {
                let key = (app.clone(), env.to_string(), rule.name.clone());
                self.last.insert(key.clone(), now);
                let Some(env_status) = status.environments.iter().find(|e| e.env == env) else {
                    continue;
                };
                let previous = stored.remove(&key).unwrap_or_default();
                let sampled = manifest
                    .environments
                    .get(env)
                    .is_none_or(|e| e.runtime != RuntimeKind::Kubernetes);
                self.evaluate(app, env_status, rule, previous, &silences, sampled, now)
                    .await?;
            }
        }
        Ok(())
    }

    /// One rule in one environment: measure, evaluate, persist, act. `usage_sampled`: the
    /// environment's runtime samples the replicas' CPU and memory (not Kubernetes).
    #[allow(clippy::too_many_arguments)]
    async fn evaluate(
        &self,
        app: &str,
        env: &EnvStatus,
        rule: &AlertRule,
        previous: Vec<AlertInstance>,
        silences: &[Silence],
        usage_sampled: bool,
        now: i64,
    ) -> Result<(), ServerError> {
        let condition = match rule.parsed_condition() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(app = %app, alert = %rule.name, error = %e, "alert rule cannot be read");
                return Ok(());
            }
        };
        let metric = condition.map_or(alerts::Metric::Value, |c| c.metric);
        let input = match &rule.prometheus {
            Some(query) => self.query(query, app, &env.env).await,
            None if metric.from_usage() && !usage_sampled => Input::Failed(format!(
                "the Kubernetes runtime does not sample the replicas' CPU or memory (that needs metrics-server): query `{}` from Prometheus instead",
                metric.name()
            )),
            None => alerts::builtin_input(metric, rule.service.as_deref(), env),
        };
        if let Input::Failed(why) = &input {
            tracing::warn!(app = %app, env = %env.env, alert = %rule.name, error = %why, "alert not evaluated");
        }
        let Evaluation {
            alerts: mut current,
            transitions,
        } = alerts::evaluate(rule, condition.as_ref(), &input, &previous, now);
        if current != previous || !transitions.is_empty() {
            let silenced = alerts::silenced_by(silences, app, &env.env, &rule.name, now).is_some();
            let mut events = Vec::new();
            let mut notifications = Vec::new();
            let mut incidents = Vec::new();
            for t in &transitions {
                let a = current.iter().find(|a| a.series == t.series);
                events.push(event(t, alerts::transition_message(rule, t, a)));
                let Some(a) = a else { continue };
                notifications.extend(alerts::notification(
                    rule, app, &env.env, t, a, silences, now,
                ));
                let alert_key = alerts::episode_key(app, &env.env, a);
                match t.to {
                    AlertStatus::Firing if !silenced => {
                        let latest = env.latest_deployment.as_ref();
                        // the stable version during a canary: its last change, read
                        let last_change = match alerts::incident_change_of(rule, a, latest) {
                            Some(version) => self
                                .store()
                                .last_succeeded_change(app, &env.env, version)
                                .await?
                                .map(|d| d.view()),
                            None => None,
                        };
                        if let Some(deployment_id) =
                            alerts::incident_deployment(rule, a, latest, last_change.as_ref())
                        {
                            incidents.push(IncidentChange::Open {
                                alert_key,
                                deployment_id,
                                at_ms: t.at_ms,
                            });
                        }
                    }
                    AlertStatus::Resolved => incidents.push(IncidentChange::Restore {
                        alert_key,
                        at_ms: t.at_ms,
                    }),
                    _ => {}
                }
            }
            // The alerts, their history, notifications and incidents commit together.
            let write = AlertWrite {
                alerts: &current,
                events: &events,
                notifications: &notifications,
                incidents: &incidents,
            };
            self.store()
                .save_alerts(app, &env.env, &rule.name, &write, now)
                .await?;
        }
        // Persist, then act: a restart between the two finds `acted: false` and acts then.
        let mut lines = Vec::new();
        let mut acted = false;
        for a in current
            .iter_mut()
            .filter(|a| a.status == AlertStatus::Firing && !a.acted)
        {
            a.acted = true;
            acted = true;
            if !(rule.actions.pause || rule.actions.rollback) {
                continue;
            }
            if let Some(s) = alerts::silenced_by(silences, app, &env.env, &rule.name, now) {
                let why = format!("actions skipped: silenced by #{} ({})", s.id, s.reason);
                lines.push(action_line(app, &env.env, rule, a, why, now));
                continue;
            }
            let latest = env.latest_deployment.as_ref();
            for plan in alerts::plan_actions(rule, &a.labels, latest, now) {
                let message = self.carry_out(app, &env.env, rule, &plan).await;
                lines.push(action_line(app, &env.env, rule, a, message, now));
            }
        }
        if acted {
            let write = AlertWrite {
                alerts: &current,
                events: &lines,
                ..AlertWrite::default()
            };
            self.store()
                .save_alerts(app, &env.env, &rule.name, &write, now)
                .await?;
        }
        Ok(())
    }

    /// Runs one planned action; the history line says what happened.
    async fn carry_out(&self, app: &str, env: &str, rule: &AlertRule, plan: &ActionPlan) -> String {
        let actor = format!("alert:{}", rule.name);
        let (action, target, result) = match plan {
            ActionPlan::Skip { action, why } => return format!("{action}: nothing to do: {why}"),
            ActionPlan::Rollback {
                deployment_id,
                version,
            } => (
                "alerts.rollback",
                *deployment_id,
                self.controller
                    .request_rollback(app, env, None, &actor, false)
                    .await
                    .map(|view| {
                        format!(
                            "rolled back deployment #{deployment_id} of {version} (#{} {})",
                            view.id, view.state
                        )
                    }),
            ),
            ActionPlan::Pause { deployment_id } => (
                "alerts.pause",
                *deployment_id,
                self.controller
                    .request_command(app, env, CommandName::Pause, &actor)
                    .await
                    .map(|_| format!("paused the rollout of deployment #{deployment_id}")),
            ),
        };
        let (summary, outcome) = match &result {
            Ok(line) => (line.clone(), "ok".to_string()),
            Err(e) => (
                format!("{} deployment #{target}", &action["alerts.".len()..]),
                format!("failed: {e}"),
            ),
        };
        let entry = AuditEntry {
            at_ms: now_ms(),
            actor,
            source: None,
            action: action.to_string(),
            app: Some(app.to_string()),
            env: Some(env.to_string()),
            target: Some(format!("deployment {target}")),
            summary: summary.clone(),
            reason: Some(format!("alert {} fired", rule.name)),
            outcome: outcome.clone(),
        };
        if let Err(e) = self.store().append_audit(entry).await {
            tracing::error!(error = %e, "could not write the audit record of an alert's action");
        }
        match result {
            Ok(line) => {
                tracing::info!(app = %app, env = %env, alert = %rule.name, "{line}");
                line
            }
            Err(e) => format!("{summary} failed: {e}"),
        }
    }

    /// Runs a rule's Prometheus query.
    async fn query(&self, query: &alerts::AlertQuery, app: &str, env: &str) -> Input {
        let url = format!("{}/api/v1/query", query.address.trim_end_matches('/'));
        let timeout = query
            .timeout
            .map_or(alerts::DEFAULT_QUERY_TIMEOUT, |t| t.get());
        let answer = self
            .http
            .get(&url)
            .query(&[("query", alerts::query_for(query, app, env))])
            .timeout(timeout)
            .send()
            .await;
        let body = match answer {
            Ok(response) => response.text().await,
            Err(e) => Err(e),
        };
        match body {
            Ok(body) => match alerts::prometheus_samples(&body) {
                Ok(samples) => Input::Samples(samples),
                Err(e) => Input::Failed(e),
            },
            Err(e) => Input::Failed(format!("Prometheus at {} unreachable: {e}", query.address)),
        }
    }
}

fn event(t: &alerts::Transition, message: String) -> AlertEvent {
    AlertEvent {
        id: 0,
        app: String::new(),
        env: String::new(),
        rule: t.rule.clone(),
        series: t.series.clone(),
        kind: t.to.as_str().to_string(),
        message,
        at_ms: t.at_ms,
    }
}

fn action_line(
    app: &str,
    env: &str,
    rule: &AlertRule,
    a: &AlertInstance,
    message: String,
    now: i64,
) -> AlertEvent {
    AlertEvent {
        id: 0,
        app: app.to_string(),
        env: env.to_string(),
        rule: rule.name.clone(),
        series: a.series.clone(),
        kind: "action".to_string(),
        message,
        at_ms: now,
    }
}

/// Whether a rule of `manifest` holds deployments into `env` while it fires.
pub fn blocks(manifest: &Manifest, env: &str) -> bool {
    manifest
        .alerts
        .iter()
        .any(|r| r.actions.block_promotions && r.watches(env))
}

/// The `alerts` gate facts of app/env under `manifest`: None when no rule blocks there.
pub async fn gate_facts(
    store: &Store,
    manifest: &Manifest,
    app: &str,
    env: &str,
    now: i64,
) -> Result<Option<Vec<BlockingAlert>>, StoreError> {
    if !blocks(manifest, env) {
        return Ok(None);
    }
    let stored: Vec<AlertInstance> = store
        .alerts(Some(app), Some(env))
        .await?
        .into_iter()
        .map(|s| s.alert)
        .collect();
    let silences = store.silences(Some(app), now).await?;
    Ok(Some(alerts::blocking(
        &manifest.alerts,
        &stored,
        &silences,
        app,
        env,
        now,
    )))
}

// -- API -----------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
pub struct AlertsParams {
    app: Option<String>,
    env: Option<String>,
}

fn bad_request(message: impl Into<String>) -> ApiFailure {
    ApiFailure::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn manifest_of(record: &ferry_store::AppRecord) -> ApiResult<Manifest> {
    serde_json::from_str(&record.manifest_json).map_err(crate::api::internal)
}

/// `GET /v1/alerts?app=&env=`: the alerts (firing, pending, recently resolved) and the
/// latest history lines of the apps and environments the caller may view.
pub async fn list(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Query(params): Query<AlertsParams>,
) -> ApiResult<Json<AlertsAnswer>> {
    let now = now_ms();
    let app = params.app.as_deref().filter(|a| !a.is_empty());
    let env = params.env.as_deref().filter(|e| !e.is_empty());
    if env.is_some() && app.is_none() {
        return Err(bad_request("`env` needs `app`"));
    }
    let visible = |app: &str, env: &str| access.allows(Permission::View, Target::env(app, env));
    let mut manifests: HashMap<String, Manifest> = HashMap::new();
    for record in state.store.list_apps().await? {
        if app.is_none_or(|a| a == record.name) {
            manifests.insert(record.name.clone(), manifest_of(&record)?);
        }
    }
    let silences = state.store.silences(app, now).await?;
    let mut views: Vec<alerts::AlertView> = state
        .store
        .alerts(app, env)
        .await?
        .into_iter()
        .filter(|s| visible(&s.app, &s.env))
        .filter_map(|s| {
            let rule = manifests
                .get(&s.app)?
                .alerts
                .iter()
                .find(|r| r.name == s.alert.rule)?;
            Some(alerts::view(rule, &s.app, &s.env, &s.alert, &silences, now))
        })
        .collect();
    views.sort_by_key(|v| {
        let rank = match v.status {
            AlertStatus::Firing => 0,
            AlertStatus::Pending => 1,
            _ => 2,
        };
        (
            rank,
            std::cmp::Reverse(v.severity),
            v.app.clone(),
            v.env.clone(),
            v.alert.clone(),
        )
    });
    let history = state
        .store
        .alert_events(app, env, HISTORY)
        .await?
        .into_iter()
        .filter(|e| visible(&e.app, &e.env))
        .map(|e| AlertEventView {
            id: e.id,
            at_ms: e.at_ms,
            app: e.app,
            env: e.env,
            alert: e.rule,
            series: e.series,
            kind: e.kind,
            message: e.message,
        })
        .collect();
    Ok(Json(AlertsAnswer {
        alerts: views,
        history,
    }))
}

#[derive(Debug, Deserialize)]
pub struct SilencesParams {
    app: Option<String>,
}

/// `GET /v1/silences?app=`: silences in force that the caller may view.
pub async fn list_silences(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Query(params): Query<SilencesParams>,
) -> ApiResult<Json<Vec<Silence>>> {
    let now = now_ms();
    let app = params.app.as_deref().filter(|a| !a.is_empty());
    Ok(Json(
        state
            .store
            .silences(app, now)
            .await?
            .into_iter()
            .filter(|s| s.active(now))
            .filter(|s| access.allows(Permission::View, Target::env(&s.app, &s.env)))
            .collect(),
    ))
}

/// `POST /v1/apps/{app}/envs/{env}/silences`: silences an alert of app/env for a while.
pub async fn create_silence(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env)): Path<(String, String)>,
    Json(request): Json<SilenceRequest>,
) -> ApiResult<(StatusCode, Json<Silence>)> {
    let record = state.store.get_app(&app).await?.ok_or_else(|| {
        ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("app {app:?} not found"),
        )
    })?;
    let manifest = manifest_of(&record)?;
    if manifest.environments.get(&env).is_none() {
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("app {app} has no environment {env:?}"),
        ));
    }
    let length_ms = request.check(&manifest.alerts).map_err(bad_request)?;
    let now = now_ms();
    let silence = state
        .store
        .create_silence(&Silence {
            id: 0,
            app: app.clone(),
            env: env.clone(),
            alert: request.alert.clone(),
            created_by: access.caller.principal(),
            reason: request.reason.trim().to_string(),
            created_at_ms: now,
            until_ms: now.saturating_add(length_ms),
            ended_by: None,
        })
        .await?;
    slot.with(|n| {
        n.target = Some(format!("silence {}", silence.id));
        n.summary = Some(format!(
            "silence alert {} in {app}/{env} for {}: {}",
            silence.alert, request.duration, silence.reason
        ));
    });
    Ok((StatusCode::CREATED, Json(silence)))
}

/// `DELETE /v1/apps/{app}/envs/{env}/silences/{id}`: lifts a silence before it expires.
pub async fn end_silence(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path((app, env, id)): Path<(String, String, i64)>,
) -> ApiResult<Json<Silence>> {
    slot.with(|n| n.target = Some(format!("silence {id}")));
    let silence = state
        .store
        .silence(id)
        .await?
        .filter(|s| s.app == app && s.env == env)
        .ok_or_else(|| {
            ApiFailure::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no silence #{id} in {app}/{env}"),
            )
        })?;
    let by = access.caller.principal();
    if !silence.active(now_ms()) || !state.store.end_silence(id, &by).await? {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("silence #{id} has already ended"),
        ));
    }
    slot.with(|n| n.summary = Some(format!("unsilence alert {} in {app}/{env}", silence.alert)));
    Ok(Json(Silence {
        ended_by: Some(by),
        ..silence
    }))
}
