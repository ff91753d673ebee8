//! `ferry.yaml`: every kind of mistake gets its precise error (file:line:column, field path,
//! hint); examples round-trip; the committed JSON Schema never drifts; diffs read well.

use std::path::{Path, PathBuf};

use ferry_core::manifest::{self, IntOrPercent, Manifest, ManifestError, Percent, Strategy};

const FILE: &str = "ferry.yaml";

/// Strips the leading newline and the common indentation, so test YAML can be indented in
/// the source while line 1 is its first line.
fn dedent(text: &str) -> String {
    let text = text.strip_prefix('\n').unwrap_or(text);
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|l| {
            if l.len() >= indent {
                &l[indent..]
            } else {
                l.trim_start()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn errors_of(yaml: &str) -> Vec<ManifestError> {
    match manifest::parse(&dedent(yaml), FILE) {
        Ok(m) => panic!("expected errors, the manifest parsed:\n{m:#?}"),
        Err(e) => e.errors,
    }
}

/// Parses `yaml` and asserts that the rendered errors contain every expected substring
/// (each on the same error line), and that there are exactly `expected.len()` errors.
#[track_caller]
fn check(yaml: &str, expected: &[&[&str]]) {
    let errors = errors_of(yaml);
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let all = lines.join("\n");
    assert_eq!(
        errors.len(),
        expected.len(),
        "wrong number of errors:\n{all}"
    );
    for want in expected {
        assert!(
            lines
                .iter()
                .any(|line| want.iter().all(|part| line.contains(part))),
            "no error line contains all of {want:?}; errors were:\n{all}"
        );
    }
}

fn ok(yaml: &str) -> Manifest {
    match manifest::parse(&dedent(yaml), FILE) {
        Ok(m) => m,
        Err(e) => panic!("expected a valid manifest, got:\n{e}"),
    }
}

const VALID: &str = "
    app: shop
    services:
      api:
        run: [./api, --port, '${PORT}']
    environments:
      dev:
        listen: 127.0.0.1:8080
";

// ---------------------------------------------------------------- syntax and types

#[test]
fn unknown_field_suggests_the_closest_and_lists_allowed() {
    check(
        "
        app: shop
        services:
          api:
            run: [./api]
            replica: 2
        environments:
          dev:
            listen: 127.0.0.1:8080
        ",
        &[&[
            "ferry.yaml:5:5: services.api.replica: unknown field `replica`",
            "(hint: did you mean `replicas`?",
            "allowed fields: `run`, `cwd`, `env`, `replicas`, `route`, `health`, `stop_timeout`, `drain_timeout`, `upstream_timeout`, `image`, `user`, `allow_root`, `resources`)",
        ]],
    );
}

#[test]
fn unknown_top_level_and_nested_fields() {
    check(
        "
        app: shop
        services: { api: { run: [./api] } }
        enviroments:
          dev: { listen: 127.0.0.1:8080 }
        ",
        &[&[
            "ferry.yaml:3:1: enviroments: unknown field `enviroments`",
            "did you mean `environments`?",
        ]],
    );
    check(
        "
        app: shop
        services:
          api:
            run: [./api]
            health: { path: /health, intervall: 1s }
        environments:
          dev: { listen: 127.0.0.1:8080 }
        ",
        &[&[
            "ferry.yaml:5:30: services.api.health.intervall: unknown field",
            "did you mean `interval`?",
        ]],
    );
    // Nothing close: only the list.
    check(
        "
        app: shop
        services:
          api:
            run: [./api]
            imag: nginx
        environments:
          dev: { listen: 127.0.0.1:8080 }
        ",
        &[&[
            "ferry.yaml:5:5: services.api.imag: unknown field `imag` (hint: did you mean `image`?",
        ]],
    );
}

#[test]
fn wrong_types_say_what_was_expected_with_an_example() {
    check(
        "
        app: shop
        services:
          api:
            run: [./api]
            replicas: three
        environments:
          dev: { listen: 127.0.0.1:8080 }
        ",
        &[&[
            "ferry.yaml:5:15: services.api.replicas: expected a whole number, found `three`",
            "(hint: write it like `replicas: 3`)",
        ]],
    );
    check(
        "
        app: shop
        services:
          api:
            run: ./api --port 8080
        environments:
          dev: { listen: 127.0.0.1:8080 }
        ",
        &[&[
            "ferry.yaml:4:10: services.api.run: expected a list, found `./api --port 8080`",
            r#"write it like `run: ["./server", "--port", "${PORT}"]`"#,
        ]],
    );
    check(
        "
        app: shop
        services:
          api:
            run: [./api]
        environments:
          dev: { listen: 127.0.0.1:8080, vars: [A, B] }
        ",
        &[&[
            "ferry.yaml:6:40: environments.dev.vars:",
            "write it like `vars: { LOG_LEVEL: info }`",
        ]],
    );
}

#[test]
fn manifest_must_be_a_map() {
    check(
        "
        - app: shop
        ",
        &[&[
            "ferry.yaml:1:1: expected a map, found a list",
            "a manifest is a map with `app`, `services` and `environments`",
        ]],
    );
}

#[test]
fn bad_duration() {
    check(
        "
        app: shop
        services:
          api:
            run: [./api]
            health:
              interval: 5
              timeout: soon
        environments:
          dev: { listen: 127.0.0.1:8080 }
        ",
        &[&[
            "ferry.yaml:6:17: services.api.health.interval: invalid duration \"5\"",
            "write it like 500ms, 10s, 2m or 1h30m",
        ]],
    );
}

#[test]
fn yaml_syntax_error_has_its_line() {
    check(
        "
        app: shop
        services:
          api:
            run: [./api, --port
        environments:
          dev: { listen: 127.0.0.1:8080 }
        ",
        &[&[
            "ferry.yaml:5:13: YAML syntax error:",
            "(hint: check indentation",
        ]],
    );
    check(
        "
        app: shop
        services:
        \tapi: {}
        ",
        &[&["ferry.yaml:3:2: YAML syntax error:", "tabs"]],
    );
}

#[test]
fn duplicate_keys_are_all_reported_with_the_first_line() {
    check(
        "
        app: shop
        services:
          api: { run: [./api] }
        environments:
          staging:
            listen: 127.0.0.1:8080
          production:
            listen: 127.0.0.1:8081
          staging:
            listen: 127.0.0.1:8082
            listen: 127.0.0.1:8083
        ",
        &[
            &[
                "ferry.yaml:9:3: environments.staging: duplicate environment `staging`, first written at line 5",
                "hint: a key may appear only once",
            ],
            &[
                "ferry.yaml:11:5: environments.staging.listen: duplicate key `listen`, first written at line 10",
            ],
        ],
    );
}

// ---------------------------------------------------------------- strategies

#[test]
fn strategy_accepts_bare_names_and_maps() {
    let base = "app: shop\nservices: { api: { run: [./api] } }\nenvironments:\n  dev:\n    listen: 127.0.0.1:8080\n    strategy: ";
    let parse = |s: &str| match manifest::parse(&format!("{base}{s}\n"), FILE) {
        Ok(m) => m
            .environments
            .get("dev")
            .map(|e| e.strategy.clone())
            .expect("dev"),
        Err(e) => panic!("{s}: {e}"),
    };
    let rolling = |surge, unavailable| {
        Strategy::Rolling(manifest::Rolling {
            max_surge: surge,
            max_unavailable: unavailable,
        })
    };
    assert_eq!(parse("recreate"), Strategy::Recreate {});
    assert_eq!(parse("{ recreate: {} }"), Strategy::Recreate {});
    assert_eq!(parse("{ recreate: }"), Strategy::Recreate {});
    assert_eq!(parse("rolling"), Strategy::default());
    assert_eq!(parse("{ rolling: {} }"), Strategy::default());
    assert_eq!(parse("{ rolling: }"), Strategy::default());
    assert_eq!(
        parse("{ rolling: { max_surge: 2, max_unavailable: '25%' } }"),
        rolling(IntOrPercent::Count(2), IntOrPercent::Percent(Percent(25)))
    );
    assert_eq!(
        parse("\n      rolling:\n        max_surge: 50%"),
        rolling(IntOrPercent::Percent(Percent(50)), IntOrPercent::Count(0))
    );
    // No strategy: rolling, surge 1, unavailable 0.
    let m = ok(VALID);
    assert_eq!(
        m.environments.get("dev").map(|e| e.strategy.clone()),
        Some(rolling(IntOrPercent::Count(1), IntOrPercent::Count(0)))
    );
}

#[test]
fn unknown_strategy_suggests() {
    check(
        "
        app: shop
        services: { api: { run: [./api] } }
        environments:
          dev:
            listen: 127.0.0.1:8080
            strategy: rollin
        ",
        &[&[
            "ferry.yaml:6:15: environments.dev.strategy: unknown strategy `rollin`",
            "(hint: did you mean `rolling`? expected one of: `recreate`, `rolling`, `canary`, `blue_green`)",
        ]],
    );
    check(
        "
        app: shop
        services: { api: { run: [./api] } }
        environments:
          dev:
            listen: 127.0.0.1:8080
            strategy: { canary: { steps: [] } }
        ",
        &[&[
            "ferry.yaml:6:27: environments.dev.strategy.canary.steps",
            "a canary needs at least one step",
        ]],
    );
    check(
        "
        app: shop
        services: { api: { run: [./api] } }
        environments:
          dev:
            listen: 127.0.0.1:8080
            strategy: { canary: { steps: [{ weight: 10 }], allow_unjudged: true } }
        ",
        &[&[
            "environments.dev.strategy.canary.allow_unjudged",
            "allow_unjudged only applies with a background `analysis`",
        ]],
    );
    check(
        "
        app: shop
        services: { api: { run: [./api] } }
        environments:
          dev:
            listen: 127.0.0.1:8080
            bake: 25h
          prod:
            listen: 127.0.0.1:8081
            bake: 0s
        ",
        &[
            &["environments.dev.bake", "bake is limited to 24h"],
            &["environments.prod.bake", "duration must be greater than 0"],
        ],
    );
    let m = ok("
        app: shop
        services: { api: { run: [./api] } }
        environments:
          prod: { listen: 127.0.0.1:8080, bake: 2m }
        ");
    assert_eq!(
        m.environments
            .get("prod")
            .and_then(|e| e.bake)
            .map(|b| b.get()),
        Some(std::time::Duration::from_secs(120))
    );
    check(
        "
        app: shop
        services: { api: { run: [./api] } }
        environments:
          dev:
            listen: 127.0.0.1:8080
            strategy: { rolling: { max_surge: 1, maxUnavailable: 0 } }
        ",
        &[&[
            "ferry.yaml:6:42: environments.dev.strategy.rolling.maxUnavailable: unknown field",
            "did you mean `max_unavailable`?",
        ]],
    );
    check(
        "
        app: shop
        services: { api: { run: [./api] } }
        environments:
          dev:
            listen: 127.0.0.1:8080
            strategy: { rolling: { max_surge: lots } }
        ",
        &[&[
            "environments.dev.strategy.rolling.max_surge: expected a count like 1 or a percentage like \"25%\", got \"lots\"",
        ]],
    );
}

#[test]
fn rolling_limits_not_both_zero_and_percentages_at_most_100() {
    check(
        "
        app: shop
        services: { api: { run: [./api] } }
        environments:
          dev:
            listen: 127.0.0.1:8080
            strategy: { rolling: { max_surge: 0, max_unavailable: '0%' } }
          prod:
            listen: 127.0.0.1:8081
            strategy:
              rolling:
                max_surge: 150%
        ",
        &[
            &[
                "ferry.yaml:6:26: environments.dev.strategy.rolling: max_surge and max_unavailable are both 0",
                "hint: allow at least one extra replica (`max_surge: 1`) or one missing (`max_unavailable: 1`)",
            ],
            &[
                "ferry.yaml:11:20: environments.prod.strategy.rolling.max_surge: max_surge 150% is above 100%",
            ],
        ],
    );
}

// ---------------------------------------------------------------- semantic rules

#[test]
fn replicas_between_1_and_64() {
    check(
        "
        app: shop
        services:
          api:
            run: [./api]
            replicas: 0
          web:
            run: [./web]
            route: /web
            replicas: 1000
        environments:
          dev:
            listen: 127.0.0.1:8080
            replicas: 65
        ",
        &[
            &[
                "ferry.yaml:5:15: services.api.replicas: replicas must be between 1 and 64, got 0",
                "a service runs at least 1 replica",
            ],
            &[
                "ferry.yaml:9:15: services.web.replicas: replicas must be between 1 and 64, got 1000",
                "at most 64 replicas",
            ],
            &[
                "ferry.yaml:13:15: environments.dev.replicas: replicas must be between 1 and 64, got 65",
            ],
        ],
    );
}

#[test]
fn missing_run_points_at_the_service() {
    check(
        "
        app: shop
        services:
          api:
            replicas: 2
          web:
            run: []
            route: /web
        environments:
          dev: { listen: 127.0.0.1:8080 }
        ",
        &[
            &[
                "ferry.yaml:3:3: services.api.run: `run` is required",
                r#"e.g. `run: ["./server", "--port", "${PORT}"]`"#,
            ],
            &["ferry.yaml:6:5: services.web.run: `run` is required"],
        ],
    );
}

#[test]
fn names_must_be_lowercase_dns_like() {
    check(
        "
        app: My_Shop
        services:
          API:
            run: [./api]
        environments:
          1prod: { listen: 127.0.0.1:8080 }
        ",
        &[
            &[
                "ferry.yaml:1:6: app: invalid app name \"My_Shop\"",
                "names match ^[a-z][a-z0-9-]{0,62}$",
                "e.g. `my-shop`",
            ],
            &[
                "ferry.yaml:3:3: services.API: invalid service name \"API\"",
                "e.g. `api`",
            ],
            &["ferry.yaml:6:3: environments.1prod: invalid environment name \"1prod\""],
        ],
    );
}

#[test]
fn app_services_and_environments_are_required_all_at_once() {
    check(
        "
        services: {}
        ",
        &[
            &[
                "ferry.yaml:1:1: app: an app name is required",
                "add a line like `app: shop`",
            ],
            &["ferry.yaml:1:1: services: at least one service is required"],
            &["environments: at least one environment is required"],
        ],
    );
}

#[test]
fn listen_must_be_ip_and_nonzero_port_unique_across_environments() {
    check(
        "
        app: shop
        services: { api: { run: [./api] } }
        environments:
          dev: { listen: localhost:8080 }
          qa: { listen: 127.0.0.1:0 }
          staging: { listen: 0.0.0.0:9000 }
          production: { listen: 127.0.0.1:9000 }
          perf: {}
        ",
        &[
            &[
                "ferry.yaml:4:18: environments.dev.listen: invalid listen address \"localhost:8080\"",
                "write it as IP:PORT",
            ],
            &["ferry.yaml:5:17: environments.qa.listen: listen address \"127.0.0.1:0\" has port 0"],
            &[
                "ferry.yaml:7:25: environments.production.listen: listen address `127.0.0.1:9000` clashes with environment `staging` (0.0.0.0:9000)",
                "every environment needs its own listener",
            ],
            &[
                "ferry.yaml:8:3: environments.perf: `listen` is required",
                "e.g. `listen: 127.0.0.1:8080`",
            ],
        ],
    );
}

#[test]
fn duplicate_listen_exact() {
    check(
        "
        app: shop
        services: { api: { run: [./api] } }
        environments:
          staging:
            listen: 127.0.0.1:8080
          production:
            listen: 127.0.0.1:8080
        ",
        &[&[
            "ferry.yaml:7:13: environments.production.listen: listen address `127.0.0.1:8080` clashes with environment `staging`",
        ]],
    );
}

#[test]
fn routes_start_with_slash_and_are_unique() {
    check(
        "
        app: shop
        services:
          api: { run: [./api], route: /api }
          admin: { run: [./admin], route: /api }
          web: { run: [./web], route: web }
        environments:
          dev: { listen: 127.0.0.1:8080 }
        ",
        &[
            &[
                "ferry.yaml:3:31: services.api.route: route `/api` is already used by service `admin`",
            ],
            &[
                "ferry.yaml:5:31: services.web.route: route \"web\" must start with `/`",
                "e.g. `route: /web`",
            ],
        ],
    );
}

#[test]
fn health_check_rules() {
    check(
        "
        app: shop
        services:
          api:
            run: [./api]
            stop_timeout: 0s
            health:
              path: health
              interval: 1s
              timeout: 3s
              healthy_threshold: 0
              unhealthy_threshold: 0
              start_timeout: 0ms
        environments:
          dev: { listen: 127.0.0.1:8080 }
        ",
        &[
            &["ferry.yaml:5:19: services.api.stop_timeout: duration must be greater than 0"],
            &[
                "ferry.yaml:7:13: services.api.health.path: health path \"health\" must start with `/`",
                "e.g. `path: /health`",
            ],
            &[
                "ferry.yaml:9:16: services.api.health.timeout: health timeout 3s is longer than the interval 1s",
                "hint: a check must finish before the next one starts: lower `timeout` or raise `interval` to at least 3s",
            ],
            &[
                "ferry.yaml:10:26: services.api.health.healthy_threshold: healthy_threshold must be at least 1",
            ],
            &[
                "ferry.yaml:11:28: services.api.health.unhealthy_threshold: unhealthy_threshold must be at least 1",
            ],
            &[
                "ferry.yaml:12:22: services.api.health.start_timeout: duration must be greater than 0",
            ],
        ],
    );
}

#[test]
fn default_timeout_longer_than_short_interval_points_at_interval_key() {
    // timeout defaults to 500ms: an interval of 200ms makes it too long.
    check(
        "
        app: shop
        services:
          api:
            run: [./api]
            health: { interval: 200ms }
        environments:
          dev: { listen: 127.0.0.1:8080 }
        ",
        &[&[
            "ferry.yaml:5:5: services.api.health.timeout: health timeout 500ms is longer than the interval 200ms",
        ]],
    );
}

#[test]
fn only_port_and_version_placeholders_in_run() {
    check(
        "
        app: shop
        services:
          api:
            run: ['./builds/${VERSION}/api', '--port=${PORT}', '--home=${HOME}', '${PORT']
        environments:
          dev: { listen: 127.0.0.1:8080 }
        ",
        &[
            &[
                "ferry.yaml:4:56: services.api.run[2]: unknown placeholder `${HOME}`",
                "(hint: `run` may use only `${PORT}` (the replica's port) and `${VERSION}` (the release version)",
            ],
            &[
                "ferry.yaml:4:74: services.api.run[3]: placeholder `${PORT` is missing its closing `}`",
            ],
        ],
    );
}

#[test]
fn env_var_names_and_reserved_names() {
    check(
        "
        app: shop
        services:
          api:
            run: [./api]
            env:
              PORT: '9000'
              LOG-LEVEL: info
        environments:
          dev:
            listen: 127.0.0.1:8080
            vars: { FERRY_ENV: x, 9LIVES: y, OK_1: z }
        ",
        &[
            &[
                "ferry.yaml:6:7: services.api.env.PORT: `PORT` is set by Ferry and cannot be overridden",
                "Ferry sets PORT, VERSION, FERRY_APP, FERRY_ENV, FERRY_SERVICE, FERRY_COMMIT, FERRY_RELEASE_TAG, FERRY_REPLICA_ID for every replica",
            ],
            &[
                "ferry.yaml:7:7: services.api.env.LOG-LEVEL: invalid environment variable name \"LOG-LEVEL\"",
            ],
            &["ferry.yaml:11:13: environments.dev.vars.FERRY_ENV: `FERRY_ENV` is set by Ferry"],
            &["ferry.yaml:11:27: environments.dev.vars.9LIVES: invalid environment variable name"],
        ],
    );
}

#[test]
fn many_errors_at_once_sorted_by_position() {
    let errors = errors_of(
        "
        app: Shop
        services:
          api:
            run: ['${HOME}/api']
            replicas: 0
        environments:
          dev: { listen: nowhere, vars: { PORT: '1' } }
          prod: { listen: 127.0.0.1:8080, strategy: { rolling: { max_surge: 0, max_unavailable: 0 } } }
        ",
    );
    let lines: Vec<String> = errors
        .iter()
        .map(|e| format!("{}:{} {}", e.line, e.column, e.path))
        .collect();
    assert_eq!(
        lines,
        [
            "1:6 app",
            "4:11 services.api.run[0]",
            "5:15 services.api.replicas",
            "7:18 environments.dev.listen",
            "7:35 environments.dev.vars.PORT",
            "8:56 environments.prod.strategy.rolling",
        ],
        "{}",
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(errors.iter().all(|e| e.file == FILE && e.hint.is_some()));
}

#[test]
fn error_display_format() {
    let with_hint = ManifestError {
        file: "f.yaml".into(),
        line: 3,
        column: 7,
        path: "services.api.replicas".into(),
        message: "bad".into(),
        hint: Some("do this".into()),
    };
    assert_eq!(
        with_hint.to_string(),
        "f.yaml:3:7: services.api.replicas: bad (hint: do this)"
    );
    let bare = ManifestError {
        path: String::new(),
        hint: None,
        ..with_hint
    };
    assert_eq!(bare.to_string(), "f.yaml:3:7: bad");
    let errors = manifest::ManifestErrors {
        errors: vec![bare.clone(), bare],
    };
    assert_eq!(errors.to_string(), "f.yaml:3:7: bad\nf.yaml:3:7: bad");
}

// ---------------------------------------------------------------- model helpers

#[test]
fn replicas_environment_override_wins() {
    let m = ok("
        app: shop
        services:
          api: { run: [./api], replicas: 3 }
        environments:
          dev: { listen: 127.0.0.1:8080, replicas: 1 }
          prod: { listen: 127.0.0.1:8081 }
    ");
    assert_eq!(m.replicas("api", "dev"), 1);
    assert_eq!(m.replicas("api", "prod"), 3);
    assert_eq!(m.replicas("nope", "prod"), 1);
    assert_eq!(m.environments.keys().collect::<Vec<_>>(), ["dev", "prod"]);
}

#[test]
fn int_or_percent_resolves() {
    assert_eq!(IntOrPercent::Percent(Percent(25)).resolve(10, true), 3);
    assert_eq!(IntOrPercent::Percent(Percent(25)).resolve(10, false), 2);
    assert_eq!(IntOrPercent::Count(2).resolve(10, true), 2);
    assert_eq!(IntOrPercent::Percent(Percent(50)).to_string(), "50%");
}

// ---------------------------------------------------------------- diff

#[test]
fn diff_lists_changes_in_a_stable_order() {
    let old = ok("
        app: shop
        services:
          api: { run: [./api], replicas: 2, route: /api }
          web: { run: [./web] }
        environments:
          qa: { listen: 127.0.0.1:8080 }
          production: { listen: 127.0.0.1:8090 }
    ");
    let new = ok("
        app: shop
        services:
          api: { run: [./api, -v], replicas: 3, route: /api, env: { LOG_LEVEL: debug } }
          admin: { run: [./admin], route: /admin }
        environments:
          production:
            listen: 127.0.0.1:8090
            strategy: recreate
    ");
    assert_eq!(
        new.diff(Some(&old)),
        [
            "+ services.admin",
            "+ services.api.env.LOG_LEVEL: debug",
            "~ services.api.replicas: 2 -> 3",
            r#"~ services.api.run: ["./api"] -> ["./api","-v"]"#,
            "- services.web",
            "~ environments.production.strategy: rolling -> recreate",
            "- environments.qa",
        ]
    );
    assert!(new.diff(Some(&new)).is_empty());
    assert!(old.diff(Some(&old.clone())).is_empty());
}

#[test]
fn diff_of_rolling_limits_and_first_apply() {
    let old = ok(VALID);
    let mut new = old.clone();
    if let Some((_, env)) = new.environments.0.first_mut() {
        env.strategy = Strategy::Rolling(manifest::Rolling {
            max_surge: IntOrPercent::Percent(Percent(25)),
            max_unavailable: IntOrPercent::Count(0),
        });
    }
    assert_eq!(
        new.diff(Some(&old)),
        ["~ environments.dev.strategy.rolling.max_surge: 1 -> 25%"]
    );
    assert_eq!(
        old.diff(None),
        ["+ app: shop", "+ services.api", "+ environments.dev"]
    );
}

// ---------------------------------------------------------------- examples and schema

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

#[test]
fn every_example_parses_validates_and_round_trips() {
    let mut files = Vec::new();
    yaml_files(&repo_root().join("examples"), &mut files);
    assert!(files.len() >= 2, "expected examples, found {files:?}");
    for file in files {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(&file).expect("read example");
        let parsed = manifest::parse(&text, &name).unwrap_or_else(|e| panic!("{e}"));
        let yaml = parsed.to_yaml();
        let again = manifest::parse(&yaml, &name)
            .unwrap_or_else(|e| panic!("re-parse of {name}:\n{e}\n{yaml}"));
        assert_eq!(parsed, again, "{name} does not round-trip:\n{yaml}");
        assert!(again.diff(Some(&parsed)).is_empty());
        // JSON too (what the API stores).
        let json = serde_json::to_string(&parsed).expect("json");
        let from_json: Manifest = serde_json::from_str(&json).expect("from json");
        assert_eq!(parsed, from_json, "{name} via JSON");
    }
}

#[test]
fn quickstart_example_is_what_quickstart_expects() {
    let text =
        std::fs::read_to_string(repo_root().join("examples/quickstart/ferry.yaml")).expect("read");
    assert_eq!(
        text.matches("FERRY_DEMO_BIN").count(),
        1,
        "the token quickstart replaces appears once, as argv[0]"
    );
    let m = manifest::parse(&text, "quickstart").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.app, "demo");
    let web = m.services.get("web").expect("web service");
    assert_eq!(
        web.run,
        [
            "FERRY_DEMO_BIN",
            "--port",
            "${PORT}",
            "--version",
            "${VERSION}"
        ]
    );
    assert_eq!(web.replicas, 3);
    assert_eq!(web.health.path, "/health");
    assert_eq!(web.health.interval.to_string(), "500ms");
    assert_eq!(
        m.environments.keys().collect::<Vec<_>>(),
        ["dev", "production"]
    );
    assert_eq!(
        m.environments.get("dev").map(|e| e.listen.as_str()),
        Some("127.0.0.1:8080")
    );
    let production = m.environments.get("production").expect("production");
    assert_eq!(production.listen, "127.0.0.1:8090");
    assert_eq!(production.strategy, Strategy::default());
}

#[test]
fn committed_json_schema_matches_the_types() {
    let path = repo_root().join("docs/ferry.schema.json");
    let generated = serde_json::to_string_pretty(&manifest::json_schema()).expect("schema") + "\n";
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).expect("write docs/ferry.schema.json");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/ferry.schema.json is out of date with the manifest types; regenerate it with\n    UPDATE_SCHEMA=1 cargo test -p ferry-core --test manifest committed_json_schema"
    );
}

#[test]
fn schema_describes_the_manifest() {
    let schema = manifest::json_schema();
    assert_eq!(
        schema["required"],
        serde_json::json!(["app", "services", "environments"])
    );
    assert!(
        schema["definitions"]["Service"]["required"].is_null(),
        "`run` or `image`: validation says which is missing"
    );
    assert_eq!(
        schema["definitions"]["Environment"]["required"],
        serde_json::json!(["listen"])
    );
    assert_eq!(
        schema["definitions"]["Service"]["properties"]["replicas"]["maximum"],
        64
    );
    assert!(
        schema["properties"]["app"]["description"]
            .as_str()
            .is_some_and(|d| d.contains("lowercase"))
    );
    assert!(schema["definitions"]["Strategy"]["oneOf"].is_array());
}

// ---------------------------------------------------------------- odd inputs

#[test]
fn anchors_and_merge_keys_work() {
    let m = ok("
        app: shop
        services:
          api: &base
            run: [./api, '--port', '${PORT}']
            replicas: 2
            route: /api
          web:
            <<: *base
            route: /
        environments:
          dev: { listen: 127.0.0.1:8080 }
    ");
    assert_eq!(
        m.services
            .get("web")
            .map(|s| (s.replicas, s.route.as_str())),
        Some((2, "/"))
    );
    // Errors inside merged content still name a field.
    check(
        "
        app: shop
        services:
          api: &base
            run: [./api]
            replicas: 0
            route: /api
          web:
            <<: *base
            route: /
        environments:
          dev: { listen: 127.0.0.1:8080 }
        ",
        &[
            &["services.api.replicas: replicas must be between 1 and 64, got 0"],
            &["services.web.replicas: replicas must be between 1"],
        ],
    );
}

#[test]
fn empty_and_null_sections() {
    let errors = errors_of("");
    assert!(!errors.is_empty());
    assert!(errors.iter().all(|e| e.file == FILE), "{errors:?}");
    check(
        "
        app: shop
        services:
        environments:
          dev: { listen: 127.0.0.1:8080 }
        ",
        &[&[
            "ferry.yaml:2:9: services: expected a map, found nothing",
            "write it like `services: {",
        ]],
    );
    check(
        "
        app: [shop]
        ",
        &[&[
            "ferry.yaml:1:6: app: expected a string, found a list (hint: write it like `app: shop`)",
        ]],
    );
    check(
        &format!("{VALID}---\napp: other\n"),
        &[&[
            "ferry.yaml:9:1: a manifest is a single YAML document",
            "remove the `---` line",
        ]],
    );
}

#[test]
fn run_as_is_an_os_user_name_or_uid() {
    let m = ok("
        app: shop
        services:
          api:
            run: [./api]
        environments:
          dev:
            listen: 127.0.0.1:8080
            run_as: www-data
          prod:
            listen: 127.0.0.1:8081
            run_as: root
        ");
    assert_eq!(
        m.environments.get("dev").unwrap().run_as.as_deref(),
        Some("www-data")
    );
    assert_eq!(
        m.environments.get("prod").unwrap().run_as.as_deref(),
        Some("root")
    );
    check(
        "
        app: shop
        services:
          api:
            run: [./api]
        environments:
          dev:
            listen: 127.0.0.1:8080
            run_as: ../Root
        ",
        &[&[
            "ferry.yaml:8:13: environments.dev.run_as: invalid run_as \"../Root\"",
            "numeric uid",
        ]],
    );
}

#[test]
fn docker_environments_need_images_and_valid_limits() {
    check(
        "
        app: shop
        services:
          api:
            run: [./api]
          web:
            image: shop/web:${VERSION}
            route: /web
            resources: { memory: 12Xi, cpus: 0 }
        environments:
          prod: { listen: 127.0.0.1:8080, runtime: docker }
        ",
        &[
            &[
                "services.api: environment prod runs on `runtime: docker`, so service api needs an `image`",
            ],
            &["services.web.resources.memory: unknown memory unit \"Xi\""],
            &["services.web.resources.cpus: cpus 0 is not between 0.01 and 1024"],
        ],
    );
    let ok = manifest::parse(
        &dedent(
            "
            app: shop
            services:
              web:
                image: shop/web:${VERSION}
                user: \"1000:1000\"
                resources: { memory: 256Mi, cpus: 0.5 }
            environments:
              prod: { listen: 127.0.0.1:8080, runtime: docker }
            ",
        ),
        FILE,
    )
    .expect("an image without run is enough");
    let web = ok.services.get("web").expect("web");
    let resources = web.resources.as_ref().expect("resources");
    assert_eq!(resources.memory_bytes(), Ok(Some(256 * 1024 * 1024)));
    assert_eq!(resources.nano_cpus(), Ok(Some(500_000_000)));
    assert_eq!(
        ok.environments.get("prod").expect("prod").runtime,
        manifest::RuntimeKind::Docker
    );
}
