//! Progressive delivery — canary and blue/green — as a pure state machine.
//!
//! A strategy compiles to a flat [`Plan`] of stages (scale the new version, set its traffic
//! weight, analyse, pause, retire the old version). [`advance`] takes the persisted
//! [`Progress`], what the controller observed (ready replicas, analysis measurements), an
//! optional human command and `now`, and returns the next `Progress` and an [`Outcome`].
//! Everything is data in, data out: the controller persists `Progress` before acting on it.

use serde::{Deserialize, Serialize};

use crate::analysis::{
    self, AnalysisRun, AnalysisSpec, InconclusivePolicy, Measurement, RunVerdict, Verdict,
};
use crate::manifest::{BlueGreen, Canary, Pause, weight_basis_points};

/// One stage of a rollout plan.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// Run this many replicas of the new version; done when they are all ready.
    Scale { replicas: u32 },
    /// Send this share (basis points) of requests to the new version.
    Weight { basis_points: u32 },
    /// Run this analysis until it passes.
    Analysis { label: String, spec: AnalysisSpec },
    /// Wait this long, or (None) until promoted by hand.
    Pause { label: String, ms: Option<i64> },
    /// Stop the old version; done when none of it runs.
    RetireStable,
}

/// A compiled strategy: stages, where the final promotion starts (what `promote --full`
/// jumps to), and the analysis that runs in the background once traffic has moved.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub stages: Vec<Stage>,
    pub finale: usize,
    pub background: Option<AnalysisSpec>,
    /// The rollout may enter the finale without a conclusive background verdict.
    pub allow_unjudged: bool,
}

/// Compiles a canary: each step becomes scale → weight → analysis → pause, then the
/// finale scales the new version to `replicas`, sends it everything and retires the old.
pub fn canary_plan(canary: &Canary, replicas: u32) -> Plan {
    let mut stages = Vec::new();
    for (i, step) in canary.steps.iter().enumerate() {
        let n = i + 1;
        if let Some(bp) = step.weight.and_then(weight_basis_points) {
            let wanted = step.replicas.unwrap_or_else(|| proportional(replicas, bp));
            if bp > 0 || step.replicas.is_some() {
                stages.push(Stage::Scale { replicas: wanted });
            }
            stages.push(Stage::Weight { basis_points: bp });
        } else if let Some(r) = step.replicas {
            stages.push(Stage::Scale { replicas: r });
        }
        if let Some(spec) = &step.analysis {
            stages.push(Stage::Analysis {
                label: format!("step {n} analysis"),
                spec: spec.clone(),
            });
        }
        match &step.pause {
            Some(Pause::For(d)) => stages.push(Stage::Pause {
                label: format!("step {n} pause"),
                ms: Some(millis(d.get())),
            }),
            Some(Pause::UntilPromoted) => stages.push(Stage::Pause {
                label: format!("step {n} pause"),
                ms: None,
            }),
            None => {}
        }
    }
    let finale = stages.len();
    stages.push(Stage::Scale { replicas });
    stages.push(Stage::Weight {
        basis_points: 10_000,
    });
    stages.push(Stage::RetireStable);
    Plan {
        stages,
        finale,
        background: canary.analysis.clone(),
        allow_unjudged: canary.allow_unjudged,
    }
}

/// Compiles blue/green: green at full size, pre-promotion analysis, the wait for a promote
/// (unless auto), the switch, post-promotion analysis and the scale-down delay (blue stays
/// warm), then blue is retired.
pub fn blue_green_plan(blue_green: &BlueGreen, replicas: u32) -> Plan {
    let mut stages = vec![Stage::Scale { replicas }];
    if let Some(spec) = &blue_green.pre_promotion_analysis {
        stages.push(Stage::Analysis {
            label: "pre-promotion analysis".into(),
            spec: spec.clone(),
        });
    }
    if !blue_green.auto_promote {
        stages.push(Stage::Pause {
            label: "awaiting promotion".into(),
            ms: blue_green.auto_promote_after.map(|d| millis(d.get())),
        });
    }
    let finale = stages.len();
    stages.push(Stage::Weight {
        basis_points: 10_000,
    });
    if let Some(spec) = &blue_green.post_promotion_analysis {
        stages.push(Stage::Analysis {
            label: "post-promotion analysis".into(),
            spec: spec.clone(),
        });
    }
    stages.push(Stage::Pause {
        label: "scale-down delay".into(),
        ms: Some(millis(blue_green.scale_down_delay.get())),
    });
    stages.push(Stage::RetireStable);
    Plan {
        stages,
        finale,
        background: None,
        allow_unjudged: false,
    }
}

