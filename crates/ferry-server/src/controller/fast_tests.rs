//! The controller against the fakes (`fakes.rs`): each test drives a real controller over a
//! real store, pass by pass, with no process, socket or sleep, in milliseconds.

use std::time::Duration;

use ferry_core::model::DeploymentState;
use ferry_runtime::TaskEnd;

use super::fakes::{Behaviour, Sim};

const LISTENER: &str = "shop/production";

/// One service, three replicas, `strategy` in production (YAML of the strategy's value).
fn manifest(strategy: &str, extra: &str) -> String {
    format!(
        r#"app: shop
services:
  web:
    run: ["server", "--port", "${{PORT}}"]
    replicas: 3
    health: {{ path: /health, start_timeout: 30s }}
{extra}environments:
  production:
    listen: 127.0.0.1:18080
    strategy: {strategy}
"#
    )
}

/// The serving version's replicas, healthy, every request to them.
async fn serving(sim: &mut Sim, version: &str) -> i64 {
    let id = sim.deploy("shop", "production", version).await;
    sim.until_state(id, DeploymentState::Succeeded).await;
    id
}

#[tokio::test]
async fn a_rolling_update_keeps_full_capacity_and_ends_on_the_new_version() {
    let mut sim = Sim::new(&manifest(
        "{ rolling: { max_surge: 1, max_unavailable: 0 } }",
        "",
    ))
    .await;
    serving(&mut sim, "1.0").await;
    assert_eq!(
        sim.proxy.weights(LISTENER, "web"),
        [("1.0".to_string(), 10_000)].into()
    );
    let id = sim.deploy("shop", "production", "2.0").await;
    let mut passes = 0;
    loop {
        sim.pass().await;
        passes += 1;
        // max_unavailable 0: three healthy replicas in the table at every step; surge 1:
        // never more than four replicas taking traffic.
        let table = sim.proxy.last().expect("a table");
        let endpoints: usize = table.listeners[0].routes[0]
            .backends
            .iter()
            .map(|g| g.endpoints.len())
            .sum();
        assert!((3..=4).contains(&endpoints), "{endpoints} endpoints");
        let live = sim.rows("shop", "production").await.len();
        assert!(live <= 4, "{live} replicas during a surge of 1");
        if sim.deployment(id).await.state == DeploymentState::Succeeded {
            break;
        }
        assert!(passes < 100, "{}", sim.timeline(id).await);
    }
    assert_eq!(
        sim.proxy.weights(LISTENER, "web"),
        [("2.0".to_string(), 10_000)].into()
    );
    let rows = sim.rows("shop", "production").await;
    assert_eq!(rows, vec![("2.0".to_string(), true); 3]);
    let running: Vec<String> = sim.world.running().into_iter().map(|r| r.1).collect();
    assert_eq!(running, vec!["2.0"; 3], "the old replicas were stopped");
    assert_eq!(sim.world.starts().len(), 6, "3 + 3 starts, no extra");
}

#[tokio::test]
async fn a_version_never_healthy_is_rolled_back_at_its_start_timeout_by_the_clock() {
    let mut sim = Sim::new(&manifest("rolling", "")).await;
    serving(&mut sim, "1.0").await;
    sim.world.set_behaviour("2.0", Behaviour::NeverHealthy);
    let id = sim.deploy("shop", "production", "2.0").await;
    sim.until(id, "started a 2.0 replica", |_| true).await;
    for _ in 0..20 {
        sim.pass().await;
    }
    // Without the clock moving, the new version waits; the old one keeps serving.
    assert_eq!(sim.deployment(id).await.state, DeploymentState::Progressing);
    assert_eq!(
        sim.proxy.weights(LISTENER, "web"),
        [("1.0".to_string(), 10_000)].into()
    );
    sim.advance(Duration::from_secs(31));
    let done = sim.until_state(id, DeploymentState::RolledBack).await;
    assert!(
        done.reason.as_deref().unwrap_or("").contains("healthy"),
        "{:?}",
        done.reason
    );
    assert_eq!(
        sim.proxy.weights(LISTENER, "web"),
        [("1.0".to_string(), 10_000)].into()
    );
    assert!(sim.world.running().iter().all(|(_, v)| v == "1.0"));
}

