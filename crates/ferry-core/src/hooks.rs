//! Deployment hooks, the pure part: which hooks apply to an environment and phase, and what
//! to do next in a phase given the runs recorded so far.
//!
//! The controller asks [`decide`] on every pass; the answer depends only on the recorded
//! runs (level-triggered), so a restarted server picks up where the previous one stopped.
//! A run is recorded `running` before its process starts; recovery marks the runs of a dead
//! server `interrupted`, and `decide` then reruns or fails per the hook's `on_interrupt`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::manifest::{Hook, Hooks, Migration, OnInterrupt};

/// The point of a deployment where hooks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPhase {
    /// Before any new replica starts.
    PreDeploy,
    /// Against the new version before it is declared serving.
    PostDeploy,
    /// After a deployment ended rolled back.
    OnRollback,
    /// `down` commands of reversible migrations, after a rollback past them.
    MigrationDown,
}

impl HookPhase {
    pub const ALL: [HookPhase; 4] = [
        HookPhase::PreDeploy,
        HookPhase::PostDeploy,
        HookPhase::OnRollback,
        HookPhase::MigrationDown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HookPhase::PreDeploy => "pre_deploy",
            HookPhase::PostDeploy => "post_deploy",
            HookPhase::OnRollback => "on_rollback",
            HookPhase::MigrationDown => "migration_down",
        }
    }

    /// Whether a hook that failed (after its retries) fails the phase. `on_rollback` and
    /// migration `down` failures are reported and the next hook runs.
    pub fn failure_is_fatal(self) -> bool {
        matches!(self, HookPhase::PreDeploy | HookPhase::PostDeploy)
    }
}

impl fmt::Display for HookPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HookPhase {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HookPhase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown hook phase {s:?}"))
    }
}

/// The state of one recorded attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Running,
    Succeeded,
    Failed,
    /// The server died while it ran; recovery found it so.
    Interrupted,
    TimedOut,
}

impl RunState {
    pub const ALL: [RunState; 5] = [
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Interrupted,
        RunState::TimedOut,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Interrupted => "interrupted",
            RunState::TimedOut => "timed-out",
        }
    }

    /// Failed or timed out: counts against `retries`.
    pub fn is_failure(self) -> bool {
        matches!(self, RunState::Failed | RunState::TimedOut)
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RunState::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown hook run state {s:?}"))
    }
}

/// What [`decide`] needs to know about one hook of a phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub retries: u32,
    pub on_interrupt: OnInterrupt,
}

impl Step {
    pub fn of(hook: &Hook) -> Step {
        Step {
            name: hook.name.clone(),
            retries: hook.retries,
            on_interrupt: hook.on_interrupt,
        }
    }
}

/// What [`decide`] needs to know about one recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub hook: String,
    /// 1-based.
    pub attempt: u32,
    pub state: RunState,
    /// The explanation of a failure ("failed (exit 3): …", "expected status 200, got 503").
    pub summary: Option<String>,
}

/// The next thing to do in a phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Record attempt `attempt` of `hook` as running, then start it.
    Start {
        hook: String,
        attempt: u32,
        /// Why this attempt (a retry, a rerun after an interruption), for the timeline.
        why: Option<String>,
    },
    /// `hook` is running; look again later.
    Wait { hook: String },
    /// Every hook of the phase is done (for a non-fatal phase: some may have failed).
    Succeeded,
    /// A hook failed for good; the phase (and, for pre/post deploy, the deployment) fails.
    Failed { hook: String, reason: String },
}

/// The hooks of `phase` that run in `env`, in written order. `MigrationDown` has no manifest
/// hooks (its steps come from recorded migrations).
pub fn applicable<'a>(hooks: &'a Hooks, phase: HookPhase, env: &str) -> Vec<&'a Hook> {
    let list = match phase {
        HookPhase::PreDeploy => &hooks.pre_deploy,
        HookPhase::PostDeploy => &hooks.post_deploy,
        HookPhase::OnRollback => &hooks.on_rollback,
        HookPhase::MigrationDown => return Vec::new(),
    };
    list.iter().filter(|h| h.applies_to(env)).collect()
}

