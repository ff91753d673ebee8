//! Decisions as pure steps: each concern looks at a snapshot of one environment (the facts
//! it needs, read by the shell before it is called) and `now`, and returns the effects to
//! apply, in order. No I/O here (no tokio, no store, no runtime, no proxy: the `tidy` test
//! below enforces it); [`super::executor`] applies the effects.
//!
//! `concern` picks which concern acts next in an environment's pass ([`next_concern`]);
//! the concerns: `maintain` (an idle environment at its version, replicas outside every
//! manifest), `gates` (may a deployment start), `rollout` (the entry and exit transitions
//! of a rolling/recreate deployment), `progressive` (a canary or blue/green pass, forward
//! and back), `bake`, `retry` (infrastructure failures), `hooks` (what the hooks' outcomes
//! make of a deployment), `promotion` (auto-promotion requests), `routes` (the route table).

use ferry_core::manifest::GateCheck;
use ferry_core::model::{DeploymentState, EventKind};
use ferry_core::rollout::Action;

pub(super) use concern::{Concern, next_concern};

pub(super) mod bake;
pub(super) mod concern;
pub(super) mod gates;
pub(super) mod hooks;
pub(super) mod maintain;
pub(super) mod progressive;
pub(super) mod promotion;
pub(super) mod retry;
pub(super) mod rollout;
pub(super) mod routes;

/// Whether a plan ends its deployment (a transition to a terminal state).
pub(super) fn ends(effects: &[Effect]) -> bool {
    effects
        .iter()
        .any(|e| matches!(e, Effect::Transition(t) if t.to.is_terminal()))
}

/// One thing the executor does, in the order a step returns them.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Effect {
    /// A compare-and-set state change of the deployment the plan is for. When another
    /// writer moved the deployment first, the executor drops the rest of the plan (the next
    /// pass decides again from what is stored).
    Transition(Transition),
    /// A line on the deployment's timeline.
    Event { kind: EventKind, message: String },
    /// Start and drain replicas (the core's rollout actions); a started replica's row is
    /// written before it runs, a drained one leaves the route table before it stops.
    Replicas(Vec<Action>),
    /// Run these gate checks in the background (their results are facts of a later pass).
    StartChecks(Vec<GateCheck>),
    /// Keep the rows of the gates a deployment passed (`ferry status` shows them).
    RecordPassedGates(Vec<ferry_core::gates::GateRow>),
    /// Remember the unmet gates announced on the timeline (`None`: forget the deployment),
    /// so a waiting deployment's timeline gets a line only when what it awaits changes.
    RememberUnmet(Option<Vec<String>>),
    /// Request a deployment (an auto-promotion), then write its audit record and timeline
    /// line. A refused request is logged and the plan goes on (each request stands alone).
    Request(promotion::Request),
}

/// A state change, applied with compare-and-set against the row version the snapshot read.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Transition {
    pub to: DeploymentState,
    /// The deployment's reason after the change (`None` clears it).
    pub reason: Option<String>,
    /// The environment's current version becomes this.
    pub current: Option<String>,
    /// The timeline line (recorded as `{state}: {message}`).
    pub message: String,
    /// The deployment's phase after the change (`None` keeps the stored one).
    pub phase: Option<serde_json::Value>,
    /// The kind of its timeline line: `State`, or `CommandApplied` for a person's command.
    pub kind: EventKind,
}

impl Transition {
    pub fn to(to: DeploymentState, message: impl Into<String>) -> Transition {
        Transition {
            to,
            reason: None,
            current: None,
            message: message.into(),
            phase: None,
            kind: EventKind::State,
        }
    }

    pub fn phase(mut self, phase: &crate::progressive::Phase) -> Transition {
        self.phase = Some(phase.to_value());
        self
    }

    pub fn kind(mut self, kind: EventKind) -> Transition {
        self.kind = kind;
        self
    }

    pub fn because(mut self, reason: Option<String>) -> Transition {
        self.reason = reason;
        self
    }

    pub fn current(mut self, version: Option<String>) -> Transition {
        self.current = version;
        self
    }
}

impl From<Transition> for Effect {
    fn from(t: Transition) -> Effect {
        Effect::Transition(t)
    }
}

/// Invariants of the pure layer's shape.
#[cfg(test)]
mod tidy {
    /// The steps do no I/O: no async, no tokio, no store, runtime, proxy or clock handle.
    #[test]
    fn the_steps_do_no_io() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/controller");
        let mut files = vec![dir.join("steps.rs")];
        for entry in std::fs::read_dir(dir.join("steps")).expect("steps/") {
            files.push(entry.expect("entry").path());
        }
        assert!(files.len() >= 4, "found the steps' modules");
        let forbidden = [
            "async",
            ".await",
            "tokio",
            "ferry_runtime",
            "Store",
            "sqlx",
            "reqwest",
            "std::fs",
            "TcpStream",
            "TcpListener",
            "UdpSocket",
            "std::process",
            "Controller",
            "Clock",
            "DataPlane",
            "now_ms()",
            "SystemTime",
            "Instant",
            "rand::",
        ];
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read source");
            let code = text.split("mod tidy").next().unwrap_or(&text);
            for (n, line) in code.lines().enumerate() {
                let line = line.trim_start();
                if line.starts_with("//") {
                    continue;
                }
                for word in forbidden {
                    assert!(
                        !line.contains(word),
                        "{}:{}: `{word}` in a pure step (I/O belongs to the executor): {line}",
                        file.display(),
                        n + 1
                    );
                }
            }
        }
    }
}
