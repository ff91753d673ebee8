//! The shell around `ferry_core::gates`: gathers the facts a gate report needs (history in
//! the `after` environment, approvals, check results, overrides), runs the external gate
//! checks of waiting deployments in the background (never blocking the controller loop),
//! and serves `GET /v1/deployments/{id}/gates` and `POST /v1/deployments/{id}/overrides`.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::{Extension, Json};
use ferry_core::api::gates::{GatesStatus, GatesVerdict, OverrideRequest};
use ferry_core::gates::{self, CheckResult, Facts, GateReport, GateRow, Override};
use ferry_core::manifest::{GateCheck, Gates, Manifest};
use ferry_core::model::{DeploymentState, EventKind};
use ferry_store::{DeploymentRecord, Store, StoreError};

use crate::access::{Access, AuditSlot};
use crate::api::{ApiFailure, ApiResult, AppState};
use crate::lock;

/// The most of a command check's stdout (and of its stderr) kept to explain it (the tail).
const CHECK_OUTPUT_BYTES: usize = 64 * 1024;

/// Whether a deployment still waits at its gates (and so may run checks, get overrides and
/// show its gate rows in `ferry status`).
pub fn waiting(state: DeploymentState) -> bool {
    state.is_waiting()
}

/// The gates of `env` in the app's current manifest (none: the default, no gate).
pub async fn gates_of(store: &Store, app: &str, env: &str) -> Result<Gates, StoreError> {
    let record = store.get_app(app).await?;
    let manifest: Option<Manifest> =
        record.and_then(|r| serde_json::from_str(&r.manifest_json).ok());
    Ok(manifest
        .and_then(|m| m.environments.get(env).and_then(|e| e.gates.clone()))
        .unwrap_or_default())
}

/// What the `after` and `soak` gates need to know: the latest successful deployment of
/// this version in the `after` environment, and whether that environment still runs it.
pub async fn history(
    store: &Store,
    deployment: &DeploymentRecord,
    env_gates: &Gates,
) -> Result<gates::History, StoreError> {
    let mut history = gates::History {
        version: deployment.version.clone(),
        succeeded_in_after_env: None,
    };
    let Some(after) = &env_gates.after else {
        return Ok(history);
    };
    let recent = store.list_deployments(&deployment.app, after, 1000).await?;
    let latest = recent
        .iter()
        .find(|d| d.state == DeploymentState::Succeeded && d.version == deployment.version);
    let finished_at_ms = match latest {
        Some(d) => Some(d.finished_at_ms.unwrap_or(d.updated_at_ms)),
        // Older than the last 1000 deployments there: it succeeded long ago.
        None if store
            .version_succeeded_in(&deployment.app, after, &deployment.version)
            .await? =>
        {
            Some(0)
        }
        None => None,
    };
    if let Some(finished_at_ms) = finished_at_ms {
        let current = store
            .env_current(&deployment.app, after)
            .await?
            .and_then(|e| e.current_version);
        history.succeeded_in_after_env = Some(gates::SoakFacts {
            finished_at_ms,
            still_current: current.as_deref() == Some(deployment.version.as_str()),
        });
    }
    Ok(history)
}

/// Check results and overrides recorded for a deployment, and the firing alerts that hold
/// deployments into its environment (under `manifest`, the app's latest), at `now`.
pub async fn facts(
    store: &Store,
    manifest: Option<&Manifest>,
    deployment: &DeploymentRecord,
    now: i64,
) -> Result<Facts, StoreError> {
    // alerts:
    let alerts = match manifest {
        Some(m) => {
            crate::alerts::gate_facts(store, m, &deployment.app, &deployment.env, now).await?
        }
        None => None,
    };
    Ok(Facts {
        checks: store.check_results(deployment.id).await?,
        overrides: store.overrides(deployment.id).await?,
        alerts,
    })
}

