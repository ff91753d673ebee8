//! What a controller pass costs: store statements, rows read and time, counted on the fast
//! tier (fake runtime, fake proxy, manual clock, a real SQLite store).
//!
//! Statements are counted from sqlx's own statement log (`sqlx::query` events, one per
//! statement, with the rows it returned) by a subscriber layer that charges each one to the
//! [`counted`] future that issued it — by span, so tests running beside it in the same
//! binary count nothing here, and a statement run on SQLite's worker thread is still
//! charged. The counts do not depend on how loaded the machine is; the times do.
//!
//! - the regression guards below (run with the other tests): an idle pass costs the same
//!   statements whatever the number of environments, a runtime event reads one replica row;
//! - the measurement (`--ignored`): N apps × M replicas, idle and rolling, printed as the
//!   table of docs/benchmarks.md:
//!   `PASS_COST_APPS=10 PASS_COST_REPLICAS=5 cargo test -p ferry-server --lib pass_cost -- --ignored --nocapture`

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::Instrument;
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use ferry_core::model::DeploymentState;

use super::fakes::Sim;
use crate::lock;

/// What some controller work cost the store.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Cost {
    /// Statements run (each query, each statement of a transaction).
    pub statements: u64,
    /// Rows they returned.
    pub rows: u64,
    /// The statements' summaries, when `PASS_COST_STATEMENTS` is set (to see what a pass
    /// runs).
    pub log: Vec<String>,
}

/// The span [`counted`] runs its future in; every statement under it is charged to it.
const SPAN: &str = "counted_store_statements";

/// A span that charges nothing: the test's own reads inside a counted pass.
const UNCOUNTED: &str = "uncounted_store_statements";

/// A root span whose statements are charged to nothing (see [`counted`]).
pub fn uncounted() -> tracing::Span {
    tracing::info_span!(parent: None, "uncounted_store_statements")
}

/// Costs by the id of the span they are charged to.
static COSTS: Mutex<BTreeMap<u64, Cost>> = Mutex::new(BTreeMap::new());

struct Counting;

impl<S> Layer<S> for Counting
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        if attrs.metadata().name() == SPAN {
            // A span id may be reused once its span closed: start from nothing.
            lock(&COSTS).insert(id.into_u64(), Cost::default());
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        if let Some(span) = scope.into_iter().find(|s| s.name() == SPAN) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            let mut costs = lock(&COSTS);
            let cost = costs.entry(span.id().into_u64()).or_default();
            cost.statements += 1;
            cost.rows += fields.rows;
            if std::env::var_os("PASS_COST_STATEMENTS").is_some() {
                cost.log.push(fields.summary);
            }
        }
    }
}

/// What a statement's log event says: its rows and its summary.
#[derive(Default)]
struct Fields {
    rows: u64,
    summary: String,
}

impl Visit for Fields {
    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "rows_returned" {
            self.rows = value;
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "summary" || field.name() == "db.statement" && !value.is_empty() {
            self.summary = value.split_whitespace().collect::<Vec<_>>().join(" ");
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "summary" {
            self.summary = format!("{value:?}");
        }
    }
}

/// Installs the counting layer as the test binary's subscriber (once). It listens to
/// nothing but sqlx's statements and its own span.
fn install() {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    let installed = *INSTALLED.get_or_init(|| {
        let layer = Counting.with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.target() == "sqlx::query" || meta.name() == SPAN || meta.name() == UNCOUNTED
        }));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).is_ok()
    });
    assert!(
        installed,
        "another global subscriber is set: statements can't be counted"
    );
}

/// Runs `work`, counting the statements it (and what it spawns in its span) ran, except
/// those run under [`uncounted`].
pub async fn counted<F: Future>(work: F) -> (F::Output, Cost, Duration) {
    install();
    let span = tracing::info_span!("counted_store_statements");
    let id = span.id().expect("the counting layer records its span");
    let started = Instant::now();
    let out = work.instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let cost = lock(&COSTS).remove(&id.into_u64()).unwrap_or_default();
    (out, cost, elapsed)
}

/// One pass of the loop, counted.
async fn pass(sim: &mut Sim) -> (Cost, Duration) {
    let (alive, cost, elapsed) = counted(sim.pass()).await;
    assert!(alive, "no crash was asked for");
    (cost, elapsed)
}

/// App `i`: one service `web` of `replicas` replicas in `production` (rolling, surge 1).
fn app(i: usize, replicas: usize) -> String {
    format!(
        r#"app: app{i}
services:
  web:
    run: ["server", "--port", "${{PORT}}"]
    replicas: {replicas}
    health: {{ path: /health, start_timeout: 30s }}
environments:
  production:
    listen: 127.0.0.1:{port}
    strategy: {{ rolling: {{ max_surge: 1, max_unavailable: 0 }} }}
"#,
        port = 20_000 + i
    )
}