/// How a migration is recorded with its run, so that a later rollback knows about it even
/// when the manifest changed meanwhile: `irreversible`, or the JSON argv of `down`.
pub fn migration_record(migration: Option<&Migration>) -> Option<String> {
    match migration? {
        Migration::Irreversible => Some("irreversible".to_string()),
        Migration::Down(down) => serde_json::to_string(down).ok(),
    }
}

/// Reads back [`migration_record`].
pub fn migration_of_record(record: Option<&str>) -> Option<Migration> {
    match record? {
        "irreversible" => Some(Migration::Irreversible),
        text => serde_json::from_str::<Vec<String>>(text)
            .ok()
            .map(Migration::Down),
    }
}

/// The next step of a phase: hooks run one after the other, in order; a hook is done when
/// its latest attempt succeeded, or (non-fatal phase) failed for good.
///
/// Per hook, from its attempts (latest = highest attempt number):
/// - none: start attempt 1;
/// - latest `running`: wait;
/// - latest `succeeded`: next hook;
/// - latest `interrupted`: `rerun` → start the next attempt (an interruption does not use
///   up a retry); `fail` → the phase fails ("interrupted by a server restart");
/// - latest failed or timed out: retry while failures ≤ `retries`, else the hook failed
///   (fatal phase: the phase fails with the run's summary; otherwise: next hook).
pub fn decide(phase: HookPhase, steps: &[Step], runs: &[Run]) -> Decision {
    for step in steps {
        let mine: Vec<&Run> = runs.iter().filter(|r| r.hook == step.name).collect();
        let Some(latest) = mine.iter().max_by_key(|r| r.attempt) else {
            return Decision::Start {
                hook: step.name.clone(),
                attempt: 1,
                why: None,
            };
        };
        let next_attempt = latest.attempt + 1;
        match latest.state {
            RunState::Running => {
                return Decision::Wait {
                    hook: step.name.clone(),
                };
            }
            RunState::Succeeded => continue,
            RunState::Interrupted => match step.on_interrupt {
                OnInterrupt::Rerun => {
                    return Decision::Start {
                        hook: step.name.clone(),
                        attempt: next_attempt,
                        why: Some(format!(
                            "rerun after attempt {} was interrupted by a server restart",
                            latest.attempt
                        )),
                    };
                }
                OnInterrupt::Fail => {
                    let reason = format!(
                        "hook {} was interrupted by a server restart (on_interrupt: fail)",
                        step.name
                    );
                    if phase.failure_is_fatal() {
                        return Decision::Failed {
                            hook: step.name.clone(),
                            reason,
                        };
                    }
                    continue;
                }
            },
            RunState::Failed | RunState::TimedOut => {
                let failures = mine.iter().filter(|r| r.state.is_failure()).count();
                if failures <= step.retries as usize {
                    return Decision::Start {
                        hook: step.name.clone(),
                        attempt: next_attempt,
                        why: Some(format!(
                            "retry {failures} of {} after attempt {} {}",
                            step.retries,
                            latest.attempt,
                            latest.state.as_str()
                        )),
                    };
                }
                if phase.failure_is_fatal() {
                    let what = latest
                        .summary
                        .clone()
                        .unwrap_or_else(|| latest.state.as_str().to_string());
                    let tries = if failures == 1 {
                        String::new()
                    } else {
                        format!(" after {failures} attempts")
                    };
                    // "failed: expected status 200, got 503" reads as the reason's tail.
                    let what = what.strip_prefix("failed: ").unwrap_or(&what);
                    return Decision::Failed {
                        hook: step.name.clone(),
                        reason: format!("{phase} hook {} failed{tries}: {what}", step.name),
                    };
                }
            }
        }
    }
    Decision::Succeeded
}

/// Substitutes `${VERSION}` (and `${PREVIOUS_VERSION}`) in an expectation.
pub fn substitute(text: &str, version: &str, previous: Option<&str>) -> String {
    text.replace("${VERSION}", version)
        .replace("${PREVIOUS_VERSION}", previous.unwrap_or(""))
}

