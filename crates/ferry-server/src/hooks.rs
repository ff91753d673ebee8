//! Deployment hooks, the imperative shell: starts the attempts `ferry_core::hooks::decide`
//! asks for, as tasks that never block the controller loop, and records them.
//!
//! Exactly once: an attempt is recorded `running` (store) BEFORE its process starts and
//! finished AFTER it ends. A server that dies in between leaves the row `running`; the next
//! server's [`HookRunner::recover`] kills the process group if it still runs (pid + start
//! time checked, like replica adoption), marks the attempt `interrupted` and says so on the
//! timeline; `decide` then reruns it as a NEW attempt or fails, per `on_interrupt`.
//!
//! Output (stdout + stderr) goes to `DATA_DIR/hooks/<deployment>/<phase>-<name>-<attempt>.log`
//! (mode 0600), capped at [`MAX_OUTPUT_BYTES`] (the tail is kept). When the environment has
//! secrets, it goes through the redacting log filter (`ferry_runtime::redact`), a process of
//! its own like the hook (so a hook outlives a dying server as replicas do): the file never
//! holds a secret value in plain text, not while the hook runs, nor after an interruption.
//! Without secrets it goes straight to the file.
//!
//! A hook runs like a replica: a clean environment (the layered variables, secrets, the
//! hook's `env` and Ferry's own), as the environment's user (`run_as`).

use ferry_core::model::EventKind;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::hooks::{self, Decision, HookPhase, RunState, Step};
use ferry_core::manifest::{Hook, HttpHook, Manifest, Migration, OnInterrupt};
use ferry_runtime::{Instance, ProcessIdentity, TaskEnd, TaskOutput, TaskSpec};
use ferry_store::{AppRecord, DeploymentRecord, HookRunRecord, NewHookRun, Store};

use crate::clock::now_ms;
use crate::error::ServerError;
use crate::lock;

/// Largest hook output kept (the tail).
pub const MAX_OUTPUT_BYTES: u64 = 1024 * 1024;
/// How long an HTTP hook may take when it has no `timeout` (a whole attempt).
const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the phase is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhaseStatus {
    /// Every hook is done (for non-fatal phases: some may have failed, which was reported).
    Done,
    /// A hook is running.
    Waiting,
    /// A hook failed for good; the reason explains it.
    Failed(String),
}

/// What is run: a command or an HTTP check.
#[derive(Debug, Clone)]
pub enum JobKind {
    Command(Vec<String>),
    Http(HttpHook),
}

/// One hook as the runner sees it (manifest hooks, or migration `down` commands).
#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub kind: JobKind,
    pub timeout: Duration,
    pub retries: u32,
    pub on_interrupt: OnInterrupt,
    pub env: BTreeMap<String, String>,
    /// Recorded with the run (see `ferry_core::hooks::migration_record`).
    pub migration: Option<String>,
}

impl Job {
    pub fn of(hook: &Hook) -> Job {
        Job {
            name: hook.name.clone(),
            kind: match (&hook.run, &hook.http) {
                (_, Some(http)) => JobKind::Http(http.clone()),
                (Some(run), None) => JobKind::Command(run.clone()),
                (None, None) => JobKind::Command(Vec::new()),
            },
            timeout: match (&hook.http, hook.timeout) {
                (Some(_), None) => DEFAULT_HTTP_TIMEOUT,
                _ => hook.timeout(),
            },
            retries: hook.retries,
            on_interrupt: hook.on_interrupt,
            env: hook.env.clone(),
            migration: hooks::migration_record(hook.migration.as_ref()),
        }
    }
}

/// Where an HTTP hook's request goes: the listener (or preview listener) address, and the
/// preview header to send when the strategy routes by header.
#[derive(Debug, Clone, Default)]
pub struct HttpVia {
    pub addr: String,
    pub header: Option<String>,
    /// `Host` to send when the listener is shared by host (the environment's first host).
    pub host: Option<String>,
}

