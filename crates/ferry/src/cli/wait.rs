//! Following a deployment to its end (`--wait`): events as they happen, then the outcome.

use std::time::Duration;

use ferry_core::api::{DeploymentView, EventView};
use ferry_core::endpoint as e;
use ferry_core::model::{DeploymentState, EventKind};
use tokio::time::Instant;

use super::client::{Client, LONG_POLL_MARGIN};
use super::output::{duration_ms, event_line};
use super::{Failure, exit};

/// Longest single long poll.
const POLL: Duration = Duration::from_secs(10);

/// `deployment #12: demo 1.1.0 → production (rolling, replacing 1.0.0)`.
pub fn headline(dep: &DeploymentView) -> String {
    let from = match &dep.previous_version {
        Some(v) if v != &dep.version => format!(", replacing {v}"),
        Some(_) => ", same version again".to_string(),
        None => ", first deployment".to_string(),
    };
    let what = kind_word(dep);
    format!(
        "{what} #{}: {} {} → {} ({}{from})",
        dep.id, dep.app, dep.version, dep.env, dep.strategy
    )
}

/// `rollback` or `deployment`.
fn kind_word(dep: &DeploymentView) -> &'static str {
    if dep.kind == ferry_core::model::DeploymentKind::Rollback {
        "rollback"
    } else {
        "deployment"
    }
}

/// [`follow`] for a command run by a person: Ctrl-C stops following (exit 130) and says
/// that the deployment goes on, and how to see or stop it.
pub async fn follow_interruptible(
    client: &Client,
    dep: &DeploymentView,
    timeout: Duration,
    print_events: bool,
) -> anyhow::Result<DeploymentView> {
    tokio::select! {
        done = follow(client, dep, timeout, print_events) => done,
        _ = tokio::signal::ctrl_c() => Err(interrupted(dep).into()),
    }
}

fn interrupted(dep: &DeploymentView) -> Failure {
    Failure::new(
        exit::INTERRUPTED,
        format!(
            "stopped following deployment #{} (Ctrl-C); it goes on in the server",
            dep.id
        ),
    )
    .with_details(vec![format!(
        "follow it with `ferry deployment {}`; stop it with `ferry abort {} --env {}`",
        dep.id, dep.app, dep.env
    )])
}

