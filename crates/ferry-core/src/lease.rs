//! The leader lease, as pure rules: when a holder renews, when it must stop acting, how a
//! follower retries. Several `ferry server`s share one database; one of them holds the
//! lease (a row in the store, granted and judged by the database's clock) and does the
//! work that acts (the controller, the notification dispatcher, …); the others serve the
//! API.
//!
//! Time here is a local *monotonic* clock in milliseconds (the caller's `Instant`, as
//! milliseconds since it started), never a wall clock: a host whose wall clock is wrong
//! still measures durations right. The database grants a lease until `its now + ttl`; the
//! holder counts its own deadline from the moment it *sent* the request (before the
//! database's now, so never later than the database's expiry, barring clock drift over one
//! TTL), minus a margin. So a holder stops acting before any other server can acquire.

/// Shortest and longest lease TTL a server accepts (`ferry server --lease-ttl`).
pub const MIN_TTL_MS: u64 = 2_000;
pub const MAX_TTL_MS: u64 = 600_000;
/// The longest wait between two attempts after a failure (a database that does not
/// answer): attempts back off exponentially up to this, never a busy loop.
pub const MAX_BACKOFF_MS: u64 = 5_000;

/// A lease TTL outside [`MIN_TTL_MS`, `MAX_TTL_MS`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lease TTL {ttl_ms}ms: must be {MIN_TTL_MS}ms to {MAX_TTL_MS}ms")]
pub struct TtlOutOfRange {
    pub ttl_ms: u64,
}

/// The lease's timing, derived from its TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long the database grants the lease for.
    pub ttl_ms: u64,
    /// A holder renews this long after its last grant (a third of the TTL: two renewals
    /// can fail before the lease is in danger); a follower tries to acquire this often.
    pub renew_every_ms: u64,
    /// A holder stops acting this long before its deadline (a fifth of the TTL): time for
    /// its work to notice the cancellation while the lease is still its own.
    pub margin_ms: u64,
}

impl Timing {
    pub fn new(ttl_ms: u64) -> Result<Timing, TtlOutOfRange> {
        if !(MIN_TTL_MS..=MAX_TTL_MS).contains(&ttl_ms) {
            return Err(TtlOutOfRange { ttl_ms });
        }
        Ok(Timing {
            ttl_ms,
            renew_every_ms: ttl_ms / 3,
            margin_ms: ttl_ms / 5,
        })
    }

    /// What a grant (acquisition or renewal) whose request was sent at `sent_at` allows.
    pub fn granted(&self, sent_at: u64) -> Holding {
        Holding {
            act_until: sent_at + self.ttl_ms - self.margin_ms,
            renew_at: sent_at + self.renew_every_ms,
            failures: 0,
        }
    }

    /// The wait before attempt `failures + 1` after `failures` failed ones in a row:
    /// 100 ms doubling, at most [`MAX_BACKOFF_MS`] and at most the renewal interval.
    pub fn backoff_ms(&self, failures: u32) -> u64 {
        let doubled = 100u64.saturating_mul(1u64 << failures.min(16));
        doubled
            .min(MAX_BACKOFF_MS)
            .min(self.renew_every_ms.max(100))
    }
}

/// What a holder knows about its lease (local monotonic milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holding {
    /// Acting must have stopped by then.
    pub act_until: u64,
    /// The next renewal attempt.
    pub renew_at: u64,
    /// Renewal attempts that failed in a row (the database did not answer).
    pub failures: u32,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Hold on (acting, if holding) and decide again at this time at the latest.
    Wait { until: u64 },
    /// Ask the database to renew the lease (holder) or acquire it (follower).
    Attempt,
    /// Stop acting now: the lease may be someone else's soon.
    StepDown,
}

/// The holder's next move at `now`.
pub fn next(holding: &Holding, now: u64) -> Next {
    if now >= holding.act_until {
        Next::StepDown
    } else if now >= holding.renew_at {
        Next::Attempt
    } else {
        Next::Wait {
            until: holding.renew_at.min(holding.act_until),
        }
    }
}

/// A renewal that failed (the database did not answer) at `now`: retry after the backoff,
/// and never plan past the deadline (there the holder steps down).
pub fn renewal_failed(timing: &Timing, holding: &Holding, now: u64) -> Holding {
    let failures = holding.failures.saturating_add(1);
    Holding {
        renew_at: (now + timing.backoff_ms(failures - 1)).min(holding.act_until),
        failures,
        ..*holding
    }
}

/// When a follower tries again: at the renewal interval after an answer (the lease is
/// someone else's), sooner after the holder's expiry if the database said when, with the
/// backoff after a failure to reach the database.
pub fn follower_retry(timing: &Timing, now: u64, outcome: FollowerOutcome) -> u64 {
    match outcome {
        FollowerOutcome::Held { expires_in_ms } => {
            now + expires_in_ms.clamp(1, timing.renew_every_ms.max(1))
        }
        FollowerOutcome::Unreachable { failures } => now + timing.backoff_ms(failures),
    }
}

