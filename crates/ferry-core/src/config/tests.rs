use super::*;
use crate::manifest::parse;
use std::time::Duration;

fn manifest(yaml: &str) -> Manifest {
    match parse(yaml, "ferry.yaml") {
        Ok(m) => m,
        Err(e) => panic!("manifest should parse:\n{e}"),
    }
}

fn errors(yaml: &str) -> Vec<String> {
    match parse(yaml, "ferry.yaml") {
        Ok(_) => panic!("manifest should not parse"),
        Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn get<'a>(vars: &'a [EffectiveVar], name: &str) -> &'a EffectiveVar {
    vars.iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("{name} missing from {vars:?}"))
}

const LAYERED: &str = r#"
app: shop
vars:
  DB_NAME: shop
  DB_HOST: db.internal
  LOG_LEVEL: info
  GREETING: "hello from ${FERRY_APP}/${FERRY_ENV}/${FERRY_SERVICE} ${VERSION}"
services:
  web:
    run: ["./web", "--port", "${PORT}"]
    env:
      DATABASE_URL: "postgres://${DB_HOST}:5432/${DB_NAME}"
      LOG_LEVEL: warn
      LITERAL: "cost $5, $${NOT_A_VAR} and $HOME"
environments:
  staging:
    listen: 127.0.0.1:8080
    vars:
      DB_HOST: staging-db
      LOG_LEVEL: debug
  production:
    listen: 127.0.0.1:9080
"#;

#[test]
fn layers_and_sources() {
    let m = manifest(LAYERED);
    let staging = effective(&m, "staging", "web", "1.2.0").unwrap();
    assert_eq!(
        get(&staging, "DATABASE_URL").value,
        "postgres://staging-db:5432/shop"
    );
    assert_eq!(
        get(&staging, "DATABASE_URL").source,
        Source::Service("web".into())
    );
    // Environment vars win over the service's env (backwards compatible).
    assert_eq!(get(&staging, "LOG_LEVEL").value, "debug");
    assert_eq!(
        get(&staging, "LOG_LEVEL").source,
        Source::Env("staging".into())
    );
    assert_eq!(get(&staging, "DB_NAME").source, Source::App);
    assert_eq!(get(&staging, "VERSION").value, "1.2.0");
    assert_eq!(get(&staging, "VERSION").source, Source::Builtin);
    assert_eq!(
        get(&staging, "GREETING").value,
        "hello from shop/staging/web 1.2.0"
    );

    let production = effective(&m, "production", "web", "1.2.0").unwrap();
    assert_eq!(
        get(&production, "DATABASE_URL").value,
        "postgres://db.internal:5432/shop"
    );
    // Service env wins over app vars.
    assert_eq!(get(&production, "LOG_LEVEL").value, "warn");
    assert_eq!(
        get(&production, "LOG_LEVEL").source,
        Source::Service("web".into())
    );
    let names: Vec<&str> = production.iter().map(|v| v.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "sorted by name");
    assert!(!names.contains(&"PORT"), "PORT is per replica");
}

#[test]
fn escapes_and_lone_dollars() {
    let m = manifest(LAYERED);
    let vars = effective(&m, "production", "web", "1").unwrap();
    assert_eq!(
        get(&vars, "LITERAL").value,
        "cost $5, ${NOT_A_VAR} and $HOME"
    );
    assert_eq!(
        parse_template("$${A}${B}$").unwrap(),
        vec![
            Piece::Text("${A}".into()),
            Piece::Ref("B".into()),
            Piece::Text("$".into())
        ]
    );
    assert_eq!(parse_template("x ${A"), Err(()));
    assert_eq!(parse_template(""), Ok(vec![]));
}

#[test]
fn vars_reference_vars_across_layers() {
    let m = manifest(
        r#"
app: a
vars:
  HOST: "${REGION}.example.com"
  URL: "https://${HOST}/v${VERSION}"
  REGION: eu
services:
  web: { run: ["./w"] }
environments:
  us:
    listen: 127.0.0.1:8080
    vars: { REGION: us }
  eu:
    listen: 127.0.0.1:8081
"#,
    );
    let us = effective(&m, "us", "web", "2").unwrap();
    assert_eq!(get(&us, "URL").value, "https://us.example.com/v2");
    let eu = effective(&m, "eu", "web", "2").unwrap();
    assert_eq!(get(&eu, "URL").value, "https://eu.example.com/v2");
}

