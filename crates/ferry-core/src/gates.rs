//! Gates a deployment must pass before it starts: approvals by role (with separation of
//! duties), `after` another environment, `soak` there, `freeze` windows (which someone
//! allowed to may override for one deployment) and external `checks`.
//!
//! Pure: the gates, the release's history in the `after` environment, the approvals, the
//! requester, the facts the server gathered (check results, overrides) and the time come
//! in; a [`GateReport`] with one row per configured gate comes out, and the verdict
//! derives from it.

use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};
use serde::{Deserialize, Serialize};

use schemars::JsonSchema;

use crate::manifest::{ApprovalRule, FreezeWindow, GateCheck, Gates, HttpGateCheck};

/// One person's decision on a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// `user:alice`, or `token:NAME` for a token without an owner.
    pub approver: String,
    /// The approver's roles in the deployment's app/environment when they decided.
    pub roles: Vec<String>,
    pub approved: bool,
    pub reason: Option<String>,
    pub at_ms: i64,
}

/// Where the approval gate stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GateVerdict {
    /// Every rule has its approvals.
    Passed,
    /// Still waiting; one line per unmet rule, e.g. `1 more approval from role product-owner`.
    Waiting(Vec<String>),
    /// Someone rejected it.
    Rejected { by: String, reason: String },
}

/// Judges `rules` against `approvals`. The requester never counts (separation of duties);
/// a person counts once per rule whose role they hold.
pub fn evaluate(rules: &[ApprovalRule], approvals: &[Approval], requester: &str) -> GateVerdict {
    if let Some(rejection) = approvals.iter().find(|a| !a.approved) {
        return GateVerdict::Rejected {
            by: rejection.approver.clone(),
            reason: rejection
                .reason
                .clone()
                .unwrap_or_else(|| "no reason given".into()),
        };
    }
    let mut unmet = Vec::new();
    for rule in rules {
        let mut people: Vec<&str> = approvals
            .iter()
            .filter(|a| a.approved && !same_person(&a.approver, requester))
            .filter(|a| a.roles.contains(&rule.role))
            .map(|a| a.approver.as_str())
            .collect();
        people.sort_unstable();
        people.dedup();
        let have = u32::try_from(people.len()).unwrap_or(u32::MAX);
        if have < rule.count {
            let missing = rule.count - have;
            unmet.push(format!(
                "{missing} more approval{} from role {} (not {requester})",
                if missing == 1 { "" } else { "s" },
                rule.role
            ));
        }
    }
    if unmet.is_empty() {
        GateVerdict::Passed
    } else {
        GateVerdict::Waiting(unmet)
    }
}

/// Principals compare without case and surrounding space (`user:Alice` is `user:alice`).
pub fn same_person(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// What Ferry knows about the release in the `after` environment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct History {
    /// The version being deployed.
    pub version: String,
    /// `Some` when a deployment of `version` succeeded in the `after` environment (the
    /// latest such deployment); `None` when it never did.
    pub succeeded_in_after_env: Option<SoakFacts>,
}

/// The latest successful deployment of the version in the `after` environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoakFacts {
    /// When that deployment finished (ms since the Unix epoch).
    pub finished_at_ms: i64,
    /// The environment still runs this version (no rollback or other version since).
    pub still_current: bool,
}

/// One gate that does not hold yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unmet {
    /// `after`, `soak`, `freeze` or `approvals`.
    pub gate: String,
    /// Names the condition without its countdown: it changes only when what is awaited
    /// changes (so a timeline records a new line then, not on every pass).
    pub key: String,
    /// What a person reads, e.g. `soaking in staging: 7m12s more (needs 10m)`.
    pub message: String,
}

/// Where all of an environment's gates stand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GatesVerdict {
    /// Every gate holds: the deployment may start.
    Passed,
    /// One entry per unmet gate, in the order after/soak, freeze, approvals, checks.
    Waiting(Vec<Unmet>),
    /// Someone rejected it.
    Rejected { by: String, reason: String },
}

// gates: the report ------------------------------------------------------------------------

/// Where one gate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GateState {
    /// It holds.
    Met,
    /// Not yet (or a check not run yet / too old: pending).
    Waiting,
    /// It does not hold and says why (a failing check keeps the deployment waiting; a
    /// rejection ends it).
    Failed,
    /// It does not hold but someone allowed to lifted it for this deployment.
    Overridden,
}

impl GateState {
    pub fn as_str(self) -> &'static str {
        match self {
            GateState::Met => "met",
            GateState::Waiting => "waiting",
            GateState::Failed => "failed",
            GateState::Overridden => "overridden",
        }
    }

    /// Whether the deployment may pass this gate.
    pub fn passes(self) -> bool {
        matches!(self, GateState::Met | GateState::Overridden)
    }
}

impl std::fmt::Display for GateState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One configured gate in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GateRow {
    /// `after`, `soak`, `freeze`, `approvals` or `checks:NAME`.
    pub gate: String,
    pub state: GateState,
    /// One line: what holds it, or who/what passed it.
    pub detail: String,
    /// Stable name of the condition (no countdown), for "did it change" comparisons.
    #[serde(skip)]
    pub key: String,
}

/// The latest result of one gate check of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The check's `name`.
    pub name: String,
    pub passed: bool,
    /// One line, e.g. `expected status 200, got 503` or `exit 1: no such file`.
    pub explanation: String,
    /// When it finished (ms since the Unix epoch).
    pub at_ms: i64,
}

/// A gate lifted for one deployment by someone allowed to (today: `freeze`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Override {
    pub gate: String,
    /// `user:bob`, or `token:NAME`.
    pub by: String,
    pub reason: String,
    pub at_ms: i64,
}

/// What the server knows besides history and approvals: check results and overrides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    pub checks: Vec<CheckResult>,
    pub overrides: Vec<Override>,
    // alerts:
    /// The environment's `block_promotions` alerts that fire (None: no rule blocks here).
    pub alerts: Option<Vec<crate::alerts::BlockingAlert>>,
}

/// Every configured gate of an environment with its state; the verdict derives from it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GateReport {
    pub rows: Vec<GateRow>,
    /// `(by, reason)` when someone rejected the deployment.
    pub rejected: Option<(String, String)>,
}

/// The state a deployment waits in for `unmet`: `awaiting-approval` when only approvals are
/// missing (someone can act), `blocked` when anything else holds it (a freeze, `after`, a
/// soak, a check).
pub fn waiting_state(unmet: &[Unmet]) -> crate::model::DeploymentState {
    if unmet.iter().all(|u| u.gate == "approvals") {
        crate::model::DeploymentState::AwaitingApproval
    } else {
        crate::model::DeploymentState::Blocked
    }
}

impl GateReport {
    /// Passed when every row passes; Rejected when someone rejected; otherwise the rows
    /// that hold the deployment (a soak that has not begun is left out while `after` waits).
    pub fn verdict(&self) -> GatesVerdict {
        if let Some((by, reason)) = &self.rejected {
            return GatesVerdict::Rejected {
                by: by.clone(),
                reason: reason.clone(),
            };
        }
        let after_waits = self
            .rows
            .iter()
            .any(|r| r.gate == "after" && !r.state.passes());
        let unmet: Vec<Unmet> = self
            .rows
            .iter()
            .filter(|r| !r.state.passes())
            .filter(|r| !(after_waits && r.gate == "soak"))
            .map(|r| Unmet {
                gate: r.gate.clone(),
                key: r.key.clone(),
                message: match r.gate.strip_prefix("checks:") {
                    Some(name) => format!("check {name}: {}", r.detail),
                    None => r.detail.clone(),
                },
            })
            .collect();
        if unmet.is_empty() {
            GatesVerdict::Passed
        } else {
            GatesVerdict::Waiting(unmet)
        }
    }