/// The gate report of a deployment against `env_gates` at `now`.
pub async fn report_for(
    store: &Store,
    deployment: &DeploymentRecord,
    env_gates: &Gates,
    now: i64,
) -> Result<GateReport, StoreError> {
    let history = history(store, deployment, env_gates).await?;
    let approvals = store.approvals(deployment.id).await?;
    let manifest: Option<Manifest> = store
        .get_app(&deployment.app)
        .await?
        .and_then(|r| serde_json::from_str(&r.manifest_json).ok());
    let facts = facts(store, manifest.as_ref(), deployment, now).await?;
    Ok(gates::report(
        env_gates,
        &history,
        &approvals,
        &deployment.requested_by,
        &facts,
        now,
    ))
}

/// The gate rows shown under a waiting deployment (empty for any other), judged at `now`.
pub async fn rows_if_waiting(
    store: &Store,
    deployment: &DeploymentRecord,
    now: i64,
) -> Result<Vec<GateRow>, StoreError> {
    if !waiting(deployment.state) || deployment.kind == ferry_core::model::DeploymentKind::Rollback
    {
        return Ok(Vec::new());
    }
    let env_gates = gates_of(store, &deployment.app, &deployment.env).await?;
    Ok(report_for(store, deployment, &env_gates, now).await?.rows)
}

// -- running checks ----------------------------------------------------------------------

/// Runs gate checks in the background: at most one run per (deployment, check) at a time;
/// each finished run replaces the check's latest result in the store.
#[derive(Clone, Default)]
pub struct CheckRunner {
    running: Arc<Mutex<HashSet<(i64, String)>>>,
    http: reqwest::Client,
}