#[test]
fn unknown_reference_is_located_with_a_suggestion() {
    let errs = errors(
        r#"app: shop
vars:
  DB_HOST: db
services:
  web:
    run: ["./web"]
    env:
      DATABASE_URL: "postgres://${DB_HOSTT}:5432/x"
environments:
  prod: { listen: 127.0.0.1:8080 }
"#,
    );
    assert_eq!(
        errs,
        vec![
            "ferry.yaml:8:21: services.web.env.DATABASE_URL: unknown variable DB_HOSTT (hint: did you mean DB_HOST?)"
        ]
    );
}

#[test]
fn a_variable_missing_in_one_environment_is_an_error() {
    let errs = errors(
        r#"app: shop
services:
  web:
    run: ["./web"]
    env: { URL: "http://${HOST}" }
environments:
  staging: { listen: 127.0.0.1:8080, vars: { HOST: s } }
  prod: { listen: 127.0.0.1:8081 }
"#,
    );
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].starts_with("ferry.yaml:5:17: services.web.env.URL: unknown variable HOST in environment prod (hint: it is set only in environment staging"),
        "{errs:?}"
    );
}

#[test]
fn cycles_are_named() {
    let errs = errors(
        r#"app: shop
vars:
  A: "${B}"
  B: "x${C}"
  C: "${A}"
  SELF: "${SELF}"
services:
  web: { run: ["./web"] }
environments:
  prod: { listen: 127.0.0.1:8080 }
"#,
    );
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs[0].contains("vars.A: variables reference each other in a cycle: A -> B -> C -> A"),
        "{errs:?}"
    );
    assert!(
        errs[1].contains("vars.SELF: variables reference each other in a cycle: SELF -> SELF"),
        "{errs:?}"
    );
}

#[test]
fn secrets_ports_and_unclosed_are_explained() {
    let errs = errors(
        r#"app: shop
services:
  web:
    run: ["./web"]
    env:
      A: "${PORT}"
      B: "${API_KEY"
environments:
  prod: { listen: 127.0.0.1:8080 }
"#,
    );
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].contains("services.web.env.A: unknown variable PORT"));
    assert!(errs[0].contains("exists only in `run`"));
    assert!(errs[1].contains("services.web.env.B: `${` is missing its closing `}`"));
    assert!(errs[1].contains("$${"));
}

#[test]
fn top_level_vars_follow_the_naming_rules() {
    let errs = errors(
        r#"app: shop
vars: { VERSION: x, 9BAD: y }
services:
  web: { run: ["./web"] }
environments:
  prod: { listen: 127.0.0.1:8080 }
"#,
    );
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(
        errs.iter()
            .any(|e| e.contains("vars.VERSION: `VERSION` is set by Ferry"))
    );
    assert!(
        errs.iter()
            .any(|e| e.contains("vars.9BAD: invalid environment variable name"))
    );
}

#[test]
fn secrets_win_and_never_show_their_value() {
    let m = manifest(LAYERED);
    let vars = effective(&m, "staging", "web", "1").unwrap();
    let secrets = [SecretRef {
        name: "DB_NAME".into(),
        version: 3,
        fingerprint: "abcd".into(),
    }];
    let all = with_secrets(vars, &secrets);
    assert_eq!(get(&all, "DB_NAME").value, SECRET_PLACEHOLDER);
    assert_eq!(get(&all, "DB_NAME").source, Source::Secret);
}

#[test]
fn sources_round_trip_as_strings() {
    for s in [
        Source::App,
        Source::Env("staging".into()),
        Source::Service("web".into()),
        Source::Builtin,
        Source::Secret,
    ] {
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<Source>(&json).unwrap(), s);
    }
    assert_eq!(Source::Env("qa".into()).to_string(), "env:qa");
    assert!(Source::try_from("weird".to_string()).is_err());
}

