//! What the server measures for a rule, turned into samples; what a firing alert does to
//! the environment's deployments; silences; the promotion gate.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::eval::{AlertInstance, AlertStatus, Input, Sample};
use super::spec::{AlertRule, Metric};
use crate::api::{DeploymentView, EnvStatus, ReplicaView};
use crate::gates::{GateRow, GateState};
use crate::model::{DeploymentKind, DeploymentState, ReplicaState};

/// Most series one Prometheus answer may hold (more is a failed evaluation).
pub const MAX_SERIES: usize = 1000;

/// The samples of Ferry's own `metric` in one environment: one per service and version
/// (only `service` when given). Traffic metrics come from the proxy's last minute (a version
/// without requests has no error rate or latency); replica metrics from the replicas that
/// are not being stopped (CPU and memory: the highest share among them that were sampled).
pub fn builtin_samples(metric: Metric, service: Option<&str>, env: &EnvStatus) -> Vec<Sample> {
    let labels = |service: &str, version: &str| {
        BTreeMap::from([
            ("service".to_string(), service.to_string()),
            ("version".to_string(), version.to_string()),
        ])
    };
    let wanted = |s: &str| service.is_none_or(|only| only == s);
    let mut out = Vec::new();
    match metric {
        Metric::ErrorRate
        | Metric::RequestRate
        | Metric::LatencyP50
        | Metric::LatencyP90
        | Metric::LatencyP95
        | Metric::LatencyP99 => {
            let rows = env.traffic.iter().flat_map(|t| t.versions.iter());
            for row in rows.filter(|r| wanted(&r.service)) {
                let value = match metric {
                    Metric::ErrorRate => (row.requests > 0).then_some(row.error_rate),
                    Metric::RequestRate => Some(row.rate_per_s),
                    Metric::LatencyP50 => row.p50_ms,
                    Metric::LatencyP90 => row.p90_ms,
                    Metric::LatencyP95 => row.p95_ms,
                    _ => row.p99_ms,
                };
                if let Some(value) = value {
                    out.push(Sample {
                        labels: labels(&row.service, &row.version),
                        value,
                    });
                }
            }
        }
        Metric::Up | Metric::ReplicasReady | Metric::Restarts => {
            // (ready, total, restarts) per (service, version)
            let mut groups: BTreeMap<(&str, &str), (u32, u32, u32)> = BTreeMap::new();
            for r in env.replicas.iter().filter(|r| {
                wanted(&r.service)
                    && !matches!(r.state, ReplicaState::Stopping | ReplicaState::Stopped)
            }) {
                let g = groups.entry((&r.service, &r.version)).or_default();
                g.0 += u32::from(r.state == ReplicaState::Healthy);
                g.1 += 1;
                g.2 += r.restarts;
            }
            for ((service, version), (ready, total, restarts)) in groups {
                let value = match metric {
                    Metric::Up => f64::from(u8::from(ready == total)),
                    Metric::ReplicasReady => f64::from(ready),
                    _ => f64::from(restarts),
                };
                out.push(Sample {
                    labels: labels(service, version),
                    value,
                });
            }
        }
        Metric::Cpu | Metric::Memory => {
            // the busiest (fullest) sampled replica of each (service, version)
            let mut groups: BTreeMap<(&str, &str), f64> = BTreeMap::new();
            for r in env.replicas.iter().filter(|r| {
                wanted(&r.service)
                    && !matches!(r.state, ReplicaState::Stopping | ReplicaState::Stopped)
            }) {
                if let Some(share) = share(metric, r) {
                    let g = groups.entry((&r.service, &r.version)).or_insert(share);
                    *g = g.max(share);
                }
            }
            for ((service, version), value) in groups {
                out.push(Sample {
                    labels: labels(service, version),
                    value,
                });
            }
        }
        Metric::Value => {}
    }
    out
}

/// A replica's sampled share of `metric` (CPU or memory).
fn share(metric: Metric, r: &ReplicaView) -> Option<f64> {
    match metric {
        Metric::Cpu => r.cpu_share,
        _ => r.memory_share,
    }
    .filter(|s| s.is_finite())
}

/// [`builtin_samples`] as an evaluation input. Without the proxy's counters (not sampled
/// yet after a start, or the proxy unreachable) a traffic metric is a failed measurement,
/// which changes no alert: a restart never resolves a firing alert for want of data.
pub fn builtin_input(metric: Metric, service: Option<&str>, env: &EnvStatus) -> Input {
    if metric.from_proxy() && env.traffic.is_none() {
        return Input::Failed("the proxy's counters have not been sampled yet".to_string());
    }
    // Likewise CPU and memory: running replicas none of which has a share yet (just
    // started, or a server that just restarted) are not measured, not idle.
    if metric.from_usage()
        && env
            .replicas
            .iter()
            .any(|r| matches!(r.state, ReplicaState::Healthy | ReplicaState::Unhealthy))
        && env.replicas.iter().all(|r| share(metric, r).is_none())
    {
        return Input::Failed(format!(
            "the replicas' {} has not been sampled yet",
            metric.name()
        ));
    }
    Input::Samples(builtin_samples(metric, service, env))
}

