//! Guarded rollout of a flag: its gradual rollout percentage moves in steps (`1 → 5 → 25 →
//! 100`), each held at least `pause` and until the analysis — the same judges as a canary
//! deployment's — has passed at that percentage; a failed analysis sets the flag back to 0 %
//! at once (the kill switch), with the verdict.
//!
//! The proxy metrics (`builtin`, `compare`) judge the requests that carried the flag
//! ([`Judge::Flag`], the default): those whose answer named it in a `Ferry-Flags` response
//! header with a variant that [`carried_on`] reads as on (`compare` takes those with it off
//! as its baseline). A window without one such request is Inconclusive and says how to
//! attribute requests ([`attribute`]); the environment's whole traffic is judged only when
//! asked for ([`Judge::Environment`]), and every verdict says which.
//!
//! [`advance`] is the whole decision: (guard, what the server observed, now) → the next
//! persisted [`Guard`] and one [`Action`]. The server persists the new guard and applies
//! the action's percentage in one transaction, so a restart resumes exactly where it was.
//! A person's change of the flag (its percentage, `disable`, `archive`) ends the guarded
//! rollout: a person always wins over the automation.

use serde::{Deserialize, Serialize};

use crate::analysis::{
    AnalysisRun, AnalysisSpec, Builtin, Measurement, MetricSpec, RunVerdict, Source, Threshold,
    Verdict, record,
};
use crate::duration::HumanDuration;

/// At most this many steps.
pub const MAX_STEPS: usize = 20;

/// The default steps: `1, 5, 25, 100`.
pub const DEFAULT_STEPS: [u32; 4] = [1, 5, 25, 100];

/// A request's pause, as openapi.json's `GuardedRolloutRequest.pause` describes it
/// (`^([0-9]{1,9}(ms|s|m|h)){1,4}$`): `30s`, `2m`, `1h30m`, `500ms`.
pub fn parse_pause(text: &str) -> Result<HumanDuration, String> {
    let bad = || {
        format!(
            "{text:?} is not a pause such as 30s, 2m or 1h30m (1 to 4 parts, each up to 9 \
             digits and a unit: ms, s, m or h)"
        )
    };
    let (mut rest, mut millis, mut parts) = (text, 0u64, 0);
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 || digits > 9 || parts == 4 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        // At most 4 × 999 999 999 h: well within u64 milliseconds.
        millis += n * unit;
        parts += 1;
    }
    if parts == 0 {
        return Err(bad());
    }
    Ok(HumanDuration(std::time::Duration::from_millis(millis)))
}

/// How a guarded rollout moves: its steps, the least time at each, and the analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardSpec {
    /// Rollout percentages, strictly increasing, from 1 to 100; the last is where the
    /// rollout ends.
    pub steps: Vec<u32>,
    /// The least time each step is held (its analysis must also have passed).
    pub pause: HumanDuration,
    /// The analysis judged at every step (builtin proxy metrics of the environment's
    /// traffic, Prometheus, HTTP or command checks).
    pub analysis: AnalysisSpec,
    /// The rollout's stickiness (`default`, `userId`, `sessionId`, `random`, a field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<String>,
    /// Whose requests the proxy metrics judge.
    #[serde(default)]
    pub judge: Judge,
}

/// Whose requests a guarded rollout's proxy metrics (`builtin`, `compare`) judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Judge {
    /// The requests whose answer carried the flag on in its `Ferry-Flags` header (for
    /// `compare`: against those that carried it off).
    #[default]
    Flag,
    /// The environment's whole traffic through the proxy: a flag at 1 % is diluted 100-fold
    /// and two guarded rollouts at once share their errors. Only when asked for.
    Environment,
}

impl Judge {
    /// `flag`, `environment`.
    pub fn as_str(self) -> &'static str {
        match self {
            Judge::Flag => "flag",
            Judge::Environment => "environment",
        }
    }
}

/// Whether a `Ferry-Flags` variant says the flag was on for that request: anything but
/// `off`, `false`, `0` or `disabled` (Unleash's variant when the flag is off), in any case.
pub fn carried_on(variant: &str) -> bool {
    !["off", "false", "0", "disabled"]
        .iter()
        .any(|off| variant.eq_ignore_ascii_case(off))
}

