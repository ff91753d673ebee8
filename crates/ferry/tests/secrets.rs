//! Encrypted secrets end to end: set from stdin, injected into replicas, never shown in
//! `secrets list`, the server logs, the audit export or the database files; still injected
//! after the master key is rotated.

mod common;

use std::time::Duration;

use common::{Ferry, SERIAL, Spec, bounded, files_containing};

const LIMIT: Duration = Duration::from_secs(240);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_are_injected_and_never_shown() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let mut spec = Spec::new("vault");
        spec.replicas = 1;
        spec.prelude =
            "L=$(printf %s \"$DB_PASSWORD\" | wc -c); H=no; [ -n \"$DB_PASSWORD\" ] && H=yes; \
             echo \"has:$H:len$((L)):$VERSION\";"
                .to_string();
        let manifest = ferry.write_manifest(&spec, "ferry.yaml");
        ferry.apply(&manifest).await;

        let value = format!("s3cr3t p@ss-{}", std::process::id());
        let len = value.len();
        let key_file = ferry.data.join("secrets.key");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key_file)
                .expect("secrets.key")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);

        // set from stdin (trailing newline dropped); empty and bad names refused
        let out = ferry
            .cli_with_stdin(
                &[
                    "secrets",
                    "set",
                    "vault",
                    "--env",
                    "production",
                    "DB_PASSWORD",
                ],
                &format!("{value}\n"),
            )
            .await;
        assert_eq!(out.code, 0, "{out}");
        assert!(out.stdout.contains("version 1, fingerprint "), "{out}");
        assert!(!out.stdout.contains(&value), "{out}");
        let out = ferry
            .cli_with_stdin(
                &["secrets", "set", "vault", "--env", "production", "EMPTY"],
                "",
            )
            .await;
        assert_eq!(out.code, 2, "{out}");
        let out = ferry
            .cli_with_stdin(
                &["secrets", "set", "vault", "--env", "production", "PORT"],
                "x",
            )
            .await;
        assert_eq!(out.code, 2, "{out}");

        // list: names, versions and fingerprints only
        let out = ferry
            .cli(&[
                "secrets",
                "list",
                "vault",
                "--env",
                "production",
                "-o",
                "json",
            ])
            .await;
        assert_eq!(out.code, 0, "{out}");
        let list = out.json();
        assert_eq!(list[0]["name"], "DB_PASSWORD");
        assert_eq!(list[0]["version"], 1);
        assert!(!out.stdout.contains(&value), "{out}");
        let out = ferry
            .cli(&["secrets", "list", "vault", "--env", "production"])
            .await;
        assert!(out.stdout.contains("DB_PASSWORD"), "{out}");

        // injected at replica start
        ferry.deploy_ok(&spec, "1.0.0").await;
        let logs = |version: &'static str| {
            let ferry = &ferry;
            let value = &value;
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                loop {
                    let out = ferry
                        .cli(&["logs", "vault", "--env", "production", "--tail", "1000"])
                        .await;
                    assert!(
                        !out.stdout.contains(value.as_str()),
                        "value in logs:\n{out}"
                    );
                    if out.stdout.contains(&format!("has:yes:len{len}:{version}")) {
                        return;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no has:yes for {version} in logs:\n{out}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        logs("1.0.0").await;

        // rotate the key: the key file changes, the secret survives a redeploy
        let before = std::fs::read_to_string(&key_file).expect("key");
        let out = ferry.cli(&["secrets", "rotate-key"]).await;
        assert_eq!(out.code, 0, "{out}");
        assert!(out.stdout.contains("1 secret(s) re-encrypted"), "{out}");
        let after = std::fs::read_to_string(&key_file).expect("key");
        assert_ne!(before, after);
        assert!(!ferry.data.join("secrets.key.new").exists());
        ferry.deploy_ok(&spec, "1.1.0").await;
        logs("1.1.0").await;

        // the audit says what happened, without the value
        let out = ferry.cli(&["audit", "export"]).await;
        assert_eq!(out.code, 0, "{out}");
        assert!(
            out.stdout
                .contains("secret DB_PASSWORD set (version 1, fingerprint "),
            "{out}"
        );
        assert!(
            out.stdout.contains("rotate the secrets master key"),
            "{out}"
        );
        assert!(!out.stdout.contains(&value), "value in the audit export");

        // delete
        let out = ferry
            .cli(&[
                "secrets",
                "rm",
                "vault",
                "--env",
                "production",
                "DB_PASSWORD",
            ])
            .await;
        assert_eq!(out.code, 0, "{out}");
        let out = ferry
            .cli(&[
                "secrets",
                "list",
                "vault",
                "--env",
                "production",
                "-o",
                "json",
            ])
            .await;
        assert_eq!(out.json(), serde_json::json!([]));

        // nowhere on disk: database files, server logs, replica logs, key files
        let found = files_containing(ferry.dir.path(), value.as_bytes());
        assert!(found.is_empty(), "the secret value is in {found:?}");
        let db_files: Vec<_> = std::fs::read_dir(&ferry.data)
            .expect("data dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("ferry.db"))
            .collect();
        assert!(!db_files.is_empty());
    })
    .await;
}