#[tokio::test]
async fn a_crash_looping_version_is_rolled_back() {
    let mut sim = Sim::new(&manifest("rolling", "")).await;
    serving(&mut sim, "1.0").await;
    sim.world.set_behaviour("2.0", Behaviour::Crash);
    let id = sim.deploy("shop", "production", "2.0").await;
    let done = sim.until_state(id, DeploymentState::RolledBack).await;
    assert!(
        sim.timeline(id).await.contains("exited (exit code 1)"),
        "{}",
        sim.timeline(id).await
    );
    assert!(done.reason.is_some());
    assert!(sim.world.running().iter().all(|(_, v)| v == "1.0"));
}

const CANARY: &str = r#"
      canary:
        steps:
          - weight: 20
          - analysis:
              interval: 10s
              metrics:
                - name: smoke
                  command: { run: ["./smoke.sh"], timeout: 5s }
          - weight: 50
"#;

#[tokio::test]
async fn a_canary_whose_analysis_fails_goes_back_to_the_stable_version() {
    let mut sim = Sim::new(&manifest(CANARY, "")).await;
    serving(&mut sim, "1.0").await;
    sim.world.script_tasks(|task| {
        if task.name.starts_with("analysis-") {
            TaskEnd::Exited(1)
        } else {
            TaskEnd::Exited(0)
        }
    });
    let id = sim.deploy("shop", "production", "2.0").await;
    // The canary gets its 20 % before any analysis.
    sim.until(id, "sent 20% to the canary", |_| true).await;
    let mut saw_canary_weight = false;
    for _ in 0..50 {
        sim.pass().await;
        let weights = sim.proxy.weights(LISTENER, "web");
        saw_canary_weight |= weights.get("2.0") == Some(&2_000);
        if saw_canary_weight {
            break;
        }
    }
    assert!(saw_canary_weight, "{}", sim.timeline(id).await);
    // Without the clock moving, the analysis never measures: the canary stays at 20 %.
    for _ in 0..10 {
        sim.pass().await;
    }
    assert_eq!(sim.deployment(id).await.state, DeploymentState::Progressing);
    assert!(sim.world.task_names().is_empty(), "no measurement yet");
    // It measures once its interval has passed on the clock.
    for _ in 0..30 {
        sim.advance(Duration::from_secs(1));
        sim.pass().await;
        if sim.deployment(id).await.state != DeploymentState::Progressing {
            break;
        }
    }
    let done = sim.until_state(id, DeploymentState::RolledBack).await;
    assert!(
        sim.world
            .task_names()
            .iter()
            .any(|t| t.starts_with("analysis-")),
        "the command analysis ran through the runtime"
    );
    assert!(
        done.reason.as_deref().unwrap_or("").contains("smoke"),
        "{:?}",
        done.reason
    );
    assert_eq!(
        sim.proxy.weights(LISTENER, "web"),
        [("1.0".to_string(), 10_000)].into()
    );
    assert!(sim.world.running().iter().all(|(_, v)| v == "1.0"));
}

#[tokio::test]
async fn a_canary_whose_analysis_passes_moves_step_by_step_to_the_new_version() {
    let mut sim = Sim::new(&manifest(CANARY, "")).await;
    serving(&mut sim, "1.0").await;
    let id = sim.deploy("shop", "production", "2.0").await;
    let mut seen = Vec::new();
    for _ in 0..200 {
        sim.pass().await;
        sim.advance(Duration::from_secs(1));
        let bp = sim
            .proxy
            .weights(LISTENER, "web")
            .get("2.0")
            .copied()
            .unwrap_or(0);
        if seen.last() != Some(&bp) {
            seen.push(bp);
        }
        if sim.deployment(id).await.state == DeploymentState::Succeeded {
            break;
        }
    }
    assert_eq!(
        sim.deployment(id).await.state,
        DeploymentState::Succeeded,
        "{}",
        sim.timeline(id).await
    );
    assert_eq!(seen, vec![0, 2_000, 5_000, 10_000], "the weights, in order");
    assert!(sim.world.running().iter().all(|(_, v)| v == "2.0"));
}

