//! flags: the feature flags page of an app (`/apps/{app}/flags?env=…`) and its on/off forms.
//!
//! The page reads `GET /v1/apps/{app}/envs/{env}/flags` (and each flag's guarded rollout)
//! as the logged-in person, so it shows exactly what the API would. The forms
//! (`POST /apps/{app}/envs/{env}/flags/{flag}/enable|disable`) check the CSRF token and make
//! the API's own request as that person: the gate judges it by `manage_flags` on the app and
//! environment, answers 403 and audits it as any other. A person who may not manage the
//! environment's flags sees no button.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{Extensions, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_core::api::AppStatus;
use ferry_core::rbac::{Permission, Target};
use serde::Deserialize;
use serde_json::{Value, json};

use super::pages::{age, nav};
use super::views::Nav;
use super::{Console, Failure, Session, refused, see_other, seg};
use crate::clock::now_ms;

/// Most guarded rollouts whose measurements the page reads (one request each).
const MAX_GUARD_DETAILS: usize = 50;
/// Longest reason the form forwards (the API bounds it too).
const MAX_REASON_CHARS: usize = 1024;

#[derive(Deserialize)]
pub(crate) struct FlagsQuery {
    env: Option<String>,
}

/// A flag as `GET …/flags` lists it (the fields the page shows).
#[derive(Deserialize)]
struct Listed {
    name: String,
    enabled: bool,
    rollout: u32,
    #[serde(default)]
    strategies: Vec<String>,
    #[serde(default)]
    variants: Vec<String>,
    #[serde(default)]
    description: Option<String>,
    updated_at_ms: i64,
    updated_by: String,
    #[serde(default)]
    guarded_rollout: Option<Value>,
}

/// One row of the page.
pub(crate) struct FlagRow {
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub strategies: String,
    pub variants: String,
    pub rollout: u32,
    /// `running`, `completed`, `rolled-back`, `paused`, `cancelled`; empty without one.
    pub guard: String,
    /// `step 2/4 at 25 %` and why it ended, when it did.
    pub guard_detail: String,
    /// The last verdicts (metric, value, threshold, sample) or the rollback's explanation.
    pub verdicts: Vec<String>,
    pub updated: String,
}

#[derive(askama::Template)]
#[template(path = "console/flags.html")]
pub(crate) struct FlagsPage {
    pub nav: Nav,
    pub app: String,
    pub env: String,
    pub envs: Vec<String>,
    pub revision: i64,
    pub flags: Vec<FlagRow>,
    /// Whether the person may switch this environment's flags (the API decides anyway).
    pub manage: bool,
}

impl FlagsPage {
    fn is_env(&self, env: &&String) -> bool {
        **env == self.env
    }
}

pub(crate) async fn page(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(app): Path<String>,
    Query(q): Query<FlagsQuery>,
) -> Response {
    let back = format!("/apps/{}/flags", seg(&app));
    console
        .page(&headers, &back, |c, s| async move {
            flags_page(c, &s, &app, q).await
        })
        .await
}

async fn flags_page(
    console: &Console,
    session: &Session,
    app: &str,
    q: FlagsQuery,
) -> Result<FlagsPage, Failure> {
    let status: AppStatus = console
        .get(session, &format!("/v1/apps/{}/status", seg(app)))
        .await?;
    let envs: Vec<String> = status.environments.iter().map(|e| e.env.clone()).collect();
    let env = q
        .env
        .map(|e| e.chars().take(64).collect::<String>())
        .or_else(|| envs.first().cloned())
        .unwrap_or_default();
    let base = format!("/v1/apps/{}/envs/{}", seg(app), seg(&env));
    let list: Value = console.get(session, &format!("{base}/flags")).await?;
    let listed: Vec<Listed> =
        serde_json::from_value(list["flags"].clone()).map_err(|e| Failure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("the API's list of flags did not parse: {e}"),
        })?;
    let now = now_ms();
    let mut flags = Vec::with_capacity(listed.len());
    let mut details = 0;
    for f in listed {
        let guard = f.guarded_rollout.unwrap_or(Value::Null);
        // The list leaves the measurements out: read them for the flags that have a guarded
        // rollout (a bounded number of them).
        let measurements = if guard.is_null() || details >= MAX_GUARD_DETAILS {
            Value::Null
        } else {
            details += 1;
            console
                .get::<Value>(
                    session,
                    &format!("{base}/flags/{}/guarded-rollout", seg(&f.name)),
                )
                .await
                .map(|g| g["guarded_rollout"]["measurements"].clone())
                .unwrap_or(Value::Null)
        };
        flags.push(FlagRow {
            description: f.description.unwrap_or_default(),
            enabled: f.enabled,
            strategies: list_or_none(&f.strategies),
            variants: list_or_none(&f.variants),
            rollout: f.rollout,
            guard: guard["state"].as_str().unwrap_or_default().to_string(),
            guard_detail: guard_detail(&guard),
            verdicts: verdicts(&guard, &measurements),
            updated: format!("{} ago by {}", age(now, f.updated_at_ms), f.updated_by),
            name: f.name,
        });
    }
    Ok(FlagsPage {
        nav: nav(session),
        app: app.to_string(),
        revision: list["revision"].as_i64().unwrap_or_default(),
        manage: session.access.allows(
            Permission::ManageFlags,
            Target {
                app: Some(app),
                env: Some(&env),
            },
        ),
        envs,
        env,
        flags,
    })
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// `step 2/4 at 25 %, judged on …`, and for an ended one why it ended.
fn guard_detail(guard: &Value) -> String {
    if guard.is_null() {
        return String::new();
    }
    let steps = guard["steps"].as_array().map_or(0, Vec::len);
    let mut text = format!(
        "step {}/{steps} at {} %, judged on {}",
        guard["step"].as_u64().unwrap_or_default(),
        guard["percent"].as_u64().unwrap_or_default(),
        match guard["judge"].as_str() {
            Some("environment") => "the environment's whole traffic",
            _ => "the requests that carried the flag",
        }
    );
    if let Some(reason) = guard["reason"].as_str() {
        text.push_str(": ");
        text.push_str(reason);
    }
    text
}

