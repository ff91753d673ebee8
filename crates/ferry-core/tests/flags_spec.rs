//! Every case of the Unleash client specification (npm `@unleash/client-specification`
//! 6.1.0, kept in `tests/data/unleash-client-specification` with its licence) against
//! Ferry's engine. A file that appears in `index.json` but is not run fails the test.

use std::path::PathBuf;

use ferry_core::flags::{ClientFeatures, Context, DeltaEvent, Engine, EvalEnv, apply_delta};
use serde::Deserialize;

#[derive(Deserialize)]
struct SpecFile {
    name: String,
    state: serde_json::Value,
    #[serde(default)]
    tests: Vec<Case<bool>>,
    #[serde(default, rename = "variantTests")]
    variant_tests: Vec<Case<ExpectedVariant>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case<T> {
    description: String,
    context: Context,
    toggle_name: String,
    expected_result: T,
}

#[derive(Deserialize, Debug, PartialEq)]
struct ExpectedVariant {
    name: String,
    enabled: bool,
    #[serde(default)]
    feature_enabled: Option<bool>,
    #[serde(default)]
    payload: Option<ferry_core::flags::Payload>,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/unleash-client-specification")
}

fn load_state(value: serde_json::Value) -> ClientFeatures {
    if let Some(events) = value.get("events") {
        let mut state = ClientFeatures::default();
        let events: Vec<DeltaEvent> =
            serde_json::from_value(events.clone()).expect("delta events parse");
        for e in events {
            apply_delta(&mut state, e);
        }
        state
    } else {
        serde_json::from_value(value).expect("state parses")
    }
}

/// A fixed clock and a deterministic random source (random stickiness).
fn run<T>(f: impl FnOnce(&mut EvalEnv) -> T) -> T {
    let mut n: u32 = 0x9e37_79b9;
    let mut random = move || {
        n ^= n << 13;
        n ^= n >> 17;
        n ^= n << 5;
        n
    };
    let mut env = EvalEnv {
        now: "2026-01-01T00:00:00Z".parse().expect("time"),
        random: &mut random,
    };
    f(&mut env)
}

#[test]
fn every_case_of_the_unleash_client_specification_passes() {
    let index: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(dir().join("index.json")).expect("index.json"),
    )
    .expect("index parses");
    assert_eq!(index.len(), 22, "the 6.1.0 specification has 22 files");
    let (mut cases, mut failures) = (0, Vec::new());
    for file in &index {
        let text = std::fs::read_to_string(dir().join(file)).expect("spec file");
        let spec: SpecFile = serde_json::from_str(&text).expect("spec file parses");
        let engine = Engine::new(load_state(spec.state));
        assert!(
            !spec.tests.is_empty() || !spec.variant_tests.is_empty(),
            "{file} has no cases"
        );
        for case in &spec.tests {
            cases += 1;
            let got = run(|env| engine.is_enabled(&case.toggle_name, &case.context, env));
            if got != case.expected_result {
                failures.push(format!("{}: {} (got {got})", spec.name, case.description));
            }
        }
        for case in &spec.variant_tests {
            cases += 1;
            let r = run(|env| engine.resolve(&case.toggle_name, &case.context, env));
            let (name, payload, enabled, feature_enabled) = match r {
                Some(r) => match r.variant {
                    Some(v) => (v.name, v.payload, true, r.enabled),
                    None => ("disabled".to_string(), None, false, r.enabled),
                },
                None => ("disabled".to_string(), None, false, false),
            };
            let want = &case.expected_result;
            let ok = name == want.name
                && payload == want.payload
                && enabled == want.enabled
                && want.feature_enabled.is_none_or(|f| f == feature_enabled);
            if !ok {
                failures.push(format!(
                    "{}: {} (got {name} {payload:?} enabled={enabled} feature_enabled={feature_enabled})",
                    spec.name, case.description
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {cases} cases fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(cases, 279, "every case of the 22 files runs");
}

#[test]
fn random_stickiness_splits_about_evenly() {
    let state: ClientFeatures = serde_json::from_value(serde_json::json!({
        "features": [{"name": "f", "enabled": true, "strategies": [
            {"name": "flexibleRollout", "parameters": {"rollout": "30", "stickiness": "random", "groupId": "f"}}
        ]}]
    }))
    .expect("state");
    let engine = Engine::new(state);
    let on = run(|env| {
        (0..10_000)
            .filter(|_| engine.is_enabled("f", &Context::default(), env))
            .count()
    });
    assert!((2_700..3_300).contains(&on), "{on} of 10000 on at 30 %");
}