#[tokio::test]
async fn blue_green_switches_at_once_and_keeps_blue_for_its_scale_down_delay() {
    let strategy = "{ blue_green: { preview_listen: 127.0.0.1:18081, auto_promote: true, scale_down_delay: 1m } }";
    let mut sim = Sim::new(&manifest(strategy, "")).await;
    serving(&mut sim, "1.0").await;
    let id = sim.deploy("shop", "production", "2.0").await;
    let mut seen = Vec::new();
    for _ in 0..100 {
        sim.pass().await;
        let weights = sim.proxy.weights(LISTENER, "web");
        if seen.last() != Some(&weights) {
            seen.push(weights.clone());
        }
        if weights.get("2.0") == Some(&10_000) {
            break;
        }
    }
    // No step between: blue has everything, then green has everything.
    assert!(
        seen.iter()
            .all(|w| w.values().all(|bp| *bp == 10_000 || *bp == 0)),
        "{seen:?}"
    );
    assert_eq!(
        seen.last().and_then(|w| w.get("2.0")),
        Some(&10_000),
        "{}",
        sim.timeline(id).await
    );
    // Blue still runs during the delay…
    for _ in 0..5 {
        sim.pass().await;
    }
    assert!(sim.world.running().iter().any(|(_, v)| v == "1.0"));
    // …and goes once it has passed on the clock.
    sim.advance(Duration::from_secs(61));
    sim.until_state(id, DeploymentState::Succeeded).await;
    for _ in 0..5 {
        sim.pass().await;
    }
    assert!(
        sim.world.running().iter().all(|(_, v)| v == "2.0"),
        "{:?}",
        sim.world.running()
    );
}

const HOOKS: &str = r#"hooks:
  pre_deploy:
    - name: migrate
      run: ["./migrate", "up"]
"#;

#[tokio::test]
async fn a_pre_deploy_hook_runs_once_before_anything_moves() {
    let mut sim = Sim::new(&manifest("rolling", HOOKS)).await;
    serving(&mut sim, "1.0").await;
    let id = sim.deploy("shop", "production", "2.0").await;
    sim.until_state(id, DeploymentState::Succeeded).await;
    for _ in 0..10 {
        sim.pass().await;
    }
    let tasks = sim.world.task_names();
    assert_eq!(tasks.len(), 2, "once per deployment: {tasks:?}");
    assert!(tasks.iter().all(|t| t.contains("migrate")), "{tasks:?}");
    let timeline = sim.timeline(id).await;
    let hook = timeline.find("migrate: succeeded").expect(&timeline);
    let start = timeline.find("rollout started").expect(&timeline);
    assert!(
        hook < start,
        "the hook ran before the rollout started:\n{timeline}"
    );
}

#[tokio::test]
async fn a_failing_pre_deploy_hook_fails_the_deployment_with_nothing_moved() {
    let mut sim = Sim::new(&manifest("rolling", HOOKS)).await;
    serving(&mut sim, "1.0").await;
    sim.world.script_tasks(|task| {
        if task.env_vars.get("VERSION").map(String::as_str) == Some("2.0") {
            TaskEnd::Exited(3)
        } else {
            TaskEnd::Exited(0)
        }
    });
    let starts = sim.world.starts().len();
    let id = sim.deploy("shop", "production", "2.0").await;
    let done = sim.until_state(id, DeploymentState::Failed).await;
    assert!(
        done.reason.as_deref().unwrap_or("").contains("migrate"),
        "{:?}",
        done.reason
    );
    assert_eq!(sim.world.starts().len(), starts, "no replica started");
    assert_eq!(
        sim.proxy.weights(LISTENER, "web"),
        [("1.0".to_string(), 10_000)].into()
    );
}

