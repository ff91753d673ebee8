//! The statistics behind the `compare` judge, on binned data, in O(number of buckets).
//!
//! Every bucket of a [`LatencyBins`] is a group of tied values (its bound). Canary is the
//! first sample (`x`, size `n1`), baseline the second (`y`, size `n2`), `N = n1 + n2`.

use serde::{Deserialize, Serialize};

use super::stats::LatencyBins;

/// Result of a one-sided Mann-Whitney U test "the canary is slower".
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MannWhitney {
    /// `U1 = Σ_g a_g · (B_<g + b_g / 2)`: pairs (canary, baseline) where the canary request
    /// was slower, ties counting one half (`a_g`, `b_g`: canary and baseline counts of tie
    /// group `g`, `B_<g`: baseline requests in faster groups). Equals `R1 − n1(n1+1)/2` with
    /// `R1` the canary's rank sum using midranks for ties.
    pub u: f64,
    /// `z = (U1 − n1·n2/2 − 0.5) / σ` (continuity correction), with the tie-corrected
    /// `σ² = n1·n2/12 · ((N + 1) − Σ_g (t_g³ − t_g) / (N(N − 1)))`, `t_g = a_g + b_g`.
    /// `−∞` when σ = 0 (every request tied).
    pub z: f64,
    /// One-sided p-value `1 − Φ(z)` (alternative: canary latencies stochastically greater).
    pub p_value: f64,
    pub n1: u64,
    pub n2: u64,
}

/// Mann-Whitney U test of `canary` against `baseline` (one-sided: canary slower), normal
/// approximation with tie and continuity corrections — the same as SciPy's
/// `mannwhitneyu(x, y, alternative="greater", method="asymptotic")`. `None` when either
/// side is empty.
pub fn mann_whitney_u(canary: &LatencyBins, baseline: &LatencyBins) -> Option<MannWhitney> {
    let n1 = canary.total();
    let n2 = baseline.total();
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (x, y) = (canary.bins(), baseline.bins());
    let (mut i, mut j) = (0usize, 0usize);
    let mut below_b: u128 = 0; // baseline requests in faster groups
    let mut twice_u: u128 = 0; // 2·U1, exact
    let mut tie_term = 0f64;
    while i < x.len() || j < y.len() {
        let bound = match (x.get(i), y.get(j)) {
            (Some(&(bx, _)), Some(&(by, _))) => bx.min(by),
            (Some(&(bx, _)), None) => bx,
            (None, Some(&(by, _))) => by,
            (None, None) => break,
        };
        let mut a = 0u64;
        let mut b = 0u64;
        if let Some(&(bx, c)) = x.get(i)
            && bx == bound
        {
            a = c;
            i += 1;
        }
        if let Some(&(by, c)) = y.get(j)
            && by == bound
        {
            b = c;
            j += 1;
        }
        twice_u += u128::from(a) * (2 * below_b + u128::from(b));
        below_b += u128::from(b);
        let t = (a + b) as f64;
        tie_term += t * t * t - t;
    }
    let u = twice_u as f64 / 2.0;
    let (f1, f2) = (n1 as f64, n2 as f64);
    let n = f1 + f2;
    let variance = f1 * f2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    let mu = f1 * f2 / 2.0;
    let numerator = u - mu - 0.5;
    let z = if variance > 0.0 {
        numerator / variance.sqrt()
    } else if numerator > 0.0 {
        f64::INFINITY
    } else {
        f64::NEG_INFINITY
    };
    Some(MannWhitney {
        u,
        z,
        p_value: normal_sf(z),
        n1,
        n2,
    })
}

