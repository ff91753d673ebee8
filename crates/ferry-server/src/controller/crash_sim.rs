//! The crash simulation: a deployment driven on the fakes while the server dies right after
//! a random effect (a replica started or stopped, a task run, a route table pushed) again
//! and again; each time a new controller starts from the store and re-adopts what runs. The
//! invariants are checked after every restart and every pass; the deployment must still end
//! in a terminal state with everything consistent. Seeded: a failing seed replays exactly
//! the same crash points.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_core::model::DeploymentState;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::fakes::{MAX_PASSES, Sim};
use crate::progressive::Phase;

const LISTENER: &str = "shop/production";
const REPLICAS: usize = 3;
/// Restarts per run; then the deployment is left to finish.
const MAX_CRASHES: usize = 12;

fn manifest(strategy: &str) -> String {
    format!(
        r#"app: shop
services:
  web:
    run: ["server", "--port", "${{PORT}}"]
    replicas: {REPLICAS}
    health: {{ path: /health }}
hooks:
  pre_deploy:
    - name: migrate
      run: ["./migrate", "up"]
environments:
  production:
    listen: 127.0.0.1:18080
    strategy: {strategy}
"#
    )
}

const ROLLING: &str = "{ rolling: { max_surge: 1, max_unavailable: 0 } }";
const CANARY: &str =
    "{ canary: { steps: [ { weight: 20 }, { pause: 3s }, { weight: 60 }, { pause: 3s } ] } }";

/// What must hold whenever a server has just (re)started or finished a pass.
async fn check(sim: &Sim, seed: u64, most: usize, when: &str) {
    let rows = sim.store.list_replicas(None, None).await.expect("rows");
    let running = sim.world.running();
    // No orphan: everything that runs is known to the store…
    for (id, _) in &running {
        assert!(
            rows.iter().any(|r| &r.id == id),
            "seed {seed}, {when}: {id} runs with no row (an orphan)\n{}",
            state_of(sim).await
        );
    }
    // …and no phantom: every row is a replica that runs (or one being stopped).
    for row in &rows {
        assert!(
            running.iter().any(|(id, _)| id == &row.id),
            "seed {seed}, {when}: row {} has nothing running",
            row.id
        );
    }
    // No duplicate: a restart adopts what runs rather than starting it again, so what
    // serves never exceeds what the strategy allows at once.
    let serving = rows.iter().filter(|r| !r.draining).count();
    assert!(
        serving <= most,
        "seed {seed}, {when}: {serving} replicas not draining (at most {most})"
    );
    let starts = sim.world.starts();
    let mut seen = std::collections::HashSet::new();
    assert!(
        starts.iter().all(|id| seen.insert(id)),
        "seed {seed}, {when}: a replica id was started twice"
    );
    // No hook run twice for a deployment.
    let mut hooks: BTreeMap<Option<String>, usize> = BTreeMap::new();
    for (name, deployment) in sim.world.tasks() {
        if name.starts_with("hook-migrate-") {
            *hooks.entry(deployment).or_default() += 1;
        }
    }
    assert!(
        hooks.values().all(|n| *n == 1),
        "seed {seed}, {when}: a hook ran twice: {hooks:?}"
    );
}

/// After a completed pass: a progressive rollout's weights are those it persisted (when both
/// sides have a healthy replica to send them to).
async fn check_weights(sim: &Sim, id: i64, seed: u64) {
    let deployment = sim.deployment(id).await;
    if deployment.state != DeploymentState::Progressing {
        return;
    }
    let Some(progress) = Phase::of(&deployment).expect("phase").progress else {
        return;
    };
    let rows = sim.rows("shop", "production").await;
    let healthy = |v: &str| rows.iter().any(|(version, ok)| version == v && *ok);
    let Some(stable) = deployment.previous_version.as_deref() else {
        return;
    };
    if !healthy(stable) || !healthy(&deployment.version) {
        return;
    }
    let weights = sim.proxy.weights(LISTENER, "web");
    assert_eq!(
        weights.get(&deployment.version).copied().unwrap_or(0),
        progress.weight_bp,
        "seed {seed}: the table's weight is not the persisted one ({weights:?})\n{}",
        sim.timeline(id).await
    );
}