const APPROVAL: &str = "rolling\n    gates:\n      approvals: [{ role: tech-lead }]";

#[tokio::test]
async fn a_gate_command_check_runs_through_the_runtime() {
    let mut sim = Sim::new(&manifest(
        "rolling\n    gates:\n      checks: [{ name: ci, run: [\"ci-check\", \"${VERSION}\"] }]",
        "",
    ))
    .await;
    let id = sim.deploy("shop", "production", "1.0").await;
    // No `ci-check` program exists on this host: only the runtime can pass it.
    sim.until_state(id, DeploymentState::Succeeded).await;
    let checks: Vec<String> = sim
        .world
        .task_names()
        .into_iter()
        .filter(|name| name.starts_with("check-"))
        .collect();
    assert_eq!(checks, vec![format!("check-ci-{id}")]);
}

#[tokio::test]
async fn a_deployment_waits_for_its_approval_then_rolls_out() {
    let mut sim = Sim::new(&manifest(APPROVAL, "")).await;
    let id = sim.deploy("shop", "production", "1.0").await;
    sim.until_state(id, DeploymentState::AwaitingApproval).await;
    for _ in 0..10 {
        sim.pass().await;
    }
    assert_eq!(
        sim.deployment(id).await.state,
        DeploymentState::AwaitingApproval
    );
    assert!(
        sim.world.starts().is_empty(),
        "nothing starts before approval"
    );
    sim.store
        .record_approval(
            id,
            &ferry_core::gates::Approval {
                approver: "user:carol".into(),
                roles: vec!["tech-lead".into()],
                approved: true,
                reason: None,
                at_ms: sim.controller.now_ms(),
            },
            &[],
        )
        .await
        .expect("approve");
    sim.until_state(id, DeploymentState::Succeeded).await;
    assert_eq!(sim.world.starts().len(), 3);
}

/// Carol (tech-lead) approves deployment `id`.
async fn approve(sim: &Sim, id: i64) {
    sim.store
        .record_approval(
            id,
            &ferry_core::gates::Approval {
                approver: "user:carol".into(),
                roles: vec!["tech-lead".into()],
                approved: true,
                reason: None,
                at_ms: sim.controller.now_ms(),
            },
            &[],
        )
        .await
        .expect("approve");
}

/// A canary held at its gates says, in order: what it waits for, who passed the gate, that
/// the rollout started (from which version to which, and how), then its first step.
#[tokio::test]
async fn a_canary_held_at_its_gates_says_when_its_rollout_starts() {
    let strategy = "{ canary: { steps: [{ weight: 50 }] } }\n    gates:\n      approvals: [{ role: tech-lead }]";
    let mut sim = Sim::new(&manifest(strategy, "")).await;
    let first = sim.deploy("shop", "production", "1.0").await;
    approve(&sim, first).await;
    sim.until_state(first, DeploymentState::Succeeded).await;
    let id = sim.deploy("shop", "production", "2.0").await;
    sim.until_state(id, DeploymentState::AwaitingApproval).await;
    approve(&sim, id).await;
    sim.until(id, "sent traffic to the canary", |_| true).await;
    for _ in 0..50 {
        if sim.proxy.weights(LISTENER, "web").get("2.0") == Some(&5_000) {
            break;
        }
        sim.pass().await;
    }
    let timeline = sim.timeline(id).await;
    let at = |needle: &str| {
        timeline
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{timeline}"))
    };
    let waits = at("[state] awaiting-approval: waiting for");
    let passed = at("[gate] approvals");
    let started = at("[state] progressing: rollout started: 1.0 -> 2.0 (canary");
    let step = at("weight 0% → 50%");
    assert!(
        waits < passed && passed < started && started < step,
        "{timeline}"
    );
    assert_eq!(timeline.matches("rollout started").count(), 1, "{timeline}");
}