/// Says on whose requests each measurement of a round was taken (`measurements` in the
/// order of `spec.analysis.metrics`): proxy metrics get `[requests carrying FLAG on]` (or
/// `[whole environment]`) after their reason; with [`Judge::Flag`], one that saw no
/// attributed request is Inconclusive with a why that says how to attribute requests.
/// External metrics (Prometheus, HTTP, command) are left as they are.
pub fn attribute(measurements: &mut [Measurement], spec: &GuardSpec, flag: &str) {
    for (m, metric) in measurements.iter_mut().zip(&spec.analysis.metrics) {
        if !matches!(
            metric.source(),
            Some(Source::Builtin(_) | Source::Compare(_))
        ) {
            continue;
        }
        match spec.judge {
            Judge::Flag if m.sample_size == 0 => {
                m.verdict = Verdict::Inconclusive;
                m.value = None;
                m.reason = format!(
                    "no request carried flag {flag} on in this window: the app names the                      flags each answer evaluated in a `Ferry-Flags: {flag}=on` response                      header (docs/flags.md#attribution); or judge the whole environment                      (--judge environment)"
                );
            }
            Judge::Flag => m
                .reason
                .push_str(&format!(" [requests carrying {flag} on]")),
            Judge::Environment => m.reason.push_str(" [whole environment]"),
        }
    }
}

/// The analysis of a guarded rollout when neither the request nor the environment's
/// strategy gives one: the environment's error rate through Ferry's proxy at most 1 %
/// (judged on at least 20 requests), measured every 5 s.
pub fn default_analysis() -> AnalysisSpec {
    let mut errors = MetricSpec::named("errors");
    errors.builtin = Some(Builtin::ErrorRate);
    errors.max = Some(Threshold::Percent(0.01));
    AnalysisSpec {
        metrics: vec![errors],
        ..AnalysisSpec::default()
    }
}

/// An analysis block from a file (YAML or JSON: the shape of a canary's `analysis:`),
/// checked; the error names the line and field.
pub fn parse_analysis(text: &str) -> Result<AnalysisSpec, String> {
    let spec: AnalysisSpec = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
    match spec.validate().first() {
        Some(issue) => Err(issue.to_string()),
        None => Ok(spec),
    }
}

/// A mistake in a [`GuardSpec`]: where and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct GuardError {
    pub at: String,
    pub message: String,
}

fn fault(at: impl Into<String>, message: impl Into<String>) -> GuardError {
    GuardError {
        at: at.into(),
        message: message.into(),
    }
}

impl GuardSpec {
    /// Every problem at once, located (`steps[2]`, `analysis.metrics[0].max`).
    pub fn validate(&self) -> Vec<GuardError> {
        let mut out = Vec::new();
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            out.push(fault(
                "steps",
                format!("1 to {MAX_STEPS} percentages, e.g. 1,5,25,100"),
            ));
        }
        let mut previous = 0;
        for (i, &p) in self.steps.iter().enumerate() {
            if !(1..=100).contains(&p) {
                out.push(fault(
                    format!("steps[{i}]"),
                    format!("{p} is not a percentage from 1 to 100"),
                ));
            } else if p <= previous {
                out.push(fault(
                    format!("steps[{i}]"),
                    format!("{p} does not increase on {previous}"),
                ));
            }
            previous = previous.max(p);
        }
        if self.pause.0.is_zero() {
            out.push(fault("pause", "must be longer than 0 (e.g. 30s)"));
        }
        for issue in self.analysis.validate() {
            out.push(fault(format!("analysis.{}", issue.path_string()), {
                let mut m = issue.message;
                if let Some(h) = issue.hint {
                    m.push_str(&format!(" (hint: {h})"));
                }
                m
            }));
        }
        for (i, m) in self.analysis.metrics.iter().enumerate() {
            if self.judge == Judge::Environment
                && let Some(Source::Compare(_)) = m.source()
            {
                out.push(fault(
                    format!("analysis.metrics[{i}].compare"),
                    "compare needs a baseline: judged on the whole environment a flag \
                     rollout has none (judge: flag compares the requests that carried it on \
                     with those that carried it off)",
                ));
            }
        }
        out
    }
}

