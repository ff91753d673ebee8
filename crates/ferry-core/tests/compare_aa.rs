//! The `compare` judge on simulated traffic: A/A runs (the same build on both sides, the
//! same latency and error distributions) must never roll back, under several loads, and a
//! real regression (+300ms) must be caught at once. Seeded, pure and bounded (a few seconds):
//! `cargo test -p ferry-core --test compare_aa -- --nocapture` prints the figures.
//!
//! The A/A test runs [`CI_WINDOWS_PER_LOAD`] windows a load (1,000 in all); the full
//! 4,000 that docs/progressive.md reports run with `FERRY_AA_WINDOWS_PER_LOAD=1000`
//! (`bench/compare-aa.sh`). Each load has its own seed, so the windows CI judges are the
//! first quarter of the full run's, judged the same way.
#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use ferry_core::analysis::{
    AnalysisRun, AnalysisSpec, LatencyBins, MetricSpec, RunVerdict, Verdict, WindowStats, measure,
    record,
};

/// Deterministic pseudo-random numbers (xorshift64*), seeded here, never from outside.
struct Gen(u64);

impl Gen {
    fn new(seed: u64) -> Gen {
        Gen(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in (0, 1).
    fn unit(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        (-2.0 * self.unit().ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}

/// The bucket an HDR histogram with 2 significant digits (the proxy's) files `v` µs under,
/// at its highest equivalent value.
fn hdr_bucket(v: u64) -> u64 {
    let v = v.max(1);
    let magnitude = 63 - v.leading_zeros();
    if magnitude < 8 {
        return v;
    }
    let unit = 1u64 << (magnitude - 7);
    (v / unit) * unit + unit - 1
}

/// How one side of a window behaves: log-normal latencies and an error rate.
#[derive(Clone, Copy)]
struct Traffic {
    median_us: f64,
    sigma: f64,
    error_rate: f64,
    /// Added to every latency (a regression).
    plus_us: f64,
}

fn window(g: &mut Gen, t: Traffic, requests: u64) -> WindowStats {
    let mut buckets: Vec<u64> = Vec::with_capacity(requests as usize);
    let mut errors = 0;
    for _ in 0..requests {
        let v = t.median_us * (t.sigma * g.normal()).exp() + t.plus_us;
        buckets.push(hdr_bucket(v.round() as u64));
        if t.error_rate > 0.0 && g.unit() < t.error_rate {
            errors += 1;
        }
    }
    buckets.sort_unstable();
    let mut bins: Vec<(u64, u64)> = Vec::new();
    for b in buckets {
        match bins.last_mut() {
            Some((last, n)) if *last == b => *n += 1,
            _ => bins.push((b, 1)),
        }
    }
    WindowStats {
        requests,
        errors_5xx: errors,
        duration_ms: 5000,
        latency_us: LatencyBins::from_bins(bins),
    }
}

/// A load: requests per 5s window on each side, and how the stable version behaves.
struct Load {
    name: &'static str,
    canary: u64,
    stable: u64,
    traffic: Traffic,
}

fn traffic(median_us: f64, sigma: f64, error_rate: f64) -> Traffic {
    Traffic {
        median_us,
        sigma,
        error_rate,
        plus_us: 0.0,
    }
}

fn loads() -> Vec<Load> {
    vec![
        Load {
            name: "light: 240 rps, 10% canary, 2ms median, 0.5% errors",
            canary: 120,
            stable: 1_080,
            traffic: traffic(2_000.0, 0.6, 0.005),
        },
        Load {
            name: "keep-alive heavy: 2,000 rps, 20% canary, 55µs median",
            canary: 2_000,
            stable: 8_000,
            traffic: traffic(55.0, 0.25, 0.0),
        },
        Load {
            name: "slow heavy-tailed backend: 600 rps, 10% canary, 120ms median, 1% errors",
            canary: 300,
            stable: 2_700,
            traffic: traffic(120_000.0, 1.0, 0.01),
        },
        Load {
            name: "half and half: 1,600 rps, 50% canary, 8ms median, 0.1% errors",
            canary: 4_000,
            stable: 4_000,
            traffic: traffic(8_000.0, 0.5, 0.001),
        },
    ]
}

/// The README's compare metric, with every default.
fn readme_compare() -> AnalysisSpec {
    serde_saphyr::from_str(
        "metrics:\n  - name: vs-stable\n    compare: { latency: { max_increase: 20% }, errors: {} }\n",
    )
    .unwrap()
}

/// A/A windows a load in CI. No false rollback in `n` independent windows bounds the
/// per-window false-rollback rate `p` below `1 − 0.05^(1/n) ≈ 3/n` at 95 % confidence (the
/// "rule of three": `(1 − p)^n ≥ 0.05` ⇔ `p ≤ 1 − 0.05^(1/n)`): n = 1,000 (250 × 4 loads)
/// gives p < 0.30 % a window; the full run's n = 4,000 gives p < 0.075 %. A rollout judges
/// a handful of windows, so either bound keeps a false rollback rare; CI keeps the cheaper
/// one and catches any change that makes A/A windows fail at all often.
const CI_WINDOWS_PER_LOAD: u64 = 250;

/// `FERRY_AA_WINDOWS_PER_LOAD` (1 to 100,000), else [`CI_WINDOWS_PER_LOAD`].
fn windows_per_load() -> u64 {
    match std::env::var("FERRY_AA_WINDOWS_PER_LOAD") {
        Ok(text) => text
            .parse()
            .ok()
            .filter(|n| (1..=100_000).contains(n))
            .unwrap_or_else(|| panic!("FERRY_AA_WINDOWS_PER_LOAD={text:?}: 1 to 100000")),
        Err(_) => CI_WINDOWS_PER_LOAD,
    }
}

#[test]
fn a_a_runs_never_roll_back_under_any_load() {
    let spec = readme_compare();
    let metric: &MetricSpec = &spec.metrics[0];
    let per_load = windows_per_load();
    let mut windows = 0;
    let mut false_rollbacks = Vec::new();
    let mut passes = 0;
    for (seed, load) in (17..).zip(loads()) {
        let mut g = Gen::new(seed);
        for i in 0..per_load {
            let canary = window(&mut g, load.traffic, load.canary);
            let stable = window(&mut g, load.traffic, load.stable);
            let got = measure(metric, &canary, Some(&stable), None);
            windows += 1;
            match got.verdict {
                Verdict::Fail => {
                    false_rollbacks.push(format!("{} #{i}: {}", load.name, got.reason))
                }
                Verdict::Pass => passes += 1,
                Verdict::Inconclusive => {}
            }
        }
    }
    println!(
        "A/A: {windows} windows over {} loads, {} false rollbacks, {passes} passes",
        loads().len(),
        false_rollbacks.len()
    );
    assert!(false_rollbacks.is_empty(), "{false_rollbacks:#?}");
    assert_eq!(
        passes, windows,
        "every A/A window has enough traffic to pass"
    );
}

#[test]
fn an_identical_build_measured_slower_under_load_is_not_rolled_back() {
    // The case users saw: the same build, its canary side 70µs against 55µs (+27%) under
    // heavy keep-alive load, with thousands of requests a side — hugely significant, and
    // far below anything a user notices. The 5ms floor keeps it.
    let spec = readme_compare();
    let mut g = Gen::new(23);
    let stable = traffic(55.0, 0.25, 0.0);
    let canary = Traffic {
        median_us: 70.0,
        ..stable
    };
    let mut fails = 0;
    for _ in 0..200 {
        let c = window(&mut g, canary, 5_000);
        let s = window(&mut g, stable, 20_000);
        let got = measure(&spec.metrics[0], &c, Some(&s), None);
        assert_ne!(got.verdict, Verdict::Inconclusive, "{}", got.reason);
        if got.verdict == Verdict::Fail {
            fails += 1;
        }
    }
    assert_eq!(fails, 0);
    // Without the floor, the relative bound alone rolls it back: the floor is what decides.
    let no_floor: AnalysisSpec = serde_saphyr::from_str(
        "metrics:\n  - name: vs-stable\n    compare: { latency: { max_increase: 20%, min_increase: 0ms } }\n",
    )
    .unwrap();
    let c = window(&mut g, canary, 5_000);
    let s = window(&mut g, stable, 20_000);
    let got = measure(&no_floor.metrics[0], &c, Some(&s), None);
    assert_eq!(got.verdict, Verdict::Fail, "{}", got.reason);
}

#[test]
fn a_300ms_regression_is_caught_in_the_first_window_under_every_load() {
    let spec = readme_compare();
    let mut g = Gen::new(29);
    for load in loads() {
        for trial in 0..50 {
            let bad = Traffic {
                plus_us: 300_000.0,
                ..load.traffic
            };
            // the analysis run as the controller drives it: one round per 5s window
            let mut run = AnalysisRun::new(0);
            let mut detected_after = None;
            for round in 1..=5i64 {
                let canary = window(&mut g, bad, load.canary);
                let stable = window(&mut g, load.traffic, load.stable);
                let m = measure(&spec.metrics[0], &canary, Some(&stable), None);
                let (next, verdict) = record(&run, &spec, &[m], round * 5_000);
                run = next;
                if let RunVerdict::Failed { reason, .. } = verdict {
                    assert!(reason.contains("latency fail"), "{reason}");
                    detected_after = Some(round);
                    break;
                }
            }
            assert_eq!(
                detected_after,
                Some(1),
                "{} trial {trial}: not caught in the first window",
                load.name
            );
        }
        println!(
            "+300ms on {}: rolled back after 1 window (5s at the default interval)",
            load.name
        );
    }
}