/// Checks an HTTP answer against a hook's expectations; `Err` explains the first mismatch
/// ("expected status 200, got 503"). `latency_ms` is the time to the whole body.
pub fn check_http(
    spec: &crate::manifest::HttpHook,
    version: &str,
    previous: Option<&str>,
    status: u16,
    body: &str,
    latency_ms: u64,
) -> Result<String, String> {
    match spec.expect_status {
        Some(expected) if expected != status => {
            return Err(format!(
                "expected status {expected}, got {status}{}",
                body_hint(body)
            ));
        }
        None if !(200..300).contains(&status) => {
            return Err(format!(
                "expected a 2xx status, got {status}{}",
                body_hint(body)
            ));
        }
        _ => {}
    }
    if let Some(expected) = &spec.expect_body {
        let expected = substitute(expected, version, previous);
        if !body.contains(&expected) {
            return Err(format!(
                "expected the body to contain {expected:?}{}",
                body_hint(body)
            ));
        }
    }
    if let Some(json) = &spec.expect_json {
        let value: serde_json::Value = serde_json::from_str(body)
            .map_err(|e| format!("expected a JSON body ({e}){}", body_hint(body)))?;
        let Some(found) = value.pointer(&json.pointer) else {
            return Err(format!(
                "expected a value at {} in the JSON body",
                json.pointer
            ));
        };
        let matches = match &json.equals {
            serde_json::Value::String(expected) => {
                let expected = substitute(expected, version, previous);
                match found {
                    serde_json::Value::String(s) => *s == expected,
                    serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
                        let printed = found.to_string();
                        printed == expected
                    }
                    _ => false,
                }
            }
            other => other == found,
        };
        if !matches {
            let expected = match &json.equals {
                serde_json::Value::String(s) => {
                    serde_json::Value::String(substitute(s, version, previous))
                }
                other => other.clone(),
            };
            return Err(format!(
                "expected {} to equal {expected}, got {found}",
                json.pointer
            ));
        }
    }
    if let Some(max) = spec.max_latency {
        let max_ms = u64::try_from(max.get().as_millis()).unwrap_or(u64::MAX);
        if latency_ms > max_ms {
            return Err(format!(
                "expected an answer within {max}, took {latency_ms}ms"
            ));
        }
    }
    Ok(format!("status {status} in {latency_ms}ms"))
}

fn body_hint(body: &str) -> String {
    let trimmed = body.trim();
    if trimmed.is_empty() {
        return String::new();
    }
    let short: String = trimmed.chars().take(120).collect();
    format!(" (body: {short:?})")
}