fn secret(name: &str, version: i64, fp: &str) -> SecretRef {
    SecretRef {
        name: name.into(),
        version,
        fingerprint: fp.into(),
    }
}

#[test]
fn digest_is_stable_and_sensitive() {
    let m = manifest(LAYERED);
    let vars = effective(&m, "staging", "web", "1").unwrap();
    let run = m.services["web"].run.clone();
    let secrets = vec![secret("API_KEY", 2, "f2")];
    let a = summarize(&vars, &secrets, &run, None);
    let mut reversed = vars.clone();
    reversed.reverse();
    let b = summarize(&reversed, &secrets, &run, None);
    assert_eq!(a.digest(), b.digest(), "independent of order");
    assert_eq!(a.digest().len(), 64);
    // Round trip through JSON keeps the digest.
    let back: ConfigSummary = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
    assert_eq!(back.digest(), a.digest());
    assert!(a.changes_from(&b).is_empty());

    // A variable value.
    let mut other = vars.clone();
    other
        .iter_mut()
        .find(|v| v.name == "DB_HOST")
        .unwrap()
        .value = "x".into();
    let c = summarize(&other, &secrets, &run, None);
    assert_ne!(c.digest(), a.digest());
    assert_eq!(c.changes_from(&a), vec!["DB_HOST"]);

    // A secret version.
    let d = summarize(&vars, &[secret("API_KEY", 3, "f3")], &run, None);
    assert_ne!(d.digest(), a.digest());
    assert_eq!(d.changes_from(&a), vec!["secret API_KEY v2 → v3"]);

    // Secrets added / removed, variables added / removed, command line.
    let e = summarize(&vars[1..], &[], &run, Some("dir"));
    assert_eq!(
        e.changes_from(&a),
        vec![
            format!("{} (removed)", vars[0].name),
            "secret API_KEY (removed)".to_string(),
            "run/cwd".to_string()
        ]
    );
    assert_eq!(
        a.changes_from(&e),
        vec![
            format!("{} (added)", vars[0].name),
            "secret API_KEY v2 (added)".to_string(),
            "run/cwd".to_string()
        ]
    );

    // A secret shadows a variable of the same name: only the secret counts.
    let f = summarize(&vars, &[secret("DB_HOST", 1, "x")], &run, None);
    assert!(!f.vars.contains_key("DB_HOST"));
    // The digest never contains a value.
    let json = serde_json::to_string(&a).unwrap();
    assert!(!json.contains("staging-db"));
}

#[test]
fn a_version_change_changes_the_digest() {
    let m = manifest(LAYERED);
    let run = m.services["web"].run.clone();
    let one = summarize(
        &effective(&m, "staging", "web", "1").unwrap(),
        &[],
        &run,
        None,
    );
    let two = summarize(
        &effective(&m, "staging", "web", "2").unwrap(),
        &[],
        &run,
        None,
    );
    assert_ne!(one.digest(), two.digest());
}

#[test]
fn unknown_environment_or_service() {
    let m = manifest(LAYERED);
    assert_eq!(
        effective(&m, "nope", "web", "1"),
        Err(ConfigError::UnknownEnvironment("nope".into()))
    );
    assert_eq!(
        effective(&m, "staging", "nope", "1"),
        Err(ConfigError::UnknownService("nope".into()))
    );
}

fn env_config(env: &str, vars: &[(&str, &str, Source)], secrets: &[SecretRef]) -> EnvConfig {
    let vars = vars
        .iter()
        .map(|(n, v, s)| EffectiveVar {
            name: n.to_string(),
            value: v.to_string(),
            source: s.clone(),
        })
        .collect();
    EnvConfig {
        app: "shop".into(),
        env: env.into(),
        version: Some("1".into()),
        services: vec![ServiceConfig {
            service: "web".into(),
            vars: with_secrets(vars, secrets),
            secrets: secrets.to_vec(),
            digest: String::new(),
            errors: vec![],
            replicas: vec![],
        }],
    }
}