#[tokio::test]
async fn an_engine_that_stays_down_is_retried_then_fails_the_deployment_at_its_deadline() {
    let mut sim = Sim::new(&manifest("rolling", "")).await;
    serving(&mut sim, "1.0").await;
    sim.world.set_engine_down(true);
    let id = sim.deploy("shop", "production", "2.0").await;
    for _ in 0..30 {
        sim.pass().await;
    }
    // Retried, never judged: 1.0 serves on.
    assert_eq!(sim.deployment(id).await.state, DeploymentState::Progressing);
    let timeline = sim.timeline(id).await;
    assert_eq!(
        timeline.matches("retrying for at most 10m").count(),
        1,
        "said once:\n{timeline}"
    );
    // A short outage within the limit changes nothing…
    sim.advance(super::steps::retry::LIMIT / 2);
    sim.pass().await;
    assert_eq!(sim.deployment(id).await.state, DeploymentState::Progressing);
    // …a persistent one ends it, saying why.
    sim.advance(super::steps::retry::LIMIT / 2);
    let done = sim.until(id, "ended", |d| d.state.is_terminal()).await;
    assert_eq!(
        done.state,
        DeploymentState::RolledBack,
        "{}",
        sim.timeline(id).await
    );
    assert!(
        done.reason
            .as_deref()
            .unwrap_or("")
            .contains("kept failing for 10m"),
        "{:?}",
        done.reason
    );
    assert_eq!(
        sim.proxy.weights(LISTENER, "web"),
        [("1.0".to_string(), 10_000)].into()
    );
}

/// Another loopback address than 127.0.0.1, as a container runtime may report.
const ELSEWHERE: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

#[tokio::test]
async fn the_route_table_carries_the_endpoints_the_runtime_reports() {
    let mut sim = Sim::new(&manifest("rolling", "")).await;
    sim.world.set_host(ELSEWHERE);
    serving(&mut sim, "1.0").await;
    let table = sim.proxy.last().expect("a table");
    let endpoints: Vec<std::net::SocketAddr> = table.listeners[0].routes[0]
        .backends
        .iter()
        .flat_map(|g| g.endpoints.clone())
        .collect();
    let mut expected: Vec<std::net::SocketAddr> = sim
        .store
        .list_replicas(Some("shop"), Some("production"))
        .await
        .expect("rows")
        .iter()
        .map(|r| std::net::SocketAddr::new(ELSEWHERE, r.port))
        .collect();
    expected.sort();
    let mut got = endpoints.clone();
    got.sort();
    assert_eq!(got, expected, "every replica at the runtime's address");
}

#[tokio::test]
async fn a_draining_replica_is_stopped_only_once_nothing_is_in_flight() {
    let mut sim = Sim::new(&manifest(
        "{ rolling: { max_surge: 1, max_unavailable: 0 } }",
        "",
    ))
    .await;
    // The drain waits on the address the runtime reports, not on 127.0.0.1.
    sim.world.set_host(ELSEWHERE);
    serving(&mut sim, "1.0").await;
    let old = sim
        .store
        .list_replicas(Some("shop"), Some("production"))
        .await
        .expect("rows");
    for row in &old {
        sim.proxy.set_in_flight(sim.world.endpoint(row.port), 1);
    }
    let id = sim.deploy("shop", "production", "2.0").await;
    let mut drained = None;
    for _ in 0..50 {
        sim.pass().await;
        let rows = sim
            .store
            .list_replicas(Some("shop"), Some("production"))
            .await
            .expect("rows");
        if let Some(row) = rows.iter().find(|r| r.draining) {
            drained = Some(row.clone());
            break;
        }
    }
    let drained = drained.expect("a 1.0 replica drains");
    for _ in 0..10 {
        sim.pass().await;
    }
    // Out of the table, but a request is still on its way: it keeps running.
    let endpoint = sim.world.endpoint(drained.port);
    let table = sim.proxy.last().expect("a table");
    assert!(
        table.listeners[0].routes[0]
            .backends
            .iter()
            .all(|g| !g.endpoints.contains(&endpoint)),
        "taken out of the route table first"
    );
    assert!(
        sim.world.running().iter().any(|(id, _)| id == &drained.id),
        "stopped with a request in flight"
    );
    for row in &old {
        sim.proxy.set_in_flight(sim.world.endpoint(row.port), 0);
    }
    sim.until_state(id, DeploymentState::Succeeded).await;
    assert!(sim.world.running().iter().all(|(_, v)| v == "2.0"));
    assert!(
        sim.timeline(id)
            .await
            .contains("drained: out of every route table, nothing in flight"),
        "{}",
        sim.timeline(id).await
    );
}