/// The series of a Prometheus instant-query answer (`/api/v1/query`): a vector's series with
/// their labels (`__name__` left out), or a scalar as one series without labels.
pub fn prometheus_samples(body: &str) -> Result<Vec<Sample>, String> {
    let json: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("Prometheus answer is not JSON: {e}"))?;
    if json.get("status").and_then(|s| s.as_str()) != Some("success") {
        let error = json
            .get("error")
            .and_then(|s| s.as_str())
            .unwrap_or("no error message");
        return Err(format!("Prometheus: {}", cut(error, 200)));
    }
    let data = json.get("data");
    let value_of = |pair: Option<&serde_json::Value>| -> Result<f64, String> {
        pair.and_then(|p| p.get(1))
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| "Prometheus sample has no readable value".to_string())
    };
    match data
        .and_then(|d| d.get("resultType"))
        .and_then(|t| t.as_str())
    {
        Some("scalar") => Ok(vec![Sample {
            labels: BTreeMap::new(),
            value: value_of(data.and_then(|d| d.get("result")))?,
        }]),
        Some("vector") => {
            let series = data
                .and_then(|d| d.get("result"))
                .and_then(|r| r.as_array())
                .ok_or("Prometheus vector without a result list")?;
            if series.len() > MAX_SERIES {
                return Err(format!(
                    "the query returned {} series, more than {MAX_SERIES}: aggregate it (sum by …)",
                    series.len()
                ));
            }
            series
                .iter()
                .map(|s| {
                    let labels = s
                        .get("metric")
                        .and_then(|m| m.as_object())
                        .map(|m| {
                            m.iter()
                                .filter(|(k, _)| *k != "__name__")
                                .map(|(k, v)| (cut(k, 100), cut(v.as_str().unwrap_or(""), 200)))
                                .collect()
                        })
                        .unwrap_or_default();
                    Ok(Sample {
                        labels,
                        value: value_of(s.get("value"))?,
                    })
                })
                .collect()
        }
        other => Err(format!(
            "the query returned a {} result; an alert needs an instant vector or a scalar",
            other.unwrap_or("missing")
        )),
    }
}

fn cut(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Every label of an alert: `alertname`, `app`, `env`, `severity`, the rule's `labels`,
/// then the series' (which win: a Prometheus series may carry its own `env`).
pub fn alert_labels(
    rule: &AlertRule,
    app: &str,
    env: &str,
    series: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("alertname".to_string(), rule.name.clone()),
        ("app".to_string(), app.to_string()),
        ("env".to_string(), env.to_string()),
        ("severity".to_string(), rule.severity.as_str().to_string()),
    ]);
    labels.extend(rule.labels.clone());
    labels.extend(series.clone());
    labels
}

/// What firing does to a deployment, decided from the environment's latest deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "plan")]
pub enum ActionPlan {
    /// Roll deployment `deployment_id` back (in progress, or succeeded within the window).
    Rollback { deployment_id: i64, version: String },
    /// Pause the canary or blue/green rollout `deployment_id`.
    Pause { deployment_id: i64 },
    /// Nothing to do, and why (told in the alert's history).
    Skip { action: String, why: String },
}

/// The actions of a firing alert with these series `labels`, given the environment's
/// latest deployment. A `version` label limits them to a deployment of that version.
/// `rollback` wins over `pause` when both could apply.
pub fn plan_actions(
    rule: &AlertRule,
    labels: &BTreeMap<String, String>,
    latest: Option<&DeploymentView>,
    now_ms: i64,
) -> Vec<ActionPlan> {
    let actions = &rule.actions;
    let mut out = Vec::new();
    let skip = |action: &str, why: String| ActionPlan::Skip {
        action: action.to_string(),
        why,
    };
    let version = labels.get("version");
    let ours = |d: &DeploymentView| version.is_none_or(|v| *v == d.version);
    if actions.rollback {
        let within_ms = actions.rollback_within.map_or(0, |w| {
            i64::try_from(w.get().as_millis()).unwrap_or(i64::MAX)
        });
        let plan = match latest {
            None => skip("rollback", "nothing was deployed here".into()),
            Some(d) if !ours(d) => skip(
                "rollback",
                format!(
                    "the latest deployment (#{}) is of {}, not {}",
                    d.id,
                    d.version,
                    version.map_or("", String::as_str)
                ),
            ),
            Some(d) if d.previous_version.is_none() => skip(
                "rollback",
                format!("deployment #{} has no earlier version to go back to", d.id),
            ),
            Some(d) if d.state == DeploymentState::Progressing => ActionPlan::Rollback {
                deployment_id: d.id,
                version: d.version.clone(),
            },
            Some(d)
                if d.state == DeploymentState::Succeeded
                    && d.kind != DeploymentKind::Rollback
                    && d.finished_at_ms
                        .is_some_and(|f| now_ms.saturating_sub(f) < within_ms) =>
            {
                ActionPlan::Rollback {
                    deployment_id: d.id,
                    version: d.version.clone(),
                }
            }
            Some(d) => skip(
                "rollback",
                match (d.state, actions.rollback_within) {
                    (DeploymentState::Succeeded, Some(w)) if d.kind != DeploymentKind::Rollback => {
                        format!("deployment #{} succeeded more than {w} ago", d.id)
                    }
                    _ => format!("no deployment in progress (#{} is {})", d.id, d.state),
                },
            ),
        };
        out.push(plan);
    }
    if actions.pause {
        let rolling_back = out.iter().any(|p| matches!(p, ActionPlan::Rollback { .. }));
        let plan = match latest {
            _ if rolling_back => skip("pause", "rolled back instead".into()),
            Some(d) if d.state == DeploymentState::Progressing && ours(d) => {
                if matches!(d.strategy.as_str(), "canary" | "blue_green") {
                    ActionPlan::Pause {
                        deployment_id: d.id,
                    }
                } else {
                    skip(
                        "pause",
                        format!(
                            "deployment #{} is a {} rollout; only canary and blue/green rollouts pause",
                            d.id, d.strategy
                        ),
                    )
                }
            }
            _ => skip("pause", "no rollout in progress to pause".into()),
        };
        out.push(plan);
    }
    out
}

