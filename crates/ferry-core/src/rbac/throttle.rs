//! Login throttling as a pure, serialisable state machine.
//!
//! Failures are tracked per *key*; callers use one key per user (`user:alice`) and one per
//! source address (`addr:10.0.0.7`) and refuse a login when either is locked.
//!
//! Rules (with the default [`ThrottlePolicy`]):
//! - A key is locked once it has `max_failures` (5) failures within a sliding `window_ms`
//!   (5 minutes). The failure that reaches the limit starts the lock; the failure count
//!   then starts again from zero.
//! - The n-th consecutive lock lasts `base_lock_ms · 2^(n-1)` — 1, 2, 4, 8 minutes —
//!   capped at `max_lock_ms` (15 minutes).
//! - The lock streak (n) is forgotten after `forget_after_ms` (1 hour) without failures,
//!   or on [`Throttle::succeeded`], which clears the key entirely.
//! - Failures reported while a key is locked are ignored (the caller should have refused
//!   the attempt after [`Throttle::check`]); they neither count nor extend the lock.
//! - Callers should call `succeeded` for the user key; for an address key, calling it lets
//!   an attacker with one valid account reset the address's count, so a server may prefer
//!   to leave address keys to expire on their own.
//!
//! Time is `now_ms` (milliseconds since the Unix epoch) passed in by the caller; a clock
//! going backwards never panics (differences saturate).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Tuning for [`Throttle`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThrottlePolicy {
    /// Failures within `window_ms` that lock the key. Default 5.
    pub max_failures: u32,
    /// Sliding window for counting failures. Default 5 minutes.
    pub window_ms: u64,
    /// Length of the first lock. Default 1 minute.
    pub base_lock_ms: u64,
    /// Longest lock. Default 15 minutes.
    pub max_lock_ms: u64,
    /// Quiet time after which a key's lock streak is forgotten. Default 1 hour.
    pub forget_after_ms: u64,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        ThrottlePolicy {
            max_failures: 5,
            window_ms: 5 * 60_000,
            base_lock_ms: 60_000,
            max_lock_ms: 15 * 60_000,
            forget_after_ms: 60 * 60_000,
        }
    }
}

impl ThrottlePolicy {
    /// Length of the `n`-th consecutive lock (`n` ≥ 1).
    pub fn lock_ms(&self, n: u32) -> u64 {
        let shift = n.saturating_sub(1).min(63);
        self.base_lock_ms
            .saturating_mul(1u64 << shift)
            .min(self.max_lock_ms)
    }
}

/// One key's state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ThrottleState {
    /// Times of recent failures (within the window), oldest first.
    pub failures: Vec<i64>,
    /// Locked while `now_ms < locked_until_ms`.
    pub locked_until_ms: i64,
    /// Consecutive locks so far (drives the backoff).
    pub locks: u32,
    /// Time of the last counted failure.
    pub last_failure_ms: i64,
}

/// Failed-login tracking per key. See the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Throttle {
    pub policy: ThrottlePolicy,
    pub keys: BTreeMap<String, ThrottleState>,
}

fn elapsed(now_ms: i64, since_ms: i64) -> u64 {
    u64::try_from(now_ms.saturating_sub(since_ms)).unwrap_or(0)
}

fn add_ms(at_ms: i64, ms: u64) -> i64 {
    at_ms.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX))
}

impl Throttle {
    /// A throttle with the default policy.
    pub fn new() -> Self {
        Throttle::default()
    }

    pub fn with_policy(policy: ThrottlePolicy) -> Self {
        Throttle {
            policy,
            keys: BTreeMap::new(),
        }
    }

    /// `Ok(())` if `key` may try to log in now, else `Err(ms until it may retry)`.
    pub fn check(&self, key: &str, now_ms: i64) -> Result<(), u64> {
        match self.keys.get(key) {
            Some(s) if now_ms < s.locked_until_ms => Err(elapsed(s.locked_until_ms, now_ms)),
            _ => Ok(()),
        }
    }

    /// Records a failed login for `key` at `now_ms`.
    pub fn failed(&mut self, key: &str, now_ms: i64) {
        let policy = self.policy;
        let state = self.keys.entry(key.to_string()).or_default();
        if now_ms < state.locked_until_ms {
            return;
        }
        if state.locks > 0 && elapsed(now_ms, state.last_failure_ms) >= policy.forget_after_ms {
            state.locks = 0;
        }
        state
            .failures
            .retain(|&t| elapsed(now_ms, t) < policy.window_ms && t <= now_ms);
        state.failures.push(now_ms);
        state.last_failure_ms = now_ms;
        if state.failures.len() >= policy.max_failures.max(1) as usize {
            state.locks = state.locks.saturating_add(1);
            state.locked_until_ms = add_ms(now_ms, policy.lock_ms(state.locks));
            state.failures.clear();
        }
    }

    /// A successful login: forgets everything about `key`.
    pub fn succeeded(&mut self, key: &str) {
        self.keys.remove(key);
    }

    /// Drops keys that hold no information any more (not locked, no failure within
    /// `forget_after_ms`), to bound memory. Never changes a decision.
    pub fn prune(&mut self, now_ms: i64) {
        let policy = self.policy;
        self.keys.retain(|_, s| {
            now_ms < s.locked_until_ms
                || elapsed(now_ms, s.last_failure_ms) < policy.forget_after_ms.max(policy.window_ms)
        });
    }
}