impl CheckRunner {
    /// Starts `checks` (the due ones: the controller's gates step decides which) for
    /// `deployment`, each unless a run of it is under way. Returns at once.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        &self,
        store: &Store,
        runtimes: &crate::runtimes::Runtimes,
        secrets: &crate::secrets::Secrets,
        workloads: &crate::workload::Workloads,
        manifest: &ferry_core::manifest::Manifest,
        deployment: &DeploymentRecord,
        checks: &[GateCheck],
        clock: &Arc<dyn crate::clock::Clock>,
    ) {
        let mut base_dir: Option<Option<PathBuf>> = None;
        // What a command check runs with: the environment's variables and secrets.
        let mut command_env: Option<CommandEnv> = None;
        for check in checks {
            let key = (deployment.id, check.name.clone());
            if !lock(&self.running).insert(key.clone()) {
                continue;
            }
            if check.run.is_some() && base_dir.is_none() {
                base_dir = Some(match store.get_app(&deployment.app).await {
                    Ok(app) => app.and_then(|a| a.base_dir).map(PathBuf::from),
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the manifest directory for a gate check");
                        None
                    }
                });
            }
            if check.run.is_some() && command_env.is_none() {
                command_env = Some(CommandEnv::of(secrets, workloads, manifest, deployment).await);
            }
            let subject = Subject {
                deployment_id: deployment.id,
                app: deployment.app.clone(),
                env: deployment.env.clone(),
                version: deployment.version.clone(),
                base_dir: base_dir.clone().flatten(),
                command_env: command_env.clone().unwrap_or_default(),
                runtimes: runtimes.clone(),
            };
            let runner = self.clone();
            let store = store.clone();
            let check = check.clone();
            let clock = clock.clone();
            tokio::spawn(async move {
                let (passed, explanation) = runner.run(&check, &subject).await;
                let result = CheckResult {
                    name: check.name.clone(),
                    passed,
                    explanation,
                    at_ms: clock.now_ms(),
                };
                if let Err(e) = store
                    .record_check_result(subject.deployment_id, &result)
                    .await
                {
                    tracing::warn!(error = %e, check = %check.name, "recording a gate check result");
                }
                lock(&runner.running).remove(&key);
            });
        }
    }

    /// One run of a check: `(passed, one-line explanation)`.
    async fn run(&self, check: &GateCheck, subject: &Subject) -> (bool, String) {
        let fill =
            |text: &str| gates::substitute(text, &subject.version, &subject.env, &subject.app);
        let timeout = check.timeout();
        if let Some(http) = &check.http {
            let url = fill(&http.url);
            let answer = self.http.get(&url).timeout(timeout).send().await;
            return match answer {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body = response.text().await.unwrap_or_default();
                    gates::judge_http(http, status, &body)
                }
                Err(e) if e.is_timeout() => (
                    false,
                    format!("GET {url}: no answer within {}", gates::compact(timeout)),
                ),
                Err(e) => (
                    false,
                    format!("GET {url} failed: {}", crate::error::one_line(&e)),
                ),
            };
        }
        let argv: Vec<String> = check.run.iter().flatten().map(|a| fill(a)).collect();
        let Some(program) = argv.first() else {
            return (false, "the check has neither `http` nor `run`".into());
        };
        let run_as = match &subject.command_env.run_as {
            Ok(run_as) => run_as.clone(),
            Err(e) => return (false, format!("cannot run {program}: {e}")),
        };
        let mut env_vars = subject.command_env.vars.clone();
        env_vars.insert("VERSION".into(), subject.version.clone());
        env_vars.insert("FERRY_ENV".into(), subject.env.clone());
        env_vars.insert("FERRY_APP".into(), subject.app.clone());
        let container = subject.command_env.container.clone();
        let task = ferry_runtime::TaskSpec {
            // One run at a time per (deployment, check): the name finds what a dead
            // server's run left on the engine.
            name: format!("check-{}-{}", check.name, subject.deployment_id),
            app: subject.app.clone(),
            env: subject.env.clone(),
            argv: argv.clone(),
            env_vars,
            // A container runs in the image's own directory, as the image's user.
            cwd: if container.is_some() {
                None
            } else {
                subject.base_dir.clone()
            },
            run_as,
            timeout,
            output: ferry_runtime::TaskOutput::Capture {
                max_bytes: CHECK_OUTPUT_BYTES,
            },
            container,
        };
        if task.container.is_some() {
            subject.runtimes.discard_task(&task.name).await;
        }
        match subject.runtimes.run_task(task, None).await {
            Ok(outcome) if outcome.end == ferry_runtime::TaskEnd::TimedOut => (
                false,
                format!(
                    "{program} did not finish within {}",
                    gates::compact(timeout)
                ),
            ),
            Ok(outcome) => {
                let text = format!("{}\n{}", outcome.stdout, outcome.stderr);
                let (passed, why) = gates::judge_exit(outcome.end.code(), &text);
                (passed, subject.command_env.redact(why))
            }
            Err(e) => (false, format!("cannot run {program}: {e}")),
        }
    }
}

struct Subject {
    deployment_id: i64,
    app: String,
    env: String,
    version: String,
    base_dir: Option<PathBuf>,
    command_env: CommandEnv,
    /// What runs a command check (through the environment's runtime, like hooks).
    runtimes: crate::runtimes::Runtimes,
}

/// The environment of a command check: the layered variables and the secrets of the
/// deployment's environment (as hooks get them), and the secret values to keep out of its
/// one-line explanation; where it runs: like a hook, a one-off container of the
/// deployment's image in a `runtime: docker` environment, else a process on this host.
#[derive(Clone)]
struct CommandEnv {
    vars: BTreeMap<String, String>,
    secret_values: Vec<String>,
    /// The user it runs as, or why that user is not available.
    run_as: Result<Option<ferry_runtime::RunAs>, String>,
    container: Option<ferry_runtime::ContainerSpec>,
}

impl Default for CommandEnv {
    /// For HTTP checks, which start no process (a command never runs as "not resolved").
    fn default() -> Self {
        CommandEnv {
            vars: BTreeMap::new(),
            secret_values: Vec::new(),
            run_as: Err("its user was not resolved".into()),
            container: None,
        }
    }
}

