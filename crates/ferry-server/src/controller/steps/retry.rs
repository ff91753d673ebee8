//! The retry verdict: the store or the engine failed while acting for a deployment (an
//! infrastructure failure, never a fault of the new version). It is retried on the next
//! passes, never judged, for at most [`LIMIT`] counted from the first failure as stored;
//! past that, the deployment fails or rolls back naming the error.

use std::time::Duration;

use ferry_core::duration::HumanDuration;
use ferry_core::model::EventKind;

use super::Effect;
use crate::controller::strategy::millis;

/// How long an infrastructure failure is retried before the deployment fails (or rolls
/// back) with it.
pub(in crate::controller) const LIMIT: Duration = Duration::from_secs(600);

/// What to make of an infrastructure failure.
#[derive(Debug, PartialEq)]
pub(in crate::controller) struct Verdict {
    /// The announcement of the retries (only for the first failure of a window).
    pub effects: Vec<Effect>,
    /// `Some(reason)`: the window is over, the deployment fails or rolls back with it;
    /// `None`: retry on the next pass.
    pub give_up: Option<String>,
}

/// `since`: when the failures began (as stored); `first`: this is the first of them.
pub(in crate::controller) fn step(since: i64, first: bool, error: &str, now: i64) -> Verdict {
    let limit = HumanDuration(LIMIT);
    let effects = if first {
        vec![Effect::Event {
            kind: EventKind::Replica,
            message: format!("cannot act: {error}; retrying for at most {limit}"),
        }]
    } else {
        Vec::new()
    };
    let give_up = (now.saturating_sub(since) >= millis(LIMIT))
        .then(|| format!("the runtime or the store kept failing for {limit}: {error}"));
    Verdict { effects, give_up }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SINCE: i64 = 1_796_551_200_000;
    const LIMIT_MS: i64 = 600_000;

    #[test]
    fn an_infrastructure_failure_is_retried_until_its_window_ends() {
        let said = |v: &Verdict| v.effects.len();
        // (first, ms since the first failure) -> (announced, gives up)
        let cases = [
            (true, 0, 1, false),
            (false, 1, 0, false),
            (false, LIMIT_MS - 1, 0, false),
            (false, LIMIT_MS, 0, true),
            (false, LIMIT_MS * 6, 0, true),
            // A window read back from the store after a restart is not a new one.
            (false, LIMIT_MS * 3 / 4, 0, false),
            // A clock that went backwards never ends the window early.
            (false, -5_000, 0, false),
        ];
        for (first, elapsed, announced, gives_up) in cases {
            let v = step(SINCE, first, "engine unreachable", SINCE + elapsed);
            assert_eq!(said(&v), announced, "{first} {elapsed}");
            assert_eq!(v.give_up.is_some(), gives_up, "{first} {elapsed}");
        }
        let first = step(SINCE, true, "engine unreachable", SINCE);
        assert_eq!(
            first.effects,
            vec![Effect::Event {
                kind: EventKind::Replica,
                message: "cannot act: engine unreachable; retrying for at most 10m".into()
            }]
        );
        let over = step(SINCE, false, "engine unreachable", SINCE + LIMIT_MS);
        assert_eq!(
            over.give_up.as_deref(),
            Some("the runtime or the store kept failing for 10m: engine unreachable")
        );
    }
}