/// The deployment (and its environment) a phase runs for.
pub struct Target<'a> {
    pub app: &'a AppRecord,
    pub manifest: &'a Manifest,
    pub env: &'a str,
    pub deployment_id: i64,
    /// `VERSION` for the hooks.
    pub version: &'a str,
    /// `PREVIOUS_VERSION` for the hooks.
    pub previous: Option<&'a str>,
    pub http: HttpVia,
}

/// Everything a running attempt needs, owned (it moves into a task).
struct Attempt {
    run: HookRunRecord,
    job: Job,
    cwd: Option<PathBuf>,
    env: BTreeMap<String, String>,
    secret_values: Vec<String>,
    /// The user it runs as, or why that user is not available.
    run_as: Result<Option<ferry_runtime::RunAs>, String>,
    /// The `ferry` executable that runs the log filter.
    log_filter: Option<PathBuf>,
    version: String,
    previous: Option<String>,
    http: HttpVia,
    output: PathBuf,
    /// runtime: the one-off container it runs in (`runtime: docker` environments).
    container: Option<ferry_runtime::ContainerSpec>,
}

pub struct HookRunner {
    store: Store,
    secrets: Arc<crate::secrets::Secrets>,
    http: reqwest::Client,
    dir: PathBuf,
    workloads: Arc<crate::workload::Workloads>,
    runtimes: crate::runtimes::Runtimes,
    /// Deployments whose after-rollback phases are known to be done (saves store reads).
    settled: Mutex<HashSet<i64>>,
    /// Deployments that said they wait for another deployment's hook.
    waiting: Mutex<HashSet<i64>>,
}

impl HookRunner {
    pub fn new(
        store: Store,
        secrets: Arc<crate::secrets::Secrets>,
        dir: PathBuf,
        workloads: Arc<crate::workload::Workloads>,
        runtimes: crate::runtimes::Runtimes,
    ) -> HookRunner {
        HookRunner {
            store,
            secrets,
            http: reqwest::Client::new(),
            dir,
            workloads,
            runtimes,
            settled: Mutex::new(HashSet::new()),
            waiting: Mutex::new(HashSet::new()),
        }
    }

    /// The jobs of a manifest phase for an environment.
    pub fn jobs(manifest: &Manifest, phase: HookPhase, env: &str) -> Vec<Job> {
        hooks::applicable(&manifest.hooks, phase, env)
            .into_iter()
            .map(Job::of)
            .collect()
    }

    /// One step of a phase: decides from the recorded runs, starts the next attempt if one
    /// is due (recorded first, then spawned as a task) and says where the phase is.
    pub async fn drive(
        &self,
        target: &Target<'_>,
        phase: HookPhase,
        jobs: &[Job],
    ) -> Result<PhaseStatus, ServerError> {
        if jobs.is_empty() {
            return Ok(PhaseStatus::Done);
        }
        let runs: Vec<HookRunRecord> = self
            .store
            .hook_runs(target.deployment_id)
            .await?
            .into_iter()
            .filter(|r| r.phase == phase)
            .collect();
        let steps: Vec<Step> = jobs
            .iter()
            .map(|j| Step {
                name: j.name.clone(),
                retries: j.retries,
                on_interrupt: j.on_interrupt,
            })
            .collect();
        let core_runs: Vec<hooks::Run> = runs
            .iter()
            .map(|r| hooks::Run {
                hook: r.hook.clone(),
                attempt: r.attempt,
                state: r.state,
                summary: r.summary.clone(),
            })
            .collect();
        match hooks::decide(phase, &steps, &core_runs) {
            Decision::Succeeded => Ok(PhaseStatus::Done),
            Decision::Wait { .. } => Ok(PhaseStatus::Waiting),
            Decision::Failed { reason, .. } => Ok(PhaseStatus::Failed(reason)),
            Decision::Start { hook, attempt, why } => {
                let Some(job) = jobs.iter().find(|j| j.name == hook) else {
                    return Ok(PhaseStatus::Failed(format!("hook {hook} is unknown")));
                };
                self.start(target, phase, job.clone(), attempt, why).await?;
                Ok(PhaseStatus::Waiting)
            }
        }
    }

