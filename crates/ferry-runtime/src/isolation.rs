//! What every process Ferry starts for a workload (replicas, hooks, gate and analysis
//! commands) gets: a clean environment and, when the server runs as root, an unprivileged
//! user.
//!
//! - **Environment**: nothing of the server's own environment (its database URL, tokens,
//!   `RUST_LOG` …) except [`PASSED_THROUGH`]; `HOME`, `USER` and `LOGNAME` describe the
//!   user the process runs as; then whatever the caller gives (manifest variables, secrets,
//!   Ferry's own `PORT`, `VERSION`, `FERRY_*`).
//! - **User**: [`resolve`] decides. A server running as root starts workloads as
//!   `default_user` (normally [`DEFAULT_USER`]) unless the environment says `run_as: root`
//!   (or another user) explicitly; a server running as another user cannot switch users,
//!   so workloads run as that user and an explicit `run_as` naming someone else is an error.

use std::collections::BTreeMap;
use std::path::PathBuf;

use nix::unistd::{Uid, User};

/// Who workloads run as when the server runs as root and nothing else is configured.
pub const DEFAULT_USER: &str = "nobody";
/// `PATH` when the server has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The server's variables a workload inherits (when set): nothing else of its environment.
pub const PASSED_THROUGH: &[&str] = &["PATH", "LANG", "LC_ALL", "TZ"];

/// An OS user a workload runs as (resolved from the user database).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl std::fmt::Display for RunAs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (uid {})", self.name, self.uid)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error("run_as {name:?}: no such user on this host")]
    UnknownUser { name: String },
    #[error("run_as {name:?}: cannot read the user database: {source}")]
    Lookup {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error(
        "run_as {name:?}: the Ferry server runs as uid {uid}, not root, so it can only start workloads as itself (remove run_as, or run the server as root)"
    )]
    NotRoot { name: String, uid: u32 },
}

impl RunAs {
    /// Looks a user up by name (or by numeric uid).
    pub fn lookup(name: &str) -> Result<RunAs, IsolationError> {
        let found = match name.parse::<u32>() {
            Ok(uid) => User::from_uid(Uid::from_raw(uid)),
            Err(_) => User::from_name(name),
        };
        match found {
            Ok(Some(user)) => Ok(RunAs {
                name: user.name,
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
                home: user.dir,
            }),
            Ok(None) => Err(IsolationError::UnknownUser {
                name: name.to_string(),
            }),
            Err(source) => Err(IsolationError::Lookup {
                name: name.to_string(),
                source,
            }),
        }
    }
}

/// Who a workload runs as. `explicit` is the environment's `run_as`; `default_user` applies
/// when the server runs as root and `explicit` is absent. `Ok(None)`: as the server's own
/// user (root only when `run_as: root` is explicit, or `default_user` is `root`).
pub fn resolve(
    explicit: Option<&str>,
    default_user: &str,
) -> Result<Option<RunAs>, IsolationError> {
    let me = Uid::effective();
    if me.is_root() {
        let name = explicit.unwrap_or(default_user);
        let user = RunAs::lookup(name)?;
        return Ok((user.uid != 0).then_some(user));
    }
    match explicit {
        None => Ok(None),
        Some(name) => {
            let user = RunAs::lookup(name)?;
            if user.uid == me.as_raw() {
                Ok(None)
            } else {
                Err(IsolationError::NotRoot {
                    name: name.to_string(),
                    uid: me.as_raw(),
                })
            }
        }
    }
}

/// The environment a workload starts from: [`PASSED_THROUGH`] (with [`DEFAULT_PATH`]) and
/// `HOME`/`USER`/`LOGNAME` of the user it runs as.
pub fn base_env(run_as: Option<&RunAs>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for name in PASSED_THROUGH {
        if let Ok(value) = std::env::var(name) {
            env.insert((*name).to_string(), value);
        }
    }
    env.entry("PATH".to_string())
        .or_insert_with(|| DEFAULT_PATH.to_string());
    match run_as {
        Some(user) => {
            env.insert("HOME".into(), user.home.display().to_string());
            env.insert("USER".into(), user.name.clone());
            env.insert("LOGNAME".into(), user.name.clone());
        }
        None => {
            for name in ["HOME", "USER", "LOGNAME"] {
                if let Ok(value) = std::env::var(name) {
                    env.insert(name.to_string(), value);
                }
            }
        }
    }
    env
}

/// Prepares `command` for a workload: a clean environment ([`base_env`], then `vars`) and,
/// when `run_as` is given, that user's uid and gid (and no supplementary groups).
pub fn apply(
    command: &mut tokio::process::Command,
    vars: &BTreeMap<String, String>,
    run_as: Option<&RunAs>,
) {
    command.env_clear().envs(base_env(run_as)).envs(vars);
    if let Some(user) = run_as {
        // std drops the supplementary groups (setgroups(0)) when root switches user.
        command.uid(user.uid).gid(user.gid);
    }
}

/// A hint for a failed start: what a workload running as another user needs.
pub fn spawn_hint(error: &std::io::Error, run_as: Option<&RunAs>) -> String {
    match run_as {
        Some(user) if error.kind() == std::io::ErrorKind::PermissionDenied => format!(
            " (it runs as {user}: the program, the directories above it and the working directory must be readable and searchable by that user; see run_as in docs/security.md)"
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_users_up_by_name_and_uid() {
        let root = RunAs::lookup("0").expect("uid 0");
        assert_eq!(root.name, "root");
        assert_eq!(RunAs::lookup("root").expect("root").uid, 0);
        assert!(matches!(
            RunAs::lookup("no-such-user-ferry"),
            Err(IsolationError::UnknownUser { .. })
        ));
    }

    #[test]
    fn base_env_has_only_the_minimal_set() {
        let user = RunAs {
            name: "svc".into(),
            uid: 1234,
            gid: 1234,
            home: "/home/svc".into(),
        };
        let env = base_env(Some(&user));
        assert_eq!(env["HOME"], "/home/svc");
        assert_eq!(env["USER"], "svc");
        assert!(env.contains_key("PATH"));
        let allowed = ["PATH", "LANG", "LC_ALL", "TZ", "HOME", "USER", "LOGNAME"];
        assert!(env.keys().all(|k| allowed.contains(&k.as_str())), "{env:?}");
    }

    #[test]
    fn resolves_by_the_servers_user() {
        if Uid::effective().is_root() {
            let nobody = resolve(None, DEFAULT_USER)
                .expect("nobody")
                .expect("a user");
            assert_eq!(nobody.name, "nobody");
            assert!(resolve(Some("root"), DEFAULT_USER).expect("root").is_none());
            assert!(resolve(None, "root").expect("root").is_none());
        } else {
            assert!(resolve(None, DEFAULT_USER).expect("self").is_none());
            assert!(matches!(
                resolve(Some("root"), DEFAULT_USER),
                Err(IsolationError::NotRoot { .. })
            ));
        }
        assert!(matches!(
            resolve(Some("no-such-user-ferry"), DEFAULT_USER),
            Err(IsolationError::UnknownUser { .. }) | Err(IsolationError::NotRoot { .. })
        ));
    }
}
