//! Identity and governance through the real binary: users and password login, scoped role
//! bindings, API tokens, `auth can-i`, login throttling, the audit log and change records —
//! and no password or token in any log line or output where it does not belong.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{As, DEMO, Ferry, SERIAL, admin, bounded, deploy_as, free_port, ok, run, user};

const LIMIT: Duration = Duration::from_secs(240);
const ALICE_PASSWORD: &str = "correct horse battery staple";
const ALICE_NEW_PASSWORD: &str = "tr0ub4dor and three more words";

/// App `shop` with environments dev and production, one `ferry-demo` replica each.
fn write_shop_manifest(ferry: &Ferry) -> PathBuf {
    let script = format!(
        "echo $$ >> '{pids}'; exec '{DEMO}' --port \"$PORT\" --version \"$VERSION\"",
        pids = ferry.pids_file().display(),
    );
    let run = serde_json::to_string(&["sh", "-c", &script]).expect("json");
    let mark = serde_json::to_string(&ferry.mark).expect("json");
    let yaml = format!(
        "app: shop
services:
  web:
    run: {run}
    replicas: 1
    env: {{ FERRY_TEST_MARK: {mark} }}
    stop_timeout: 5s
    health: {{ path: /health, interval: 300ms, timeout: 300ms, start_timeout: 15s }}
environments:
  dev:
    listen: 127.0.0.1:{dev}
  production:
    listen: 127.0.0.1:{prod}
",
        dev = free_port(),
        prod = free_port(),
    );
    let path = ferry.dir.path().join("shop.yaml");
    std::fs::write(&path, yaml).expect("write manifest");
    path
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn read_config_token(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["token"].as_str().map(str::to_string)
}

/// Everything the server wrote to its log files.
fn server_log_text(ferry: &Ferry) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(ferry.dir.path())
        .expect("test dir")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("server-") {
            text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    // the replicas' and proxy's logs under the data dir too
    let mut dirs = vec![ferry.data.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "log") {
                text.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_roles_tokens_audit_and_change_records() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let admin = admin(&ferry);
        let alice = user(&ferry, "alice");
        // every CLI output that must not show a secret
        let mut seen = String::new();
        macro_rules! cli {
            ($who:expr, $args:expr) => {
                cli!($who, $args, None)
            };
            ($who:expr, $args:expr, $stdin:expr) => {{
                let out = run(&ferry, $who, $args, $stdin).await;
                seen.push_str(&format!("$ ferry {}\n{out}\n", $args.join(" ")));
                out
            }};
        }

        // --- the admin adds alice and gives her developer on shop, dev only
        let out = cli!(
            &admin,
            &["users", "add", "alice", "--password-stdin"],
            Some(&format!("{ALICE_PASSWORD}\n"))
        );
        ok(&out, "users add");
        let out = cli!(
            &admin,
            &["users", "add", "mallory", "--password-stdin"],
            Some("short\n")
        );
        assert_eq!(out.code, 2, "a short password is invalid input:\n{out}");
        let out = cli!(&admin, &["users", "list", "-o", "json"]);
        ok(&out, "users list");
        let users = out.json();
        assert!(
            users
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u["name"] == "alice" && u["disabled"] == false),
            "{out}"
        );

        let manifest = write_shop_manifest(&ferry);
        let out = cli!(&admin, &["apply", "-f", manifest.to_str().unwrap()]);
        ok(&out, "apply");

        let out = cli!(
            &admin,
            &[
                "grant",
                "alice",
                "developer",
                "--app",
                "shop",
                "--env",
                "dev",
                "-o",
                "json"
            ]
        );
        ok(&out, "grant");
        let binding_id = out.json()["id"].as_i64().expect("binding id");
        // a typo would grant nothing: refused, naming the near miss
        let out = cli!(&admin, &["grant", "alice", "developer", "--app", "shp"]);
        assert_ne!(out.code, 0, "{out}");
        assert!(
            out.stderr
                .contains("no app named \"shp\" (did you mean shop?)")
                && out.stderr.contains("--allow-missing"),
            "{out}"
        );
        let out = cli!(&admin, &["bindings", "--user", "alice"]);
        ok(&out, "bindings");
        assert!(
            out.stdout.contains("developer") && out.stdout.contains("shop"),
            "{out}"
        );

        // custom roles
        let out = cli!(
            &admin,
            &[
                "roles",
                "create",
                "releaser",
                "--permission",
                "deploy",
                "--permission",
                "view",
                "--description",
                "ships releases"
            ]
        );
        ok(&out, "roles create");
        let out = cli!(&admin, &["roles", "list"]);
        ok(&out, "roles list");
        assert!(
            out.stdout.contains("releaser") && out.stdout.contains("custom"),
            "{out}"
        );
        assert!(out.stdout.contains("developer"), "{out}");
        let out = cli!(&admin, &["roles", "delete", "releaser"]);
        ok(&out, "roles delete");
        let out = cli!(&admin, &["roles", "delete", "admin"]);
        assert_eq!(out.code, 7, "built-in roles cannot be deleted:\n{out}");

        // --- alice logs in with her password
        let out = cli!(
            &alice,
            &["login", "--user", "alice", "--password-stdin"],
            Some(&format!("{ALICE_PASSWORD}\n"))
        );
        ok(&out, "alice's login");
        assert!(out.stdout.contains("alice"), "{out}");
        let session = read_config_token(&alice.config).expect("a session token in the config");
        assert!(!out.stdout.contains(&session) && !out.stderr.contains(&session));
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&alice.config)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "config file mode {mode:o}");
        }
        let out = cli!(&alice, &["whoami", "-o", "json"]);
        ok(&out, "whoami");
        assert_eq!(out.json()["name"], "user:alice", "{out}");
        assert_eq!(out.json()["kind"], "user", "{out}");

        // --- she may deploy to dev ...
        let out = cli!(
            &alice,
            &[
                "deploy",
                "shop",
                "--env",
                "dev",
                "--version",
                "1.0.0",
                "--wait",
                "--timeout",
                "60s",
                "-o",
                "json",
                "--reason",
                "CHG-1234 first release"
            ]
        );
        ok(&out, "alice's deploy to dev");
        // (`deploy --wait -o json` also prints a human line after the JSON: take the JSON)
        let first: serde_json::Value = serde_json::Deserializer::from_str(&out.stdout)
            .into_iter()
            .next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("no JSON from deploy -o json:\n{out}"));
        let deployment_id = first["id"].as_i64().expect("deployment id");

        // ... not to production: 403 = exit 5, with the reason
        let out = cli!(
            &alice,
            &[
                "deploy",
                "shop",
                "--env",
                "production",
                "--version",
                "1.0.0"
            ]
        );
        assert_eq!(out.code, 5, "{out}");
        assert!(
            out.stderr.contains("denied") && out.stderr.contains("production not in scope"),
            "the 403 should say why:\n{out}"
        );

        // --- can-i
        let out = cli!(
            &alice,
            &["auth", "can-i", "deploy", "shop", "--env", "production"]
        );
        assert_eq!(out.code, 1, "{out}");
        assert!(out.stdout.starts_with("no\n"), "{out}");
        assert!(
            out.stdout
                .contains(&format!("#{binding_id} developer on shop [dev]"))
                && out.stdout.contains("production not in scope"),
            "can-i should name the binding and why it does not apply:\n{out}"
        );
        let out = cli!(&alice, &["auth", "can-i", "deploy", "shop", "--env", "dev"]);
        ok(&out, "can-i deploy dev");
        assert!(out.stdout.starts_with("yes\n"), "{out}");
        assert!(
            out.stdout.contains(&format!("binding #{binding_id}")),
            "{out}"
        );
        let out = cli!(
            &admin,
            &[
                "auth",
                "can-i",
                "deploy",
                "shop",
                "--env",
                "production",
                "--as",
                "alice",
                "-o",
                "json"
            ]
        );
        assert_eq!(out.code, 1, "{out}");
        assert_eq!(out.json()["subject"], "user:alice", "{out}");
        assert_eq!(out.json()["allowed"], false, "{out}");

        // --- a scoped, expiring token: usable in scope only
        let out = cli!(
            &alice,
            &[
                "tokens",
                "create",
                "--name",
                "ci",
                "--role",
                "deployer",
                "--app",
                "shop",
                "--env",
                "dev",
                "--expires",
                "1h"
            ]
        );
        ok(&out, "tokens create");
        assert!(out.stderr.contains("shown only this once"), "{out}");
        let ci_token = out.stdout.trim().to_string();
        assert!(ci_token.starts_with("ferry_"), "{out}");
        let ci = As {
            config: ferry.dir.path().join("ci-config.json"),
            token: Some(&ci_token),
        };
        let out = cli!(
            &ci,
            &[
                "deploy",
                "shop",
                "--env",
                "dev",
                "--version",
                "1.0.1",
                "--wait",
                "--timeout",
                "60s"
            ]
        );
        ok(&out, "deploy with the CI token");
        let out = cli!(
            &ci,
            &[
                "deploy",
                "shop",
                "--env",
                "production",
                "--version",
                "1.0.1"
            ]
        );
        assert_eq!(out.code, 5, "out of the token's scope:\n{out}");
        let out = cli!(&ci, &["rollback", "shop", "--env", "dev"]);
        assert_eq!(out.code, 5, "deployer has no rollback:\n{out}");
        let out = cli!(
            &ci,
            &["tokens", "create", "--name", "x", "--role", "viewer"]
        );
        assert_eq!(out.code, 5, "tokens cannot mint tokens:\n{out}");

        // a developer cannot mint an admin token
        let out = cli!(
            &alice,
            &["tokens", "create", "--name", "evil", "--role", "admin"]
        );
        assert_eq!(out.code, 5, "{out}");
        assert!(out.stderr.contains("more rights than its maker"), "{out}");
        assert!(out.stdout.trim().is_empty(), "no token printed:\n{out}");

        let out = cli!(&alice, &["tokens", "list", "-o", "json"]);
        ok(&out, "tokens list");
        let tokens = out.json();
        let ci_entry = tokens
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "ci")
            .unwrap_or_else(|| panic!("ci token listed:\n{out}"))
            .clone();
        assert_eq!(ci_entry["state"], "active");
        assert!(ci_entry["expires_at_ms"].as_i64().is_some());
        assert!(ci_entry.get("token").is_none() && ci_entry.get("token_hash").is_none());
        let ci_id = ci_entry["id"].as_i64().unwrap().to_string();
        let out = cli!(&alice, &["tokens", "list"]);
        ok(&out, "tokens list (text)");
        assert!(out.stdout.contains("LAST USED"), "{out}");
        let out = cli!(&alice, &["tokens", "revoke", &ci_id]);
        ok(&out, "tokens revoke");
        let out = cli!(&ci, &["apps"]);
        assert_eq!(out.code, 5, "a revoked token is refused:\n{out}");
        assert!(out.stderr.contains("revoked"), "{out}");

        // --- passwords: her own needs the current one
        let out = cli!(
            &alice,
            &["passwd", "--password-stdin"],
            Some(&format!("wrong current password\n{ALICE_NEW_PASSWORD}\n"))
        );
        assert_eq!(out.code, 5, "{out}");
        let out = cli!(
            &alice,
            &["passwd", "--password-stdin"],
            Some(&format!("{ALICE_PASSWORD}\n{ALICE_NEW_PASSWORD}\n"))
        );
        ok(&out, "passwd");

        // --- the audit log
        let out = cli!(&admin, &["audit", "-o", "json", "--limit", "1000"]);
        ok(&out, "audit");
        let records = out.json();
        let records = records.as_array().unwrap();
        let find = |pred: &dyn Fn(&serde_json::Value) -> bool| records.iter().any(pred);
        assert!(
            find(&|r| r["action"] == "login" && r["actor"] == "user:alice" && r["outcome"] == "ok"),
            "alice's login is recorded:\n{out}"
        );
        assert!(
            find(&|r| r["action"] == "deploy"
                && r["env"] == "production"
                && r["actor"] == "user:alice"
                && r["outcome"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("denied"))),
            "the denied deploy is recorded:\n{out}"
        );
        assert!(
            find(&|r| r["action"] == "deploy"
                && r["env"] == "dev"
                && r["outcome"] == "ok"
                && r["reason"] == "CHG-1234 first release"),
            "the deploy and its reason are recorded:\n{out}"
        );
        assert!(
            find(&|r| r["action"] == "tokens.create"
                && r["outcome"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("denied"))),
            "the refused admin token is recorded:\n{out}"
        );
        let out = cli!(&admin, &["audit", "--actor", "alice", "--action", "deploy"]);
        ok(&out, "audit (text, filtered)");
        for column in [
            "SEQ", "TIME", "ACTOR", "ACTION", "TARGET", "OUTCOME", "SUMMARY",
        ] {
            assert!(out.stdout.contains(column), "{out}");
        }
        assert!(out.stdout.contains("user:alice"), "{out}");
        assert!(
            !out.stdout.contains("users.create"),
            "filtered by action:\n{out}"
        );
        let out = cli!(
            &admin,
            &["audit", "--since", "1h", "--until", "2999-01-01T00:00:00Z"]
        );
        ok(&out, "audit with a time range");
        assert!(out.stdout.contains("login"), "{out}");
        let out = cli!(&admin, &["audit", "--since", "yesterday"]);
        assert_eq!(out.code, 2, "{out}");

        // alice sees only what her bindings show: no user administration records
        let out = cli!(&alice, &["audit", "-o", "json", "--limit", "1000"]);
        ok(&out, "alice's audit");
        assert!(
            out.json()
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["app"] == "shop"),
            "{out}"
        );

        let out = cli!(&admin, &["audit", "verify"]);
        ok(&out, "audit verify");
        assert!(out.stdout.contains("audit log ok"), "{out}");
        let out = cli!(&admin, &["audit", "verify", "-o", "json"]);
        ok(&out, "audit verify -o json");
        assert_eq!(out.json()["ok"], true);
        let out = cli!(&admin, &["audit", "checkpoints", "-o", "json"]);
        ok(&out, "audit checkpoints");
        assert!(out.json().is_array(), "{out}");

        let out = cli!(&admin, &["audit", "export"]);
        ok(&out, "audit export");
        let lines = json_lines(&out.stdout);
        assert!(lines.len() > 10, "{out}");
        for (i, r) in lines.iter().enumerate() {
            assert_eq!(r["seq"].as_i64(), Some(i as i64 + 1), "{r}");
            let hash = r["hash"].as_str().expect("hash");
            assert_eq!(hash.len(), 64, "{r}");
            let prev = r["prev_hash"].as_str().expect("prev_hash");
            if i == 0 {
                assert_eq!(prev, "0".repeat(64));
            } else {
                assert_eq!(prev, lines[i - 1]["hash"].as_str().unwrap(), "chain at {r}");
            }
        }
        let out = cli!(&admin, &["audit", "export", "--action", "login"]);
        ok(&out, "filtered export");
        assert!(
            json_lines(&out.stdout)
                .iter()
                .all(|r| r["action"] == "login"),
            "{out}"
        );

        // --- change record
        let id = deployment_id.to_string();
        let out = cli!(&alice, &["change-record", &id]);
        ok(&out, "change-record");
        assert!(out.stdout.starts_with("# Change record"), "{out}");
        assert!(
            out.stdout.contains("| Requested by | user:alice |"),
            "{out}"
        );
        assert!(out.stdout.contains("| Outcome | succeeded |"), "{out}");
        let out = cli!(&alice, &["change-record", &id, "-o", "json"]);
        ok(&out, "change-record -o json");
        assert_eq!(out.json()["requested_by"], "user:alice");
        assert_eq!(out.json()["outcome"], "succeeded");
        let out = cli!(&alice, &["change-record", "999999"]);
        assert_eq!(
            out.code, 5,
            "an unknown deployment is judged as global: alice may not learn it is missing\n{out}"
        );
        let out = cli!(&admin, &["change-record", "999999"]);
        assert_eq!(out.code, 6, "{out}");

        // --- disable (with a reason), logout
        let out = cli!(&alice, &["logout"]);
        ok(&out, "logout");
        assert_eq!(read_config_token(&alice.config), None);
        let out = run(
            &ferry,
            &As {
                config: alice.config.clone(),
                token: Some(&session),
            },
            &["whoami"],
            None,
        )
        .await;
        assert_eq!(out.code, 5, "the session ended on the server too:\n{out}");

        let out = cli!(
            &admin,
            &["users", "disable", "alice", "--reason", "a quitté l’équipe"]
        );
        ok(&out, "users disable");
        let out = cli!(
            &alice,
            &["login", "--user", "alice", "--password-stdin"],
            Some(&format!("{ALICE_NEW_PASSWORD}\n"))
        );
        assert_eq!(out.code, 5, "a disabled user cannot log in:\n{out}");
        let out = cli!(
            &admin,
            &["audit", "--action", "users.disable", "-o", "json"]
        );
        ok(&out, "audit users.disable");
        assert_eq!(out.json()[0]["reason"], "a quitté l’équipe", "{out}");
        let out = cli!(&admin, &["users", "enable", "alice"]);
        ok(&out, "users enable");
        let out = cli!(&admin, &["revoke", &binding_id.to_string()]);
        ok(&out, "revoke");
        let out = cli!(&admin, &["users", "list"]);
        ok(&out, "users list text");
        assert!(out.stdout.contains("alice"), "{out}");

        // --- no secret anywhere it should not be
        let logs = server_log_text(&ferry);
        assert!(!logs.is_empty(), "the server wrote logs");
        let export = run(&ferry, &admin, &["audit", "export"], None).await;
        let created_once = "ferry tokens create --name ci";
        for (what, secret) in [
            ("alice's password", ALICE_PASSWORD),
            ("alice's new password", ALICE_NEW_PASSWORD),
            ("the session token", session.as_str()),
            ("the CI token", ci_token.as_str()),
            ("the admin token", ferry.token.as_str()),
        ] {
            assert!(!logs.contains(secret), "{what} appears in the server logs");
            assert!(
                !export.stdout.contains(secret),
                "{what} appears in the audit log"
            );
            // CLI outputs: the CI token may appear once, where it was created
            let mut outputs = seen.clone();
            if secret == ci_token {
                let start = outputs.find(created_once).expect("tokens create output");
                let end = outputs[start..]
                    .find("\n$ ferry ")
                    .map(|e| start + e)
                    .unwrap_or(outputs.len());
                assert_eq!(outputs[start..end].matches(secret).count(), 1);
                outputs.replace_range(start..end, "");
            }
            assert!(!outputs.contains(secret), "{what} appears in a CLI output");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_logins_are_throttled() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let admin = admin(&ferry);
        let bob = user(&ferry, "bob");
        let out = run(
            &ferry,
            &admin,
            &["users", "add", "bob", "--password-stdin"],
            Some("bobs real password\n"),
        )
        .await;
        ok(&out, "users add bob");
        for attempt in 1..=5 {
            let out = run(
                &ferry,
                &bob,
                &["login", "--user", "bob", "--password-stdin"],
                Some("not bobs password\n"),
            )
            .await;
            assert_eq!(out.code, 5, "attempt {attempt}:\n{out}");
            assert!(
                out.stderr.contains("wrong username or password"),
                "attempt {attempt}:\n{out}"
            );
        }
        // now even the right password is refused for a while
        let out = run(
            &ferry,
            &bob,
            &["login", "--user", "bob", "--password-stdin"],
            Some("bobs real password\n"),
        )
        .await;
        assert_eq!(out.code, 5, "{out}");
        assert!(
            out.stderr.contains("too many failed logins, retry in "),
            "{out}"
        );
        assert!(read_config_token(&bob.config).is_none());

        // no password on stdin, no terminal: invalid input, nothing sent
        let out = run(&ferry, &bob, &["login", "--user", "bob"], None).await;
        assert_eq!(out.code, 2, "{out}");
        let out = run(&ferry, &bob, &["login"], None).await;
        assert_eq!(out.code, 2, "{out}");

        let out = run(
            &ferry,
            &admin,
            &["audit", "--action", "login", "-o", "json"],
            None,
        )
        .await;
        ok(&out, "audit");
        let records = out.json();
        let outcomes: Vec<&str> = records
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["outcome"].as_str())
            .collect();
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| o.starts_with("failed: wrong"))
                .count(),
            5,
            "{out}"
        );
        assert!(
            outcomes.iter().any(|o| o.starts_with("denied: throttled")),
            "{out}"
        );
        let logs = server_log_text(&ferry);
        assert!(!logs.contains("bobs real password") && !logs.contains("not bobs password"));
        assert!(!out.stdout.contains("bobs real password"));
    })
    .await;
}

