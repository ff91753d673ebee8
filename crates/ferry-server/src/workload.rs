//! How the server starts workload processes (replicas, hooks, gate and analysis commands):
//! as which user and through which log filter. The rules (and the clean environment) live in
//! `ferry_runtime::isolation`; this holds the server's settings.

use std::path::{Path, PathBuf};

use ferry_core::manifest::Manifest;
use ferry_runtime::RunAs;
use ferry_runtime::isolation::{self, IsolationError};

#[derive(Debug, Clone)]
pub struct Workloads {
    /// Who workloads run as when the server is root and the environment says nothing.
    default_user: String,
    /// The `ferry` executable (runs the redacting log filter); None in API-only tests.
    ferry_exe: Option<PathBuf>,
    /// Where replica ports come from (`ferry server --ports`; None: anywhere).
    ports: Option<ferry_runtime::PortRange>,
}

impl Default for Workloads {
    fn default() -> Self {
        Workloads {
            default_user: isolation::DEFAULT_USER.to_string(),
            ferry_exe: None,
            ports: None,
        }
    }
}

impl Workloads {
    pub fn new(default_user: Option<String>, ferry_exe: Option<PathBuf>) -> Workloads {
        Workloads {
            default_user: default_user
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| isolation::DEFAULT_USER.to_string()),
            ferry_exe,
            ports: None,
        }
    }

    /// Replica ports from this range only.
    pub fn with_ports(mut self, ports: Option<ferry_runtime::PortRange>) -> Workloads {
        self.ports = ports;
        self
    }

    /// A free port for a replica (in the operator's range, if one was given).
    pub fn free_port(&self) -> Result<u16, ferry_runtime::RuntimeError> {
        ferry_runtime::free_port_in(self.ports)
    }

    /// The user the workloads of `env` run as (None: the server's own user).
    pub fn run_as(&self, manifest: &Manifest, env: &str) -> Result<Option<RunAs>, IsolationError> {
        let explicit = manifest
            .environments
            .get(env)
            .and_then(|e| e.run_as.as_deref());
        isolation::resolve(explicit, &self.default_user)
    }

    /// The `ferry` executable that runs the log filter.
    pub fn log_filter(&self) -> Option<&Path> {
        self.ferry_exe.as_deref()
    }
}