    async fn start(
        &self,
        target: &Target<'_>,
        phase: HookPhase,
        job: Job,
        attempt: u32,
        why: Option<String>,
    ) -> Result<(), ServerError> {
        let output = self
            .dir
            .join(target.deployment_id.to_string())
            .join(format!("{phase}-{}-{attempt}.log", job.name));
        // Persist, then act: the attempt exists in the store before its process does.
        let run = self
            .store
            .start_hook_run(&NewHookRun {
                deployment_id: target.deployment_id,
                phase,
                hook: job.name.clone(),
                attempt,
                output_path: Some(output.display().to_string()),
                migration: job.migration.clone(),
                now_ms: now_ms(),
            })
            .await?;
        let what = if attempt > 1 {
            format!(
                "{}: started attempt {attempt}{}",
                job.name,
                phase_note(phase)
            )
        } else {
            format!("{}: started{}", job.name, phase_note(phase))
        };
        let line = match why {
            Some(why) => format!("{what} ({why})"),
            None => what,
        };
        self.event(target.deployment_id, &line).await;

        let secrets = match self
            .secrets
            .for_workloads(&target.app.name, target.env)
            .await
        {
            Ok(secrets) => secrets,
            Err(e) => {
                let summary = format!("cannot read the environment's secrets: {e}");
                self.finish(&run, RunState::Failed, None, &summary, target.deployment_id)
                    .await;
                return Ok(());
            }
        };
        // runtime: on Kubernetes the hook is a Job built from the manifest.
        if let Err(e) = self
            .runtimes
            .configure_kubernetes(target.manifest, target.env, &secrets)
            .await
        {
            let summary = format!("cannot reach the environment's cluster: {e}");
            self.finish(&run, RunState::Failed, None, &summary, target.deployment_id)
                .await;
            return Ok(());
        }
        // The environment's layered, templated variables (a template that no longer
        // resolves is left out and reported on the timeline).
        let (vars, errors) =
            ferry_core::config::environment_vars(target.manifest, target.env, target.version);
        if let Some(error) = errors.first() {
            self.event(target.deployment_id, &format!("{}: {error}", job.name))
                .await;
        }
        let mut env: BTreeMap<String, String> =
            vars.into_iter().map(|v| (v.name, v.value)).collect();
        // runtime: in a `runtime: docker` environment, a one-off container of the
        // deployment's image (registry credentials for the pull only).
        let container = crate::runtimes::hook_container(
            target.manifest,
            target.env,
            target.version,
            secrets.registry.as_ref(),
        );
        let secret_values: Vec<String> = secrets
            .vars
            .values()
            .filter(|v| v.len() >= 4)
            .cloned()
            .collect();
        env.extend(secrets.vars);
        env.extend(job.env.clone());
        env.insert("FERRY_APP".into(), target.app.name.clone());
        env.insert("FERRY_ENV".into(), target.env.to_string());
        env.insert("VERSION".into(), target.version.to_string());
        env.insert(
            "PREVIOUS_VERSION".into(),
            target.previous.unwrap_or_default().to_string(),
        );
        env.insert(
            "FERRY_DEPLOYMENT_ID".into(),
            target.deployment_id.to_string(),
        );
        env.insert("FERRY_HOOK".into(), job.name.clone());
        env.insert("FERRY_HOOK_RUN_ID".into(), run.id.to_string());
        let attempt = Attempt {
            run,
            job,
            cwd: target.app.base_dir.as_ref().map(PathBuf::from),
            env,
            secret_values,
            run_as: self
                .workloads
                .run_as(target.manifest, target.env)
                .map_err(|e| e.to_string()),
            log_filter: self.workloads.log_filter().map(Path::to_path_buf),
            version: target.version.to_string(),
            previous: target.previous.map(str::to_string),
            http: target.http.clone(),
            output,
            container,
        };
        let store = self.store.clone();
        let http = self.http.clone();
        let runtimes = self.runtimes.clone();
        tokio::spawn(async move {
            let deployment_id = attempt.run.deployment_id;
            let (state, exit_code, summary) = execute(&store, &http, &runtimes, &attempt).await;
            let runner_store = store.clone();
            finish_run(
                &runner_store,
                &attempt.run,
                state,
                exit_code,
                &summary,
                deployment_id,
            )
            .await;
        });
        Ok(())
    }

