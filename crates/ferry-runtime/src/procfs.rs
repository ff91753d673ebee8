//! Reading `/proc` and signalling processes safely (identity-checked: never a reused pid).

use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

use crate::ProcessIdentity;

/// The fields of `/proc/PID/stat` the runtime cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// Field 3: R, S, D, Z, X, ...
    pub state: char,
    /// Field 5: process group id.
    pub pgrp: i64,
    /// Field 22: start time in clock ticks since boot.
    pub start_time: u64,
}

impl Stat {
    /// A zombie or dead process: it no longer runs, whatever /proc still shows.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    // "pid (comm) state ppid pgrp ..." — comm may hold spaces and parentheses: split after the
    // last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 of the stat line.
    let state = fields.first()?.chars().next()?;
    let pgrp = fields.get(2)?.parse().ok()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some(Stat {
        state,
        pgrp,
        start_time,
    })
}

pub(crate) fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// True while a process with exactly this identity runs (not a zombie).
pub(crate) fn is_alive(identity: &ProcessIdentity) -> bool {
    matches!(read_stat(identity.pid), Some(stat) if stat.start_time == identity.start_time && !stat.is_dead())
}

fn pid_of(pid: u32) -> Option<Pid> {
    i32::try_from(pid)
        .ok()
        .filter(|p| *p > 1)
        .map(Pid::from_raw)
}

/// Sends `signal` to the process group led by `identity` (or the process alone when it does
/// not lead its group), after checking its start time. Returns false when nothing with this
/// identity exists (already gone, or the pid now belongs to someone else).
pub(crate) fn signal_identity(identity: &ProcessIdentity, signal: Signal) -> bool {
    let Some(pid) = pid_of(identity.pid) else {
        return false;
    };
    match read_stat(identity.pid) {
        Some(stat) if stat.start_time == identity.start_time => {
            let result = if stat.pgrp == i64::from(pid.as_raw()) {
                killpg(pid, signal)
            } else {
                kill(pid, signal)
            };
            if let Err(e) = result {
                tracing::debug!(pid = identity.pid, %signal, error = %e, "signal failed");
            }
            true
        }
        _ => false,
    }
}

/// SIGKILLs whatever is left in the process group the (now gone) leader `pid` led: children
/// of a replica that outlived it would otherwise hold its port. A group id cannot be reused
/// by a new process while members of the old group remain.
pub(crate) fn kill_stragglers(pid: u32) {
    if let Some(pid) = pid_of(pid) {
        let _ = killpg(pid, Signal::SIGKILL);
    }
}

/// True while some live (non-zombie) process belongs to process group `pgid`.
pub(crate) fn group_has_live_members(pgid: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_stat)
        .any(|stat| stat.pgrp == i64::from(pgid) && !stat.is_dead())
}

/// SIGKILLs the stragglers of a gone leader's group and waits (bounded) until none runs.
pub(crate) async fn kill_stragglers_and_wait(pid: u32, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        kill_stragglers(pid);
        if !group_has_live_members(pid) || tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls until the identity is gone or `timeout` passes. Returns true when gone.
pub(crate) async fn wait_gone(identity: &ProcessIdentity, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if !is_alive(identity) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_comm() {
        let line =
            "1234 (a (b) c) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let stat = parse_stat(line).expect("parse");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.pgrp, 1234);
        assert_eq!(stat.start_time, 987654);
        assert!(!stat.is_dead());
    }

    #[test]
    fn reads_own_stat() {
        let stat = read_stat(std::process::id()).expect("own stat");
        assert!(stat.start_time > 0);
        assert!(!stat.is_dead());
    }
}