/// The last non-empty line of a hook's output, for the timeline (at most 200 characters).
pub fn last_line(output: &str) -> Option<String> {
    output
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("--- "))
        .map(|l| l.chars().take(200).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::duration::HumanDuration;
    use crate::manifest::{ExpectJson, HttpHook};
    use std::time::Duration;

    fn step(name: &str, retries: u32, on_interrupt: OnInterrupt) -> Step {
        Step {
            name: name.into(),
            retries,
            on_interrupt,
        }
    }

    fn run(hook: &str, attempt: u32, state: RunState) -> Run {
        Run {
            hook: hook.into(),
            attempt,
            state,
            summary: Some(format!("{hook}#{attempt} {state}")),
        }
    }

    fn start(hook: &str, attempt: u32) -> (String, u32) {
        (hook.to_string(), attempt)
    }

    fn started(d: &Decision) -> Option<(String, u32)> {
        match d {
            Decision::Start { hook, attempt, .. } => Some((hook.clone(), *attempt)),
            _ => None,
        }
    }

    #[test]
    fn empty_phase_succeeds() {
        assert_eq!(decide(HookPhase::PreDeploy, &[], &[]), Decision::Succeeded);
    }

    #[test]
    fn hooks_run_in_order_one_at_a_time() {
        let steps = [
            step("a", 0, OnInterrupt::Fail),
            step("b", 0, OnInterrupt::Fail),
        ];
        let mut runs = vec![];
        assert_eq!(
            started(&decide(HookPhase::PreDeploy, &steps, &runs)),
            Some(start("a", 1))
        );
        runs.push(run("a", 1, RunState::Running));
        assert_eq!(
            decide(HookPhase::PreDeploy, &steps, &runs),
            Decision::Wait { hook: "a".into() }
        );
        runs[0].state = RunState::Succeeded;
        assert_eq!(
            started(&decide(HookPhase::PreDeploy, &steps, &runs)),
            Some(start("b", 1))
        );
        runs.push(run("b", 1, RunState::Succeeded));
        assert_eq!(
            decide(HookPhase::PreDeploy, &steps, &runs),
            Decision::Succeeded
        );
    }

    #[test]
    fn retries_then_fails_with_the_last_summary() {
        let steps = [step("a", 2, OnInterrupt::Fail)];
        let mut runs = vec![run("a", 1, RunState::Failed)];
        let d = decide(HookPhase::PostDeploy, &steps, &runs);
        assert_eq!(started(&d), Some(start("a", 2)));
        assert!(matches!(d, Decision::Start { why: Some(w), .. } if w.contains("retry 1 of 2")));
        runs.push(run("a", 2, RunState::TimedOut));
        assert_eq!(
            started(&decide(HookPhase::PostDeploy, &steps, &runs)),
            Some(start("a", 3))
        );
        runs.push(run("a", 3, RunState::Failed));
        match decide(HookPhase::PostDeploy, &steps, &runs) {
            Decision::Failed { hook, reason } => {
                assert_eq!(hook, "a");
                assert!(reason.contains("a#3 failed"), "{reason}");
                assert!(reason.contains("after 3 attempts"), "{reason}");
                assert!(reason.starts_with("post_deploy hook a failed"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_retry_that_succeeds_moves_on() {
        let steps = [
            step("a", 1, OnInterrupt::Fail),
            step("b", 0, OnInterrupt::Fail),
        ];
        let runs = vec![
            run("a", 1, RunState::Failed),
            run("a", 2, RunState::Succeeded),
        ];
        assert_eq!(
            started(&decide(HookPhase::PreDeploy, &steps, &runs)),
            Some(start("b", 1))
        );
    }

    #[test]
    fn no_retries_fails_at_once() {
        let steps = [step("a", 0, OnInterrupt::Rerun)];
        let runs = vec![run("a", 1, RunState::Failed)];
        assert!(matches!(
            decide(HookPhase::PreDeploy, &steps, &runs),
            Decision::Failed { .. }
        ));
    }

    #[test]
    fn interrupted_rerun_starts_a_new_attempt_without_using_a_retry() {
        let steps = [step("m", 0, OnInterrupt::Rerun)];
        let mut runs = vec![run("m", 1, RunState::Interrupted)];
        let d = decide(HookPhase::PreDeploy, &steps, &runs);
        assert_eq!(started(&d), Some(start("m", 2)));
        assert!(matches!(d, Decision::Start { why: Some(w), .. } if w.contains("interrupted")));
        runs.push(run("m", 2, RunState::Running));
        assert_eq!(
            decide(HookPhase::PreDeploy, &steps, &runs),
            Decision::Wait { hook: "m".into() }
        );
        runs[1].state = RunState::Succeeded;
        assert_eq!(
            decide(HookPhase::PreDeploy, &steps, &runs),
            Decision::Succeeded
        );
    }

    #[test]
    fn interrupted_fail_fails_the_phase() {
        let steps = [step("m", 3, OnInterrupt::Fail)];
        let runs = vec![run("m", 1, RunState::Interrupted)];
        match decide(HookPhase::PreDeploy, &steps, &runs) {
            Decision::Failed { reason, .. } => {
                assert!(
                    reason.contains("interrupted by a server restart"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_fatal_phases_go_on_after_a_failure() {
        let steps = [
            step("a", 0, OnInterrupt::Fail),
            step("b", 0, OnInterrupt::Fail),
        ];
        for phase in [HookPhase::OnRollback, HookPhase::MigrationDown] {
            let runs = vec![run("a", 1, RunState::Failed)];
            assert_eq!(started(&decide(phase, &steps, &runs)), Some(start("b", 1)));
            let runs = vec![
                run("a", 1, RunState::Interrupted),
                run("b", 1, RunState::TimedOut),
            ];
            assert_eq!(decide(phase, &steps, &runs), Decision::Succeeded);
        }
    }

    #[test]
    fn the_latest_attempt_decides_even_out_of_order() {
        let steps = [step("a", 5, OnInterrupt::Fail)];
        let runs = vec![
            run("a", 2, RunState::Succeeded),
            run("a", 1, RunState::Failed),
        ];
        assert_eq!(
            decide(HookPhase::PreDeploy, &steps, &runs),
            Decision::Succeeded
        );
    }

    #[test]
    fn runs_of_other_hooks_are_ignored() {
        let steps = [step("a", 0, OnInterrupt::Fail)];
        let runs = vec![run("zzz", 1, RunState::Running)];
        assert_eq!(
            started(&decide(HookPhase::PreDeploy, &steps, &runs)),
            Some(start("a", 1))
        );
    }

    /// Every combination of states over three attempts of one hook: the decision never
    /// starts an attempt number already used, and never waits unless the latest runs.
    #[test]
    fn exhaustive_single_hook_histories() {
        let states = RunState::ALL;
        for retries in 0..3 {
            for policy in [OnInterrupt::Fail, OnInterrupt::Rerun] {
                for phase in HookPhase::ALL {
                    let steps = [step("h", retries, policy)];
                    for len in 0..=3usize {
                        let mut idx = vec![0usize; len];
                        loop {
                            let runs: Vec<Run> = idx
                                .iter()
                                .enumerate()
                                .map(|(i, s)| run("h", i as u32 + 1, states[*s]))
                                .collect();
                            let d = decide(phase, &steps, &runs);
                            let latest = runs.last().map(|r| r.state);
                            match &d {
                                Decision::Start { attempt, .. } => {
                                    assert_eq!(*attempt as usize, len + 1)
                                }
                                Decision::Wait { .. } => {
                                    assert_eq!(latest, Some(RunState::Running))
                                }
                                Decision::Succeeded => assert!(
                                    latest == Some(RunState::Succeeded)
                                        || !phase.failure_is_fatal()
                                ),
                                Decision::Failed { .. } => assert!(phase.failure_is_fatal()),
                            }
                            if latest == Some(RunState::Succeeded) {
                                assert_eq!(d, Decision::Succeeded);
                            }
                            // next combination
                            let mut k = 0;
                            loop {
                                if k == len {
                                    break;
                                }
                                idx[k] += 1;
                                if idx[k] < states.len() {
                                    break;
                                }
                                idx[k] = 0;
                                k += 1;
                            }
                            if k == len {
                                break;
                            }
                        }
                    }
                }
            }
        }
    }

    fn hook(name: &str, envs: &[&str]) -> Hook {
        Hook {
            name: name.into(),
            run: Some(vec!["true".into()]),
            http: None,
            timeout: None,
            retries: 0,
            environments: envs.iter().map(|e| e.to_string()).collect(),
            env: Default::default(),
            on_interrupt: OnInterrupt::Fail,
            migration: None,
        }
    }

    #[test]
    fn applicable_filters_by_environment_and_keeps_order() {
        let hooks = Hooks {
            pre_deploy: vec![
                hook("a", &[]),
                hook("b", &["production"]),
                hook("c", &["staging", "production"]),
            ],
            post_deploy: vec![hook("p", &["staging"])],
            on_rollback: vec![hook("r", &[])],
        };
        let names = |phase, env| -> Vec<String> {
            applicable(&hooks, phase, env)
                .iter()
                .map(|h| h.name.clone())
                .collect()
        };
        assert_eq!(names(HookPhase::PreDeploy, "staging"), ["a", "c"]);
        assert_eq!(names(HookPhase::PreDeploy, "production"), ["a", "b", "c"]);
        assert_eq!(
            names(HookPhase::PostDeploy, "production"),
            Vec::<String>::new()
        );
        assert_eq!(names(HookPhase::OnRollback, "dev"), ["r"]);
        assert!(names(HookPhase::MigrationDown, "dev").is_empty());
        assert_eq!(hooks.pre_deploy[0].timeout(), Duration::from_secs(300));
    }

    #[test]
    fn names_round_trip() {
        for p in HookPhase::ALL {
            assert_eq!(p.as_str().parse::<HookPhase>(), Ok(p));
        }
        for s in RunState::ALL {
            assert_eq!(s.as_str().parse::<RunState>(), Ok(s));
        }
        assert!("nope".parse::<RunState>().is_err());
        let down = Migration::Down(vec!["sh".into(), "-c".into(), "x".into()]);
        for m in [Migration::Irreversible, down] {
            let record = migration_record(Some(&m));
            assert_eq!(migration_of_record(record.as_deref()), Some(m));
        }
        assert_eq!(migration_record(None), None);
    }

    fn http(status: Option<u16>) -> HttpHook {
        HttpHook {
            path: "/health".into(),
            expect_status: status,
            expect_body: None,
            expect_json: None,
            max_latency: None,
        }
    }

    #[test]
    fn http_checks_explain_each_failure() {
        let spec = http(Some(200));
        assert_eq!(
            check_http(&spec, "2.0", None, 503, "", 5).unwrap_err(),
            "expected status 200, got 503"
        );
        assert!(check_http(&spec, "2.0", None, 200, "", 5).is_ok());
        let any = http(None);
        assert!(check_http(&any, "2.0", None, 204, "", 5).is_ok());
        assert!(
            check_http(&any, "2.0", None, 500, "boom", 5)
                .unwrap_err()
                .contains("\"boom\"")
        );
        let mut body = http(None);
        body.expect_body = Some("v=${VERSION}".into());
        assert!(check_http(&body, "2.0", None, 200, "ok v=2.0", 5).is_ok());
        assert!(
            check_http(&body, "2.0", None, 200, "ok v=1.0", 5)
                .unwrap_err()
                .contains("\"v=2.0\"")
        );
        let mut json = http(None);
        json.expect_json = Some(ExpectJson {
            pointer: "/version".into(),
            equals: serde_json::json!("${VERSION}"),
        });
        assert!(check_http(&json, "2.0", None, 200, r#"{"version":"2.0"}"#, 5).is_ok());
        assert_eq!(
            check_http(&json, "2.0", None, 200, r#"{"version":"1.0"}"#, 5).unwrap_err(),
            "expected /version to equal \"2.0\", got \"1.0\""
        );
        assert!(
            check_http(&json, "2.0", None, 200, "nope", 5)
                .unwrap_err()
                .contains("expected a JSON body")
        );
        assert!(
            check_http(&json, "2.0", None, 200, "{}", 5)
                .unwrap_err()
                .contains("expected a value at /version")
        );
        json.expect_json = Some(ExpectJson {
            pointer: "/n".into(),
            equals: serde_json::json!("3"),
        });
        assert!(check_http(&json, "2.0", None, 200, r#"{"n":3}"#, 5).is_ok());
        let mut slow = http(None);
        slow.max_latency = Some(HumanDuration(Duration::from_millis(500)));
        assert!(check_http(&slow, "2.0", None, 200, "", 499).is_ok());
        assert_eq!(
            check_http(&slow, "2.0", None, 200, "", 501).unwrap_err(),
            "expected an answer within 500ms, took 501ms"
        );
    }

    #[test]
    fn last_line_skips_blank_and_marker_lines() {
        assert_eq!(last_line("a\nb\n\n"), Some("b".into()));
        assert_eq!(last_line("a\n--- exited 1 ---\n"), Some("a".into()));
        assert_eq!(last_line(""), None);
    }
}
