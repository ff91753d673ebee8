//! Docker for the tests: is an engine there (skip, or fail under `FERRY_REQUIRE_DOCKER=1`
//! as `.ci/run` sets), test images built locally (no registry is reachable: a directory with
//! `ferry-demo`, `sh`, `sleep` and the shared libraries `ldd` lists, `docker import`ed), and
//! a guard that removes every container of a test's owner label, even when it fails.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub const SOCKET: &str = "/var/run/docker.sock";
/// The demo image's repository: one tag per version a test deploys ([`demo_versions`]).
pub const DEMO_REPOSITORY: &str = "ferry-test/demo";
/// The demo image: `ferry-demo` as its command, `USER 65534:65534`.
pub const DEMO_IMAGE: &str = "ferry-test/demo:1.0.0";
/// The same files without a `USER` (so it would run as root).
pub const ROOT_IMAGE: &str = "ferry-test/root:1.0.0";

/// Whether the tests can use a Docker engine. Without one: `false` after saying the test
/// is skipped, or a failure when `FERRY_REQUIRE_DOCKER=1`.
pub fn engine_or_skip() -> bool {
    let answer = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdin(Stdio::null())
        .output();
    let problem = match answer {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_string(),
        Err(e) => format!("cannot run `docker`: {e}"),
    };
    let required = std::env::var("FERRY_REQUIRE_DOCKER").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "FERRY_REQUIRE_DOCKER=1 but no Docker engine answers: {problem}"
    );
    eprintln!("SKIPPED: no Docker engine ({problem})");
    false
}

/// Builds the test images once per test binary (a fresh import each run, so they always
/// hold the `ferry-demo` just built).
pub fn images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = rootfs(&[
            (Path::new(super::DEMO), "ferry-demo"),
            (Path::new("/bin/sh"), "bin/sh"),
            (Path::new("/bin/sleep"), "bin/sleep"),
        ]);
        import(
            root.path(),
            DEMO_IMAGE,
            &["USER 65534:65534", "CMD [\"/ferry-demo\"]"],
        );
        import(root.path(), ROOT_IMAGE, &["CMD [\"/ferry-demo\"]"]);
        // The same image under a second version, for rolling updates.
        tag(DEMO_IMAGE, &format!("{DEMO_REPOSITORY}:1.1.0"));
    });
}

/// The image the README's section "building an image Ferry can run" describes, as `tag`:
/// the server (`ferry-demo`, it listens on `$PORT`) at `/app/server`, a migration tool at
/// `/app/migrate` (it prints `migrated to $VERSION: ARGS`), `USER 10001:10001`.
pub fn example_image(tag: &str) {
    let tools = tempfile::tempdir().expect("tempdir");
    let migrate = tools.path().join("migrate");
    std::fs::write(&migrate, "#!/bin/sh\necho \"migrated to $VERSION: $*\"\n").expect("migrate");
    std::fs::set_permissions(
        &migrate,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod migrate");
    let root = rootfs(&[
        (Path::new(super::DEMO), "app/server"),
        (&migrate, "app/migrate"),
        (Path::new("/bin/sh"), "bin/sh"),
    ]);
    import(
        root.path(),
        tag,
        &["USER 10001:10001", "CMD [\"/app/server\"]"],
    );
}

/// A root filesystem: each file (from this host) at its path in the image, with the shared
/// libraries `ldd` lists for it, and an empty `/tmp`.
fn rootfs(files: &[(&Path, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for (from, to) in files {
        copy(from, &root.join(to));
        for lib in libraries(from) {
            copy(&lib, &root.join(lib.strip_prefix("/").expect("absolute")));
        }
    }
    std::fs::create_dir_all(root.join("tmp")).expect("tmp");
    dir
}

/// The demo image under each of these versions (`ferry-test/demo:VERSION`), built first if
/// needed: a deployment of VERSION finds its image locally.
pub fn demo_versions(versions: &[&str]) {
    images();
    for version in versions {
        tag(DEMO_IMAGE, &format!("{DEMO_REPOSITORY}:{version}"));
    }
}

/// `docker tag IMAGE AS_TAG`.
pub fn tag(image: &str, as_tag: &str) {
    let out = Command::new("docker")
        .args(["tag", image, as_tag])
        .output()
        .expect("docker tag");
    assert!(out.status.success(), "docker tag {as_tag}: {out:?}");
}

/// Removes a tag a test added (`docker rmi TAG`: the image stays under its other tags).
pub fn untag(tag: &str) {
    let out = Command::new("docker")
        .args(["rmi", tag])
        .output()
        .expect("docker rmi");
    assert!(out.status.success(), "docker rmi {tag}: {out:?}");
}

/// One container, as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub id: String,
    pub replica: String,
    pub version: String,
    /// `running`, `exited`, `created`…
    pub state: String,
}

/// The replica containers (label `ferry.replica`) a Ferry server with this data directory
/// owns, in every state, as the engine lists them.
pub fn replica_containers(owner: &str) -> Vec<Listed> {
    let out = Command::new("docker")
        .args(["ps", "-a", "--no-trunc", "--filter"])
        .arg(format!("label=ferry.owner={owner}"))
        .args(["--filter", "label=ferry.replica", "--format"])
        .arg("{{.ID}} {{.Label \"ferry.replica\"}} {{.Label \"ferry.version\"}} {{.State}}")
        .output()
        .expect("docker ps");
    assert!(out.status.success(), "docker ps: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace().map(str::to_string);
            Some(Listed {
                id: words.next()?,
                replica: words.next()?,
                version: words.next()?,
                state: words.next()?,
            })
        })
        .collect()
}

fn copy(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
}

/// The shared libraries a binary needs (`ldd`), by absolute path.
fn libraries(binary: &Path) -> Vec<std::path::PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .find(|word| word.starts_with('/'))
                .map(std::path::PathBuf::from)
        })
        .collect()
}

fn import(root: &Path, tag: &str, changes: &[&str]) {
    let mut command = Command::new("docker");
    command.arg("import");
    for change in changes {
        command.args(["--change", change]);
    }
    let mut tar = Command::new("tar")
        .args(["-C"])
        .arg(root)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar");
    let out = command
        .args(["-", tag])
        .stdin(tar.stdout.take().expect("tar output"))
        .output()
        .expect("docker import");
    assert!(
        tar.wait().expect("tar").success(),
        "tar of {}",
        root.display()
    );
    assert!(
        out.status.success(),
        "docker import {tag}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The containers carrying `label=value` (all states), by id.
pub fn containers(label: &str, value: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter"])
        .arg(format!("label={label}={value}"))
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// `docker inspect --format TEMPLATE ID`.
pub fn inspect(id: &str, template: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "--format", template, id])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// For a test on Docker: removes the containers of this installation when dropped.
pub fn cleanup_for(runtime: super::RuntimeKind, ferry: &super::Ferry) -> Option<Cleanup> {
    (runtime == super::RuntimeKind::Docker).then(|| Cleanup(ferry.data.display().to_string()))
}

/// Removes every container of an owner when dropped (the test's own cleanup may not run).
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let ids = containers("ferry.owner", &self.0);
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