#[test]
fn diff_compares_values_and_secret_versions_only() {
    let a = env_config(
        "staging",
        &[
            ("SAME", "1", Source::App),
            ("HOST", "a", Source::Env("staging".into())),
            ("ONLY_A", "x", Source::App),
            ("FERRY_ENV", "staging", Source::Builtin),
        ],
        &[secret("KEY", 1, "fa"), secret("TOKEN", 2, "t")],
    );
    let b = env_config(
        "prod",
        &[
            ("SAME", "1", Source::App),
            ("HOST", "b", Source::Env("prod".into())),
            ("FERRY_ENV", "prod", Source::Builtin),
        ],
        &[secret("KEY", 3, "fb"), secret("TOKEN", 2, "other")],
    );
    let d = diff(&a, &b);
    let lines: Vec<String> = d
        .iter()
        .map(|d| {
            format!(
                "{} {} {} {:?} {:?}",
                d.service, d.name, d.kind, d.left, d.right
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            r#"web HOST different Some("a") Some("b")"#,
            r#"web KEY different Some("(secret) v1") Some("(secret) v3")"#,
            r#"web ONLY_A only-in-left Some("x") None"#,
        ]
    );
    assert!(diff(&a, &a).is_empty());
}

#[test]
fn apply_dry_run_lists_changed_vars() {
    let old = manifest(LAYERED);
    let new = manifest(&LAYERED.replace("DB_HOST: db.internal", "DB_HOST: db2.internal"));
    let lines = new.diff(Some(&old));
    assert_eq!(lines, vec!["~ vars.DB_HOST: db.internal -> db2.internal"]);
}

#[test]
fn environment_vars_are_the_layered_vars_without_any_service() {
    let m = manifest(LAYERED);
    let (vars, errors) = environment_vars(&m, "staging", "1.2.0");
    assert_eq!(get(&vars, "DB_HOST").value, "staging-db");
    assert_eq!(get(&vars, "DB_HOST").source, Source::Env("staging".into()));
    assert_eq!(get(&vars, "DB_NAME").source, Source::App);
    assert!(
        vars.iter().all(|v| v.name != "DATABASE_URL"),
        "no service env"
    );
    // GREETING names the service: a hook has none, so it is reported, not guessed.
    assert!(vars.iter().all(|v| v.name != "GREETING"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].to_string().contains("FERRY_SERVICE"),
        "{errors:?}"
    );
    let (_, errors) = environment_vars(&m, "nowhere", "1.2.0");
    assert_eq!(errors.len(), 1);
}

/// The CPU time this thread has used. "Bounded work" is measured in it, not in wall time,
/// which on a loaded machine (CI: 2 cores, other test binaries) grows with the load: a 0.7 s
/// check took 11.8 s of wall time there.
fn thread_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // After "pid (comm) ": the state is field 3, utime and stime (clock ticks of 1/100 s
    // on Linux) are fields 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(") ").unwrap() + 2..].split(' ').collect();
    let ticks = |i: usize| fields[i - 3].parse::<u64>().unwrap();
    Duration::from_millis((ticks(14) + ticks(15)) * 10)
}

/// A manifest whose `vars` are `T0: "x"`, then `T{i}: "${T{i-1}}${T{i-1}}"` up to `levels`.
fn doubling(levels: usize) -> String {
    let mut yaml = String::from("app: bomb\nvars:\n  T0: \"xxxxxxxxxxxxxxxx\"\n");
    for i in 1..=levels {
        yaml.push_str(&format!("  T{i}: \"${{T{}}}${{T{}}}\"\n", i - 1, i - 1));
    }
    yaml.push_str("services:\n  web:\n    run: [\"./web\"]\n    env:\n      ALL: \"${T");
    yaml.push_str(&format!("{levels}}}\"\n"));
    yaml.push_str("environments:\n  prod:\n    listen: 127.0.0.1:8080\n");
    yaml
}