impl CommandEnv {
    async fn of(
        secrets: &crate::secrets::Secrets,
        workloads: &crate::workload::Workloads,
        manifest: &ferry_core::manifest::Manifest,
        deployment: &DeploymentRecord,
    ) -> CommandEnv {
        let (vars, _) =
            ferry_core::config::environment_vars(manifest, &deployment.env, &deployment.version);
        let secrets = secrets
            .for_workloads(&deployment.app, &deployment.env)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "a gate check runs without the secrets");
                Default::default()
            });
        let container = crate::runtimes::hook_container(
            manifest,
            &deployment.env,
            &deployment.version,
            secrets.registry.as_ref(),
        );
        let secret_values = secrets
            .vars
            .values()
            .filter(|v| v.len() >= 4)
            .cloned()
            .collect();
        let mut vars: BTreeMap<String, String> =
            vars.into_iter().map(|v| (v.name, v.value)).collect();
        vars.extend(secrets.vars);
        CommandEnv {
            vars,
            secret_values,
            run_as: workloads
                .run_as(manifest, &deployment.env)
                .map_err(|e| e.to_string()),
            container,
        }
    }

    fn redact(&self, text: String) -> String {
        crate::secrets::redact(text, &self.secret_values)
    }
}

// -- API -----------------------------------------------------------------------------------

pub async fn status(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<GatesStatus>> {
    gates_status(&state.store, id, state.now_ms())
        .await
        .map(Json)
}

/// A deployment's gates, judged at `now` unless it has passed them.
pub async fn gates_status(store: &Store, id: i64, now: i64) -> ApiResult<GatesStatus> {
    let deployment = store
        .get_deployment(id)
        .await?
        .ok_or_else(|| not_found(id))?;
    if !waiting(deployment.state)
        && let Some((rows, at_ms)) = store.passed_gates(id).await?
    {
        return Ok(GatesStatus {
            deployment: deployment.view(),
            verdict: GatesVerdict::Passed,
            gates: rows,
            overrides: store.overrides(id).await?,
            passed_at_ms: Some(at_ms),
        });
    }
    let env_gates = gates_of(store, &deployment.app, &deployment.env).await?;
    let report = report_for(store, &deployment, &env_gates, now).await?;
    let verdict = match report.verdict() {
        gates::GatesVerdict::Passed => GatesVerdict::Passed,
        gates::GatesVerdict::Waiting(_) => GatesVerdict::Waiting,
        gates::GatesVerdict::Rejected { .. } => GatesVerdict::Rejected,
    };
    Ok(GatesStatus {
        deployment: deployment.view(),
        verdict,
        gates: report.rows,
        overrides: store.overrides(id).await?,
        passed_at_ms: None,
    })
}

/// Lifts the freeze gate for one waiting deployment (permission `override_freeze`, checked
/// by the access gate on the deployment's app/env), with a mandatory reason.
pub async fn create_override(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Extension(slot): Extension<AuditSlot>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    body: Option<Json<OverrideRequest>>,
) -> ApiResult<(StatusCode, Json<GatesStatus>)> {
    slot.with(|n| n.target = Some(format!("deployment {id}")));
    let request = body.map(|Json(b)| b).unwrap_or_default();
    let gate = request.gate.as_deref().map(str::trim).unwrap_or("");
    if gate != "freeze" {
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            if gate.is_empty() {
                "name the gate to override: `--gate freeze`".to_string()
            } else {
                format!("gate {gate:?} cannot be overridden; only `freeze` can")
            },
        ));
    }
    let reason = request
        .reason
        .or_else(|| {
            headers
                .get("x-ferry-reason")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            ApiFailure::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "overriding a freeze needs a reason (`--reason \"hotfix for INC-123\"`)",
            )
        })?;
    let deployment = state
        .store
        .get_deployment(id)
        .await?
        .ok_or_else(|| not_found(id))?;
    if !waiting(deployment.state) {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "deployment #{id} is {}; only a waiting deployment (pending, awaiting-approval or blocked) can get an override",
                deployment.state
            ),
        ));
    }
    let env_gates = gates_of(&state.store, &deployment.app, &deployment.env).await?;
    if env_gates.freeze.is_empty() {
        return Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "{}/{} has no freeze window to override",
                deployment.app, deployment.env
            ),
        ));
    }
    let by = access.caller.principal();
    let lifted = Override {
        gate: "freeze".into(),
        by: by.clone(),
        reason: reason.clone(),
        at_ms: state.now_ms(),
    };
    state.store.record_override(id, &lifted).await?;
    let line = format!(
        "freeze overridden by {}: {reason}",
        gates::display_principal(&by)
    );
    if let Some(controller) = &state.controller {
        controller.note(id, EventKind::Override, &line).await;
    }
    Ok((
        StatusCode::CREATED,
        Json(gates_status(&state.store, id, state.now_ms()).await?),
    ))
}