/// What a follower's attempt to acquire met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowerOutcome {
    /// Someone else holds the lease for this long still (by the database's clock).
    Held { expires_in_ms: u64 },
    /// The database did not answer (`failures` attempts in a row before this one).
    Unreachable { failures: u32 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_out_of_range_are_refused_naming_the_bounds() {
        assert_eq!(Timing::new(1_999), Err(TtlOutOfRange { ttl_ms: 1_999 }));
        assert_eq!(Timing::new(600_001), Err(TtlOutOfRange { ttl_ms: 600_001 }));
        assert_eq!(
            TtlOutOfRange { ttl_ms: 5 }.to_string(),
            "lease TTL 5ms: must be 2000ms to 600000ms"
        );
        let t = Timing::new(15_000).unwrap();
        assert_eq!((t.renew_every_ms, t.margin_ms), (5_000, 3_000));
    }

    /// Every TTL, every grant time: the holder stops acting before the database's expiry
    /// (even if the database granted from the very moment the request was sent), renews at
    /// least twice before it must stop, and the margin leaves it time to stop.
    #[test]
    fn a_holder_always_stops_before_expiry_and_renews_twice_first() {
        for ttl in (MIN_TTL_MS..=MAX_TTL_MS).step_by(997) {
            let t = Timing::new(ttl).unwrap();
            for sent_at in [0, 1, 12_345, u64::from(u32::MAX)] {
                let h = t.granted(sent_at);
                let earliest_expiry = sent_at + ttl;
                assert!(h.act_until < earliest_expiry, "ttl {ttl}");
                assert!(earliest_expiry - h.act_until >= 400, "ttl {ttl}: margin");
                assert!(h.renew_at + t.renew_every_ms < h.act_until, "ttl {ttl}");
            }
        }
    }

    #[test]
    fn the_holder_waits_renews_then_steps_down_at_its_deadline() {
        let t = Timing::new(9_000).unwrap();
        let h = t.granted(1_000);
        assert_eq!(
            (h.renew_at, h.act_until),
            (1_000 + 3_000, 1_000 + 9_000 - 1_800)
        );
        assert_eq!(next(&h, 1_000), Next::Wait { until: 4_000 });
        assert_eq!(next(&h, 3_999), Next::Wait { until: 4_000 });
        assert_eq!(next(&h, 4_000), Next::Attempt);
        assert_eq!(next(&h, 8_199), Next::Attempt);
        assert_eq!(next(&h, 8_200), Next::StepDown);
        assert_eq!(next(&h, u64::MAX), Next::StepDown);
    }

    /// A database that stops answering: retries back off (100 ms, 200 ms, …), never plan
    /// past the deadline, and the holder steps down there however many attempts failed.
    #[test]
    fn failed_renewals_back_off_and_end_in_a_step_down_at_the_deadline() {
        let t = Timing::new(15_000).unwrap();
        let mut h = t.granted(0);
        let mut now = h.renew_at;
        let mut waits = Vec::new();
        let mut attempts = 0;
        loop {
            match next(&h, now) {
                Next::Attempt => {
                    attempts += 1;
                    let before = now;
                    h = renewal_failed(&t, &h, now);
                    assert!(h.renew_at > before || h.renew_at == h.act_until);
                    assert!(h.renew_at <= h.act_until);
                    waits.push(h.renew_at - before);
                    now = h.renew_at;
                }
                Next::Wait { until } => now = until,
                Next::StepDown => break,
            }
            assert!(attempts < 1_000, "no busy loop");
        }
        assert_eq!(now, h.act_until);
        assert_eq!(&waits[..6], [100, 200, 400, 800, 1_600, 3_200]);
        assert!(waits.iter().all(|w| *w <= MAX_BACKOFF_MS));
        assert!(attempts >= 4, "{attempts} attempts before stepping down");
    }

    #[test]
    fn a_renewal_that_succeeds_after_failures_starts_afresh() {
        let t = Timing::new(6_000).unwrap();
        let failing = renewal_failed(&t, &t.granted(0), 2_000);
        assert_eq!(failing.failures, 1);
        let renewed = t.granted(2_150);
        assert_eq!(renewed.failures, 0);
        assert_eq!(next(&renewed, 2_150), Next::Wait { until: 4_150 });
    }

    #[test]
    fn backoff_is_bounded_by_the_cap_and_the_renewal_interval() {
        let short = Timing::new(MIN_TTL_MS).unwrap();
        let long = Timing::new(MAX_TTL_MS).unwrap();
        for failures in 0..100 {
            assert!(short.backoff_ms(failures) <= short.renew_every_ms);
            assert!(long.backoff_ms(failures) <= MAX_BACKOFF_MS);
            assert!(long.backoff_ms(failures) >= 100);
        }
        assert_eq!(long.backoff_ms(u32::MAX), MAX_BACKOFF_MS);
    }

    #[test]
    fn a_follower_retries_at_the_expiry_or_the_interval_whichever_is_first() {
        let t = Timing::new(15_000).unwrap();
        let held = |ms| FollowerOutcome::Held { expires_in_ms: ms };
        assert_eq!(follower_retry(&t, 100, held(2_000)), 2_100);
        assert_eq!(follower_retry(&t, 100, held(60_000)), 5_100);
        assert_eq!(follower_retry(&t, 100, held(0)), 101, "never a busy loop");
        let down = |failures| FollowerOutcome::Unreachable { failures };
        assert_eq!(follower_retry(&t, 100, down(0)), 200);
        assert_eq!(follower_retry(&t, 100, down(40)), 5_100);
    }
}