#[test]
fn a_doubling_bomb_stops_at_the_value_bound_with_a_located_error() {
    // 30 levels would be 16 GiB; the first value over 128 KiB (T13: 16 B × 2^13) stops it.
    let started = thread_cpu_time();
    let errors = errors(&doubling(30));
    let took = thread_cpu_time() - started;
    assert!(took < Duration::from_secs(5), "took {took:?} of CPU");
    let all = errors.join("\n");
    assert!(
        all.contains(&format!(
            "ferry.yaml:17:8: vars.T14: `T14` expands to more than {MAX_VALUE_BYTES} bytes"
        )) || all.contains("more than 16 levels deep"),
        "{all}"
    );
    assert!(all.len() < 10_000, "errors stay short: {} bytes", all.len());
}

#[test]
fn value_bound_is_exact() {
    let at_limit = format!(
        "app: a\nvars:\n  A: \"{}\"\n  B: \"${{A}}\"\nservices:\n  web:\n    run: [\"./web\"]\nenvironments:\n  prod:\n    listen: 127.0.0.1:8080\n",
        "x".repeat(MAX_VALUE_BYTES)
    );
    let m = manifest(&at_limit);
    let vars = effective(&m, "prod", "web", "1.0.0").unwrap();
    assert_eq!(get(&vars, "B").value.len(), MAX_VALUE_BYTES);
    let over = at_limit.replace("B: \"${A}\"", "B: \"${A}!\"");
    let all = errors(&over).join("\n");
    assert!(
        all.contains(&format!(
            "vars.B: `B` expands to more than {MAX_VALUE_BYTES} bytes"
        )),
        "{all}"
    );
}

#[test]
fn the_total_of_one_replica_is_bounded() {
    // Nine values of 120 KiB each: each fits, together they pass 1 MiB.
    let mut yaml = format!("app: a\nvars:\n  BIG: \"{}\"\n", "x".repeat(120 * 1024));
    for i in 0..9 {
        yaml.push_str(&format!("  COPY{i}: \"${{BIG}}\"\n"));
    }
    yaml.push_str("services:\n  web:\n    run: [\"./web\"]\nenvironments:\n  prod:\n    listen: 127.0.0.1:8080\n");
    let all = errors(&yaml).join("\n");
    assert!(
        all.contains(&format!(
            "the variables of one replica expand to more than {MAX_EXPANDED_BYTES} bytes in total"
        )),
        "{all}"
    );
}

#[test]
fn reference_depth_is_bounded() {
    let mut yaml = String::from("app: a\nvars:\n  V0: x\n");
    for i in 1..=MAX_TEMPLATE_DEPTH + 1 {
        yaml.push_str(&format!("  V{i}: \"${{V{}}}\"\n", i - 1));
    }
    yaml.push_str("services:\n  web:\n    run: [\"./web\"]\nenvironments:\n  prod:\n    listen: 127.0.0.1:8080\n");
    let all = errors(&yaml).join("\n");
    assert!(
        all.contains(&format!("more than {MAX_TEMPLATE_DEPTH} levels deep")),
        "{all}"
    );
    assert!(all.contains("…"), "the chain is shortened: {all}");
    // One level less is fine.
    let ok = yaml.replace(
        &format!(
            "  V{}: \"${{V{}}}\"\n",
            MAX_TEMPLATE_DEPTH + 1,
            MAX_TEMPLATE_DEPTH
        ),
        "",
    );
    let m = manifest(&ok);
    let vars = effective(&m, "prod", "web", "1.0.0").unwrap();
    assert_eq!(get(&vars, &format!("V{MAX_TEMPLATE_DEPTH}")).value, "x");
}

#[test]
fn variable_count_is_bounded_per_map_and_checked_fast() {
    let count = 50_000;
    let mut yaml = String::from("app: a\nvars:\n");
    for i in 0..count {
        yaml.push_str(&format!("  V{i}: \"${{V{}}}\"\n", i + 1));
    }
    yaml.push_str("services:\n  web:\n    run: [\"./web\"]\nenvironments:\n  prod:\n    listen: 127.0.0.1:8080\n");
    let started = thread_cpu_time();
    let all = errors(&yaml).join("\n");
    let took = thread_cpu_time() - started;
    assert!(took < Duration::from_secs(10), "took {took:?} of CPU");
    assert!(
        all.contains(&format!(
            "ferry.yaml:2:1: vars: {count} variables, more than the limit of {MAX_VARIABLES}"
        )),
        "{all}"
    );
}