    /// The timeline lines recorded when a deployment passes: one per gate, saying who or
    /// what passed it (`approvals: met (approved by carol)`, recorded as a `gate` event).
    pub fn passed_lines(&self) -> Vec<String> {
        self.rows
            .iter()
            .map(|r| match r.state {
                GateState::Overridden => format!("{}: {}", r.gate, r.detail),
                state => format!("{}: {state} ({})", r.gate, r.detail),
            })
            .collect()
    }
}

/// The timeline line of a deployment waiting at its gates: `waiting for 1.4.2 to succeed in
/// staging; check ci: pending: not run yet` (a message that already says "waiting for" is
/// not prefixed twice).
pub fn waiting_message(unmet: &[Unmet]) -> String {
    let parts: Vec<&str> = unmet
        .iter()
        .map(|u| u.message.strip_prefix("waiting for ").unwrap_or(&u.message))
        .collect();
    format!("waiting for {}", parts.join("; "))
}

/// `user:bob` reads `bob`; other principals (`token:ci`) stay as they are.
pub fn display_principal(principal: &str) -> &str {
    principal.strip_prefix("user:").unwrap_or(principal)
}

/// Judges every gate of an environment at `now_ms` without check results or overrides
/// (see [`report`]). A rejection wins over everything; otherwise every unmet gate is listed.
pub fn evaluate_gates(
    gates: &Gates,
    history: &History,
    approvals: &[Approval],
    requester: &str,
    now_ms: i64,
) -> GatesVerdict {
    report(
        gates,
        history,
        approvals,
        requester,
        &Facts::default(),
        now_ms,
    )
    .verdict()
}

/// The report: one row per configured gate, in the order after, soak, freeze, approvals,
/// checks (in manifest order), then `alerts` when a rule holds deployments here.
pub fn report(
    gates: &Gates,
    history: &History,
    approvals: &[Approval],
    requester: &str,
    facts: &Facts,
    now_ms: i64,
) -> GateReport {
    let mut rows = Vec::new();
    let version = &history.version;
    if let Some(env) = &gates.after {
        rows.push(match history.succeeded_in_after_env {
            None => GateRow {
                gate: "after".into(),
                state: GateState::Waiting,
                detail: format!("waiting for {version} to succeed in {env}"),
                key: format!("after:{env}"),
            },
            Some(_) => GateRow {
                gate: "after".into(),
                state: GateState::Met,
                detail: format!("{version} succeeded in {env}"),
                key: format!("after-met:{env}"),
            },
        });
        if let Some(soak) = gates.soak {
            rows.push(soak_row(env, version, soak.get(), history, now_ms));
        }
    }
    if !gates.freeze.is_empty() {
        rows.push(freeze_row(&gates.freeze, &facts.overrides, now_ms));
    }
    let mut rejected = None;
    if !gates.approvals.is_empty() || approvals.iter().any(|a| !a.approved) {
        let row = match evaluate(&gates.approvals, approvals, requester) {
            GateVerdict::Rejected { by, reason } => {
                let detail = format!("rejected by {}: {reason}", display_principal(&by));
                rejected = Some((by, reason));
                GateRow {
                    gate: "approvals".into(),
                    state: GateState::Failed,
                    key: detail.clone(),
                    detail,
                }
            }
            GateVerdict::Waiting(lines) => GateRow {
                gate: "approvals".into(),
                state: GateState::Waiting,
                key: lines.join("; "),
                detail: lines.join("; "),
            },
            GateVerdict::Passed => {
                let mut people: Vec<&str> = approvals
                    .iter()
                    .filter(|a| a.approved && !same_person(&a.approver, requester))
                    .filter(|a| gates.approvals.iter().any(|r| a.roles.contains(&r.role)))
                    .map(|a| display_principal(&a.approver))
                    .collect();
                people.dedup();
                GateRow {
                    gate: "approvals".into(),
                    state: GateState::Met,
                    detail: format!("approved by {}", people.join(", ")),
                    key: "approvals-met".into(),
                }
            }
        };
        rows.push(row);
    }
    for check in &gates.checks {
        rows.push(check_row(check, &facts.checks, now_ms));
    }
    // alerts:
    if let Some(alerts) = &facts.alerts {
        rows.push(crate::alerts::gate_row(alerts));
    }
    GateReport { rows, rejected }
}

fn soak_row(env: &str, version: &str, needs: Duration, history: &History, now_ms: i64) -> GateRow {
    let row = |state, detail: String, key: String| GateRow {
        gate: "soak".into(),
        state,
        detail,
        key,
    };
    match history.succeeded_in_after_env {
        None => row(
            GateState::Waiting,
            format!(
                "soak of {} in {env} starts once {version} has succeeded there",
                compact(needs)
            ),
            format!("soak-not-started:{env}"),
        ),
        Some(facts) if !facts.still_current => row(
            GateState::Waiting,
            format!(
                "soaking in {env}: {version} no longer runs there (replaced); deploy it there again"
            ),
            format!("soak-replaced:{env}"),
        ),
        Some(facts) => {
            let served_ms = now_ms.saturating_sub(facts.finished_at_ms).max(0);
            let served = Duration::from_millis(served_ms.unsigned_abs());
            if served < needs {
                row(
                    GateState::Waiting,
                    format!(
                        "soaking in {env}: {} more (needs {})",
                        compact(needs - served),
                        compact(needs)
                    ),
                    format!("soak:{env}"),
                )
            } else {
                row(
                    GateState::Met,
                    format!(
                        "{version} served in {env} for {} (needs {})",
                        compact(served),
                        compact(needs)
                    ),
                    format!("soak-met:{env}"),
                )
            }
        }
    }
}

fn freeze_row(windows: &[FreezeWindow], overrides: &[Override], now_ms: i64) -> GateRow {
    let mut unreadable = false;
    let open: Vec<String> = windows
        .iter()
        .filter_map(|w| {
            let line = freeze_open(w, now_ms);
            unreadable |= line
                .as_deref()
                .is_some_and(|l| l.contains("cannot be read"));
            line
        })
        .collect();
    if open.is_empty() {
        return GateRow {
            gate: "freeze".into(),
            state: GateState::Met,
            detail: "no freeze window open".into(),
            key: "freeze-closed".into(),
        };
    }
    let joined = open.join("; ");
    if let Some(lifted) = overrides.iter().rev().find(|o| o.gate == "freeze") {
        let detail = format!(
            "overridden by {}: {}",
            display_principal(&lifted.by),
            lifted.reason
        );
        return GateRow {
            gate: "freeze".into(),
            state: GateState::Overridden,
            key: detail.clone(),
            detail,
        };
    }
    GateRow {
        gate: "freeze".into(),
        state: if unreadable {
            GateState::Failed
        } else {
            GateState::Waiting
        },
        key: joined.clone(),
        detail: joined,
    }
}

