//! Ferry's pure core: the manifest, the domain vocabulary, the API bodies and the rollout
//! decisions. Nothing here does I/O or reads a clock; callers pass `now` in.

// alerts:
pub mod alerts;
pub mod analysis;
pub mod api;
pub mod apply;
pub mod audit;
// console:
pub mod console;
pub mod dora;
pub mod duration;
pub mod endpoint;
pub mod flags;
pub mod gates;
// leader: the leader lease's rules
pub mod lease;
pub mod manifest;
pub mod model;
pub mod notify;
pub mod progressive;
pub mod rbac;
pub mod series;
pub mod strict;
// alerts: replica CPU and memory shares
pub mod usage;
// releases:
pub mod release;
pub mod rollout;
pub mod whole;
// config:
pub mod config;
// hooks:
pub mod hooks;

/// Invariants of the crate's shape: the pure core stays pure.
#[cfg(test)]
mod tidy {
    use std::path::{Path, PathBuf};

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The code before its `#[cfg(test)]` module (tests may measure time).
    fn non_test_code(text: &str) -> &str {
        text.split("#[cfg(test)]").next().unwrap_or(text)
    }

    #[test]
    fn the_core_has_no_runtime_io_or_clock() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let manifest = std::fs::read_to_string(root.join("Cargo.toml")).expect("Cargo.toml");
        let deps = manifest
            .split("[dependencies]")
            .nth(1)
            .and_then(|rest| rest.split("\n[").next())
            .expect("a [dependencies] table");
        for banned in [
            "tokio",
            "futures",
            "reqwest",
            "hyper",
            "axum",
            "sqlx",
            "bollard",
            "ferry-store",
            "ferry-runtime",
            "ferry-proxy",
            "ferry-server",
        ] {
            assert!(
                !deps.lines().any(|l| l.trim_start().starts_with(banned)),
                "ferry-core must not depend on {banned}: decisions are pure, the shell does I/O"
            );
        }
        let mut files = Vec::new();
        sources(&root.join("src"), &mut files);
        assert!(files.len() > 10, "found the sources");
        for file in files {
            if file.file_name().is_some_and(|n| n == "tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).expect("read source");
            for banned in [
                "tokio::",
                "std::fs::",
                "std::net::TcpStream",
                "std::process::",
                "SystemTime::now",
                "Instant::now",
                "thread::sleep",
            ] {
                assert!(
                    !non_test_code(&text).contains(banned),
                    "{} uses {banned}: ferry-core does no I/O and reads no clock (pass `now` in)",
                    file.display()
                );
            }
        }
    }
}