/// One line per last measurement: `error_rate 0.31 (≤ 0.01, 120 requests): fail`; for a
/// rollback without measurements, its metric.
fn verdicts(guard: &Value, measurements: &Value) -> Vec<String> {
    let mut out: Vec<String> = measurements
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let value = m["value"]
                .as_f64()
                .map_or_else(|| "no value".to_string(), |v| format!("{v:.4}"));
            format!(
                "{} {value} ({}, {} requests): {}",
                m["metric"].as_str().unwrap_or("?"),
                m["threshold"].as_str().unwrap_or("?"),
                m["sample_size"].as_u64().unwrap_or_default(),
                m["verdict"].as_str().unwrap_or("?"),
            )
        })
        .collect();
    if out.is_empty()
        && let Some(metric) = guard["metric"].as_str()
    {
        out.push(format!("{metric} failed"));
    }
    out
}

#[derive(Deserialize)]
pub(crate) struct SwitchForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// `POST /apps/{app}/envs/{env}/flags/{flag}/enable|disable` (disable is the kill switch).
pub(crate) async fn switch(
    State(console): State<Console>,
    headers: HeaderMap,
    extensions: Extensions,
    Path((app, env, flag, action)): Path<(String, String, String, String)>,
    Form(form): Form<SwitchForm>,
) -> Response {
    let session = match console.form_session(&headers, &form.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    if action != "enable" && action != "disable" {
        return refused(StatusCode::NOT_FOUND, "no such action");
    }
    let reason: String = form.reason.trim().chars().take(MAX_REASON_CHARS).collect();
    let answer = console
        .api(
            Some(&session),
            Method::POST,
            &format!(
                "/v1/apps/{}/envs/{}/flags/{}/{action}",
                seg(&app),
                seg(&env),
                seg(&flag)
            ),
            Some(json!({ "reason": Some(&reason).filter(|r| !r.is_empty()) })),
            None,
            extensions.get().cloned(),
        )
        .await;
    if !answer.status.is_success() {
        return answer.failure().into_response();
    }
    see_other(&format!("/apps/{}/flags?env={}", seg(&app), seg(&env)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rolled_back_guard_reads_with_its_reason_and_verdicts() {
        let guard = json!({"state": "rolled-back", "metric": "error_rate",
            "reason": "error_rate 0.3 > 0.01 over 120 requests", "step": 2,
            "steps": [5, 25, 100], "percent": 0});
        assert_eq!(
            guard_detail(&guard),
            "step 2/3 at 0 %, judged on the requests that carried the flag: error_rate 0.3 > \
             0.01 over 120 requests"
        );
        let mut env_wide = guard.clone();
        env_wide["judge"] = json!("environment");
        assert!(
            guard_detail(&env_wide).contains("judged on the environment's whole traffic"),
            "{}",
            guard_detail(&env_wide)
        );
        assert_eq!(verdicts(&guard, &Value::Null), ["error_rate failed"]);
        let measured = json!([{"metric": "error_rate", "value": 0.3, "threshold": "≤ 0.01",
            "sample_size": 120, "verdict": "fail"}]);
        assert_eq!(
            verdicts(&guard, &measured),
            ["error_rate 0.3000 (≤ 0.01, 120 requests): fail"]
        );
        assert_eq!(guard_detail(&Value::Null), "");
    }
}
