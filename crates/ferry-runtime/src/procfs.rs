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

/// CPU and memory of one process from its `/proc/PID/stat` line: (process group, CPU
/// ticks of it and of its waited-for children — fields 14 to 17 —, resident pages — field 24).
pub(crate) fn parse_usage(text: &str) -> Option<(i64, u64, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let number = |i: usize| fields.get(i)?.parse::<u64>().ok();
    let pgrp = fields.get(2)?.parse().ok()?;
    let ticks = (11..=14).try_fold(0u64, |sum, i| Some(sum.saturating_add(number(i)?)))?;
    Some((pgrp, ticks, number(21)?))
}

/// CPU time (ns) and resident memory (bytes) of each process group in `groups`, summed over
/// its live members (a reaped child's time counts in its parent's), from one pass over
/// `/proc`. Pages shared between members count once per member.
pub(crate) fn group_usage(
    groups: &std::collections::HashSet<i64>,
) -> std::collections::HashMap<i64, crate::Usage> {
    use nix::unistd::{SysconfVar, sysconf};
    let mut out = std::collections::HashMap::new();
    let tick_ns = match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => 1_000_000_000 / u64::try_from(hz).unwrap_or(100),
        _ => 10_000_000,
    };
    let page = match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(size)) if size > 0 => u64::try_from(size).unwrap_or(4096),
        _ => 4096,
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for pid in entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
    {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((pgrp, ticks, pages)) = parse_usage(&text)
            && groups.contains(&pgrp)
        {
            let u: &mut crate::Usage = out.entry(pgrp).or_insert(crate::Usage {
                cpu_ns: 0,
                memory_bytes: 0,
            });
            u.cpu_ns = u.cpu_ns.saturating_add(ticks.saturating_mul(tick_ns));
            u.memory_bytes = u.memory_bytes.saturating_add(pages.saturating_mul(page));
        }
    }
    out
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
    fn parses_usage_fields() {
        // utime 100, stime 20, cutime 3, cstime 4 (ticks); rss 500 pages
        let line = "42 (py thon) R 1 42 42 0 -1 0 0 0 0 0 100 20 3 4 20 0 1 0 1000 9999 500 0";
        assert_eq!(parse_usage(line), Some((42, 127, 500)));
        assert_eq!(parse_usage("42 (x) R 1 42"), None);
    }

    #[test]
    fn measures_a_busy_process_group() {
        let me = std::process::id();
        let own = read_stat(me).expect("own stat").pgrp;
        let start = group_usage(&[own].into());
        let before = start.get(&own).copied().expect("own group");
        assert!(before.memory_bytes > 0);
        // burn ~50 ms of CPU in this process; the group's time does not go backwards
        let deadline = std::time::Instant::now() + Duration::from_millis(50);
        let mut x = 0u64;
        while std::time::Instant::now() < deadline {
            x = x.wrapping_add(1);
        }
        assert!(x > 0);
        let after = group_usage(&[own].into())[&own];
        assert!(after.cpu_ns > before.cpu_ns, "{before:?} → {after:?}");
    }

    #[test]
    fn reads_own_stat() {
        let stat = read_stat(std::process::id()).expect("own stat");
        assert!(stat.start_time > 0);
        assert!(!stat.is_dead());
    }
}