/// Issue 11's gate race: the pass that holds a deployment at a gate check records `blocked`
/// before it starts the check, so a check that fails at once is never seen beside `pending`.
#[tokio::test]
async fn a_deployment_is_blocked_before_its_gate_checks_start() {
    use super::steps::Effect;
    // The check's server never answers while the test runs (it never accepts).
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}/ok", held.local_addr().expect("addr"));
    let gates =
        format!("rolling\n    gates:\n      checks: [{{ name: ci, http: {{ url: \"{url}\" }} }}]");
    let mut sim = Sim::new(&manifest(&gates, "")).await;
    let id = sim.deploy("shop", "production", "1.0").await;
    sim.until_state(id, DeploymentState::Blocked).await;
    let journal = sim.controller.journal();
    let blocked = journal
        .iter()
        .position(|e| matches!(e, Effect::Transition(t) if t.to == DeploymentState::Blocked));
    let started = journal
        .iter()
        .position(|e| matches!(e, Effect::StartChecks(checks) if checks[0].name == "ci"));
    match (blocked, started) {
        (Some(blocked), Some(started)) => assert!(blocked < started, "{journal:?}"),
        _ => panic!("blocked, then the check started: {journal:?}"),
    }
    assert!(
        sim.world.starts().is_empty(),
        "nothing started behind a gate"
    );
}

/// The infrastructure-retry window survives a restart: a server killed 7½ minutes into an
/// outage gives the deployment the 2½ minutes left, not another 10.
#[tokio::test]
async fn a_restart_grants_no_new_infrastructure_retry_window() {
    let mut sim = Sim::new(&manifest("rolling", "")).await;
    serving(&mut sim, "1.0").await;
    sim.world.set_engine_down(true);
    let id = sim.deploy("shop", "production", "2.0").await;
    sim.until(id, "failing on the engine", |d| {
        d.infra_failing_since_ms.is_some()
    })
    .await;
    let limit = super::steps::retry::LIMIT;
    sim.advance(limit * 3 / 4);
    sim.pass().await;
    assert_eq!(sim.deployment(id).await.state, DeploymentState::Progressing);
    sim.crash().await;
    sim.advance(limit / 4);
    let done = sim.until(id, "ended", |d| d.state.is_terminal()).await;
    let timeline = sim.timeline(id).await;
    assert_eq!(done.state, DeploymentState::RolledBack, "{timeline}");
    assert!(
        done.reason
            .as_deref()
            .unwrap_or("")
            .contains("kept failing for 10m"),
        "{:?}",
        done.reason
    );
    assert_eq!(
        timeline.matches("retrying for at most 10m").count(),
        1,
        "said once, not again after the restart:\n{timeline}"
    );
    // The window was closed with the verdict.
    assert_eq!(sim.deployment(id).await.infra_failing_since_ms, None);
}