/// Where a guarded rollout stands.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum GuardState {
    /// Moving: holding the current step until its pause has passed and its analysis too.
    #[default]
    Running,
    /// The last step passed: the flag stays at its final percentage.
    Completed,
    /// The analysis failed: the flag was set back to 0 %.
    RolledBack { metric: String, reason: String },
    /// A metric stayed Inconclusive (`on_inconclusive: pause`): the percentage holds; a
    /// person starts the rollout again or sets a percentage.
    Paused { reason: String },
    /// A person changed the flag (or removed it); the guarded rollout stopped there.
    Cancelled { reason: String },
}

impl GuardState {
    pub fn is_running(&self) -> bool {
        matches!(self, GuardState::Running)
    }

    /// `running`, `completed`, `rolled-back`, `paused`, `cancelled`.
    pub fn label(&self) -> &'static str {
        match self {
            GuardState::Running => "running",
            GuardState::Completed => "completed",
            GuardState::RolledBack { .. } => "rolled-back",
            GuardState::Paused { .. } => "paused",
            GuardState::Cancelled { .. } => "cancelled",
        }
    }
}

/// A guarded rollout as persisted between two decisions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Guard {
    pub spec: GuardSpec,
    /// Index of the current step in `spec.steps`.
    pub step: usize,
    /// Unix ms when the current step started.
    pub step_started_ms: i64,
    /// The current step's analysis (a new run at every step: each percentage is judged).
    pub run: AnalysisRun,
    pub state: GuardState,
    /// The last measurements, for `ferry flags show`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last: Vec<Measurement>,
}

impl Guard {
    /// The percentage the flag is at while the guard runs (0 once rolled back).
    pub fn percent(&self) -> u32 {
        match self.state {
            GuardState::RolledBack { .. } => 0,
            _ => self.spec.steps.get(self.step).copied().unwrap_or(0),
        }
    }
}

/// A new guarded rollout at its first step; the server sets the flag (enabled) to
/// [`Guard::percent`] in the same transaction that stores it.
pub fn start(spec: GuardSpec, now_ms: i64) -> Guard {
    Guard {
        spec,
        step: 0,
        step_started_ms: now_ms,
        run: AnalysisRun::new(now_ms),
        state: GuardState::Running,
        last: Vec::new(),
    }
}

/// What the server saw of the flag and its traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observed<'a> {
    /// The flag as stored: `None` when it is gone.
    pub flag: Option<FlagNow>,
    /// A round of measurements, when one was due and could be taken.
    pub measurements: Option<&'a [Measurement]>,
}

/// The stored flag's switches and percentage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagNow {
    pub enabled: bool,
    pub archived: bool,
    pub percent: u32,
}

/// What the server does after a decision (the new [`Guard`] is persisted in all cases).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing changes.
    Hold,
    /// The guard's state changed (a round recorded, paused, cancelled) but not the flag.
    Record,
    /// Set the flag to the next step's percentage.
    Step { percent: u32, why: String },
    /// The last step passed; the flag stays where it is.
    Complete { why: String },
    /// Set the flag back to 0 %: the analysis failed.
    RollBack { metric: String, reason: String },
}