/// `apps` apps of `replicas` replicas each, all serving `1.0`.
async fn fleet(apps: usize, replicas: usize) -> Sim {
    let mut sim = Sim::new(&app(0, replicas)).await;
    for i in 1..apps {
        sim.apply(&app(i, replicas)).await;
    }
    deploy_all(&mut sim, apps, "1.0").await;
    sim
}

/// Deploys `version` to every app at once and passes until all succeeded; the cost of
/// each pass.
async fn deploy_all(sim: &mut Sim, apps: usize, version: &str) -> Vec<(Cost, Duration)> {
    let mut ids = Vec::new();
    for i in 0..apps {
        ids.push(sim.deploy(&format!("app{i}"), "production", version).await);
    }
    let mut passes = Vec::new();
    for _ in 0..super::fakes::MAX_PASSES {
        passes.push(pass(sim).await);
        let mut done = true;
        for id in &ids {
            done &= sim.deployment(*id).await.state == DeploymentState::Succeeded;
        }
        if done {
            return passes;
        }
    }
    panic!(
        "{version} never succeeded everywhere:\n{}",
        sim.timeline(ids[0]).await
    );
}

async fn idle_passes(sim: &mut Sim, n: usize) -> Vec<(Cost, Duration)> {
    let mut passes = Vec::new();
    for _ in 0..n {
        passes.push(pass(sim).await);
    }
    passes
}

/// At most this many statements in an idle pass, whatever the number of environments.
const IDLE_PASS_STATEMENTS: u64 = 6;

#[tokio::test]
async fn an_idle_pass_costs_the_same_statements_for_two_environments_or_eight() {
    let mut small = fleet(2, 2).await;
    let mut large = fleet(8, 2).await;
    // The first passes after a rollout may still announce or stop things.
    idle_passes(&mut small, 3).await;
    idle_passes(&mut large, 3).await;
    let (small, _) = pass(&mut small).await;
    let (large, _) = pass(&mut large).await;
    assert_eq!(
        small.statements, large.statements,
        "an idle pass must not read per environment: {small:?} for 2, {large:?} for 8"
    );
    assert!(
        large.statements <= IDLE_PASS_STATEMENTS,
        "an idle pass over 8 environments ran {} statements (at most {IDLE_PASS_STATEMENTS})",
        large.statements
    );
}

#[tokio::test]
async fn a_runtime_event_reads_its_replica_not_every_replica() {
    let mut sim = fleet(4, 3).await;
    idle_passes(&mut sim, 2).await;
    let rows = sim.store.list_replicas(None, None).await.expect("rows");
    assert_eq!(rows.len(), 12);
    let id = rows[0].id.clone();
    let ((), cost, _) = counted(sim.controller.replica_event(&id, "unhealthy: test")).await;
    // The replica's row, the deployment of its environment, and the line written.
    assert!(
        cost.rows <= 3,
        "one event read {} rows over {} statements (12 replicas run)",
        cost.rows,
        cost.statements
    );
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn summary(what: &str, passes: &[(Cost, Duration)]) -> String {
    let statements: Vec<f64> = passes.iter().map(|(c, _)| c.statements as f64).collect();
    let rows: Vec<f64> = passes.iter().map(|(c, _)| c.rows as f64).collect();
    let ms: Vec<f64> = passes.iter().map(|(_, d)| d.as_secs_f64() * 1e3).collect();
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    format!(
        "| {what} | {} | {:.0} (max {:.0}) | {:.0} (max {:.0}) | {:.1} (max {:.1}) |",
        passes.len(),
        median(statements.clone()),
        max(&statements),
        median(rows.clone()),
        max(&rows),
        median(ms.clone()),
        max(&ms),
    )
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The figures of docs/benchmarks.md ("Cost of a controller pass").
#[tokio::test]
#[ignore = "a measurement: run with --ignored --nocapture"]
async fn pass_cost() {
    let apps = env_or("PASS_COST_APPS", 10);
    let replicas = env_or("PASS_COST_REPLICAS", 5);
    let mut sim = fleet(apps, replicas).await;
    idle_passes(&mut sim, 3).await;
    let idle = idle_passes(&mut sim, 30).await;
    let rolling = deploy_all(&mut sim, apps, "2.0").await;
    if std::env::var_os("PASS_COST_STATEMENTS").is_some() {
        for (what, passes) in [
            ("an idle pass", &idle[..1]),
            ("the rolling passes", &rolling),
        ] {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for statement in passes.iter().flat_map(|(cost, _)| &cost.log) {
                *counts.entry(statement).or_default() += 1;
            }
            let mut counts: Vec<_> = counts.into_iter().collect();
            counts.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
            println!("statements of {what}:");
            for (statement, n) in counts {
                println!("{n:6} {statement}");
            }
        }
    }
    println!(
        "{apps} apps × {replicas} replicas (fast tier, SQLite)\n\
         | pass | passes | statements per pass, median | rows read, median | ms per pass, median |\n\
         | --- | --- | --- | --- | --- |\n{}\n{}",
        summary("idle", &idle),
        summary("rolling (all apps at once)", &rolling)
    );
}