/// Follows `dep` until it reaches a terminal state, printing each new event when
/// `print_events`. Fails with exit code 4 after `timeout`. Rides out a server restart.
pub async fn follow(
    client: &Client,
    dep: &DeploymentView,
    timeout: Duration,
    print_events: bool,
) -> anyhow::Result<DeploymentView> {
    let id = dep.id.to_string();
    let deadline = Instant::now() + timeout;
    let mut last_seq: Option<i64> = None;
    let mut lost_contact = false;
    // Set once a state transition was printed: the deployment row may have been read
    // just before it committed (the detail is two reads), so don't long-poll for events
    // that may never come; re-read the deployment first, then go on if it has not ended.
    let mut transitioned = false;
    let print = |events: &[EventView], last_seq: &mut Option<i64>, transitioned: &mut bool| {
        for event in events {
            if last_seq.is_some_and(|last| event.seq <= last) {
                continue;
            }
            if print_events {
                println!("{}", event_line(event));
            }
            *transitioned |= is_transition(event);
            *last_seq = Some(event.seq);
        }
    };
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let recheck = transitioned;
        if recheck {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let step = async {
            if remaining > Duration::ZERO && !recheck {
                let wait = remaining.min(POLL);
                let mut query = vec![("wait_ms", wait.as_millis().to_string())];
                if let Some(seq) = last_seq {
                    query.push(("after", seq.to_string()));
                }
                let events = client
                    .call_within(
                        e::DeploymentsEvents,
                        &[&id],
                        &query,
                        &(),
                        wait + LONG_POLL_MARGIN,
                    )
                    .await?;
                print(&events, &mut last_seq, &mut transitioned);
            }
            let detail = client.call(e::DeploymentsGet, &[&id], &[], &()).await?;
            print(&detail.events, &mut last_seq, &mut transitioned);
            anyhow::Ok(detail.deployment)
        };
        match tokio::time::timeout(remaining + Duration::from_secs(5), step).await {
            Ok(Ok(current)) => {
                if lost_contact {
                    eprintln!("  (reconnected to Ferry)");
                    lost_contact = false;
                }
                if current.state.is_terminal() {
                    return Ok(current);
                }
                // Read after the transition committed, and not terminal: long-poll again.
                if recheck {
                    transitioned = false;
                }
                if remaining == Duration::ZERO {
                    return Err(timed_out(&current, timeout).into());
                }
            }
            Ok(Err(err)) if Failure::is_transient(&err) && Instant::now() < deadline => {
                if !lost_contact {
                    eprintln!(
                        "  (lost contact with Ferry at {}; retrying until the timeout)",
                        client.base_url()
                    );
                    lost_contact = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(Err(err)) => return Err(err),
            Err(_) => return Err(timed_out(dep, timeout).into()),
        }
    }
}

/// A state transition (by the event's typed kind; its wording is for people): the
/// deployment is read again before waiting for more events.
fn is_transition(event: &EventView) -> bool {
    event.kind == EventKind::State
}

fn timed_out(dep: &DeploymentView, timeout: Duration) -> Failure {
    Failure::new(
        exit::TIMED_OUT,
        format!(
            "timed out after {} waiting for deployment #{} (still {})",
            duration_ms(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX)),
            dep.id,
            dep.state
        ),
    )
    .with_details(vec![format!(
        "it goes on in the server; follow it with `ferry deployment {}`",
        dep.id
    )])
}

/// Prints how a finished deployment ended; an error (exit code 3) unless it succeeded.
pub fn outcome(dep: &DeploymentView) -> anyhow::Result<()> {
    let took = dep
        .finished_at_ms
        .map(|end| format!(" in {}", duration_ms(end - dep.created_at_ms)))
        .unwrap_or_default();
    let reason = dep.reason.as_deref().unwrap_or("no reason recorded");
    let what = kind_word(dep);
    match dep.state {
        DeploymentState::Succeeded => {
            println!(
                "{what} #{} succeeded{took}: {} {} is serving {}",
                dep.id, dep.app, dep.version, dep.env
            );
            Ok(())
        }
        DeploymentState::RolledBack => {
            let still = dep
                .previous_version
                .as_deref()
                .map(|v| format!("; {} is serving {v} again", dep.env))
                .unwrap_or_default();
            Err(Failure::new(
                exit::DEPLOY_FAILED,
                format!(
                    "{what} #{} ({} {}) was rolled back{took}: {reason}{still}",
                    dep.id, dep.app, dep.version
                ),
            )
            .into())
        }
        DeploymentState::Failed => Err(Failure::new(
            exit::DEPLOY_FAILED,
            format!(
                "{what} #{} ({} {}) failed{took}: {reason}",
                dep.id, dep.app, dep.version
            ),
        )
        .into()),
        DeploymentState::Aborted => {
            let still = dep
                .previous_version
                .as_deref()
                .map(|v| format!("; {} is serving {v}", dep.env))
                .unwrap_or_default();
            Err(Failure::new(
                exit::DEPLOY_FAILED,
                format!(
                    "{what} #{} ({} {}) was aborted{took}: {reason}{still}",
                    dep.id, dep.app, dep.version
                ),
            )
            .into())
        }
        DeploymentState::Rejected => Err(Failure::new(
            exit::DEPLOY_FAILED,
            format!(
                "{what} #{} ({} {}) was rejected: {reason}",
                dep.id, dep.app, dep.version
            ),
        )
        .into()),
        DeploymentState::Superseded => Err(Failure::new(
            exit::DEPLOY_FAILED,
            format!(
                "{what} #{} ({} {}) was superseded by a newer deployment: {reason}",
                dep.id, dep.app, dep.version
            ),
        )
        .into()),
        state => Err(Failure::new(
            exit::ERROR,
            format!("deployment #{} is still {state}", dep.id),
        )
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transition_is_known_by_its_kind_not_its_wording() {
        let event = |kind: EventKind, message: &str| EventView {
            seq: 1,
            at_ms: 0,
            kind,
            message: message.into(),
        };
        // Whatever the server's prose says.
        assert!(is_transition(&event(EventKind::State, "aborted by x")));
        assert!(is_transition(&event(
            EventKind::State,
            "Rolled back, 1.0.0 restored"
        )));
        assert!(!is_transition(&event(
            EventKind::Replica,
            "succeeded: not a state event"
        )));
        assert!(!is_transition(&event(
            EventKind::CommandApplied,
            "promoted"
        )));
    }
}