/// The next guard and what to do, given what was observed at `now_ms`.
///
/// In order: a guard that is not running stays as it is (Hold); a flag that is gone,
/// archived, disabled or at another percentage than the step's was changed by a person →
/// Cancelled; measurements are recorded into the step's run — Failed → RolledBack (0 %),
/// NeedsHuman → Paused; a step whose pause has passed and whose run has Passed moves to
/// the next step (with a new run), or completes after the last.
pub fn advance(guard: &Guard, observed: &Observed<'_>, now_ms: i64) -> (Guard, Action) {
    if !guard.state.is_running() {
        return (guard.clone(), Action::Hold);
    }
    let mut next = guard.clone();
    let expected = guard.percent();
    let by_hand = match observed.flag {
        None => Some("the flag was removed".to_string()),
        Some(f) if f.archived => Some("the flag was archived by hand".to_string()),
        Some(f) if !f.enabled => Some("the flag was disabled by hand".to_string()),
        Some(f) if f.percent != expected => Some(format!(
            "the rollout was set to {}% by hand (the guard had it at {expected}%)",
            f.percent
        )),
        Some(_) => None,
    };
    if let Some(reason) = by_hand {
        next.state = GuardState::Cancelled { reason };
        return (next, Action::Record);
    }
    let mut recorded = false;
    if let Some(measurements) = observed.measurements {
        let (run, verdict) = record(&guard.run, &guard.spec.analysis, measurements, now_ms);
        next.run = run;
        next.last = measurements.to_vec();
        recorded = true;
        match verdict {
            RunVerdict::Failed { metric, reason } => {
                let reason = format!("at {expected}%: {reason}");
                next.state = GuardState::RolledBack {
                    metric: metric.clone(),
                    reason: reason.clone(),
                };
                return (next, Action::RollBack { metric, reason });
            }
            RunVerdict::NeedsHuman { reason } => {
                next.state = GuardState::Paused {
                    reason: format!(
                        "at {expected}%: {}",
                        reason.split("; paused").next().unwrap_or(&reason)
                    ),
                };
                return (next, Action::Record);
            }
            RunVerdict::Running | RunVerdict::Passed => {}
        }
    }
    let pause_ms = i64::try_from(guard.spec.pause.0.as_millis()).unwrap_or(i64::MAX);
    let held = now_ms.saturating_sub(guard.step_started_ms) >= pause_ms;
    if held && next.run.verdict == RunVerdict::Passed {
        let passed = passed_summary(&next);
        if guard.step + 1 >= guard.spec.steps.len() {
            next.state = GuardState::Completed;
            return (
                next,
                Action::Complete {
                    why: format!("{expected}% held {}: {passed}", guard.spec.pause),
                },
            );
        }
        next.step = guard.step + 1;
        next.step_started_ms = now_ms;
        next.run = AnalysisRun::new(now_ms);
        let percent = next.percent();
        return (
            next,
            Action::Step {
                percent,
                why: format!(
                    "step {}/{}: {expected}% → {percent}% ({expected}% held {}: {passed})",
                    guard.step + 2,
                    guard.spec.steps.len(),
                    guard.spec.pause
                ),
            },
        );
    }
    (
        next,
        if recorded {
            Action::Record
        } else {
            Action::Hold
        },
    )
}

/// `errors 0.2% ≤ 1% (412 requests), …`: the latest passing measurements in a few words.
fn passed_summary(guard: &Guard) -> String {
    let parts: Vec<String> = guard
        .run
        .metrics
        .iter()
        .filter_map(|m| m.last.as_ref())
        .map(|m| m.reason.clone())
        .collect();
    if parts.is_empty() {
        "analysis passed".into()
    } else {
        parts.join("; ")
    }
}