/// A check result older than its interval plus its timeout (the time a re-run may take)
/// is stale: pending again.
fn check_row(check: &GateCheck, results: &[CheckResult], now_ms: i64) -> GateRow {
    let gate = format!("checks:{}", check.name);
    let latest = results.iter().rev().find(|r| r.name == check.name);
    let fresh_ms =
        i64::try_from((check.interval() + check.timeout()).as_millis()).unwrap_or(i64::MAX);
    match latest {
        None => GateRow {
            key: format!("{gate}:pending"),
            gate,
            state: GateState::Waiting,
            detail: "pending: not run yet".into(),
        },
        Some(r) if now_ms.saturating_sub(r.at_ms) > fresh_ms => GateRow {
            key: format!("{gate}:pending"),
            gate,
            state: GateState::Waiting,
            detail: format!(
                "pending: last result is {} old (re-run every {})",
                compact(Duration::from_millis(
                    now_ms.saturating_sub(r.at_ms).unsigned_abs()
                )),
                compact(check.interval())
            ),
        },
        Some(r) if r.passed => GateRow {
            key: format!("{gate}:met"),
            gate,
            state: GateState::Met,
            detail: format!("passed: {}", r.explanation),
        },
        Some(r) => GateRow {
            key: format!("{gate}:failed:{}", r.explanation),
            gate,
            state: GateState::Failed,
            detail: format!(
                "{} (re-run every {})",
                r.explanation,
                compact(check.interval())
            ),
        },
    }
}

/// Replaces `${VERSION}`, `${FERRY_ENV}` and `${FERRY_APP}` in a check's URL or argument.
pub fn substitute(text: &str, version: &str, env: &str, app: &str) -> String {
    text.replace("${VERSION}", version)
        .replace("${FERRY_ENV}", env)
        .replace("${FERRY_APP}", app)
}

/// Judges an HTTP check's answer: `(passed, one-line explanation)`.
pub fn judge_http(check: &HttpGateCheck, status: u16, body: &str) -> (bool, String) {
    let want = check.expect_status.unwrap_or(200);
    if status != want {
        return (false, format!("expected status {want}, got {status}"));
    }
    match &check.expect_body {
        Some(text) if !body.contains(text.as_str()) => (
            false,
            format!("status {status}, but the body does not contain {text:?}"),
        ),
        Some(text) => (true, format!("status {status}, body contains {text:?}")),
        None => (true, format!("status {status}")),
    }
}

/// Judges a command check: exit 0 passes; otherwise `exit N: <last output line>`.
pub fn judge_exit(code: Option<i32>, output: &str) -> (bool, String) {
    let last = output
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| l.chars().take(200).collect::<String>());
    let tail = last.map(|l| format!(": {l}")).unwrap_or_default();
    match code {
        Some(0) => (true, format!("exit 0{tail}")),
        Some(n) => (false, format!("exit {n}{tail}")),
        None => (false, format!("killed by a signal{tail}")),
    }
}

/// `7m12s`, `1h30m`, `64h`, `250ms`: a duration rounded up to the second (under a second,
/// to the millisecond).
pub fn compact(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    let mut secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let hours = secs / 3600;
    secs %= 3600;
    let minutes = secs / 60;
    secs %= 60;
    let mut out = String::new();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    if secs > 0 || out.is_empty() {
        out.push_str(&format!("{secs}s"));
    }
    out
}

/// A cron expression of 5 fields (or 6 with seconds first), e.g. `0 18 * * FRI`.
pub fn parse_cron(expression: &str) -> Result<Cron, String> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expression)
        .map_err(|e| format!("invalid cron expression {expression:?}: {e}"))
}

/// An IANA time zone name such as `Europe/Paris` or `UTC`.
pub fn parse_timezone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|_| format!("unknown time zone {name:?}"))
}

/// A local date-time without offset, e.g. `2026-12-20T00:00:00`.
pub fn parse_local(text: &str) -> Result<DateTime, String> {
    text.trim()
        .parse::<DateTime>()
        .map_err(|e| format!("invalid date-time {text:?}: {e}"))
}

/// The time zone a window is read in (`UTC` when it names none).
pub fn window_timezone(window: &FreezeWindow) -> &str {
    window.timezone.as_deref().unwrap_or("UTC")
}

/// When an open freeze window closes.
#[derive(Debug, Clone, PartialEq)]
pub enum FreezeEnd {
    At(Zoned),
    /// Its openings overlap one another for as far as Ferry looks (1,000 openings): it
    /// never closes, e.g. `* * * * *` with `duration: 2m`.
    NoEndInSight,
}

/// When the window covering `now_ms` closes, if one covers it. `Err` when the window cannot
/// be read (the manifest validation prevents this).
pub fn freeze_open_until(window: &FreezeWindow, now_ms: i64) -> Result<Option<FreezeEnd>, String> {
    let tz = parse_timezone(window_timezone(window))?;
    let now = Timestamp::from_millisecond(now_ms)
        .map_err(|e| format!("time out of range: {e}"))?
        .to_zoned(tz.clone());
    match (&window.cron, window.duration, &window.from, &window.until) {
        (Some(expression), Some(duration), None, None) => {
            let cron = parse_cron(expression)?;
            let length = SignedDuration::try_from(duration.get())
                .map_err(|e| format!("duration out of range: {e}"))?;
            // The latest opening at or before now; no earlier opening can reach further,
            // since every window lasts the same.
            let Ok(mut start) = cron.find_previous_occurrence(&now, true) else {
                return Ok(None);
            };
            let mut end = start
                .checked_add(length)
                .map_err(|e| format!("window end out of range: {e}"))?;
            if end <= now {
                return Ok(None);
            }
            // Windows that overlap (or touch) run on into one another.
            for _ in 0..1000 {
                let Ok(next) = cron.find_next_occurrence(&start, false) else {
                    return Ok(Some(FreezeEnd::At(end)));
                };
                if next > end {
                    return Ok(Some(FreezeEnd::At(end)));
                }
                let next_end = next
                    .checked_add(length)
                    .map_err(|e| format!("window end out of range: {e}"))?;
                if next_end > end {
                    end = next_end;
                }
                start = next;
            }
            Ok(Some(FreezeEnd::NoEndInSight))
        }
        (None, None, Some(from), Some(until)) => {
            let from = parse_local(from)?
                .to_zoned(tz.clone())
                .map_err(|e| format!("`from` out of range: {e}"))?;
            let until = parse_local(until)?
                .to_zoned(tz)
                .map_err(|e| format!("`until` out of range: {e}"))?;
            Ok((from <= now && now < until).then_some(FreezeEnd::At(until)))
        }
        _ => Err("a freeze window is either `cron` + `duration` or `from` + `until`".into()),
    }
}

/// How a window is named in messages: its cron expression or its range, and its zone.
pub fn describe_window(window: &FreezeWindow) -> String {
    let what = match (&window.cron, &window.from, &window.until) {
        (Some(cron), _, _) => format!("`{cron}`"),
        (None, Some(from), Some(until)) => format!("{from} to {until}"),
        _ => "(incomplete)".into(),
    };
    format!("{what} ({})", window_timezone(window))
}