/// One run: 1.0 serves, 2.0 is deployed with `strategy` while the server keeps dying.
/// `most`: the most replicas (not draining) the strategy runs at once.
async fn run(strategy: &str, most: usize, seed: u64) -> (DeploymentState, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut sim = Sim::new(&manifest(strategy)).await;
    let first = sim.deploy("shop", "production", "1.0").await;
    sim.until_state(first, DeploymentState::Succeeded).await;
    let id = sim.deploy("shop", "production", "2.0").await;
    let mut passes = 0;
    loop {
        passes += 1;
        if passes >= MAX_PASSES {
            panic!("seed {seed}: never ended\n{}", state_of(&sim).await);
        }
        if sim.crashes < MAX_CRASHES {
            sim.crash_after(rng.random_range(1..=4));
        } else {
            sim.crash_after(0);
        }
        sim.advance(Duration::from_millis(rng.random_range(200..=1_500)));
        if sim.pass().await {
            check(&sim, seed, most, "after a pass").await;
            check_weights(&sim, id, seed).await;
        } else {
            check(&sim, seed, most, &format!("after restart {}", sim.crashes)).await;
        }
        if sim.deployment(id).await.state.is_terminal() && sim.crashes >= MAX_CRASHES {
            break;
        }
        if sim.deployment(id).await.state.is_terminal() {
            // Ended early: stop crashing and let the environment settle.
            sim.crashes = MAX_CRASHES;
        }
    }
    // Settle: drains finish, the idle environment is kept at its version.
    sim.crash_after(0);
    for _ in 0..20 {
        sim.advance(Duration::from_secs(1));
        sim.pass().await;
    }
    check(&sim, seed, REPLICAS, "at the end").await;
    let end = sim.deployment(id).await;
    let serving = match end.state {
        DeploymentState::Succeeded => "2.0",
        // The hook was interrupted by a crash (on_interrupt: fail), or the new version
        // was judged: either way 1.0 serves.
        DeploymentState::Failed | DeploymentState::RolledBack => "1.0",
        other => panic!("seed {seed}: ended {other}\n{}", sim.timeline(id).await),
    };
    let running = sim.world.running();
    assert_eq!(
        running.len(),
        REPLICAS,
        "seed {seed}: {running:?}\n{}",
        sim.timeline(id).await
    );
    assert!(
        running.iter().all(|(_, v)| v == serving),
        "seed {seed}: {} but running {running:?}\n{}",
        end.state,
        sim.timeline(id).await
    );
    assert_eq!(
        sim.proxy.weights(LISTENER, "web"),
        [(serving.to_string(), 10_000)].into(),
        "seed {seed}"
    );
    (end.state, sim.crashes)
}

#[tokio::test]
async fn a_rolling_update_survives_a_crash_after_any_effect() {
    let mut ends = Vec::new();
    for seed in 0..6 {
        // The surge: one more than the replica count.
        ends.push(run(ROLLING, REPLICAS + 1, seed).await);
    }
    assert!(
        ends.iter()
            .any(|(state, _)| *state == DeploymentState::Succeeded),
        "some runs get through: {ends:?}"
    );
    assert!(ends.iter().all(|(_, crashes)| *crashes > 0), "{ends:?}");
}

#[tokio::test]
async fn a_canary_survives_a_crash_after_any_effect_with_its_persisted_weights() {
    let mut ends = Vec::new();
    for seed in 100..106 {
        // The finale: the new version at full size beside the old one.
        ends.push(run(CANARY, 2 * REPLICAS, seed).await);
    }
    assert!(
        ends.iter()
            .any(|(state, _)| *state == DeploymentState::Succeeded),
        "some runs get through: {ends:?}"
    );
}

/// Everything a failure needs to be understood: rows, what runs, the table, timelines.
async fn state_of(sim: &Sim) -> String {
    let rows: Vec<(String, u16, bool)> = sim
        .store
        .list_replicas(None, None)
        .await
        .expect("rows")
        .into_iter()
        .map(|r| (r.id, r.port, r.draining))
        .collect();
    let stopping = crate::lock(&sim.controller.stopping).clone();
    format!(
        "rows {rows:?}\nrunning {:?}\nstopping {stopping:?}\ntable {:?}\n{}",
        sim.world.running(),
        sim.proxy.last(),
        all_timelines(sim).await
    )
}

async fn all_timelines(sim: &Sim) -> String {
    let mut out = String::new();
    for id in 1..=3 {
        out.push_str(&format!("--- #{id}\n{}\n", sim.timeline(id).await));
    }
    out
}