/// A silence: the alert `alert` of app/env notifies and acts no more until `until_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Silence {
    pub id: i64,
    pub app: String,
    pub env: String,
    pub alert: String,
    /// `user:alice`, `token:ci`.
    pub created_by: String,
    pub reason: String,
    pub created_at_ms: i64,
    /// When it ends (ms since the Unix epoch).
    pub until_ms: i64,
    /// Ended early by `ferry alerts unsilence`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
}

impl Silence {
    /// In force at `now_ms`.
    pub fn active(&self, now_ms: i64) -> bool {
        self.ended_by.is_none() && now_ms < self.until_ms
    }
}

/// The silence in force for this alert, if any (the one that lasts longest).
pub fn silenced_by<'a>(
    silences: &'a [Silence],
    app: &str,
    env: &str,
    alert: &str,
    now_ms: i64,
) -> Option<&'a Silence> {
    silences
        .iter()
        .filter(|s| s.app == app && s.env == env && s.alert == alert && s.active(now_ms))
        .max_by_key(|s| s.until_ms)
}

/// An alert that holds deployments into its environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockingAlert {
    pub alert: String,
    pub severity: String,
    pub fired_at_ms: i64,
    /// e.g. `error rate 12% on web 1.2.0`.
    pub detail: String,
}

/// The `alerts` gate row of an environment with rules that `block_promotions`: met when
/// none of them fires (silenced ones don't count), waiting otherwise, naming each alert.
pub fn gate_row(blocking: &[BlockingAlert]) -> GateRow {
    if blocking.is_empty() {
        return GateRow {
            gate: "alerts".into(),
            state: GateState::Met,
            detail: "no blocking alert is firing".into(),
            key: "alerts-quiet".into(),
        };
    }
    let names: Vec<&str> = blocking.iter().map(|b| b.alert.as_str()).collect();
    let detail = blocking
        .iter()
        .map(|b| format!("alert {} ({}) is firing: {}", b.alert, b.severity, b.detail))
        .collect::<Vec<_>>()
        .join("; ");
    GateRow {
        gate: "alerts".into(),
        state: GateState::Waiting,
        detail: format!("waiting until it resolves: {detail}"),
        key: format!("alerts:{}", names.join(",")),
    }
}

/// The blocking alerts of app/env among `alerts` (firing, from rules that block, not
/// silenced).
pub fn blocking(
    rules: &[AlertRule],
    alerts: &[AlertInstance],
    silences: &[Silence],
    app: &str,
    env: &str,
    now_ms: i64,
) -> Vec<BlockingAlert> {
    alerts
        .iter()
        .filter(|a| a.status == AlertStatus::Firing)
        .filter_map(|a| {
            let rule = rules.iter().find(|r| r.name == a.rule)?;
            (rule.actions.block_promotions
                && rule.watches(env)
                && silenced_by(silences, app, env, &rule.name, now_ms).is_none())
            .then(|| BlockingAlert {
                alert: rule.name.clone(),
                severity: rule.severity.to_string(),
                fired_at_ms: a.fired_at_ms.unwrap_or(a.active_since_ms),
                detail: describe(rule, a),
            })
        })
        .collect()
}

/// `error_rate 12% (> 1%) on web 1.2.0`: the value that fired and where.
pub fn describe(rule: &AlertRule, a: &AlertInstance) -> String {
    let condition = rule.parsed_condition().ok().flatten();
    let metric = condition.map_or(Metric::Value, |c| c.metric);
    let value = metric.format(a.fired_value.unwrap_or(a.value));
    let what = match condition {
        Some(c) => format!(
            "{} {value} ({} {})",
            metric.name(),
            c.op.as_str(),
            c.threshold
        ),
        None => format!("value {value}"),
    };
    let series: Vec<&str> = a.labels.values().map(String::as_str).collect();
    if series.is_empty() {
        what
    } else {
        format!("{what} on {}", series.join(" "))
    }
}