/// Canary replicas for a weight: the environment's count scaled, rounded up, at least 1.
pub fn proportional(replicas: u32, basis_points: u32) -> u32 {
    let scaled = (u64::from(replicas) * u64::from(basis_points)).div_ceil(10_000);
    u32::try_from(scaled)
        .unwrap_or(replicas)
        .clamp(1, replicas.max(1))
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Where a progressive rollout is; persisted as JSON on the deployment.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Progress {
    pub stage: usize,
    pub stage_started_ms: i64,
    /// Share of requests (basis points) the new version gets now.
    pub weight_bp: u32,
    /// Replicas of the new version wanted now.
    pub canary_replicas: u32,
    /// Whether the old version is being retired.
    pub retiring_stable: bool,
    /// Paused by `ferry pause`.
    pub manually_paused: bool,
    /// What the rollout waits for, if it holds: a pause step, an analysis without a verdict
    /// yet (Inconclusive, or not enough passes), a person after `inconclusive_limit`.
    pub waiting_for: Option<String>,
    pub stage_run: Option<AnalysisRun>,
    pub background_run: Option<AnalysisRun>,
    /// The final promotion may start: the background analysis passed, or the rollout was
    /// allowed (`allow_unjudged`) or promoted by hand without its verdict.
    #[serde(default)]
    pub finale_cleared: bool,
    /// Set when the rollout went on without a conclusive background verdict: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unjudged: Option<String>,
}

impl Progress {
    /// Held until a person acts and `ferry resume` continues it: paused by hand, or an
    /// analysis that stayed Inconclusive beyond `inconclusive_limit` (`on_inconclusive:
    /// pause`).
    pub fn paused(&self) -> bool {
        self.manually_paused || self.paused_by_analysis()
    }

    fn paused_by_analysis(&self) -> bool {
        [&self.stage_run, &self.background_run]
            .into_iter()
            .flatten()
            .any(|run| matches!(run.verdict, RunVerdict::NeedsHuman { .. }))
    }
}

/// What the controller saw this pass.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observation {
    pub canary_ready: u32,
    /// Replicas of the old version still running (ready or not).
    pub stable_running: u32,
    /// The new version's replicas are failing (health, crash loop), with the reason.
    pub canary_failure: Option<String>,
    /// Measurements for the stage analysis, when [`wants`] asked for them.
    pub stage_measurements: Option<Vec<Measurement>>,
    pub background_measurements: Option<Vec<Measurement>>,
}

/// What a person asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Finish the current stage now (skip a pause or a stuck analysis).
    Promote,
    /// Skip to the final promotion.
    PromoteFull,
    Pause,
    Resume,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Keep going (the timeline lines say what changed).
    Continue(Vec<String>),
    /// Every stage is done: the new version has all traffic and the old one is gone.
    Completed,
    /// Roll back, for this reason. `notes`: the timeline lines of this pass (the
    /// measurements that failed it, with their values, thresholds and sample sizes).
    Failed { reason: String, notes: Vec<String> },
}

/// Which analyses are due now (the controller measures only those).
pub fn wants<'a>(
    plan: &'a Plan,
    progress: &Progress,
    now_ms: i64,
) -> (Option<&'a AnalysisSpec>, Option<&'a AnalysisSpec>) {
    let stage = match (plan.stages.get(progress.stage), &progress.stage_run) {
        (Some(Stage::Analysis { spec, .. }), Some(run)) if analysis::due(run, spec, now_ms) => {
            Some(spec)
        }
        _ => None,
    };
    let background = match (&plan.background, &progress.background_run) {
        (Some(spec), Some(run)) if analysis::due(run, spec, now_ms) => Some(spec),
        _ => None,
    };
    (stage, background)
}

/// Starts a rollout: the first stage begins now.
pub fn start(now_ms: i64) -> Progress {
    Progress {
        stage_started_ms: now_ms,
        ..Progress::default()
    }
}