#[test]
fn checking_many_environments_and_services_is_bounded_work() {
    // 100 environments × 100 services, each replica with ~1 MiB of (valid) variables:
    // 10 GiB of expansion if nothing stopped it.
    let mut yaml = format!("app: a\nvars:\n  BIG: \"{}\"\n", "x".repeat(100 * 1024));
    for i in 0..9 {
        yaml.push_str(&format!("  C{i}: \"${{BIG}}\"\n"));
    }
    yaml.push_str("services:\n");
    for s in 0..100 {
        yaml.push_str(&format!(
            "  s{s}:\n    run: [\"./web\"]\n    route: /s{s}\n"
        ));
    }
    yaml.push_str("environments:\n");
    for e in 0..100 {
        yaml.push_str(&format!("  e{e}:\n    listen: 127.0.0.1:{}\n", 20000 + e));
    }
    let started = thread_cpu_time();
    let all = errors(&yaml).join("\n");
    let took = thread_cpu_time() - started;
    assert!(took < Duration::from_secs(20), "took {took:?} of CPU");
    assert!(
        all.contains(&format!(
            "templating 100 environment(s) × 100 service(s) takes more than {MAX_CHECK_WORK} bytes of work"
        )),
        "{all}"
    );
}

#[test]
fn other_templates_are_bounded_by_their_worst_case() {
    // `${VERSION}` in a run argument stands for up to 128 bytes: 20,000 of them would be
    // 2.5 MB of argv.
    let arg = "${VERSION}".repeat(20_000);
    let yaml = format!(
        "app: a\nservices:\n  web:\n    run: [\"./web\", \"{arg}\"]\nenvironments:\n  prod:\n    listen: 127.0.0.1:8080\n"
    );
    let all = errors(&yaml).join("\n");
    assert!(
        all.contains(&format!(
            "ferry.yaml:4:20: services.web.run[1]: 200000 bytes with 20000 placeholder(s) may expand to {} bytes, more than the limit of {MAX_VALUE_BYTES}",
            200_000 + 20_000 * MAX_PLACEHOLDER_BYTES
        )),
        "{all}"
    );
    // A long argument without placeholders is the caller's own text: not refused here.
    let plain = yaml.replace(&arg, &"x".repeat(200_000));
    manifest(&plain);
}

#[test]
fn services_and_environments_are_counted_before_anything_else() {
    let mut yaml = String::from("app: a\nservices:\n  web:\n    run: [\"./web\"]\nenvironments:\n");
    for e in 0..=crate::manifest::MAX_ENVIRONMENTS {
        yaml.push_str(&format!("  e{e}:\n    listen: 127.0.0.1:{}\n", 20000 + e));
    }
    let all = errors(&yaml);
    assert_eq!(
        all,
        vec![format!(
            "ferry.yaml:5:1: environments: {} environments, more than the limit of {} (hint: split the app into several apps)",
            crate::manifest::MAX_ENVIRONMENTS + 1,
            crate::manifest::MAX_ENVIRONMENTS
        )]
    );
}

#[test]
fn errors_are_few_and_short_whatever_the_input() {
    // A 1 MB bad app name, and 500 bad listen addresses.
    let mut yaml = format!(
        "app: \"{}\"\nservices:\n  web:\n    run: [\"./web\"]\nenvironments:\n",
        "A".repeat(1_000_000)
    );
    for e in 0..crate::manifest::MAX_ENVIRONMENTS {
        yaml.push_str(&format!("  e{e}:\n    listen: nowhere{e}\n"));
    }
    let all = errors(&yaml);
    assert_eq!(all.len(), crate::manifest::MAX_ERRORS + 1, "{all:?}");
    assert!(
        all[0].starts_with("ferry.yaml:1:6: app: invalid app name \"AAAA"),
        "{}",
        all[0]
    );
    assert!(
        all[0].contains("bytes)…") && all[0].len() < 2_000,
        "cut: {}",
        all[0]
    );
    assert!(
        all.last()
            .unwrap()
            .contains("1 more error(s) from here on are not shown"),
        "{all:?}"
    );
}