/// Waits (bounded) until deployment `id` reaches `state`, through the CLI.
async fn wait_for_state(ferry: &Ferry, who: &As<'_>, id: i64, state: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = run(
            ferry,
            who,
            &["deployment", &id.to_string(), "-o", "json"],
            None,
        )
        .await;
        ok(&out, "deployment");
        let detail = out.json();
        if detail["deployment"]["state"] == state {
            return detail;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deployment #{id} never became {state}:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Production needs an approver: the requester can't approve her own deployment, someone
/// without the approver role can't either, the approver can; a rejection needs a reason and
/// ends the deployment, leaving the serving version in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn approvals_enforce_separation_of_duties() {
    let _serial = SERIAL.lock().await;
    bounded(LIMIT, async {
        let ferry = Ferry::start().await;
        let admin = admin(&ferry);
        let person = |name: &str| user(&ferry, name);
        let (alice, bob, carol) = (person("alice"), person("bob"), person("carol"));
        for (name, role, env) in [
            ("alice", "developer", None),
            ("bob", "approver", Some("production")),
            ("carol", "developer", None),
        ] {
            ok(
                &run(
                    &ferry,
                    &admin,
                    &["users", "add", name, "--password-stdin"],
                    Some(&format!("{ALICE_PASSWORD}\n")),
                )
                .await,
                "users add",
            );
            // shop is applied below, by alice: the roles are granted ahead of time
            let mut args = vec!["grant", name, role, "--app", "shop", "--allow-missing"];
            if let Some(env) = env {
                args.extend(["--env", env]);
            }
            ok(&run(&ferry, &admin, &args, None).await, "grant");
            let who = person(name);
            ok(
                &run(
                    &ferry,
                    &who,
                    &["login", "--user", name, "--password-stdin"],
                    Some(&format!("{ALICE_PASSWORD}\n")),
                )
                .await,
                "login",
            );
        }
        // alice is a developer who may also approve production: but never her own work
        ok(
            &run(
                &ferry,
                &admin,
                &[
                    "grant",
                    "alice",
                    "approver",
                    "--app",
                    "shop",
                    "--env",
                    "production",
                    "--allow-missing",
                ],
                None,
            )
            .await,
            "grant",
        );
        let manifest = write_shop_manifest(&ferry);
        let mut yaml = std::fs::read_to_string(&manifest).unwrap();
        yaml.push_str("    gates: { approvals: [{ role: approver }] }\n");
        std::fs::write(&manifest, yaml).unwrap();
        ok(
            &run(
                &ferry,
                &alice,
                &["apply", "-f", manifest.to_str().unwrap()],
                None,
            )
            .await,
            "apply",
        );

        let deploy = |version| deploy_as(&ferry, "alice", "shop", "production", version);
        let id = deploy("1.0.0").await;
        wait_for_state(&ferry, &alice, id, "awaiting-approval").await;
        let out = run(&ferry, &alice, &["approvals", &id.to_string()], None).await;
        ok(&out, "approvals");
        assert!(
            out.stdout
                .contains("waiting for 1 more approval from role approver (not user:alice)"),
            "{out}"
        );

        let out = run(&ferry, &alice, &["approve", &id.to_string()], None).await;
        assert_eq!(out.code, 5, "the requester cannot approve:\n{out}");
        assert!(
            out.stderr
                .contains("requested this deployment and cannot approve it"),
            "{out}"
        );
        let out = run(&ferry, &carol, &["approve", &id.to_string()], None).await;
        assert_eq!(
            out.code, 5,
            "approving needs the approve permission:\n{out}"
        );

        let out = run(&ferry, &bob, &["approve", &id.to_string()], None).await;
        ok(&out, "bob approves");
        assert!(
            out.stdout.contains("approved by user:bob (approver)"),
            "{out}"
        );
        let detail = wait_for_state(&ferry, &alice, id, "succeeded").await;
        let events: Vec<String> = detail["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap().to_string())
            .collect();
        assert!(
            events.iter().any(|m| m.contains("approved by user:bob")),
            "{events:#?}"
        );
        let out = run(&ferry, &alice, &["change-record", &id.to_string()], None).await;
        ok(&out, "change-record");
        assert!(
            out.stdout.contains("approved by user:bob (approver)"),
            "{out}"
        );

        // A rejection needs a reason, and ends the deployment; 1.0.0 keeps serving.
        let id = deploy("2.0.0").await;
        wait_for_state(&ferry, &alice, id, "awaiting-approval").await;
        let out = run(
            &ferry,
            &bob,
            &["approve", &id.to_string(), "--reject"],
            None,
        )
        .await;
        assert_eq!(
            out.code, 2,
            "a rejection without a reason is invalid:\n{out}"
        );
        let out = run(
            &ferry,
            &bob,
            &[
                "approve",
                &id.to_string(),
                "--reject",
                "--reason",
                "UAT non validée — voir ticket",
            ],
            None,
        )
        .await;
        ok(&out, "reject");
        let detail = wait_for_state(&ferry, &alice, id, "rejected").await;
        assert_eq!(
            detail["deployment"]["reason"],
            "rejected by user:bob: UAT non validée — voir ticket"
        );
        let out = run(
            &ferry,
            &alice,
            &["status", "shop", "--env", "production", "-o", "json"],
            None,
        )
        .await;
        ok(&out, "status");
        assert_eq!(out.json()["current_version"], "1.0.0");

        let out = run(
            &ferry,
            &admin,
            &["audit", "--action", "approve", "-o", "json"],
            None,
        )
        .await;
        ok(&out, "audit");
        let records = out.json();
        let records = records.as_array().unwrap();
        assert!(
            records.iter().any(|r| r["actor"] == "user:alice"
                && r["outcome"].as_str().unwrap().starts_with("failed: 403")),
            "{records:#?}"
        );
        assert!(
            records
                .iter()
                .any(|r| r["actor"] == "user:bob" && r["outcome"] == "ok"),
            "{records:#?}"
        );
    })
    .await;
}