/// One step of the machine. Never moves backwards; `Failed` is the only way out early.
pub fn advance(
    plan: &Plan,
    progress: &Progress,
    observed: &Observation,
    command: Option<Command>,
    now_ms: i64,
) -> (Progress, Outcome) {
    let mut next = progress.clone();
    let mut notes = Vec::new();

    if let Some(reason) = &observed.canary_failure {
        return (
            next,
            Outcome::Failed {
                reason: reason.clone(),
                notes,
            },
        );
    }
    if let (Some(spec), Some(run), Some(measurements)) = (
        &plan.background,
        &progress.background_run,
        &observed.background_measurements,
    ) {
        let (run, verdict) = analysis::record(run, spec, measurements, now_ms);
        next.background_run = Some(run);
        notes.extend(
            measurements
                .iter()
                .map(|m| format!("background analysis: {}", describe(m))),
        );
        if let RunVerdict::Failed { reason, .. } = verdict {
            return (
                next,
                Outcome::Failed {
                    reason: format!("background analysis failed: {reason}"),
                    notes,
                },
            );
        }
    }

    match command {
        Some(Command::Pause) if !next.manually_paused => {
            next.manually_paused = true;
            notes.push("paused by hand; background analysis keeps watching".into());
        }
        Some(Command::Resume) if next.paused() => {
            next.manually_paused = false;
            if let Some(run) = &next.stage_run {
                next.stage_run = Some(run.resume(now_ms));
            }
            resume_background(&mut next, now_ms);
            next.waiting_for = None;
            notes.push("resumed".into());
        }
        Some(Command::PromoteFull | Command::Promote) if holds_for_evidence(plan, &next) => {
            // Held before the final promotion for the background verdict: a person takes
            // the decision without it.
            resume_background(&mut next, now_ms);
            let why = format!(
                "promoted by hand without a conclusive verdict from the background analysis \
                 ({})",
                background_undecided(plan, &next)
            );
            notes.push(format!("{why}: on to the final promotion"));
            next.unjudged = Some(why);
            next.finale_cleared = true;
            next.waiting_for = None;
        }
        Some(Command::PromoteFull) if next.stage < plan.finale => {
            notes.push("promoted to full by hand: skipping to the final promotion".into());
            resume_background(&mut next, now_ms);
            enter(&mut next, plan, plan.finale, now_ms);
            // A person asked for 100% now: they take the decision without the background
            // verdict, if there is none yet, and the record says so.
            let judged = next
                .background_run
                .as_ref()
                .is_some_and(|run| run.verdict == RunVerdict::Passed);
            if plan.background.is_some() && !judged {
                next.unjudged = Some(format!(
                    "promoted to full by hand without a conclusive verdict from the background \
                     analysis ({})",
                    background_undecided(plan, &next)
                ));
            }
            next.finale_cleared = true;
        }
        Some(Command::Promote) => {
            if let Some(stage) = plan.stages.get(next.stage) {
                notes.push(format!("promoted by hand past {}", stage_name(stage)));
                next.manually_paused = false;
                resume_background(&mut next, now_ms);
                let following = next.stage + 1;
                enter(&mut next, plan, following, now_ms);
            }
        }
        _ => {}
    }
    if next.manually_paused {
        return (next, Outcome::Continue(notes));
    }
    // Background analysis that cannot judge (too little traffic for too long) holds the
    // rollout for a person, like a stage analysis does.
    if let Some(RunVerdict::NeedsHuman { reason }) =
        next.background_run.as_ref().map(|r| &r.verdict)
    {
        let waiting = format!(
            "background analysis at {}: {reason}",
            percent(next.weight_bp)
        );
        if next.waiting_for.as_ref() != Some(&waiting) {
            notes.push(format!("waiting for a person: {waiting}"));
        }
        next.waiting_for = Some(waiting);
        return (next, Outcome::Continue(notes));
    }

    // Run through every stage that can finish in this pass.
    for _ in 0..plan.stages.len() + 1 {
        if next.stage == plan.finale
            && !next.finale_cleared
            && !clear_finale(plan, &mut next, &mut notes, now_ms)
        {
            return (next, Outcome::Continue(notes));
        }
        let Some(stage) = plan.stages.get(next.stage) else {
            return (next, Outcome::Completed);
        };
        let done = match stage {
            Stage::Scale { replicas } => {
                next.canary_replicas = *replicas;
                observed.canary_ready >= *replicas
            }
            Stage::Weight { basis_points } => {
                if observed.canary_ready == 0 && *basis_points > 0 {
                    false
                } else {
                    if next.weight_bp != *basis_points {
                        notes.push(format!(
                            "weight {} → {}",
                            percent(next.weight_bp),
                            percent(*basis_points)
                        ));
                    }
                    next.weight_bp = *basis_points;
                    if next.weight_bp > 0
                        && next.background_run.is_none()
                        && plan.background.is_some()
                    {
                        next.background_run = Some(AnalysisRun::new(now_ms));
                    }
                    true
                }
            }
            Stage::Analysis { label, spec } => {
                let run = next
                    .stage_run
                    .get_or_insert_with(|| AnalysisRun::new(now_ms))
                    .clone();
                match &observed.stage_measurements {
                    Some(measurements) if progress.stage == next.stage => {
                        let (run, verdict) = analysis::record(&run, spec, measurements, now_ms);
                        next.stage_run = Some(run);
                        notes.extend(
                            measurements
                                .iter()
                                .map(|m| format!("{label}: {}", describe(m))),
                        );
                        match verdict {
                            RunVerdict::Passed => true,
                            RunVerdict::Failed { reason, .. } => {
                                return (
                                    next,
                                    Outcome::Failed {
                                        reason: format!("{label} failed: {reason}"),
                                        notes,
                                    },
                                );
                            }
                            RunVerdict::NeedsHuman { reason } => {
                                let waiting =
                                    format!("{label} at {}: {reason}", percent(next.weight_bp));
                                if next.waiting_for.as_ref() != Some(&waiting) {
                                    notes.push(format!("waiting for a person: {waiting}"));
                                }
                                next.waiting_for = Some(waiting);
                                false
                            }
                            RunVerdict::Running => {
                                // Holding on an undecided metric: say which and why.
                                next.waiting_for = Some(format!(
                                    "{label} at {}: no verdict yet — {}",
                                    percent(next.weight_bp),
                                    undecided(next.stage_run.as_ref(), spec)
                                ));
                                false
                            }
                        }
                    }
                    _ => false,
                }
            }
            Stage::Pause {
                label,
                ms: Some(ms),
            } => {
                now_ms - next.stage_started_ms >= *ms && {
                    notes.push(format!("{label} of {}s over", ms / 1000));
                    true
                }
            }
            Stage::Pause { label, ms: None } => {
                let waiting = format!("{label}: waiting for `ferry promote`");
                if next.waiting_for.as_ref() != Some(&waiting) {
                    notes.push(waiting.clone());
                    next.waiting_for = Some(waiting);
                }
                false
            }
            Stage::RetireStable => {
                next.retiring_stable = true;
                observed.stable_running == 0
            }
        };
        if !done {
            return (next, Outcome::Continue(notes));
        }
        let following = next.stage + 1;
        enter(&mut next, plan, following, now_ms);
    }
    (next, Outcome::Continue(notes))
}

/// Whether the rollout stands before the final promotion, held for the background
/// analysis's verdict.
fn holds_for_evidence(plan: &Plan, progress: &Progress) -> bool {
    progress.stage == plan.finale && !progress.finale_cleared && plan.background.is_some()
}