    async fn finish(
        &self,
        run: &HookRunRecord,
        state: RunState,
        exit_code: Option<i64>,
        summary: &str,
        deployment_id: i64,
    ) {
        finish_run(&self.store, run, state, exit_code, summary, deployment_id).await;
    }

    /// A `hook` line on the deployment's timeline (the message starts with the hook's name).
    async fn event(&self, deployment_id: i64, message: &str) {
        if let Err(e) = self
            .store
            .append_event(deployment_id, EventKind::Hook, message, now_ms())
            .await
        {
            tracing::error!(deployment = deployment_id, error = %e, "could not record a hook event");
        }
    }

    /// After a restart: every attempt still recorded `running` belonged to the previous
    /// server. A one-off container (`runtime: docker`) outlives it: it is awaited and its
    /// end recorded, never run again ([`crate::runtimes::Runtimes::adopt_task`]). A process
    /// group is killed if it still runs (pid + start time must match); the attempt is then
    /// marked `interrupted` and the timeline says so.
    pub async fn recover(&self) -> Result<(), ServerError> {
        for run in self.store.running_hook_runs().await? {
            let values = self.secret_values(run.deployment_id).await;
            if let Some(timeout) = self.container_timeout(&run).await {
                let store = self.store.clone();
                let runtimes = self.runtimes.clone();
                let exe = self.workloads.log_filter().map(Path::to_path_buf);
                tokio::spawn(async move {
                    adopt_container(&store, &runtimes, run, timeout, values, exe).await;
                });
                continue;
            }
            if let (Some(pid), Some(start_time)) = (run.pid, run.start_time) {
                let identity = ProcessIdentity { pid, start_time };
                if ferry_runtime::process_identity(pid).is_some_and(|i| i == identity) {
                    tracing::info!(hook = %run.hook, pid, "stopping a hook left running by the previous server");
                    ferry_runtime::kill_process_group(&identity, Duration::from_secs(5)).await;
                }
            } else {
                // Its pid was never recorded (the server died right after starting it).
                ferry_runtime::kill_by_marker(
                    "FERRY_HOOK_RUN_ID",
                    &run.id.to_string(),
                    Duration::from_secs(5),
                )
                .await;
            }
            // runtime: or its one-off container.
            self.runtimes.discard_task(&task_name(&run)).await;
            interrupt(&self.store, &run, &values).await;
        }
        Ok(())
    }