#[cfg(test)]
mod pause_tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_pause_is_read_exactly_as_openapi_describes_it() {
        for (text, ms) in [
            ("30s", 30_000),
            ("500ms", 500),
            ("2m", 120_000),
            ("1h30m", 5_400_000),
            ("0s", 0),
            ("999999999h", 999_999_999 * 3_600_000),
            ("1h1m1s1ms", 3_661_001),
        ] {
            assert_eq!(
                parse_pause(text).map(|d| d.0),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        // humantime reads every one of these; the schema's pattern refuses them.
        for text in [
            "",
            "1d",
            "1h 30m",
            " 5s",
            "5 s",
            "5sec",
            "1234567890s",
            "1h1m1s1ms1s",
            "5",
            "s",
            "1.5s",
            "+5s",
            "5S",
        ] {
            assert!(parse_pause(text).is_err(), "{text:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{LatencyBins, Unit, WindowStats, measure};
    use std::time::Duration;

    fn spec(steps: &[u32]) -> GuardSpec {
        let mut metric = MetricSpec::named("errors");
        metric.builtin = Some(Builtin::ErrorRate);
        metric.max = Some(Threshold::Number(0.01));
        GuardSpec {
            steps: steps.to_vec(),
            pause: HumanDuration(Duration::from_secs(10)),
            analysis: AnalysisSpec {
                metrics: vec![metric],
                inconclusive_limit: 2,
                ..AnalysisSpec::default()
            },
            stickiness: None,
            judge: Judge::Flag,
        }
    }

    fn m(verdict: Verdict) -> Vec<Measurement> {
        vec![Measurement {
            metric: "errors".into(),
            value: Some(0.0),
            unit: Unit::Ratio,
            sample_size: 100,
            threshold: "≤ 0.01".into(),
            verdict,
            reason: format!("errors {}", verdict.as_str()),
            dry_run: false,
            details: Vec::new(),
            service: None,
        }]
    }

    fn at(percent: u32) -> Option<FlagNow> {
        Some(FlagNow {
            enabled: true,
            archived: false,
            percent,
        })
    }

    fn step(
        g: &Guard,
        flag: Option<FlagNow>,
        ms: Option<&[Measurement]>,
        now: i64,
    ) -> (Guard, Action) {
        advance(
            g,
            &Observed {
                flag,
                measurements: ms,
            },
            now,
        )
    }

    /// Simulates a rollout where each round's verdict comes from `verdict(step, round)`;
    /// the flag follows the actions. Returns the final guard and the percentages set.
    fn simulate(
        steps: &[u32],
        verdict: impl Fn(usize, u32) -> Option<Verdict>,
    ) -> (Guard, Vec<u32>) {
        let mut g = start(spec(steps), 0);
        let mut flag = g.percent();
        let mut set = vec![flag];
        let mut round = 0;
        for i in 1..=1_000 {
            let now = i * 5_000;
            let ms = verdict(g.step, round).map(m);
            round += 1;
            let (next, action) = step(&g, at(flag), ms.as_deref(), now);
            // invariants: the percentage only moves by an action, never down but to 0
            match &action {
                Action::Step { percent, .. } => {
                    assert!(*percent > flag);
                    assert_eq!(*percent, next.percent());
                    flag = *percent;
                    set.push(flag);
                    round = 0;
                }
                Action::RollBack { .. } => {
                    flag = 0;
                    set.push(0);
                }
                _ => assert_eq!(next.percent(), flag),
            }
            g = next;
            if !g.state.is_running() {
                break;
            }
        }
        (g, set)
    }

    #[test]
    fn a_good_flag_climbs_every_step_then_completes() {
        let (g, set) = simulate(&[1, 5, 25, 100], |_, _| Some(Verdict::Pass));
        assert_eq!(g.state, GuardState::Completed);
        assert_eq!(set, vec![1, 5, 25, 100]);
        assert_eq!(g.percent(), 100);
    }

    #[test]
    fn a_failure_at_any_step_goes_back_to_zero_and_says_why() {
        for bad in 0..4 {
            let (g, set) = simulate(&[1, 5, 25, 100], |s, _| {
                Some(if s == bad {
                    Verdict::Fail
                } else {
                    Verdict::Pass
                })
            });
            let GuardState::RolledBack { metric, reason } = &g.state else {
                panic!("step {bad}: {:?}", g.state)
            };
            assert_eq!(metric, "errors");
            let pct = [1, 5, 25, 100][bad];
            assert!(
                reason.starts_with(&format!("at {pct}%: errors")),
                "{reason}"
            );
            assert_eq!(set.last(), Some(&0));
            assert_eq!(set.len(), bad + 2, "{set:?}");
            assert_eq!(g.percent(), 0);
        }
    }

    #[test]
    fn a_step_waits_for_both_its_pause_and_a_passing_analysis() {
        let g = start(spec(&[10, 100]), 0);
        // passed early, pause not over: hold at 10 %
        let (g1, a) = step(&g, at(10), Some(&m(Verdict::Pass)), 5_000);
        assert_eq!(a, Action::Record);
        assert_eq!(g1.step, 0);
        // pause over, no new round needed: the pass counts
        let (g2, a) = step(&g1, at(10), None, 10_000);
        assert!(matches!(a, Action::Step { percent: 100, .. }), "{a:?}");
        assert_eq!(g2.step_started_ms, 10_000);
        assert_eq!(g2.run.rounds, 0, "a new step starts a new analysis");
        // pause over but no verdict yet at the new step: hold
        let (g3, a) = step(&g2, at(100), None, 30_000);
        assert_eq!(a, Action::Hold);
        assert!(g3.state.is_running());
        // inconclusive does not pass
        let (g4, _) = step(&g3, at(100), Some(&m(Verdict::Inconclusive)), 31_000);
        assert!(g4.state.is_running());
        let (g5, a) = step(&g4, at(100), Some(&m(Verdict::Pass)), 32_000);
        assert!(matches!(a, Action::Complete { .. }), "{a:?}");
        assert_eq!(g5.state, GuardState::Completed);
    }

    #[test]
    fn inconclusive_beyond_the_limit_pauses_or_fails_per_policy() {
        let (g, set) = simulate(&[5, 100], |_, _| Some(Verdict::Inconclusive));
        assert!(
            matches!(g.state, GuardState::Paused { .. }),
            "{:?}",
            g.state
        );
        assert_eq!(set, vec![5], "the percentage holds");
        let mut s = spec(&[5, 100]);
        s.analysis.on_inconclusive = crate::analysis::InconclusivePolicy::Fail;
        let mut g = start(s, 0);
        for i in 1..=3 {
            g = step(&g, at(5), Some(&m(Verdict::Inconclusive)), i * 5_000).0;
        }
        assert!(
            matches!(g.state, GuardState::RolledBack { .. }),
            "{:?}",
            g.state
        );
    }

    #[test]
    fn a_persons_change_cancels_the_guard() {
        let g = start(spec(&[5, 100]), 0);
        let cases = [
            (None, "removed"),
            (
                Some(FlagNow {
                    enabled: false,
                    archived: false,
                    percent: 5,
                }),
                "disabled",
            ),
            (
                Some(FlagNow {
                    enabled: true,
                    archived: true,
                    percent: 5,
                }),
                "archived",
            ),
            (at(50), "set to 50%"),
        ];
        for (flag, why) in cases {
            let (next, action) = step(&g, flag, Some(&m(Verdict::Fail)), 5_000);
            assert_eq!(action, Action::Record, "{why}");
            let GuardState::Cancelled { reason } = &next.state else {
                panic!("{why}: {:?}", next.state)
            };
            assert!(reason.contains(why), "{reason}");
        }
    }

    #[test]
    fn an_ended_guard_never_acts_again() {
        let ended = [
            GuardState::Completed,
            GuardState::RolledBack {
                metric: "e".into(),
                reason: "r".into(),
            },
            GuardState::Paused { reason: "p".into() },
            GuardState::Cancelled { reason: "c".into() },
        ];
        for state in ended {
            let mut g = start(spec(&[5, 100]), 0);
            g.state = state;
            for v in [Verdict::Pass, Verdict::Fail] {
                let (next, action) = step(&g, at(77), Some(&m(v)), 99_000);
                assert_eq!(action, Action::Hold);
                assert_eq!(next, g);
            }
        }
    }

    #[test]
    fn a_restart_resumes_from_the_persisted_guard() {
        let g = start(spec(&[1, 50, 100]), 0);
        let (g, a) = step(&g, at(1), Some(&m(Verdict::Pass)), 5_000);
        assert_eq!(a, Action::Record);
        let (g, a) = step(&g, at(1), None, 10_001);
        assert!(matches!(a, Action::Step { percent: 50, .. }));
        let stored = serde_json::to_string(&g).unwrap();
        let back: Guard = serde_json::from_str(&stored).unwrap();
        assert_eq!(back, g);
        let (after, a) = step(&back, at(50), Some(&m(Verdict::Fail)), 15_000);
        assert!(matches!(a, Action::RollBack { .. }));
        assert_eq!(after.percent(), 0);
    }

    #[test]
    fn specs_are_checked_with_located_errors() {
        assert!(spec(&[1, 5, 25, 100]).validate().is_empty());
        let at = |s: GuardSpec| -> Vec<String> { s.validate().into_iter().map(|e| e.at).collect() };
        assert_eq!(at(spec(&[])), ["steps"]);
        assert_eq!(at(spec(&[0, 5])), ["steps[0]"]);
        assert_eq!(at(spec(&[5, 5])), ["steps[1]"]);
        assert_eq!(at(spec(&[5, 101])), ["steps[1]"]);
        assert_eq!(
            at(spec(&[1; 21])).first().map(String::as_str),
            Some("steps")
        );
        let mut s = spec(&[5]);
        s.pause = HumanDuration(Duration::ZERO);
        assert_eq!(at(s), ["pause"]);
        let mut s = spec(&[5]);
        s.analysis.metrics[0].builtin = None;
        s.analysis.metrics[0].compare = Some(serde_json::from_str("{}").unwrap());
        s.analysis.metrics[0].max = None;
        assert!(
            at(s.clone()).is_empty(),
            "judged on the flag, off is the baseline"
        );
        s.judge = Judge::Environment;
        assert!(at(s).contains(&"analysis.metrics[0].compare".to_string()));
    }

    #[test]
    fn variants_read_as_on_or_off() {
        for on in ["on", "ON", "true", "blue", "1", "variant-b"] {
            assert!(carried_on(on), "{on}");
        }
        for off in ["off", "Off", "false", "FALSE", "0", "disabled"] {
            assert!(!carried_on(off), "{off}");
        }
    }

    /// Errors of a flag served to 1 % of the traffic, judged on its own requests and on the
    /// whole environment's: only the first sees it.
    #[test]
    fn a_bad_flag_at_one_percent_fails_on_its_requests_and_hides_in_the_environment() {
        let metric = &spec(&[1]).analysis.metrics[0];
        let window = |requests, errors_5xx| WindowStats {
            requests,
            errors_5xx,
            duration_ms: 5_000,
            latency_us: LatencyBins::from_bins([(1_000, requests)]),
        };
        let carrying = window(40, 10);
        let environment = carrying.merge(&window(3_960, 0));
        let on_flag = measure(metric, &carrying, None, None);
        assert_eq!(on_flag.verdict, Verdict::Fail, "{}", on_flag.reason);
        assert_eq!(on_flag.sample_size, 40);
        let diluted = measure(metric, &environment, None, None);
        assert_eq!(diluted.verdict, Verdict::Pass, "{}", diluted.reason);
    }

    #[test]
    fn measurements_say_whose_requests_they_judged() {
        let mut s = spec(&[5]);
        let mut external = MetricSpec::named("probe");
        external.http = Some(serde_json::from_str(r#"{"url": "http://x/"}"#).unwrap());
        s.analysis.metrics.push(external);
        let round = |sample| {
            let mut ms = m(Verdict::Pass);
            ms[0].sample_size = sample;
            let mut probe = m(Verdict::Pass).remove(0);
            probe.metric = "probe".into();
            probe.sample_size = 0;
            ms.push(probe);
            ms
        };
        // Attributed requests: the reason says so; the external check is untouched.
        let mut ms = round(120);
        attribute(&mut ms, &s, "checkout");
        assert_eq!(ms[0].verdict, Verdict::Pass);
        assert!(
            ms[0].reason.ends_with("[requests carrying checkout on]"),
            "{}",
            ms[0].reason
        );
        assert_eq!(ms[1].reason, "errors pass");
        // None: Inconclusive, never a pass, with how to attribute.
        let mut ms = round(0);
        attribute(&mut ms, &s, "checkout");
        assert_eq!(ms[0].verdict, Verdict::Inconclusive);
        assert!(
            ms[0].reason.contains("no request carried flag checkout on")
                && ms[0].reason.contains("Ferry-Flags: checkout=on")
                && ms[0].reason.contains("--judge environment"),
            "{}",
            ms[0].reason
        );
        assert_eq!(ms[1].verdict, Verdict::Pass);
        // Whole environment, when asked for: said in the verdict.
        s.judge = Judge::Environment;
        let mut ms = round(0);
        attribute(&mut ms, &s, "checkout");
        assert_eq!(ms[0].verdict, Verdict::Pass);
        assert!(
            ms[0].reason.ends_with("[whole environment]"),
            "{}",
            ms[0].reason
        );
    }

    #[test]
    fn a_guard_stored_before_attribution_reads_as_judged_on_the_flag() {
        let mut g = serde_json::to_value(start(spec(&[5]), 0)).unwrap();
        g["spec"].as_object_mut().unwrap().remove("judge");
        let back: Guard = serde_json::from_value(g).unwrap();
        assert_eq!(back.spec.judge, Judge::Flag);
    }
}