/// Gate facts are judged at the controller's clock, not the wall clock: a silence that
/// covers the manual clock's "now" lifts a firing `block_promotions` alert, and once the
/// clock passes its end the alert holds the next deployment again.
#[tokio::test]
async fn a_silenced_alert_is_judged_by_the_controllers_clock() {
    use ferry_core::alerts::{AlertInstance, AlertStatus, Silence};
    let alerts = "alerts:\n  - name: errors\n    condition: error_rate > 1%\n    for: 1m\n    \
                  severity: critical\n    actions: { block_promotions: true }\n";
    let mut sim = Sim::new(&manifest("rolling", alerts)).await;
    let now = sim.controller.now_ms();
    let firing = AlertInstance {
        rule: "errors".into(),
        series: String::new(),
        labels: Default::default(),
        status: AlertStatus::Firing,
        active_since_ms: now,
        last_active_ms: now,
        fired_at_ms: Some(now),
        resolved_at_ms: None,
        value: 0.5,
        fired_value: Some(0.5),
        acted: true,
    };
    let write = ferry_store::AlertWrite {
        alerts: &[firing],
        events: &[],
        notifications: &[],
        incidents: &[],
    };
    sim.store
        .save_alerts("shop", "production", "errors", &write, now)
        .await
        .expect("alert");
    sim.store
        .create_silence(&Silence {
            id: 0,
            app: "shop".into(),
            env: "production".into(),
            alert: "errors".into(),
            created_by: "user:admin".into(),
            reason: "known, fixing".into(),
            created_at_ms: now,
            until_ms: now + 3_600_000,
            ended_by: None,
        })
        .await
        .expect("silence");
    let id = sim.deploy("shop", "production", "1.0").await;
    sim.until_state(id, DeploymentState::Succeeded).await;
    sim.advance(Duration::from_secs(3_601));
    let id = sim.deploy("shop", "production", "2.0").await;
    let held = sim.until_state(id, DeploymentState::Blocked).await;
    assert_eq!(held.version, "2.0");
    let timeline = sim.timeline(id).await;
    assert!(timeline.contains("errors"), "{timeline}");
}

/// A failing gate check runs again once its interval has passed by the controller's clock
/// (its result is stamped with that clock, not the wall clock).
#[tokio::test]
async fn a_failing_gate_check_runs_again_after_its_interval() {
    let mut sim = Sim::new(&manifest(
        "rolling\n    gates:\n      checks: [{ name: ci, run: [\"ci-check\"], interval: 30s }]",
        "",
    ))
    .await;
    sim.world.script_tasks(|_| TaskEnd::Exited(1));
    let id = sim.deploy("shop", "production", "1.0").await;
    let runs = |sim: &Sim| {
        sim.world
            .task_names()
            .iter()
            .filter(|n| n.starts_with("check-ci-"))
            .count()
    };
    sim.until_state(id, DeploymentState::Blocked).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sim
        .store
        .check_results(id)
        .await
        .expect("results")
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the check never ended"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..5 {
        sim.pass().await;
    }
    assert_eq!(runs(&sim), 1, "not again within its interval");
    sim.advance(Duration::from_secs(31));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while runs(&sim) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the check never ran again"
        );
        sim.pass().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(sim.deployment(id).await.state, DeploymentState::Blocked);
}

/// Gate rows and the gates answer are judged by the controller's clock, not the wall clock:
/// at the manual clock's 10:00 a 09:00–10:30 freeze holds the deployment (the wall clock is
/// past that window), and `ferry status` and `GET …/gates` say so.
#[tokio::test]
async fn gate_rows_are_judged_by_the_controllers_clock() {
    use ferry_core::api::gates::GatesVerdict;
    use ferry_core::gates::GateState;
    let freeze = "rolling\n    gates:\n      freeze: [ { from: \"2026-12-06T09:00:00\", until: \"2026-12-06T10:30:00\", timezone: UTC } ]";
    let mut sim = Sim::new(&manifest(freeze, "")).await;
    let id = sim.deploy("shop", "production", "1.0").await;
    sim.until_state(id, DeploymentState::Blocked).await;
    let status = sim.controller.status("shop", None).await.expect("status");
    let rows = &status.environments[0]
        .latest_deployment
        .as_ref()
        .expect("the deployment")
        .gates;
    assert!(
        rows.iter()
            .any(|r| r.gate == "freeze" && r.state == GateState::Waiting),
        "{rows:?}"
    );
    let answer = crate::gates::gates_status(&sim.store, id, sim.controller.now_ms())
        .await
        .unwrap_or_else(|e| panic!("gates: {e:?}"));
    assert_eq!(answer.verdict, GatesVerdict::Waiting, "{answer:?}");
}