    /// The values of the secrets a run's environment has (to redact its output).
    async fn secret_values(&self, deployment_id: i64) -> Vec<String> {
        match self.store.get_deployment(deployment_id).await {
            Ok(Some(d)) => self
                .secrets
                .env_vars(&d.app, &d.env)
                .await
                .map(|s| s.into_values().collect())
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// When a run's attempt ran in a one-off container (its deployment's environment is
    /// `runtime: docker` in the manifest revision it was deployed with): the time its hook
    /// had left.
    async fn container_timeout(&self, run: &HookRunRecord) -> Option<Duration> {
        let deployment = self.store.get_deployment(run.deployment_id).await.ok()??;
        let app = self
            .store
            .get_app_at(&deployment.app, deployment.manifest_revision)
            .await
            .ok()??;
        let manifest: Manifest = serde_json::from_str(&app.manifest_json).ok()?;
        crate::runtimes::hook_container(&manifest, &deployment.env, &deployment.version, None)?;
        let timeout = Self::jobs(&manifest, run.phase, &deployment.env)
            .into_iter()
            .find(|job| job.name == run.hook)
            .map_or(ferry_core::manifest::DEFAULT_HOOK_TIMEOUT, |job| {
                job.timeout
            });
        let ran = Duration::from_millis(u64::try_from(now_ms() - run.started_at_ms).unwrap_or(0));
        Some(timeout.saturating_sub(ran).max(Duration::from_secs(1)))
    }

    /// Stops the process group of every running attempt (teardown). The attempts' tasks
    /// record how they ended.
    pub async fn stop_all(&self) {
        let Ok(runs) = self.store.running_hook_runs().await else {
            return;
        };
        for run in runs {
            if let (Some(pid), Some(start_time)) = (run.pid, run.start_time) {
                let identity = ProcessIdentity { pid, start_time };
                ferry_runtime::kill_process_group(&identity, Duration::from_secs(5)).await;
            }
        }
    }

    /// The first irreversible migration that succeeded in a deployment's pre_deploy phase.
    pub async fn irreversible_migration(
        &self,
        deployment_id: i64,
    ) -> Result<Option<String>, ServerError> {
        Ok(self
            .store
            .hook_runs(deployment_id)
            .await?
            .into_iter()
            .find(|r| {
                r.phase == HookPhase::PreDeploy
                    && r.state == RunState::Succeeded
                    && matches!(
                        hooks::migration_of_record(r.migration.as_deref()),
                        Some(Migration::Irreversible)
                    )
            })
            .map(|r| r.hook))
    }

    /// The `down` jobs of the reversible migrations that succeeded in these deployments'
    /// pre_deploy phases, newest first (the order to undo them in).
    pub async fn down_jobs(
        &self,
        manifest: &Manifest,
        deployments: &[i64],
    ) -> Result<Vec<Job>, ServerError> {
        let mut jobs = Vec::new();
        let mut ids = deployments.to_vec();
        ids.sort_unstable_by(|a, b| b.cmp(a));
        for id in ids {
            let runs = self.store.hook_runs(id).await?;
            for run in runs.iter().rev() {
                if run.phase != HookPhase::PreDeploy || run.state != RunState::Succeeded {
                    continue;
                }
                if let Some(Migration::Down(down)) =
                    hooks::migration_of_record(run.migration.as_deref())
                {
                    let hook = manifest
                        .hooks
                        .pre_deploy
                        .iter()
                        .find(|h| h.name == run.hook);
                    jobs.push(Job {
                        name: format!("{}-down-{id}", run.hook),
                        kind: JobKind::Command(down),
                        timeout: hook.map(Hook::timeout).unwrap_or(hooks_default_timeout()),
                        retries: hook.map(|h| h.retries).unwrap_or(0),
                        on_interrupt: OnInterrupt::Fail,
                        env: hook.map(|h| h.env.clone()).unwrap_or_default(),
                        migration: None,
                    });
                }
            }
        }
        Ok(jobs)
    }

    /// A hook of another deployment of the same app/env that is still running.
    pub async fn running_elsewhere(
        &self,
        deployment: &DeploymentRecord,
    ) -> Result<Option<(String, i64)>, ServerError> {
        for run in self.store.running_hook_runs().await? {
            if run.deployment_id == deployment.id {
                continue;
            }
            if let Some(other) = self.store.get_deployment(run.deployment_id).await?
                && other.app == deployment.app
                && other.env == deployment.env
            {
                return Ok(Some((run.hook, other.id)));
            }
        }
        Ok(None)
    }

    /// `true` the first time a deployment waits for another's hook (one timeline line).
    pub fn first_wait(&self, deployment_id: i64) -> bool {
        lock(&self.waiting).insert(deployment_id)
    }

    /// Whether the after-rollback phases of a deployment are known to be done.
    pub fn is_settled(&self, deployment_id: i64) -> bool {
        lock(&self.settled).contains(&deployment_id)
    }

    pub fn mark_settled(&self, deployment_id: i64) {
        lock(&self.settled).insert(deployment_id);
    }
}

fn hooks_default_timeout() -> Duration {
    ferry_core::manifest::DEFAULT_HOOK_TIMEOUT
}

async fn finish_run(
    store: &Store,
    run: &HookRunRecord,
    state: RunState,
    exit_code: Option<i64>,
    summary: &str,
    deployment_id: i64,
) {
    match store
        .finish_hook_run(run.id, state, exit_code, Some(summary), now_ms())
        .await
    {
        Ok(_) => {
            let line = format!("{}: {summary}", run.hook);
            if let Err(e) = store
                .append_event(deployment_id, EventKind::Hook, &line, now_ms())
                .await
            {
                tracing::error!(deployment = deployment_id, error = %e, "could not record a hook event");
            }
        }
        Err(e) => tracing::error!(run = run.id, error = %e, "could not record the end of a hook"),
    }
}

/// Marks a run the previous server left `interrupted` (its output capped and redacted).
async fn interrupt(store: &Store, run: &HookRunRecord, secret_values: &[String]) {
    // Its output went through the log filter when there were secrets; this also covers
    // output an older Ferry wrote unfiltered: capped and redacted now.
    if let Some(path) = &run.output_path {
        finalize_output(Path::new(path), secret_values);
    }
    let summary = "interrupted by a server restart";
    match store
        .finish_hook_run(run.id, RunState::Interrupted, None, Some(summary), now_ms())
        .await
    {
        Ok(_) => {
            let line = format!(
                "{} was interrupted by a server restart ({}, attempt {})",
                run.hook, run.phase, run.attempt
            );
            if let Err(e) = store
                .append_event(run.deployment_id, EventKind::Hook, &line, now_ms())
                .await
            {
                tracing::error!(deployment = run.deployment_id, error = %e, "could not record a hook event");
            }
        }
        Err(e) => {
            tracing::error!(run = run.id, error = %e, "could not mark a hook run interrupted")
        }
    }
}

/// Takes over the container of an attempt the previous server started: waits for it
/// (`timeout`: what its hook had left), records how it ended with its whole output, as
/// the attempt would have. Nothing found (or no engine): the attempt was interrupted.
async fn adopt_container(
    store: &Store,
    runtimes: &crate::runtimes::Runtimes,
    run: HookRunRecord,
    timeout: Duration,
    secret_values: Vec<String>,
    log_filter: Option<PathBuf>,
) {
    let output = match &run.output_path {
        Some(path) => TaskOutput::File {
            path: PathBuf::from(path),
            max_bytes: MAX_OUTPUT_BYTES,
            filter: Some(ferry_runtime::redact::LogFilter {
                exe: log_filter.unwrap_or_default(),
                values: secret_values.clone(),
            }),
        },
        None => TaskOutput::Capture { max_bytes: 0 },
    };
    let outcome = match runtimes.adopt_task(&task_name(&run), timeout, output).await {
        Ok(Some(outcome)) => outcome,
        Ok(None) => {
            interrupt(store, &run, &secret_values).await;
            return;
        }
        Err(e) => {
            tracing::warn!(hook = %run.hook, error = %e, "cannot look for its container");
            interrupt(store, &run, &secret_values).await;
            return;
        }
    };
    tracing::info!(hook = %run.hook, "took over a hook container left by the previous server");
    let output = run
        .output_path
        .as_ref()
        .map(PathBuf::from)
        .unwrap_or_default();
    finalize_output(&output, &secret_values);
    let (state, exit_code, summary) = conclude(
        failure_of(outcome.end),
        &output,
        true,
        outcome.took,
        timeout,
    );
    finish_run(store, &run, state, exit_code, &summary, run.deployment_id).await;
}

/// Runs one attempt to its end; (state, exit code, summary for the timeline).
async fn execute(
    store: &Store,
    http: &reqwest::Client,
    runtimes: &crate::runtimes::Runtimes,
    a: &Attempt,
) -> (RunState, Option<i64>, String) {
    let started = Instant::now();
    if let Some(dir) = a.output.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        return (
            RunState::Failed,
            None,
            format!("cannot create {}: {e}", dir.display()),
        );
    }
    let result = match &a.job.kind {
        JobKind::Command(argv) => run_command(store, runtimes, a, argv).await,
        JobKind::Http(spec) => run_http(http, a, spec).await,
    };
    finalize_output(&a.output, &a.secret_values);
    conclude(
        result,
        &a.output,
        matches!(a.job.kind, JobKind::Command(_)),
        started.elapsed(),
        a.job.timeout,
    )
}

/// How an attempt ended, for the store and the timeline: (state, exit code, summary).
fn conclude(
    result: Result<(), Failure>,
    output: &Path,
    command: bool,
    took: Duration,
    timeout: Duration,
) -> (RunState, Option<i64>, String) {
    match result {
        Ok(()) => (
            RunState::Succeeded,
            command.then_some(0),
            format!("succeeded in {}", seconds(took)),
        ),
        Err(Failure::Exit(code)) => {
            let last = std::fs::read_to_string(output)
                .ok()
                .and_then(|o| hooks::last_line(&o));
            let code_text = code.map_or("killed by a signal".to_string(), |c| format!("exit {c}"));
            (
                RunState::Failed,
                code,
                match last {
                    Some(last) => format!("failed ({code_text}): {last}"),
                    None => format!("failed ({code_text}) after {}", seconds(took)),
                },
            )
        }
        Err(Failure::TimedOut) => (
            RunState::TimedOut,
            None,
            format!(
                "timed out after {} (process group killed)",
                humantime::format_duration(timeout)
            ),
        ),
        Err(Failure::Other(message)) => (RunState::Failed, None, format!("failed: {message}")),
    }
}

/// The phase, said on a `started` line unless it is pre_deploy (the common case).
fn phase_note(phase: HookPhase) -> String {
    match phase {
        HookPhase::PreDeploy => String::new(),
        other => format!(" ({other})"),
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

enum Failure {
    Exit(Option<i64>),
    TimedOut,
    Other(String),
}

async fn run_command(
    store: &Store,
    runtimes: &crate::runtimes::Runtimes,
    a: &Attempt,
    argv: &[String],
) -> Result<(), Failure> {
    let run_as = a.run_as.clone().map_err(Failure::Other)?;
    let spec = TaskSpec {
        name: task_name(&a.run),
        app: a.env.get("FERRY_APP").cloned().unwrap_or_default(),
        env: a.env.get("FERRY_ENV").cloned().unwrap_or_default(),
        argv: argv.to_vec(),
        env_vars: a.env.clone(),
        cwd: a.cwd.clone(),
        run_as,
        timeout: a.job.timeout,
        output: TaskOutput::File {
            path: a.output.clone(),
            max_bytes: MAX_OUTPUT_BYTES,
            filter: a
                .log_filter
                .clone()
                .map(|exe| ferry_runtime::redact::LogFilter {
                    exe,
                    values: a.secret_values.clone(),
                }),
        },
        container: a.container.clone(),
    };
    // Persist, then wait: the pid is recorded as soon as the task runs.
    let (started, instance) = tokio::sync::oneshot::channel();
    let record = async {
        if let Ok(identity) = instance.await.map(|i: Instance| i.process())
            && let Some(identity) = identity
            && let Err(e) = store
                .set_hook_run_process(a.run.id, identity.pid, identity.start_time)
                .await
        {
            tracing::error!(run = a.run.id, error = %e, "could not record the hook's pid");
        }
    };
    let (outcome, ()) = tokio::join!(runtimes.run_task(spec, Some(started)), record);
    let end = outcome.map_err(|e| Failure::Other(e.to_string()))?.end;
    if end == TaskEnd::TimedOut {
        append_line(
            &a.output,
            &format!(
                "--- timed out after {}; process group killed ---",
                humantime::format_duration(a.job.timeout)
            ),
        );
    }
    failure_of(end)
}

fn failure_of(end: TaskEnd) -> Result<(), Failure> {
    match end {
        TaskEnd::Exited(0) => Ok(()),
        TaskEnd::Exited(code) => Err(Failure::Exit(Some(i64::from(code)))),
        TaskEnd::Signalled(_) => Err(Failure::Exit(None)),
        TaskEnd::TimedOut => Err(Failure::TimedOut),
    }
}

/// The task name of a hook attempt (and its container's `ferry.task` label).
fn task_name(run: &HookRunRecord) -> String {
    format!("hook-{}-{}", run.hook, run.id)
}

async fn run_http(http: &reqwest::Client, a: &Attempt, spec: &HttpHook) -> Result<(), Failure> {
    let url = format!("http://{}{}", a.http.addr, spec.path);
    let mut request = http.get(&url).timeout(a.job.timeout);
    if let Some(header) = &a.http.header {
        request = request.header(header.as_str(), "1");
    }
    if let Some(host) = &a.http.host {
        request = request.header(reqwest::header::HOST, host.as_str());
    }
    let via = match &a.http.header {
        Some(h) => format!(" (preview header {h})"),
        None => String::new(),
    };
    note(a, &format!("GET {url}{via}"));
    let started = Instant::now();
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => {
            note(a, "timed out");
            return Err(Failure::TimedOut);
        }
        Err(e) => {
            let message = format!("GET {url}: {e}");
            note(a, &message);
            return Err(Failure::Other(message));
        }
    };
    let status = response.status().as_u16();
    let body = match response.text().await {
        Ok(b) => b,
        Err(e) if e.is_timeout() => return Err(Failure::TimedOut),
        Err(e) => return Err(Failure::Other(format!("reading the answer of {url}: {e}"))),
    };
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let shown: String = body.chars().take(2000).collect();
    note(a, &format!("{status} in {latency_ms}ms\n{shown}"));
    match hooks::check_http(
        spec,
        &a.version,
        a.previous.as_deref(),
        status,
        &body,
        latency_ms,
    ) {
        Ok(_) => Ok(()),
        Err(why) => {
            note(a, &why);
            Err(Failure::Other(why))
        }
    }
}

/// A line of Ferry's own in the attempt's output, secret values redacted.
fn note(a: &Attempt, line: &str) {
    append_line(
        &a.output,
        &crate::secrets::redact(line.to_string(), &a.secret_values),
    );
}

fn append_line(path: &Path, line: &str) {
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// Caps the output (keeping the tail) and redacts secret values.
fn finalize_output(path: &Path, secrets: &[String]) {
    let Ok(bytes) = std::fs::read(path) else {
        return;
    };
    let over = bytes.len() as u64 > MAX_OUTPUT_BYTES;
    let start = if over {
        bytes.len() - MAX_OUTPUT_BYTES as usize
    } else {
        0
    };
    let kept = &bytes[start..];
    let clean = ferry_runtime::redact::Redactor::new(secrets).redact_bytes(kept);
    if !over && clean == kept {
        return;
    }
    let mut text = Vec::with_capacity(clean.len() + 64);
    if over {
        text.extend_from_slice(
            format!("--- output truncated to its last {MAX_OUTPUT_BYTES} bytes ---\n").as_bytes(),
        );
    }
    text.extend_from_slice(&clean);
    if let Err(e) = std::fs::write(path, text) {
        tracing::error!(path = %path.display(), error = %e, "could not rewrite hook output");
    }
}

/// Reads the captured output of a run (for `ferry logs --hook`).
pub fn read_output(run: &HookRunRecord) -> String {
    run.output_path
        .as_deref()
        .and_then(|p| std::fs::read(p).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_redacted_and_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.log");
        std::fs::write(&path, "pw=hunter22\nok\n").expect("write");
        finalize_output(&path, &["hunter22".to_string()]);
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "pw=[redacted]\nok\n"
        );
        let big = "x".repeat(MAX_OUTPUT_BYTES as usize + 10) + "\nEND\n";
        std::fs::write(&path, &big).expect("write");
        finalize_output(&path, &[]);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.starts_with("--- output truncated"), "{}", &text[..60]);
        assert!(text.ends_with("\nEND\n"));
        assert!(text.len() as u64 <= MAX_OUTPUT_BYTES + 100);
    }

    #[test]
    fn jobs_take_their_defaults_from_the_hook() {
        let hook: Hook = serde_json::from_value(serde_json::json!({
            "name": "smoke", "http": { "path": "/health" }
        }))
        .expect("hook");
        let job = Job::of(&hook);
        assert_eq!(job.timeout, DEFAULT_HTTP_TIMEOUT);
        assert!(matches!(job.kind, JobKind::Http(_)));
        let hook: Hook = serde_json::from_value(serde_json::json!({
            "name": "migrate", "run": ["true"], "migration": "irreversible"
        }))
        .expect("hook");
        let job = Job::of(&hook);
        assert_eq!(job.timeout, ferry_core::manifest::DEFAULT_HOOK_TIMEOUT);
        assert_eq!(job.migration.as_deref(), Some("irreversible"));
    }
}
