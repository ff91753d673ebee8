use super::*;
use crate::manifest::parse;

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