/// Hodges-Lehmann shift estimate, µs: the (lower) median of all `n1·n2` pairwise
/// differences `x_i − y_j` (canary minus baseline), each bucket taken at its bound. Found
/// by bisection on the shift `d` with `C(d) = #{(i, j) : x_i − y_j ≤ d}` counted bucket by
/// bucket, so O(B·log B·log range) for B buckets. `None` when either side is empty.
pub fn hodges_lehmann_shift(canary: &LatencyBins, baseline: &LatencyBins) -> Option<f64> {
    let (x, y) = (canary.bins(), baseline.bins());
    let (x_min, x_max) = (x.first()?.0 as i128, x.last()?.0 as i128);
    let (y_min, y_max) = (y.first()?.0 as i128, y.last()?.0 as i128);
    // cumulative baseline counts: cum[k] = requests in y[..k]
    let mut cum: Vec<u128> = Vec::with_capacity(y.len() + 1);
    cum.push(0);
    for &(_, c) in y {
        let last = cum.last().copied().unwrap_or(0);
        cum.push(last + u128::from(c));
    }
    let total_pairs = u128::from(canary.total()) * u128::from(baseline.total());
    let target = total_pairs.div_ceil(2);
    let pairs_at_most = |d: i128| -> u128 {
        let mut count = 0u128;
        for &(bx, a) in x {
            // baseline values y with y >= bx - d  ⇔  x - y <= d
            let limit = bx as i128 - d;
            let k = y.partition_point(|&(by, _)| (by as i128) < limit);
            let at_least = cum[y.len()] - cum[k];
            count += u128::from(a) * at_least;
        }
        count
    };
    let (mut lo, mut hi) = (x_min - y_max, x_max - y_min);
    while lo < hi {
        let mid = lo + (hi - lo).div_euclid(2);
        if pairs_at_most(mid) >= target {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Some(lo as f64)
}

/// Result of a one-sided two-proportion z-test "the canary fails more often".
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TwoProportion {
    /// Canary error rate `p1 = e1 / n1`.
    pub canary_rate: f64,
    /// Baseline error rate `p2 = e2 / n2`.
    pub baseline_rate: f64,
    /// `z = (p1 − p2 − c) / SE` with the pooled `p = (e1 + e2) / (n1 + n2)`,
    /// `SE = √(p(1 − p)(1/n1 + 1/n2))` and Yates' continuity correction
    /// `c = (1/n1 + 1/n2) / 2`. `−∞` when SE = 0 (no errors at all, or nothing but).
    pub z: f64,
    /// One-sided p-value `1 − Φ(z)`.
    pub p_value: f64,
}

/// Two-proportion z-test of `e1` errors out of `n1` (canary) against `e2` out of `n2`
/// (baseline), one-sided (canary worse). `None` when either side has no request.
pub fn two_proportion_test(e1: u64, n1: u64, e2: u64, n2: u64) -> Option<TwoProportion> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (e1, e2) = (e1.min(n1) as f64, e2.min(n2) as f64);
    let (f1, f2) = (n1 as f64, n2 as f64);
    let (p1, p2) = (e1 / f1, e2 / f2);
    let pooled = (e1 + e2) / (f1 + f2);
    let inv = 1.0 / f1 + 1.0 / f2;
    let se = (pooled * (1.0 - pooled) * inv).sqrt();
    let numerator = p1 - p2 - inv / 2.0;
    let z = if se > 0.0 {
        numerator / se
    } else {
        f64::NEG_INFINITY
    };
    Some(TwoProportion {
        canary_rate: p1,
        baseline_rate: p2,
        z,
        p_value: normal_sf(z),
    })
}

/// One-sided test "the canary's error rate exceeds the baseline's by more than `margin`"
/// (absolute, e.g. 0.005): `z = (p1 − p2 − margin − c) / SE` with the unpooled
/// `SE = √(p1(1 − p1)/n1 + p2(1 − p2)/n2)` (the null hypothesis `p1 − p2 = margin` has no
/// common rate to pool) and the same continuity correction `c` as
/// [`two_proportion_test`]. Judging the excess over the tolerance, rather than any excess,
/// keeps identical builds with a few stray errors from failing by chance. `None` when
/// either side has no request.
pub fn two_proportion_excess(
    e1: u64,
    n1: u64,
    e2: u64,
    n2: u64,
    margin: f64,
) -> Option<TwoProportion> {
    if n1 == 0 || n2 == 0 {
        return None;
    }
    let (f1, f2) = (n1 as f64, n2 as f64);
    let (p1, p2) = (e1.min(n1) as f64 / f1, e2.min(n2) as f64 / f2);
    let se = (p1 * (1.0 - p1) / f1 + p2 * (1.0 - p2) / f2).sqrt();
    let numerator = p1 - p2 - margin - (1.0 / f1 + 1.0 / f2) / 2.0;
    let z = if se > 0.0 {
        numerator / se
    } else if numerator > 0.0 {
        f64::INFINITY
    } else {
        f64::NEG_INFINITY
    };
    Some(TwoProportion {
        canary_rate: p1,
        baseline_rate: p2,
        z,
        p_value: normal_sf(z),
    })
}

/// Standard normal CDF Φ(z), double precision (Hart 1968, as given by G. West, "Better
/// approximations to cumulative normal functions", 2005).
pub fn normal_cdf(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    let x = z.abs();
    let tail = if x > 37.0 {
        0.0
    } else {
        let e = (-x * x / 2.0).exp();
        if x < 7.071_067_811_865_47 {
            let mut num = 3.526_249_659_989_11e-2 * x + 0.700_383_064_443_688;
            num = num * x + 6.373_962_203_531_65;
            num = num * x + 33.912_866_078_383;
            num = num * x + 112.079_291_497_871;
            num = num * x + 221.213_596_169_931;
            num = num * x + 220.206_867_912_376;
            let mut den = 8.838_834_764_831_84e-2 * x + 1.755_667_163_182_64;
            den = den * x + 16.064_177_579_207;
            den = den * x + 86.780_732_202_946_1;
            den = den * x + 296.564_248_779_674;
            den = den * x + 637.333_633_378_831;
            den = den * x + 793.826_512_519_948;
            den = den * x + 440.413_735_824_752;
            e * num / den
        } else {
            let mut b = x + 0.65;
            b = x + 4.0 / b;
            b = x + 3.0 / b;
            b = x + 2.0 / b;
            b = x + 1.0 / b;
            e / b / 2.506_628_274_631
        }
    };
    if z > 0.0 { 1.0 - tail } else { tail }
}

/// Upper tail `1 − Φ(z)`, accurate far into the tail.
pub fn normal_sf(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    if z == f64::INFINITY {
        return 0.0;
    }
    if z == f64::NEG_INFINITY {
        return 1.0;
    }
    normal_cdf(-z)
}