fn not_found(id: i64) -> ApiFailure {
    ApiFailure::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("deployment {id} not found"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(dir: &std::path::Path) -> Subject {
        Subject {
            deployment_id: 1,
            app: "shop".into(),
            env: "production".into(),
            version: "1.4.2".into(),
            base_dir: Some(dir.to_path_buf()),
            command_env: CommandEnv {
                vars: BTreeMap::from([("CI_TOKEN".to_string(), "s3cr3t-token".to_string())]),
                secret_values: vec!["s3cr3t-token".to_string()],
                run_as: Ok(None),
                container: None,
            },
            runtimes: crate::runtimes::Runtimes::new(
                ferry_runtime::ProcessRuntime::new(dir.join("logs"), 1 << 20),
                "gates-test".into(),
            ),
        }
    }

    fn check(run: &[&str], timeout_ms: u64) -> GateCheck {
        GateCheck {
            name: "uat".into(),
            run: Some(run.iter().map(|a| a.to_string()).collect()),
            timeout: Some(ferry_core::duration::HumanDuration(
                std::time::Duration::from_millis(timeout_ms),
            )),
            ..GateCheck::default()
        }
    }

    #[tokio::test]
    async fn a_command_check_passes_on_exit_0_and_sees_the_version() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runner = CheckRunner::default();
        let ok = check(&["sh", "-c", "test \"$VERSION\" = 1.4.2"], 5_000);
        let (passed, why) = runner.run(&ok, &subject(dir.path())).await;
        assert!(passed, "{why}");
        let failing = check(&["sh", "-c", "echo not signed off; exit 3"], 5_000);
        let (passed, why) = runner.run(&failing, &subject(dir.path())).await;
        assert!(!passed);
        assert!(why.contains("not signed off"), "{why}");
        // It gets the environment's secrets, and never repeats one in its explanation.
        let leaky = check(&["sh", "-c", "echo token=$CI_TOKEN; exit 1"], 5_000);
        let (passed, why) = runner.run(&leaky, &subject(dir.path())).await;
        assert!(!passed);
        assert!(why.contains("token=[redacted]"), "{why}");
    }

    #[tokio::test]
    async fn a_timed_out_check_takes_everything_it_started_with_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let runner = CheckRunner::default();
        let slow = check(&["sh", "-c", "sleep 30 & echo $! > sleeper.pid; wait"], 300);
        let (passed, why) = runner.run(&slow, &subject(dir.path())).await;
        assert!(!passed);
        assert!(why.contains("did not finish"), "{why}");
        let pid: u32 = std::fs::read_to_string(dir.path().join("sleeper.pid"))
            .expect("the check wrote its child's pid")
            .trim()
            .parse()
            .expect("a pid");
        // Gone, or at most a zombie waiting for init to reap it.
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let running = state
            .rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'));
        assert!(
            !running,
            "the check's child {pid} outlived the timeout: {state}"
        );
    }
}