/// The gate before the final promotion: the background analysis must have passed (or the
/// plan allows finishing unjudged). `false` holds the rollout, with `waiting_for` saying why.
fn clear_finale(plan: &Plan, next: &mut Progress, notes: &mut Vec<String>, now_ms: i64) -> bool {
    let Some(spec) = &plan.background else {
        next.finale_cleared = true;
        return true;
    };
    let run = next
        .background_run
        .get_or_insert_with(|| AnalysisRun::new(now_ms));
    if run.verdict == RunVerdict::Passed {
        next.finale_cleared = true;
        notes.push("background analysis passed: on to the final promotion".into());
        return true;
    }
    let undecided = undecided(Some(run), spec);
    if plan.allow_unjudged {
        let why = format!(
            "finished without a conclusive verdict from the background analysis \
             (allow_unjudged: {undecided})"
        );
        notes.push(format!("{why}: on to the final promotion"));
        next.unjudged = Some(why);
        next.finale_cleared = true;
        return true;
    }
    let waiting = format!(
        "background analysis at {}: no conclusive verdict yet, holding before the final \
         promotion — {undecided}",
        percent(next.weight_bp)
    );
    if next.waiting_for.is_none() {
        notes.push(format!(
            "holding before the final promotion until the background analysis passes — \
             {undecided}"
        ));
    }
    next.waiting_for = Some(waiting);
    false
}

fn background_undecided(plan: &Plan, progress: &Progress) -> String {
    plan.background
        .as_ref()
        .map(|spec| undecided(progress.background_run.as_ref(), spec))
        .unwrap_or_default()
}

/// Why an analysis has no verdict yet: each enforced metric that has not passed enough.
fn undecided(run: Option<&AnalysisRun>, spec: &AnalysisSpec) -> String {
    let parts: Vec<String> = spec
        .metrics
        .iter()
        .filter(|m| !m.dry_run)
        .filter_map(|m| {
            let Some(r) = run.and_then(|run| run.metric(&m.name)) else {
                return Some(format!("{}: not measured yet", m.name));
            };
            if r.consecutive_successes >= spec.consecutive_successes {
                return None;
            }
            Some(match &r.last {
                Some(last)
                    if last.verdict == Verdict::Inconclusive && r.consecutive_inconclusive == 0 =>
                {
                    format!("{}: measuring again since resumed", m.name)
                }
                Some(last) if last.verdict == Verdict::Inconclusive => format!(
                    "{}: inconclusive {} of {} times in a row allowed ({}): {}",
                    m.name,
                    r.consecutive_inconclusive,
                    spec.inconclusive_limit,
                    match spec.on_inconclusive {
                        InconclusivePolicy::Pause => "then it pauses",
                        InconclusivePolicy::Fail => "then it fails",
                    },
                    last.reason
                ),
                _ => format!(
                    "{}: {} of {} passing measurements in a row",
                    m.name, r.consecutive_successes, spec.consecutive_successes
                ),
            })
        })
        .collect();
    if parts.is_empty() {
        "every metric has passed".to_string()
    } else {
        parts.join("; ")
    }
}

/// A person took responsibility: background analysis that was waiting measures again.
fn resume_background(progress: &mut Progress, now_ms: i64) {
    if let Some(run) = &progress.background_run {
        progress.background_run = Some(run.resume(now_ms));
    }
}

fn enter(progress: &mut Progress, plan: &Plan, stage: usize, now_ms: i64) {
    progress.stage = stage.min(plan.stages.len());
    progress.stage_started_ms = now_ms;
    progress.stage_run = None;
    progress.waiting_for = None;
}

/// Human name of a stage (`weight 5%`, `step 2 pause`).
pub fn stage_name(stage: &Stage) -> String {
    match stage {
        Stage::Scale { replicas: 1 } => "scaling to 1 replica".to_string(),
        Stage::Scale { replicas } => format!("scaling to {replicas} replicas"),
        Stage::Weight { basis_points } => format!("weight {}", percent(*basis_points)),
        Stage::Analysis { label, .. } | Stage::Pause { label, .. } => label.clone(),
        Stage::RetireStable => "retiring the old version".into(),
    }
}

/// `12.5%` from basis points.
pub fn percent(basis_points: u32) -> String {
    if basis_points.is_multiple_of(100) {
        format!("{}%", basis_points / 100)
    } else {
        format!("{}%", f64::from(basis_points) / 100.0)
    }
}

/// The analysis metrics of a rollout (its current step's, then its background analysis's),
/// for the API and the console.
pub fn analysis_metrics(progress: &Progress) -> Vec<crate::api::AnalysisMetric> {
    use crate::api::{AnalysisKind, AnalysisMetric};
    [
        (AnalysisKind::Step, &progress.stage_run),
        (AnalysisKind::Background, &progress.background_run),
    ]
    .into_iter()
    .flat_map(|(kind, run)| {
        run.iter()
            .flat_map(move |run| run.metrics.iter().map(move |m| (kind, m)))
    })
    .map(|(analysis, m)| AnalysisMetric {
        analysis,
        metric: m.name.clone(),
        passes: m.passes,
        failures: m.failures,
        inconclusives: m.inconclusives,
        last: m.last.clone(),
    })
    .collect()
}

/// One line for the timeline: metric, value, sample, threshold, verdict, why.
pub fn describe(m: &Measurement) -> String {
    let dry = if m.dry_run { " (dry run)" } else { "" };
    format!("{} {:?}{dry}: {}", m.metric, m.verdict, m.reason)
}