/// The line for an open (or unreadable, which blocks too) freeze window; `None` if closed.
fn freeze_open(window: &FreezeWindow, now_ms: i64) -> Option<String> {
    match freeze_open_until(window, now_ms) {
        Ok(None) => None,
        Ok(Some(FreezeEnd::At(end))) => Some(format!(
            "freeze window {} open until {}",
            describe_window(window),
            end.strftime("%Y-%m-%dT%H:%M:%S%:z")
        )),
        Ok(Some(FreezeEnd::NoEndInSight)) => Some(format!(
            "freeze window {} open, no end in sight (its openings overlap one another)",
            describe_window(window)
        )),
        Err(e) => Some(format!(
            "freeze window {} cannot be read ({e})",
            describe_window(window)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_approvals_await_approval_anything_else_blocks() {
        use crate::model::DeploymentState::{AwaitingApproval, Blocked};
        let unmet = |gates: &[&str]| -> Vec<Unmet> {
            gates
                .iter()
                .map(|g| Unmet {
                    gate: g.to_string(),
                    key: g.to_string(),
                    message: String::new(),
                })
                .collect()
        };
        assert_eq!(waiting_state(&unmet(&["approvals"])), AwaitingApproval);
        for other in ["after", "soak", "freeze", "checks:ci"] {
            assert_eq!(waiting_state(&unmet(&[other])), Blocked, "{other}");
            assert_eq!(
                waiting_state(&unmet(&["approvals", other])),
                Blocked,
                "{other}"
            );
        }
    }

    fn rule(role: &str, count: u32) -> ApprovalRule {
        ApprovalRule {
            role: role.into(),
            count,
        }
    }

    fn approval(who: &str, roles: &[&str], approved: bool) -> Approval {
        Approval {
            approver: who.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            approved,
            reason: (!approved).then(|| "not ready".into()),
            at_ms: 0,
        }
    }

    #[test]
    fn waits_until_every_rule_has_its_people() {
        let rules = [rule("tech-lead", 1), rule("product-owner", 2)];
        let requester = "user:alice";
        assert_eq!(
            evaluate(&rules, &[], requester),
            GateVerdict::Waiting(vec![
                "1 more approval from role tech-lead (not user:alice)".into(),
                "2 more approvals from role product-owner (not user:alice)".into(),
            ])
        );
        let some = [approval("user:bob", &["tech-lead", "product-owner"], true)];
        assert_eq!(
            evaluate(&rules, &some, requester),
            GateVerdict::Waiting(vec![
                "1 more approval from role product-owner (not user:alice)".into()
            ])
        );
        let all = [
            approval("user:bob", &["tech-lead", "product-owner"], true),
            approval("user:carol", &["product-owner"], true),
        ];
        assert_eq!(evaluate(&rules, &all, requester), GateVerdict::Passed);
    }

    #[test]
    fn the_requester_never_counts_and_nobody_counts_twice() {
        let rules = [rule("approver", 2)];
        let approvals = [
            approval("user:Alice", &["approver"], true),
            approval("user:bob", &["approver"], true),
            approval("user:bob", &["approver"], true),
        ];
        assert_eq!(
            evaluate(&rules, &approvals, "user:alice"),
            GateVerdict::Waiting(vec![
                "1 more approval from role approver (not user:alice)".into()
            ])
        );
    }

    #[test]
    fn a_rejection_ends_it_with_its_reason() {
        let rules = [rule("approver", 1)];
        let approvals = [
            approval("user:bob", &["approver"], true),
            approval("user:carol", &["approver"], false),
        ];
        assert_eq!(
            evaluate(&rules, &approvals, "user:alice"),
            GateVerdict::Rejected {
                by: "user:carol".into(),
                reason: "not ready".into()
            }
        );
    }

    #[test]
    fn roles_must_match() {
        let rules = [rule("product-owner", 1)];
        let approvals = [approval("user:bob", &["developer"], true)];
        assert!(matches!(
            evaluate(&rules, &approvals, "user:alice"),
            GateVerdict::Waiting(_)
        ));
        assert_eq!(evaluate(&[], &[], "user:alice"), GateVerdict::Passed);
    }

    // -- after, soak and freeze ---------------------------------------------------------

    use crate::duration::HumanDuration;

    fn at(text: &str) -> i64 {
        text.parse::<Timestamp>()
            .expect("timestamp")
            .as_millisecond()
    }

    fn cron_window(cron: &str, hours: u64, tz: &str) -> FreezeWindow {
        FreezeWindow {
            cron: Some(cron.into()),
            duration: Some(HumanDuration(Duration::from_secs(hours * 3600))),
            timezone: Some(tz.into()),
            ..FreezeWindow::default()
        }
    }

    fn range_window(from: &str, until: &str, tz: Option<&str>) -> FreezeWindow {
        FreezeWindow {
            from: Some(from.into()),
            until: Some(until.into()),
            timezone: tz.map(Into::into),
            ..FreezeWindow::default()
        }
    }

    fn promotion(soak_secs: Option<u64>) -> Gates {
        Gates {
            after: Some("staging".into()),
            soak: soak_secs.map(|s| HumanDuration(Duration::from_secs(s))),
            ..Gates::default()
        }
    }

    fn history(facts: Option<SoakFacts>) -> History {
        History {
            version: "1.4.2".into(),
            succeeded_in_after_env: facts,
        }
    }

    fn messages(verdict: GatesVerdict) -> Vec<String> {
        match verdict {
            GatesVerdict::Waiting(unmet) => unmet.into_iter().map(|u| u.message).collect(),
            other => panic!("expected Waiting, got {other:?}"),
        }
    }

    /// The message of `window` at `now`, or `None` if closed.
    fn freeze_line(window: FreezeWindow, now: &str) -> Option<String> {
        let gates = Gates {
            freeze: vec![window],
            ..Gates::default()
        };
        match evaluate_gates(&gates, &History::default(), &[], "user:alice", at(now)) {
            GatesVerdict::Passed => None,
            verdict => Some(messages(verdict).join("; ")),
        }
    }

    #[test]
    fn no_gates_pass() {
        assert_eq!(
            evaluate_gates(&Gates::default(), &History::default(), &[], "user:a", 0),
            GatesVerdict::Passed
        );
    }

    #[test]
    fn after_waits_until_the_version_succeeded_there() {
        let gates = promotion(None);
        assert_eq!(
            messages(evaluate_gates(&gates, &history(None), &[], "user:a", 0)),
            vec!["waiting for 1.4.2 to succeed in staging"]
        );
        // Without a soak, having succeeded once is enough, even if replaced since.
        let replaced = SoakFacts {
            finished_at_ms: 0,
            still_current: false,
        };
        assert_eq!(
            evaluate_gates(&gates, &history(Some(replaced)), &[], "user:a", 1),
            GatesVerdict::Passed
        );
    }

    #[test]
    fn soak_counts_from_the_latest_success_and_needs_it_still_serving() {
        let gates = promotion(Some(600));
        let finished = at("2026-05-04T10:00:00Z");
        let serving = SoakFacts {
            finished_at_ms: finished,
            still_current: true,
        };
        let soak = |now: i64| evaluate_gates(&gates, &history(Some(serving)), &[], "u", now);
        // Not yet succeeded: only the `after` line (the soak has not begun).
        assert_eq!(
            messages(evaluate_gates(&gates, &history(None), &[], "u", finished)),
            vec!["waiting for 1.4.2 to succeed in staging"]
        );
        assert_eq!(
            messages(soak(finished + 168_000)),
            vec!["soaking in staging: 7m12s more (needs 10m)"]
        );
        assert_eq!(
            messages(soak(finished)),
            vec!["soaking in staging: 10m more (needs 10m)"]
        );
        // Rounded up: 0.5 s left reads 500ms, 1.5 s left reads 2s.
        assert_eq!(
            messages(soak(finished + 599_500)),
            vec!["soaking in staging: 500ms more (needs 10m)"]
        );
        assert_eq!(
            messages(soak(finished + 598_500)),
            vec!["soaking in staging: 2s more (needs 10m)"]
        );
        assert_eq!(soak(finished + 600_000), GatesVerdict::Passed);
        assert_eq!(soak(finished + 86_400_000), GatesVerdict::Passed);
        // A clock behind the finish time waits the full soak, never less.
        assert_eq!(
            messages(soak(finished - 5_000)),
            vec!["soaking in staging: 10m more (needs 10m)"]
        );
        // Replaced since (a rollback or another version): the soak never completes.
        let replaced = SoakFacts {
            finished_at_ms: finished,
            still_current: false,
        };
        assert_eq!(
            messages(evaluate_gates(
                &gates,
                &history(Some(replaced)),
                &[],
                "u",
                finished + 86_400_000
            )),
            vec![
                "soaking in staging: 1.4.2 no longer runs there (replaced); deploy it there again"
            ]
        );
    }

    #[test]
    fn the_soak_key_does_not_change_with_the_countdown() {
        let gates = promotion(Some(600));
        let serving = SoakFacts {
            finished_at_ms: 0,
            still_current: true,
        };
        let keys = |now: i64| match evaluate_gates(&gates, &history(Some(serving)), &[], "u", now) {
            GatesVerdict::Waiting(unmet) => unmet.into_iter().map(|u| u.key).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(keys(1_000), keys(200_000));
        assert_eq!(keys(1_000), vec!["soak:staging".to_string()]);
    }

    #[test]
    fn weekly_cron_window_in_paris() {
        let weekend = || cron_window("0 18 * * FRI", 64, "Europe/Paris");
        // Friday 2026-11-20 17:59 Paris: not yet.
        assert_eq!(freeze_line(weekend(), "2026-11-20T17:59:59+01:00"), None);
        // Opens at 18:00 sharp, for 64 h: until Monday 10:00.
        let open = Some(
            "freeze window `0 18 * * FRI` (Europe/Paris) open until 2026-11-23T10:00:00+01:00"
                .to_string(),
        );
        assert_eq!(freeze_line(weekend(), "2026-11-20T18:00:00+01:00"), open);
        assert_eq!(freeze_line(weekend(), "2026-11-21T12:00:00+01:00"), open);
        assert_eq!(freeze_line(weekend(), "2026-11-23T09:59:59+01:00"), open);
        // Closed from Monday 10:00, all week.
        assert_eq!(freeze_line(weekend(), "2026-11-23T10:00:00+01:00"), None);
        assert_eq!(freeze_line(weekend(), "2026-11-25T12:00:00+01:00"), None);
        // The same instant seen from UTC: 17:00Z is 18:00 in Paris.
        assert!(freeze_line(weekend(), "2026-11-20T17:00:00Z").is_some());
        assert_eq!(freeze_line(weekend(), "2026-11-20T16:59:59Z"), None);
    }

    #[test]
    fn cron_window_across_the_autumn_dst_change() {
        // Paris leaves summer time on Sunday 2026-10-25 (03:00 CEST -> 02:00 CET). The
        // window opens Friday 18:00 local (+02:00), lasts 64 h of elapsed time, and so
        // closes Monday 09:00 local (+01:00).
        let weekend = || cron_window("0 18 * * FRI", 64, "Europe/Paris");
        assert_eq!(freeze_line(weekend(), "2026-10-23T15:59:59Z"), None);
        assert_eq!(
            freeze_line(weekend(), "2026-10-23T16:00:00Z").as_deref(),
            Some(
                "freeze window `0 18 * * FRI` (Europe/Paris) open until 2026-10-26T09:00:00+01:00"
            )
        );
        // During the repeated hour.
        assert!(freeze_line(weekend(), "2026-10-25T00:30:00Z").is_some());
        assert!(freeze_line(weekend(), "2026-10-25T01:30:00Z").is_some());
        assert!(freeze_line(weekend(), "2026-10-26T07:59:59Z").is_some());
        assert_eq!(freeze_line(weekend(), "2026-10-26T08:00:00Z"), None);
        // The next Friday opens at 18:00 winter time (17:00Z), not 16:00Z.
        assert_eq!(freeze_line(weekend(), "2026-10-30T16:30:00Z"), None);
        assert!(freeze_line(weekend(), "2026-10-30T17:00:00Z").is_some());
    }

    #[test]
    fn cron_window_across_the_spring_dst_change() {
        // Paris enters summer time on Sunday 2026-03-29 (02:00 CET -> 03:00 CEST): Friday
        // 18:00 (+01:00) plus 64 h closes Monday 11:00 (+02:00).
        let weekend = || cron_window("0 18 * * FRI", 64, "Europe/Paris");
        assert_eq!(
            freeze_line(weekend(), "2026-03-28T12:00:00+01:00").as_deref(),
            Some(
                "freeze window `0 18 * * FRI` (Europe/Paris) open until 2026-03-30T11:00:00+02:00"
            )
        );
        assert!(freeze_line(weekend(), "2026-03-30T08:59:59Z").is_some());
        assert_eq!(freeze_line(weekend(), "2026-03-30T09:00:00Z"), None);
        // The next Friday opens at 18:00 summer time = 16:00Z.
        assert_eq!(freeze_line(weekend(), "2026-04-03T15:59:59Z"), None);
        assert!(freeze_line(weekend(), "2026-04-03T16:00:00Z").is_some());
    }

    #[test]
    fn a_cron_window_opening_in_the_skipped_hour_still_opens() {
        // 02:30 does not exist in Paris on 2026-03-29; the window must still open that
        // night (at the first valid time after the gap) rather than be skipped.
        let nightly = || cron_window("30 2 * * *", 1, "Europe/Paris");
        assert!(freeze_line(nightly(), "2026-03-29T01:45:00Z").is_some());
        assert_eq!(freeze_line(nightly(), "2026-03-29T12:00:00Z"), None);
        // The day before: 02:30 CET = 01:30Z, for one hour.
        assert!(freeze_line(nightly(), "2026-03-28T01:30:00Z").is_some());
        assert_eq!(freeze_line(nightly(), "2026-03-28T02:30:00Z"), None);
    }

    #[test]
    fn overlapping_cron_windows_run_into_one_another() {
        // Opens on the 1st and the 2nd at midnight, 36 h each: one freeze from the 1st
        // 00:00 to the 3rd 12:00.
        let window = || cron_window("0 0 1,2 * *", 36, "UTC");
        assert_eq!(
            freeze_line(window(), "2026-06-01T06:00:00Z").as_deref(),
            Some("freeze window `0 0 1,2 * *` (UTC) open until 2026-06-03T12:00:00+00:00")
        );
        assert!(freeze_line(window(), "2026-06-03T11:59:59Z").is_some());
        assert_eq!(freeze_line(window(), "2026-06-03T12:00:00Z"), None);
    }

    #[test]
    fn a_freeze_window_that_never_closes_says_so_instead_of_inventing_an_end() {
        // Every day at midnight for 48 h: each opening overlaps the next, forever.
        let endless = || cron_window("0 0 * * *", 48, "UTC");
        assert_eq!(
            freeze_line(endless(), "2026-06-01T06:00:00Z").as_deref(),
            Some(
                "freeze window `0 0 * * *` (UTC) open, no end in sight (its openings overlap \
                 one another)"
            )
        );
    }

    #[test]
    fn waiting_lines_name_each_check_and_never_say_waiting_for_twice() {
        let unmet = vec![
            Unmet {
                gate: "after".into(),
                key: "after:staging".into(),
                message: "waiting for 1.4.2 to succeed in staging".into(),
            },
            Unmet {
                gate: "freeze".into(),
                key: "f".into(),
                message: "freeze window x open until y".into(),
            },
        ];
        assert_eq!(
            waiting_message(&unmet),
            "waiting for 1.4.2 to succeed in staging; freeze window x open until y"
        );
        let report = GateReport {
            rows: vec![GateRow {
                gate: "checks:ci-green".into(),
                state: GateState::Waiting,
                detail: "pending: not run yet".into(),
                key: "checks:ci-green:pending".into(),
            }],
            rejected: None,
        };
        let GatesVerdict::Waiting(unmet) = report.verdict() else {
            panic!()
        };
        assert_eq!(unmet[0].message, "check ci-green: pending: not run yet");
        assert_eq!(
            waiting_message(&unmet),
            "waiting for check ci-green: pending: not run yet"
        );
    }

    #[test]
    fn absolute_windows() {
        let holidays = || range_window("2026-12-20T00:00:00", "2027-01-03T00:00:00", Some("UTC"));
        assert_eq!(freeze_line(holidays(), "2026-12-19T23:59:59Z"), None);
        let open = Some(
            "freeze window 2026-12-20T00:00:00 to 2027-01-03T00:00:00 (UTC) open until 2027-01-03T00:00:00+00:00"
                .to_string(),
        );
        assert_eq!(freeze_line(holidays(), "2026-12-20T00:00:00Z"), open);
        assert_eq!(freeze_line(holidays(), "2027-01-02T23:59:59Z"), open);
        assert_eq!(freeze_line(holidays(), "2027-01-03T00:00:00Z"), None);
        // No time zone means UTC.
        let no_zone = || range_window("2026-12-20T00:00:00", "2027-01-03T00:00:00", None);
        assert_eq!(freeze_line(no_zone(), "2026-12-20T00:00:00Z"), open);
        // Read in Paris: midnight there is 23:00Z the day before.
        let paris = || {
            range_window(
                "2026-12-20T00:00:00",
                "2027-01-03T00:00:00",
                Some("Europe/Paris"),
            )
        };
        assert!(freeze_line(paris(), "2026-12-19T23:00:00Z").is_some());
        assert_eq!(freeze_line(paris(), "2026-12-19T22:59:59Z"), None);
        assert_eq!(freeze_line(paris(), "2027-01-02T23:00:00Z"), None);
        // A range spanning a DST change ends at its local wall-clock time.
        let autumn = || {
            range_window(
                "2026-10-24T00:00:00",
                "2026-10-26T00:00:00",
                Some("Europe/Paris"),
            )
        };
        assert_eq!(
            freeze_line(autumn(), "2026-10-25T12:00:00Z").as_deref(),
            Some(
                "freeze window 2026-10-24T00:00:00 to 2026-10-26T00:00:00 (Europe/Paris) open until 2026-10-26T00:00:00+01:00"
            )
        );
        assert!(freeze_line(autumn(), "2026-10-23T22:00:00Z").is_some());
        assert_eq!(freeze_line(autumn(), "2026-10-25T23:00:00Z"), None);
    }

    #[test]
    fn an_unreadable_window_blocks() {
        let broken = FreezeWindow {
            cron: Some("61 * * * *".into()),
            duration: Some(HumanDuration(Duration::from_secs(60))),
            ..FreezeWindow::default()
        };
        let line = freeze_line(broken, "2026-01-01T00:00:00Z").expect("blocked");
        assert!(line.contains("cannot be read"), "{line}");
        let half = FreezeWindow {
            cron: Some("0 18 * * FRI".into()),
            ..FreezeWindow::default()
        };
        assert!(freeze_line(half, "2026-01-01T00:00:00Z").is_some());
    }

    #[test]
    fn every_unmet_gate_is_listed_and_a_rejection_wins() {
        let gates = Gates {
            approvals: vec![rule("approver", 1)],
            freeze: vec![range_window(
                "2026-01-01T00:00:00",
                "2026-02-01T00:00:00",
                None,
            )],
            ..promotion(Some(60))
        };
        let now = at("2026-01-10T00:00:00Z");
        assert_eq!(
            messages(evaluate_gates(
                &gates,
                &history(None),
                &[],
                "user:alice",
                now
            )),
            vec![
                "waiting for 1.4.2 to succeed in staging",
                "freeze window 2026-01-01T00:00:00 to 2026-02-01T00:00:00 (UTC) open until 2026-02-01T00:00:00+00:00",
                "1 more approval from role approver (not user:alice)",
            ]
        );
        let rejected = [approval("user:bob", &["approver"], false)];
        assert_eq!(
            evaluate_gates(&gates, &history(None), &rejected, "user:alice", now),
            GatesVerdict::Rejected {
                by: "user:bob".into(),
                reason: "not ready".into()
            }
        );
        let approved = [approval("user:bob", &["approver"], true)];
        let soaked = SoakFacts {
            finished_at_ms: now - 60_000,
            still_current: true,
        };
        assert_eq!(
            evaluate_gates(
                &gates,
                &history(Some(soaked)),
                &approved,
                "user:alice",
                at("2026-02-01T00:00:00Z")
            ),
            GatesVerdict::Passed
        );
    }

    #[test]
    fn compact_durations() {
        for (ms, text) in [
            (0, "0ms"),
            (250, "250ms"),
            (1_000, "1s"),
            (1_001, "2s"),
            (432_000, "7m12s"),
            (600_000, "10m"),
            (5_400_000, "1h30m"),
            (230_400_000, "64h"),
            (3_601_000, "1h1s"),
        ] {
            assert_eq!(compact(Duration::from_millis(ms)), text);
        }
    }

    #[test]
    fn parsers_explain_what_is_wrong() {
        assert!(parse_cron("0 18 * * FRI").is_ok());
        assert!(parse_cron("0 0 18 * * FRI").is_ok());
        assert!(parse_cron("0 25 * * *").is_err());
        assert!(parse_cron("every friday").is_err());
        assert!(parse_timezone("Europe/Paris").is_ok());
        assert!(parse_timezone("UTC").is_ok());
        assert!(
            parse_timezone("Europe/Pariss")
                .unwrap_err()
                .contains("Europe/Pariss")
        );
        assert!(parse_local("2026-12-20T00:00:00").is_ok());
        assert!(parse_local("2026-13-20T00:00:00").is_err());
        assert!(parse_local("tomorrow").is_err());
    }

    // gates: report, checks and overrides -------------------------------------------------

    fn check(name: &str, interval_s: u64) -> GateCheck {
        GateCheck {
            name: name.into(),
            run: Some(vec!["true".into()]),
            interval: Some(HumanDuration(Duration::from_secs(interval_s))),
            timeout: Some(HumanDuration(Duration::from_secs(1))),
            ..GateCheck::default()
        }
    }

    fn result(name: &str, passed: bool, explanation: &str, at_ms: i64) -> CheckResult {
        CheckResult {
            name: name.into(),
            passed,
            explanation: explanation.into(),
            at_ms,
        }
    }

    fn lift(by: &str, reason: &str) -> Override {
        Override {
            gate: "freeze".into(),
            by: by.into(),
            reason: reason.into(),
            at_ms: 0,
        }
    }

    fn always_frozen() -> FreezeWindow {
        range_window("2000-01-01T00:00:00", "2999-01-01T00:00:00", None)
    }

    /// `(gate, state, detail)` of every row.
    fn rows(report: &GateReport) -> Vec<(String, GateState, String)> {
        report
            .rows
            .iter()
            .map(|r| (r.gate.clone(), r.state, r.detail.clone()))
            .collect()
    }

    fn row(gate: &str, state: GateState, detail: &str) -> (String, GateState, String) {
        (gate.into(), state, detail.into())
    }

    #[test]
    fn the_report_has_one_row_per_configured_gate_and_none_for_the_others() {
        let facts = Facts::default();
        let none = report(&Gates::default(), &History::default(), &[], "u", &facts, 0);
        assert!(none.rows.is_empty());
        assert_eq!(none.verdict(), GatesVerdict::Passed);
        assert!(none.passed_lines().is_empty());

        let gates = Gates {
            approvals: vec![rule("approver", 1)],
            freeze: vec![always_frozen()],
            checks: vec![check("ci-green", 10), check("uat", 10)],
            ..promotion(Some(600))
        };
        let now = at("2026-01-10T00:00:00Z");
        let waiting = report(&gates, &history(None), &[], "user:alice", &facts, now);
        assert_eq!(
            rows(&waiting),
            vec![
                row(
                    "after",
                    GateState::Waiting,
                    "waiting for 1.4.2 to succeed in staging"
                ),
                row(
                    "soak",
                    GateState::Waiting,
                    "soak of 10m in staging starts once 1.4.2 has succeeded there"
                ),
                row(
                    "freeze",
                    GateState::Waiting,
                    "freeze window 2000-01-01T00:00:00 to 2999-01-01T00:00:00 (UTC) open until 2999-01-01T00:00:00+00:00"
                ),
                row(
                    "approvals",
                    GateState::Waiting,
                    "1 more approval from role approver (not user:alice)"
                ),
                row(
                    "checks:ci-green",
                    GateState::Waiting,
                    "pending: not run yet"
                ),
                row("checks:uat", GateState::Waiting, "pending: not run yet"),
            ]
        );
        // The soak that has not begun is not listed as unmet while `after` waits.
        let GatesVerdict::Waiting(unmet) = waiting.verdict() else {
            panic!("waiting")
        };
        let gates_unmet: Vec<&str> = unmet.iter().map(|u| u.gate.as_str()).collect();
        assert_eq!(
            gates_unmet,
            vec![
                "after",
                "freeze",
                "approvals",
                "checks:ci-green",
                "checks:uat"
            ]
        );

        // Everything holds: every row met or overridden, and the verdict passes.
        let soaked = SoakFacts {
            finished_at_ms: now - 720_000,
            still_current: true,
        };
        let facts = Facts {
            checks: vec![
                result("ci-green", true, "status 200", now - 1_000),
                result("uat", true, "exit 0", now - 2_000),
            ],
            overrides: vec![lift("user:bob", "hotfix for INC-123")],
            alerts: None,
        };
        let approvals = [approval("user:carol", &["approver"], true)];
        let passed = report(
            &gates,
            &history(Some(soaked)),
            &approvals,
            "user:alice",
            &facts,
            now,
        );
        assert_eq!(passed.verdict(), GatesVerdict::Passed);
        assert_eq!(
            passed.passed_lines(),
            vec![
                "after: met (1.4.2 succeeded in staging)",
                "soak: met (1.4.2 served in staging for 12m (needs 10m))",
                "freeze: overridden by bob: hotfix for INC-123",
                "approvals: met (approved by carol)",
                "checks:ci-green: met (passed: status 200)",
                "checks:uat: met (passed: exit 0)",
            ]
        );
    }

    #[test]
    fn a_check_is_pending_until_run_failed_while_failing_and_pending_again_when_stale() {
        let gates = Gates {
            checks: vec![check("ci-green", 10)],
            ..Gates::default()
        };
        let judge = |results: Vec<CheckResult>, now: i64| {
            let facts = Facts {
                checks: results,
                overrides: Vec::new(),
                alerts: None,
            };
            report(&gates, &History::default(), &[], "u", &facts, now)
        };
        let never = judge(Vec::new(), 50_000);
        assert_eq!(never.rows[0].state, GateState::Waiting);
        assert!(matches!(never.verdict(), GatesVerdict::Waiting(_)));

        let failing = judge(
            vec![result(
                "ci-green",
                false,
                "expected status 200, got 503",
                45_000,
            )],
            50_000,
        );
        assert_eq!(
            rows(&failing),
            vec![row(
                "checks:ci-green",
                GateState::Failed,
                "expected status 200, got 503 (re-run every 10s)"
            )]
        );
        // A failed check keeps the deployment waiting; it never rejects it.
        let GatesVerdict::Waiting(unmet) = failing.verdict() else {
            panic!("a failing check waits")
        };
        assert_eq!(unmet[0].gate, "checks:ci-green");
        assert!(unmet[0].message.contains("got 503"));

        // The latest result counts.
        let passing = judge(
            vec![
                result("ci-green", false, "expected status 200, got 503", 30_000),
                result("ci-green", true, "status 200", 45_000),
            ],
            50_000,
        );
        assert_eq!(passing.verdict(), GatesVerdict::Passed);

        // Older than interval + timeout (11 s): pending again, even if it passed.
        let at_edge = judge(vec![result("ci-green", true, "status 200", 39_000)], 50_000);
        assert_eq!(at_edge.verdict(), GatesVerdict::Passed);
        let stale = judge(vec![result("ci-green", true, "status 200", 38_999)], 50_000);
        assert_eq!(
            rows(&stale),
            vec![row(
                "checks:ci-green",
                GateState::Waiting,
                "pending: last result is 12s old (re-run every 10s)"
            )]
        );
        // A result of another check does not count.
        let other = judge(vec![result("uat", true, "exit 0", 49_000)], 50_000);
        assert_eq!(other.rows[0].detail, "pending: not run yet");
    }

    #[test]
    fn check_keys_change_with_the_failure_not_with_time() {
        let gates = Gates {
            checks: vec![check("ci", 10)],
            ..Gates::default()
        };
        let key = |results: Vec<CheckResult>, now: i64| {
            let facts = Facts {
                checks: results,
                overrides: Vec::new(),
                alerts: None,
            };
            report(&gates, &History::default(), &[], "u", &facts, now).rows[0]
                .key
                .clone()
        };
        let a = key(vec![result("ci", false, "exit 1: no", 1_000)], 2_000);
        let b = key(vec![result("ci", false, "exit 1: no", 9_000)], 9_500);
        let c = key(vec![result("ci", false, "exit 2: other", 9_000)], 9_500);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            key(Vec::new(), 0),
            key(vec![result("ci", true, "", 0)], 100_000)
        );
    }

    #[test]
    fn a_freeze_override_lifts_an_open_window_only() {
        let gates = Gates {
            freeze: vec![always_frozen()],
            ..Gates::default()
        };
        let facts = Facts {
            checks: Vec::new(),
            overrides: vec![lift("user:bob", "hotfix for INC-123")],
            alerts: None,
        };
        let lifted = report(
            &gates,
            &History::default(),
            &[],
            "u",
            &facts,
            at("2026-01-01T00:00:00Z"),
        );
        assert_eq!(
            rows(&lifted),
            vec![row(
                "freeze",
                GateState::Overridden,
                "overridden by bob: hotfix for INC-123"
            )]
        );
        assert_eq!(lifted.verdict(), GatesVerdict::Passed);
        // The latest override names who lifted it.
        let two = Facts {
            checks: Vec::new(),
            overrides: vec![lift("user:bob", "first"), lift("token:ci", "second")],
            alerts: None,
        };
        let lifted = report(
            &gates,
            &History::default(),
            &[],
            "u",
            &two,
            at("2026-01-01T00:00:00Z"),
        );
        assert_eq!(lifted.rows[0].detail, "overridden by token:ci: second");
        // An override of another gate does not lift the freeze.
        let other = Facts {
            checks: Vec::new(),
            overrides: vec![Override {
                gate: "approvals".into(),
                ..lift("user:bob", "x")
            }],
            alerts: None,
        };
        let held = report(
            &gates,
            &History::default(),
            &[],
            "u",
            &other,
            at("2026-01-01T00:00:00Z"),
        );
        assert_eq!(held.rows[0].state, GateState::Waiting);
        // A closed window is met, override or not.
        let closed = Gates {
            freeze: vec![range_window(
                "2026-12-20T00:00:00",
                "2027-01-03T00:00:00",
                None,
            )],
            ..Gates::default()
        };
        let met = report(
            &closed,
            &History::default(),
            &[],
            "u",
            &facts,
            at("2026-06-01T00:00:00Z"),
        );
        assert_eq!(
            rows(&met),
            vec![row("freeze", GateState::Met, "no freeze window open")]
        );
        // An override does not lift the other gates.
        let with_approval = Gates {
            approvals: vec![rule("approver", 1)],
            ..gates.clone()
        };
        let still = report(
            &with_approval,
            &History::default(),
            &[],
            "user:alice",
            &facts,
            at("2026-01-01T00:00:00Z"),
        );
        let GatesVerdict::Waiting(unmet) = still.verdict() else {
            panic!("approvals still wait")
        };
        assert_eq!(unmet.len(), 1);
        assert_eq!(unmet[0].gate, "approvals");
    }

    #[test]
    fn a_rejection_is_a_failed_row_and_ends_it_whatever_the_checks_say() {
        let gates = Gates {
            approvals: vec![rule("approver", 1)],
            checks: vec![check("ci", 10)],
            ..Gates::default()
        };
        let facts = Facts {
            checks: vec![result("ci", true, "status 200", 0)],
            overrides: Vec::new(),
            alerts: None,
        };
        let rejected = [approval("user:bob", &["approver"], false)];
        let r = report(
            &gates,
            &History::default(),
            &rejected,
            "user:alice",
            &facts,
            1,
        );
        assert_eq!(
            rows(&r)[0],
            row("approvals", GateState::Failed, "rejected by bob: not ready")
        );
        assert_eq!(
            r.verdict(),
            GatesVerdict::Rejected {
                by: "user:bob".into(),
                reason: "not ready".into()
            }
        );
        // Approved by several people: each is named once, the requester never.
        let approvals = [
            approval("user:bob", &["approver"], true),
            approval("user:alice", &["approver"], true),
            approval("token:ci", &["approver"], true),
        ];
        let r = report(
            &gates,
            &History::default(),
            &approvals,
            "user:alice",
            &facts,
            1,
        );
        assert_eq!(r.rows[0].detail, "approved by bob, token:ci");
        assert_eq!(r.verdict(), GatesVerdict::Passed);
    }

    #[test]
    fn soak_rows_say_how_long_and_when_replaced() {
        let gates = promotion(Some(600));
        let facts = Facts::default();
        let replaced = SoakFacts {
            finished_at_ms: 0,
            still_current: false,
        };
        let r = report(
            &gates,
            &history(Some(replaced)),
            &[],
            "u",
            &facts,
            1_000_000,
        );
        assert_eq!(r.rows[0].state, GateState::Met);
        assert_eq!(r.rows[1].state, GateState::Waiting);
        assert!(r.rows[1].detail.contains("no longer runs there"));
        let GatesVerdict::Waiting(unmet) = r.verdict() else {
            panic!("waiting")
        };
        assert_eq!(unmet.len(), 1);
        assert_eq!(unmet[0].gate, "soak");
    }

    #[test]
    fn substitution_and_judges() {
        assert_eq!(
            substitute(
                "http://ci/${FERRY_APP}/${FERRY_ENV}/${VERSION}?v=${VERSION}",
                "1.2.0",
                "production",
                "shop"
            ),
            "http://ci/shop/production/1.2.0?v=1.2.0"
        );
        assert_eq!(substitute("${HOME}", "1", "e", "a"), "${HOME}");
        let http = HttpGateCheck {
            url: "http://x".into(),
            expect_status: None,
            expect_body: Some("success".into()),
        };
        assert_eq!(
            judge_http(&http, 503, "success"),
            (false, "expected status 200, got 503".to_string())
        );
        assert_eq!(
            judge_http(&http, 200, "pending"),
            (
                false,
                "status 200, but the body does not contain \"success\"".to_string()
            )
        );
        assert!(judge_http(&http, 200, "build: success").0);
        let plain = HttpGateCheck {
            url: "http://x".into(),
            expect_status: Some(204),
            expect_body: None,
        };
        assert_eq!(
            judge_http(&plain, 204, ""),
            (true, "status 204".to_string())
        );
        assert_eq!(
            judge_exit(Some(1), "starting\nno such file: /srv/uat/1.0.ok\n\n"),
            (false, "exit 1: no such file: /srv/uat/1.0.ok".to_string())
        );
        assert_eq!(judge_exit(Some(0), ""), (true, "exit 0".to_string()));
        assert_eq!(
            judge_exit(None, ""),
            (false, "killed by a signal".to_string())
        );
        let long = "x".repeat(1000);
        assert!(judge_exit(Some(2), &long).1.len() < 220);
    }

    #[test]
    fn states_read_as_words() {
        assert_eq!(
            serde_json::to_value(GateState::Overridden).expect("json"),
            serde_json::json!("overridden")
        );
        for s in [
            GateState::Met,
            GateState::Waiting,
            GateState::Failed,
            GateState::Overridden,
        ] {
            assert_eq!(
                serde_json::to_value(s).expect("json"),
                serde_json::json!(s.as_str())
            );
        }
        assert!(GateState::Met.passes() && GateState::Overridden.passes());
        assert!(!GateState::Waiting.passes() && !GateState::Failed.passes());
    }
}