/// The human summary of where a rollout stands, for `ferry status`.
pub fn summary(plan: &Plan, progress: &Progress) -> String {
    let stage = plan
        .stages
        .get(progress.stage)
        .map(stage_name)
        .unwrap_or_else(|| "done".into());
    let mut text = format!(
        "stage {}/{} ({stage}), new version at {}",
        (progress.stage + 1).min(plan.stages.len()),
        plan.stages.len(),
        percent(progress.weight_bp)
    );
    if progress.manually_paused {
        text.push_str(", paused by hand");
    }
    if let Some(waiting) = &progress.waiting_for {
        text.push_str(&format!(", waiting: {waiting}"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::{MetricSpec, Unit, Verdict};
    use crate::manifest::CanaryStep;

    fn canary(steps: Vec<CanaryStep>) -> Canary {
        Canary {
            steps,
            analysis: None,
            allow_unjudged: false,
            stickiness: None,
            preview_header: "X-Ferry-Preview".into(),
            preview_secret: None,
        }
    }

    fn weight(w: f64) -> CanaryStep {
        CanaryStep {
            weight: Some(w),
            ..CanaryStep::default()
        }
    }

    fn pause(p: Pause) -> CanaryStep {
        CanaryStep {
            pause: Some(p),
            ..CanaryStep::default()
        }
    }

    fn ready(n: u32) -> Observation {
        Observation {
            canary_ready: n,
            stable_running: 3,
            ..Observation::default()
        }
    }

    fn measurement(verdict: Verdict) -> Measurement {
        Measurement {
            metric: "errors".into(),
            value: Some(0.5),
            unit: Unit::Ratio,
            sample_size: 100,
            threshold: "≤ 0.01".into(),
            verdict,
            reason: "error rate 0.5 (50/100) > max 0.01".into(),
            dry_run: false,
            details: Vec::new(),
            service: None,
        }
    }

    fn errors_analysis() -> AnalysisSpec {
        let mut metric = MetricSpec::named("errors");
        metric.builtin = Some(crate::analysis::Builtin::ErrorRate);
        metric.max = Some(crate::analysis::Threshold::Number(0.01));
        AnalysisSpec {
            metrics: vec![metric],
            ..AnalysisSpec::default()
        }
    }

    #[test]
    fn canary_plan_scales_before_weighting_and_ends_with_the_finale() {
        let plan = canary_plan(
            &canary(vec![weight(5.0), pause(Pause::UntilPromoted), weight(50.0)]),
            4,
        );
        assert_eq!(
            plan.stages,
            vec![
                Stage::Scale { replicas: 1 },
                Stage::Weight { basis_points: 500 },
                Stage::Pause {
                    label: "step 2 pause".into(),
                    ms: None
                },
                Stage::Scale { replicas: 2 },
                Stage::Weight { basis_points: 5000 },
                Stage::Scale { replicas: 4 },
                Stage::Weight {
                    basis_points: 10_000
                },
                Stage::RetireStable,
            ]
        );
        assert_eq!(plan.finale, 5);
    }

    #[test]
    fn weight_waits_for_ready_replicas_then_moves() {
        let plan = canary_plan(&canary(vec![weight(5.0), pause(Pause::UntilPromoted)]), 3);
        let (p, out) = advance(&plan, &start(0), &ready(0), None, 0);
        assert_eq!((p.stage, p.weight_bp, p.canary_replicas), (0, 0, 1));
        assert_eq!(out, Outcome::Continue(vec![]));
        let (p, out) = advance(&plan, &p, &ready(1), None, 10);
        assert_eq!((p.stage, p.weight_bp), (2, 500));
        let Outcome::Continue(notes) = out else {
            panic!()
        };
        assert!(notes.iter().any(|n| n == "weight 0% → 5%"), "{notes:?}");
        assert!(
            p.waiting_for
                .as_deref()
                .is_some_and(|w| w.contains("ferry promote"))
        );
        // Nothing moves while it waits; promote releases it into the finale.
        let (same, _) = advance(&plan, &p, &ready(1), None, 1_000_000);
        assert_eq!(same.stage, 2);
        let (p, _) = advance(&plan, &same, &ready(1), Some(Command::Promote), 20);
        assert_eq!((p.stage, p.canary_replicas, p.weight_bp), (3, 3, 500));
        let (p, _) = advance(&plan, &p, &ready(3), None, 30);
        assert_eq!((p.weight_bp, p.retiring_stable), (10_000, true));
        let (_, out) = advance(
            &plan,
            &p,
            &Observation {
                canary_ready: 3,
                stable_running: 0,
                ..Default::default()
            },
            None,
            40,
        );
        assert_eq!(out, Outcome::Completed);
    }

    #[test]
    fn timed_pause_counts_from_the_persisted_stage_start() {
        let plan = canary_plan(
            &canary(vec![
                weight(10.0),
                pause(Pause::For("60s".parse().unwrap())),
            ]),
            2,
        );
        let (p, _) = advance(&plan, &start(0), &ready(1), None, 1_000);
        assert_eq!(p.stage, 2);
        assert_eq!(p.stage_started_ms, 1_000);
        let (p, _) = advance(&plan, &p, &ready(1), None, 60_999);
        assert_eq!(p.stage, 2, "not yet");
        let (p, _) = advance(&plan, &p, &ready(1), None, 61_000);
        assert_eq!(p.stage, 3);
    }

    #[test]
    fn analysis_failure_fails_and_pass_moves_on() {
        let mut step = weight(5.0);
        step.analysis = Some(errors_analysis());
        let plan = canary_plan(&canary(vec![step]), 2);
        let (p, _) = advance(&plan, &start(0), &ready(1), None, 0);
        assert_eq!(p.stage, 2);
        assert!(p.stage_run.is_some());
        assert_eq!(wants(&plan, &p, 1).0, None, "not due before one interval");
        assert!(wants(&plan, &p, 5_000).0.is_some());
        let bad = Observation {
            stage_measurements: Some(vec![measurement(Verdict::Fail)]),
            ..ready(1)
        };
        let (_, out) = advance(&plan, &p, &bad, None, 5_000);
        let Outcome::Failed { reason, notes } = out else {
            panic!("{out:?}")
        };
        assert!(
            reason.contains("step 1 analysis failed") && reason.contains("0.5"),
            "{reason}"
        );
        assert_eq!(
            notes,
            [format!(
                "step 1 analysis: {}",
                describe(&measurement(Verdict::Fail))
            )]
        );
        let good = Observation {
            stage_measurements: Some(vec![measurement(Verdict::Pass)]),
            ..ready(1)
        };
        let (p, _) = advance(&plan, &p, &good, None, 5_000);
        assert_eq!(p.stage, 3, "passed: on to the finale");
    }

    #[test]
    fn inconclusive_analysis_waits_for_a_person_and_says_why() {
        let mut step = weight(5.0);
        let mut spec = errors_analysis();
        spec.inconclusive_limit = 0;
        step.analysis = Some(spec);
        let plan = canary_plan(&canary(vec![step]), 2);
        let (p, _) = advance(&plan, &start(0), &ready(1), None, 0);
        let mut thin = measurement(Verdict::Inconclusive);
        thin.reason = "only 3 requests, need 20 before judging".into();
        let obs = Observation {
            stage_measurements: Some(vec![thin]),
            ..ready(1)
        };
        let (p, out) = advance(&plan, &p, &obs, None, 5_000);
        assert!(matches!(out, Outcome::Continue(_)));
        let waiting = p.waiting_for.clone().expect("waiting");
        assert!(
            waiting.contains("at 5%") && waiting.contains("only 3 requests"),
            "{waiting}"
        );
        let (p, _) = advance(&plan, &p, &ready(1), Some(Command::Promote), 6_000);
        assert_eq!(p.stage, 3);
        assert_eq!(p.waiting_for, None);
    }

    #[test]
    fn canary_failure_wins_over_everything() {
        let plan = canary_plan(&canary(vec![weight(5.0)]), 2);
        let obs = Observation {
            canary_failure: Some("web 2.0: replica #1 unhealthy".into()),
            ..ready(1)
        };
        let (_, out) = advance(&plan, &start(0), &obs, Some(Command::PromoteFull), 0);
        assert_eq!(
            out,
            Outcome::Failed {
                reason: "web 2.0: replica #1 unhealthy".into(),
                notes: Vec::new()
            }
        );
    }

    #[test]
    fn manual_pause_holds_but_background_analysis_still_fails() {
        let mut c = canary(vec![weight(5.0), weight(50.0)]);
        c.analysis = Some(errors_analysis());
        let plan = canary_plan(&c, 2);
        let (p, _) = advance(&plan, &start(0), &ready(1), Some(Command::Pause), 0);
        assert!(p.manually_paused);
        assert_eq!(p.stage, 0, "paused before the first stage finished");
        let (p, _) = advance(&plan, &p, &ready(1), Some(Command::Resume), 1);
        assert!(
            p.background_run.is_some(),
            "weight > 0 starts background analysis"
        );
        let (p, _) = advance(&plan, &p, &ready(1), Some(Command::Pause), 2);
        let bad = Observation {
            background_measurements: Some(vec![measurement(Verdict::Fail)]),
            ..ready(1)
        };
        let (_, out) = advance(&plan, &p, &bad, None, 10_000);
        let Outcome::Failed { reason, notes } = out else {
            panic!("{out:?}")
        };
        assert!(reason.contains("background analysis failed"), "{reason}");
        // the measurement that failed it is on the timeline, like a step analysis's
        assert_eq!(
            notes,
            [format!(
                "background analysis: {}",
                describe(&measurement(Verdict::Fail))
            )]
        );
    }

    #[test]
    fn inconclusive_background_analysis_holds_for_a_person_and_resume_measures_again() {
        let mut c = canary(vec![weight(5.0), weight(50.0)]);
        let mut spec = errors_analysis();
        spec.inconclusive_limit = 0;
        c.analysis = Some(spec);
        let plan = canary_plan(&c, 2);
        let (p, _) = advance(&plan, &start(0), &ready(1), None, 0);
        assert!(p.background_run.is_some());
        let thin = Observation {
            background_measurements: Some(vec![measurement(Verdict::Inconclusive)]),
            ..ready(1)
        };
        let (p, out) = advance(&plan, &p, &thin, None, 5_000);
        assert!(matches!(out, Outcome::Continue(_)));
        let stage = p.stage;
        assert!(
            p.waiting_for
                .as_deref()
                .is_some_and(|w| w.starts_with("background analysis at")),
            "{:?}",
            p.waiting_for
        );
        let (held, _) = advance(&plan, &p, &ready(2), None, 60_000);
        assert_eq!(held.stage, stage, "held while waiting");
        assert!(held.paused(), "held for a person: paused");
        let (p, _) = advance(&plan, &held, &ready(1), Some(Command::Resume), 61_000);
        assert!(!p.paused());
        // Resumed, it measures again; without a verdict it still holds before the finale.
        let waiting = p.waiting_for.clone().unwrap_or_default();
        assert!(
            waiting.starts_with("background analysis at 50%: no conclusive verdict yet")
                && waiting.contains("errors: measuring again since resumed"),
            "{waiting}"
        );
        assert!(
            wants(&plan, &p, 66_000).1.is_some(),
            "background analysis is due again"
        );
    }

    /// The README's canary shape with a background analysis: timed steps only.
    fn timed_canary_with_background(spec: AnalysisSpec, allow_unjudged: bool) -> Plan {
        let mut c = canary(vec![
            weight(10.0),
            pause(Pause::For("10s".parse().unwrap())),
            weight(50.0),
            pause(Pause::For("10s".parse().unwrap())),
        ]);
        c.analysis = Some(spec);
        c.allow_unjudged = allow_unjudged;
        canary_plan(&c, 2)
    }

    /// Drives a plan for `seconds` with one background round per 5s, every round's verdict
    /// from `verdict_at(t)`; returns the progress and the outcome where it stopped.
    fn drive(
        plan: &Plan,
        seconds: i64,
        verdict_at: impl Fn(i64) -> Verdict,
    ) -> (Progress, Outcome) {
        let mut p = start(0);
        let mut stable = 2;
        for t in 0..=seconds {
            let now = t * 1_000;
            let measurements = wants(plan, &p, now)
                .1
                .map(|_| vec![measurement(verdict_at(t))]);
            let obs = Observation {
                canary_ready: p.canary_replicas,
                stable_running: stable,
                background_measurements: measurements,
                ..Observation::default()
            };
            let (next, out) = advance(plan, &p, &obs, None, now);
            if next.retiring_stable {
                stable = 0;
            }
            p = next;
            if out != Outcome::Continue(Vec::new()) && !matches!(out, Outcome::Continue(_)) {
                return (p, out);
            }
        }
        (p, Outcome::Continue(Vec::new()))
    }

    #[test]
    fn a_canary_never_judged_by_its_background_analysis_does_not_reach_100_percent() {
        // Little traffic: every background round is Inconclusive. The pauses end, but the
        // rollout holds at 50% before the final promotion and says why.
        let mut spec = errors_analysis();
        spec.inconclusive_limit = 100;
        let plan = timed_canary_with_background(spec.clone(), false);
        let (p, out) = drive(&plan, 120, |_| Verdict::Inconclusive);
        assert!(matches!(out, Outcome::Continue(_)), "{out:?}");
        assert_eq!((p.stage, p.weight_bp), (plan.finale, 5_000));
        assert!(!p.retiring_stable && !p.finale_cleared);
        let waiting = p.waiting_for.clone().unwrap_or_default();
        assert!(
            waiting.starts_with(
                "background analysis at 50%: no conclusive verdict yet, holding before the \
                 final promotion — errors: inconclusive"
            ) && waiting.contains("then it pauses"),
            "{waiting}"
        );
        assert!(
            !p.paused(),
            "holding for evidence is not a pause: resume has nothing to do"
        );

        // Beyond inconclusive_limit: `on_inconclusive: pause` waits for a person…
        spec.inconclusive_limit = 3;
        let plan = timed_canary_with_background(spec.clone(), false);
        let (p, _) = drive(&plan, 120, |_| Verdict::Inconclusive);
        assert!(p.paused(), "{:?}", p.waiting_for);
        assert!(p.weight_bp < 10_000);
        // …and `fail` rolls back.
        spec.on_inconclusive = InconclusivePolicy::Fail;
        let plan = timed_canary_with_background(spec.clone(), false);
        let (_, out) = drive(&plan, 120, |_| Verdict::Inconclusive);
        assert!(
            matches!(&out, Outcome::Failed { reason, .. } if reason.contains("background analysis failed")),
            "{out:?}"
        );

        // Conclusive evidence arriving late releases it.
        let plan = timed_canary_with_background(errors_analysis(), false);
        let (p, out) = drive(&plan, 120, |t| {
            if t < 60 {
                Verdict::Inconclusive
            } else {
                Verdict::Pass
            }
        });
        assert_eq!(out, Outcome::Completed, "{p:?}");
        assert_eq!(p.unjudged, None);
    }

    #[test]
    fn allow_unjudged_finishes_and_says_so() {
        let mut spec = errors_analysis();
        spec.inconclusive_limit = 100;
        let plan = timed_canary_with_background(spec, true);
        let (p, out) = drive(&plan, 120, |_| Verdict::Inconclusive);
        assert_eq!(out, Outcome::Completed);
        let why = p.unjudged.unwrap_or_default();
        assert!(
            why.starts_with(
                "finished without a conclusive verdict from the background analysis \
                 (allow_unjudged: errors: inconclusive"
            ),
            "{why}"
        );
    }

    #[test]
    fn a_person_can_promote_past_the_missing_verdict_and_it_is_recorded() {
        let mut spec = errors_analysis();
        spec.inconclusive_limit = 100;
        let plan = timed_canary_with_background(spec, false);
        let (held, _) = drive(&plan, 60, |_| Verdict::Inconclusive);
        assert_eq!(held.stage, plan.finale);
        let obs = Observation {
            canary_ready: held.canary_replicas,
            stable_running: 2,
            ..Observation::default()
        };
        let (p, out) = advance(&plan, &held, &obs, Some(Command::Promote), 61_000);
        let Outcome::Continue(notes) = out else {
            panic!("{out:?}")
        };
        assert_eq!(
            p.stage, plan.finale,
            "the finale's scale stage is not skipped"
        );
        assert!(p.finale_cleared && p.waiting_for.is_none(), "{p:?}");
        assert!(
            notes.iter().any(|n| n.starts_with(
                "promoted by hand without a conclusive verdict from the background analysis"
            )),
            "{notes:?}"
        );
        assert!(p.unjudged.is_some());
    }

    #[test]
    fn promote_full_goes_to_100_percent_and_records_the_missing_verdict() {
        let mut spec = errors_analysis();
        spec.inconclusive_limit = 100;
        let plan = timed_canary_with_background(spec, false);
        let (p, _) = drive(&plan, 5, |_| Verdict::Inconclusive);
        assert!(p.stage < plan.finale);
        let mut p = advance(&plan, &p, &ready(1), Some(Command::PromoteFull), 6_000).0;
        assert!(p.finale_cleared);
        assert!(
            p.unjudged
                .as_deref()
                .is_some_and(|w| w.starts_with("promoted to full by hand without a conclusive")),
            "{:?}",
            p.unjudged
        );
        for t in 7..20 {
            let obs = Observation {
                canary_ready: p.canary_replicas,
                stable_running: if p.retiring_stable { 0 } else { 2 },
                ..Observation::default()
            };
            let (next, out) = advance(&plan, &p, &obs, None, t * 1_000);
            p = next;
            if out == Outcome::Completed {
                return;
            }
        }
        panic!("promote --full did not complete: {p:?}");
    }

    #[test]
    fn a_step_holding_on_inconclusive_says_what_it_waits_for() {
        let mut step = weight(5.0);
        step.analysis = Some(errors_analysis());
        let plan = canary_plan(&canary(vec![step]), 2);
        let (p, _) = advance(&plan, &start(0), &ready(1), None, 0);
        assert_eq!(p.waiting_for, None, "nothing measured yet");
        let mut thin = measurement(Verdict::Inconclusive);
        thin.reason = "error rate: only 3 requests in 5s, need 20 before judging".into();
        let obs = Observation {
            stage_measurements: Some(vec![thin]),
            ..ready(1)
        };
        let (p, _) = advance(&plan, &p, &obs, None, 5_000);
        assert_eq!(p.stage, 2, "holds");
        assert_eq!(
            p.waiting_for.as_deref(),
            Some(
                "step 1 analysis at 5%: no verdict yet — errors: inconclusive 1 of 12 times in \
                 a row allowed (then it pauses): error rate: only 3 requests in 5s, need 20 \
                 before judging"
            )
        );
        assert!(!p.paused());
    }

    #[test]
    fn promote_full_skips_to_the_finale() {
        let plan = canary_plan(
            &canary(vec![weight(5.0), pause(Pause::UntilPromoted), weight(50.0)]),
            3,
        );
        let (p, _) = advance(&plan, &start(0), &ready(1), None, 0);
        let (p, _) = advance(&plan, &p, &ready(1), Some(Command::PromoteFull), 1);
        assert_eq!((p.stage, p.canary_replicas), (plan.finale, 3));
    }

    #[test]
    fn blue_green_waits_for_promotion_then_switches_and_keeps_blue_for_the_delay() {
        let bg = BlueGreen {
            auto_promote: false,
            scale_down_delay: "30s".parse().unwrap(),
            ..BlueGreen::default()
        };
        let plan = blue_green_plan(&bg, 2);
        let (p, _) = advance(&plan, &start(0), &ready(2), None, 0);
        assert_eq!((p.weight_bp, p.stage), (0, 1));
        assert!(
            p.waiting_for
                .as_deref()
                .is_some_and(|w| w.contains("awaiting promotion"))
        );
        let (p, _) = advance(&plan, &p, &ready(2), Some(Command::Promote), 1_000);
        assert_eq!(p.weight_bp, 10_000, "atomic switch");
        assert!(!p.retiring_stable, "blue stays warm");
        let (p, _) = advance(&plan, &p, &ready(2), None, 30_999);
        assert!(!p.retiring_stable);
        let (p, _) = advance(&plan, &p, &ready(2), None, 31_000);
        assert!(p.retiring_stable);
    }

    #[test]
    fn blue_green_auto_promotes_after_the_delay() {
        let bg = BlueGreen {
            auto_promote: false,
            auto_promote_after: Some("10s".parse().unwrap()),
            ..BlueGreen::default()
        };
        let plan = blue_green_plan(&bg, 1);
        let (p, _) = advance(&plan, &start(0), &ready(1), None, 0);
        assert_eq!(p.weight_bp, 0);
        let (p, _) = advance(&plan, &p, &ready(1), None, 10_000);
        assert_eq!(p.weight_bp, 10_000);
    }

    #[test]
    fn every_plan_run_with_healthy_inputs_completes_and_weight_never_decreases() {
        for replicas in 1..=4 {
            for steps in [
                vec![weight(1.0)],
                vec![
                    weight(5.0),
                    pause(Pause::For("1s".parse().unwrap())),
                    weight(25.0),
                    weight(100.0),
                ],
                vec![weight(0.5), weight(10.0), pause(Pause::UntilPromoted)],
            ] {
                let plan = canary_plan(&canary(steps), replicas);
                let mut p = start(0);
                let mut last_weight = 0;
                let mut stable = 3;
                for t in 0..100 {
                    let obs = Observation {
                        canary_ready: p.canary_replicas,
                        stable_running: stable,
                        ..Default::default()
                    };
                    let command = p.waiting_for.is_some().then_some(Command::Promote);
                    let (next, out) = advance(&plan, &p, &obs, command, t * 1_000);
                    assert!(next.weight_bp >= last_weight, "weight went back");
                    assert!(next.weight_bp <= 10_000);
                    last_weight = next.weight_bp;
                    if next.retiring_stable {
                        stable = 0;
                    }
                    p = next;
                    if out == Outcome::Completed {
                        assert_eq!(p.weight_bp, 10_000);
                        break;
                    }
                }
                assert_eq!(p.stage, plan.stages.len(), "did not complete");
            }
        }
    }

    #[test]
    fn proportional_replicas_round_up_and_stay_in_range() {
        assert_eq!(proportional(4, 500), 1);
        assert_eq!(proportional(4, 2_600), 2);
        assert_eq!(proportional(4, 10_000), 4);
        assert_eq!(proportional(1, 1), 1);
        assert_eq!(percent(1250), "12.5%");
        assert_eq!(percent(500), "5%");
    }
}
