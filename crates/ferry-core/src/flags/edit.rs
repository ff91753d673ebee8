//! Changing flags: validation of what is stored (bounded, located errors) and the edits
//! the CLI and API offer (rollout percentage, variants).

use super::model::{ClientFeatures, Feature, Operator, Payload, Strategy, Variant};

/// Bounds of what a flag may hold: every input is bounded before it is stored or served.
pub const MAX_NAME: usize = 100;
pub const MAX_FLAGS_PER_ENV: usize = 5_000;
pub const MAX_STRATEGIES: usize = 50;
pub const MAX_CONSTRAINTS: usize = 50;
pub const MAX_VALUES: usize = 1_000;
pub const MAX_VALUE_LEN: usize = 1_000;
pub const MAX_VARIANTS: usize = 50;
pub const MAX_PAYLOAD_LEN: usize = 16 * 1024;
pub const MAX_DEPENDENCIES: usize = 10;
pub const MAX_SEGMENTS: usize = 500;
/// Segment ids are whole numbers a JSON number holds exactly (±(2^53 − 1)), as
/// openapi.json documents: JavaScript SDKs read them as doubles.
pub const MAX_SEGMENT_ID: i64 = (1 << 53) - 1;
/// Variant weights of a flag add up to this (Unleash's convention: 100.0 %).
pub const TOTAL_WEIGHT: u32 = 1_000;

/// A flag that cannot be stored: `at` locates the problem (`flag checkout.strategies[0]…`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {message}")]
pub struct FlagError {
    pub at: String,
    pub message: String,
}

fn err(at: impl Into<String>, message: impl Into<String>) -> FlagError {
    FlagError {
        at: at.into(),
        message: message.into(),
    }
}

/// Flag names: 1–100 of `A-Z a-z 0-9 . _ - :`, starting with a letter or digit.
pub fn check_name(name: &str) -> Result<(), FlagError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(err(
            format!("flag {name:?}"),
            format!(
                "a flag name is 1-{MAX_NAME} characters of A-Z a-z 0-9 . _ - :, starting with a letter or digit"
            ),
        ))
    }
}

/// Checks a flag before it is stored (constraint values must parse: a value that cannot
/// match is a mistake when a person writes it).
pub fn validate(f: &Feature) -> Result<(), FlagError> {
    check_feature(f, true)
}

/// `strict`: constraint values must parse. An import is not strict: a document written by
/// another Unleash server may hold values that never match (the client specification has
/// some on purpose); they are kept and evaluate as Unleash's SDKs do.
fn check_feature(f: &Feature, strict: bool) -> Result<(), FlagError> {
    check_name(&f.name)?;
    let at = format!("flag {}", f.name);
    if f.strategies.len() > MAX_STRATEGIES {
        return Err(err(&at, format!("at most {MAX_STRATEGIES} strategies")));
    }
    for (i, s) in f.strategies.iter().enumerate() {
        validate_strategy(s, &format!("{at}.strategies[{i}]"), strict)?;
    }
    validate_variants(&f.variants, &format!("{at}.variants"))?;
    if f.dependencies.len() > MAX_DEPENDENCIES {
        return Err(err(&at, format!("at most {MAX_DEPENDENCIES} dependencies")));
    }
    for (i, d) in f.dependencies.iter().enumerate() {
        let at = format!("{at}.dependencies[{i}]");
        check_name(&d.feature).map_err(|e| err(&at, e.message))?;
        if d.feature == f.name {
            return Err(err(at, "a flag cannot depend on itself"));
        }
        if d.variants.as_ref().is_some_and(|v| v.len() > MAX_VARIANTS) {
            return Err(err(at, format!("at most {MAX_VARIANTS} variants")));
        }
    }
    for text in [&f.description, &f.kind, &f.project].into_iter().flatten() {
        if text.len() > MAX_VALUE_LEN {
            return Err(err(&at, format!("texts are at most {MAX_VALUE_LEN} bytes")));
        }
    }
    Ok(())
}

/// Checks a whole document (import): each flag, unique names, segments, dependencies that
/// name flags of the document.
pub fn validate_document(doc: &ClientFeatures) -> Result<(), FlagError> {
    if doc.features.len() > MAX_FLAGS_PER_ENV {
        return Err(err(
            "features",
            format!("at most {MAX_FLAGS_PER_ENV} flags"),
        ));
    }
    if doc.segments.len() > MAX_SEGMENTS {
        return Err(err("segments", format!("at most {MAX_SEGMENTS} segments")));
    }
    let mut seen = std::collections::HashSet::new();
    for f in &doc.features {
        check_feature(f, false)?;
        if !seen.insert(f.name.as_str()) {
            return Err(err(format!("flag {}", f.name), "appears twice"));
        }
    }
    for (i, s) in doc.segments.iter().enumerate() {
        let at = format!("segments[{i}]");
        check_segment_id(s.id, &format!("{at}.id"))?;
        if s.constraints.len() > MAX_CONSTRAINTS {
            return Err(err(at, format!("at most {MAX_CONSTRAINTS} constraints")));
        }
        for (j, c) in s.constraints.iter().enumerate() {
            validate_constraint(c, &format!("{at}.constraints[{j}]"), false)?;
        }
    }
    Ok(())
}

fn validate_strategy(s: &Strategy, at: &str, strict: bool) -> Result<(), FlagError> {
    const KNOWN: [&str; 7] = [
        "default",
        "userWithId",
        "gradualRolloutUserId",
        "gradualRolloutSessionId",
        "gradualRolloutRandom",
        "flexibleRollout",
        "remoteAddress",
    ];
    if !KNOWN.contains(&s.name.as_str()) {
        return Err(err(
            at,
            format!(
                "unknown strategy {:?} (one of {})",
                s.name,
                KNOWN.join(", ")
            ),
        ));
    }
    if s.parameters.len() > MAX_CONSTRAINTS {
        return Err(err(at, format!("at most {MAX_CONSTRAINTS} parameters")));
    }
    for (k, v) in &s.parameters {
        // Unleash's parameters are strings (numbers are read as their text): anything else
        // would be stored and served outside openapi.json's FlagStrategy.
        if !(v.is_string() || v.is_number()) {
            return Err(err(
                format!("{at}.parameters.{k}"),
                "a parameter is a string or a number",
            ));
        }
        if v.to_string().len() > 64 * 1024 || k.len() > MAX_NAME {
            return Err(err(at, format!("parameter {k:?} is too long")));
        }
    }
    for key in ["rollout", "percentage"] {
        if let Some(p) = s.param(key) {
            let ok = p
                .trim()
                .parse::<f64>()
                .is_ok_and(|p| (0.0..=100.0).contains(&p));
            if !ok {
                return Err(err(
                    format!("{at}.parameters.{key}"),
                    format!("{p:?} is not a percentage from 0 to 100"),
                ));
            }
        }
    }
    if s.constraints.len() > MAX_CONSTRAINTS {
        return Err(err(at, format!("at most {MAX_CONSTRAINTS} constraints")));
    }
    for (i, c) in s.constraints.iter().enumerate() {
        validate_constraint(c, &format!("{at}.constraints[{i}]"), strict)?;
    }
    if s.segments.len() > MAX_CONSTRAINTS {
        return Err(err(at, format!("at most {MAX_CONSTRAINTS} segments")));
    }
    for (i, id) in s.segments.iter().enumerate() {
        check_segment_id(*id, &format!("{at}.segments[{i}]"))?;
    }
    validate_variants(&s.variants, &format!("{at}.variants"))
}

fn check_segment_id(id: i64, at: &str) -> Result<(), FlagError> {
    if id.abs() > MAX_SEGMENT_ID {
        return Err(err(
            at,
            format!(
                "segment id {id} is beyond ±{MAX_SEGMENT_ID} (what a JSON number holds exactly)"
            ),
        ));
    }
    Ok(())
}

fn validate_constraint(
    c: &super::model::Constraint,
    at: &str,
    strict: bool,
) -> Result<(), FlagError> {
    if c.operator == Operator::Unknown {
        return Err(err(at, "unknown operator"));
    }
    // Characters, as openapi.json's maxLength counts them (and as for variant names).
    if c.context_name.is_empty() || c.context_name.chars().count() > MAX_NAME {
        return Err(err(
            at,
            format!("contextName must be 1-{MAX_NAME} characters"),
        ));
    }
    if c.values.len() > MAX_VALUES {
        return Err(err(at, format!("at most {MAX_VALUES} values")));
    }
    if c.values
        .iter()
        .chain(c.value.iter())
        .any(|v| v.len() > MAX_VALUE_LEN)
    {
        return Err(err(at, format!("values are at most {MAX_VALUE_LEN} bytes")));
    }
    if !strict {
        return Ok(());
    }
    let single = c.value.as_deref();
    let need_single = |what: &str, ok: &dyn Fn(&str) -> bool| match single {
        Some(v) if ok(v) => Ok(()),
        Some(v) => Err(err(at, format!("{v:?} is not {what}"))),
        None => Err(err(at, format!("this operator needs `value`: {what}"))),
    };
    match c.operator {
        Operator::NumEq
        | Operator::NumGt
        | Operator::NumGte
        | Operator::NumLt
        | Operator::NumLte => need_single("a number", &|v| v.trim().parse::<f64>().is_ok()),
        Operator::DateAfter | Operator::DateBefore => {
            need_single("an RFC 3339 date-time (2026-01-31T12:00:00Z)", &|v| {
                v.parse::<jiff::Timestamp>().is_ok()
            })
        }
        Operator::SemverEq
        | Operator::SemverGt
        | Operator::SemverGte
        | Operator::SemverLt
        | Operator::SemverLte => need_single("a semantic version (1.2.3)", &|v| {
            semver::Version::parse(v).is_ok()
        }),
        Operator::Regex => need_single(
            "a regular expression (at most 1024 bytes, no look-around or back-references)",
            &|v| {
                v.len() <= 1024
                    && regex::RegexBuilder::new(v)
                        .size_limit(1 << 20)
                        .build()
                        .is_ok()
            },
        ),
        _ => Ok(()),
    }
}

fn validate_variants(variants: &[Variant], at: &str) -> Result<(), FlagError> {
    if variants.len() > MAX_VARIANTS {
        return Err(err(at, format!("at most {MAX_VARIANTS} variants")));
    }
    let mut names = std::collections::HashSet::new();
    for (i, v) in variants.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if v.name.is_empty() || v.name.chars().count() > MAX_NAME {
            return Err(err(
                at,
                format!("a variant name is 1-{MAX_NAME} characters"),
            ));
        }
        if !names.insert(v.name.as_str()) {
            return Err(err(at, format!("variant {:?} appears twice", v.name)));
        }
        if v.weight > TOTAL_WEIGHT {
            return Err(err(at, format!("a weight is at most {TOTAL_WEIGHT}")));
        }
        if let Some(p) = &v.payload {
            check_payload(p).map_err(|m| err(format!("{at}.payload"), m))?;
        }
        if v.overrides.len() > MAX_CONSTRAINTS
            || v.overrides.iter().any(|o| o.values.len() > MAX_VALUES)
        {
            return Err(err(at, "too many overrides"));
        }
    }
    Ok(())
}

fn check_payload(p: &Payload) -> Result<(), String> {
    if p.value.len() > MAX_PAYLOAD_LEN {
        return Err(format!("a payload is at most {MAX_PAYLOAD_LEN} bytes"));
    }
    match p.kind.as_str() {
        "string" | "csv" => Ok(()),
        "json" => serde_json::from_str::<serde_json::Value>(&p.value)
            .map(|_| ())
            .map_err(|e| format!("not JSON: {e}")),
        "number" => p
            .value
            .trim()
            .parse::<f64>()
            .map(|_| ())
            .map_err(|_| format!("{:?} is not a number", p.value)),
        other => Err(format!(
            "type {other:?} is not one of string, json, csv, number"
        )),
    }
}

/// A new flag: off, on for everyone once enabled (`default` strategy).
pub fn new_flag(name: &str, description: Option<String>) -> Feature {
    Feature {
        name: name.to_string(),
        kind: Some("release".into()),
        description,
        enabled: false,
        strategies: vec![Strategy {
            name: "default".into(),
            ..Strategy::default()
        }],
        ..Feature::default()
    }
}

/// The gradual rollout percentage of a flag: the first `flexibleRollout` strategy gets
/// it (its constraints, segments and variants kept); a flag without one gets its strategies
/// replaced by a single one (stickiness `default`, group = the flag's name).
pub fn set_rollout(
    mut f: Feature,
    percent: u32,
    stickiness: Option<&str>,
) -> Result<Feature, FlagError> {
    if percent > 100 {
        return Err(err(
            format!("flag {}", f.name),
            format!("{percent} is not a percentage from 0 to 100"),
        ));
    }
    let idx = match f
        .strategies
        .iter()
        .position(|s| s.name == "flexibleRollout")
    {
        Some(i) => i,
        None => {
            f.strategies = vec![Strategy {
                name: "flexibleRollout".into(),
                ..Strategy::default()
            }];
            0
        }
    };
    let name = f.name.clone();
    let s = &mut f.strategies[idx];
    s.parameters
        .insert("rollout".into(), percent.to_string().into());
    if let Some(st) = stickiness {
        s.parameters.insert("stickiness".into(), st.into());
    }
    s.parameters
        .entry("stickiness".into())
        .or_insert_with(|| "default".into());
    s.parameters
        .entry("groupId".into())
        .or_insert_with(|| name.into());
    Ok(f)
}

/// The percentage of the first `flexibleRollout` strategy (100 when the flag has none).
pub fn rollout_of(f: &Feature) -> u32 {
    f.strategies
        .iter()
        .find(|s| s.name == "flexibleRollout")
        .and_then(|s| s.param("rollout"))
        .and_then(|p| p.trim().parse::<f64>().ok())
        .map_or(100, |p| p.clamp(0.0, 100.0) as u32)
}

/// Variants from `(name, percent)` pairs: given percentages are kept (×10, in thousandths),
/// the rest is shared evenly by the variants without one.
pub fn variants_from(
    entries: &[(String, Option<f64>, Option<Payload>)],
    stickiness: Option<&str>,
) -> Result<Vec<Variant>, FlagError> {
    let at = "variants";
    let mut given = 0.0;
    let mut open = 0u32;
    for (name, pct, _) in entries {
        match pct {
            Some(p) if !(0.0..=100.0).contains(p) => {
                return Err(err(
                    at,
                    format!("{name}: {p} is not a percentage from 0 to 100"),
                ));
            }
            Some(p) => given += p,
            None => open += 1,
        }
    }
    // The sum is judged as given (33.33 + 33.33 + 33.34 is 100), with room for the float
    // error of adding decimals; each variant's weight is then rounded to thousandths.
    const SLACK: f64 = 1e-9;
    if given > 100.0 + SLACK || (open == 0 && !entries.is_empty() && (given - 100.0).abs() > SLACK)
    {
        return Err(err(
            at,
            format!(
                "the percentages add up to {}, not 100",
                (given * 1e6).round() / 1e6
            ),
        ));
    }
    let fixed_weights = fixed_weights(entries, if open == 0 { 100.0 } else { given });
    let fixed: u32 = fixed_weights.iter().flatten().sum();
    let share = (TOTAL_WEIGHT - fixed).checked_div(open).unwrap_or(0);
    let mut rest = (TOTAL_WEIGHT - fixed).saturating_sub(share * open);
    let variants: Vec<Variant> = entries
        .iter()
        .zip(fixed_weights)
        .map(|((name, pct, payload), fixed)| {
            let weight = match fixed {
                Some(w) => w,
                None => {
                    let extra = u32::from(rest > 0);
                    rest -= extra;
                    share + extra
                }
            };
            Variant {
                name: name.clone(),
                weight,
                weight_type: Some(if pct.is_some() { "fix" } else { "variable" }.into()),
                stickiness: Some(stickiness.unwrap_or("default").to_string()),
                payload: payload.clone(),
                overrides: Vec::new(),
            }
        })
        .collect();
    validate_variants(&variants, at)?;
    Ok(variants)
}

/// The weights (thousandths) of the variants given a percentage, adding up to `total` %
/// rounded to thousandths: each is rounded down, and the thousandths left go to those
/// with the largest remainders (largest remainder method), so no rounding makes the
/// whole miss 100 %.
fn fixed_weights(
    entries: &[(String, Option<f64>, Option<Payload>)],
    total: f64,
) -> Vec<Option<u32>> {
    let exact: Vec<Option<f64>> = entries
        .iter()
        .map(|(_, p, _)| p.map(|p| p * 10.0))
        .collect();
    let mut weights: Vec<Option<u32>> = exact.iter().map(|e| e.map(|e| e.floor() as u32)).collect();
    let target = (total * 10.0).round() as u32;
    let mut left = target.saturating_sub(weights.iter().flatten().sum());
    let mut by_remainder: Vec<usize> = (0..entries.len()).filter(|&i| exact[i].is_some()).collect();
    let remainder = |i: usize| exact[i].map_or(0.0, |e| e - e.floor());
    by_remainder.sort_by(|&a, &b| remainder(b).total_cmp(&remainder(a)));
    for i in by_remainder {
        if left == 0 {
            break;
        }
        if let Some(w) = &mut weights[i] {
            *w += 1;
            left -= 1;
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollout_keeps_an_existing_flexible_rollout_and_replaces_anything_else() {
        let f = set_rollout(new_flag("a", None), 25, None).expect("rollout");
        assert_eq!(f.strategies.len(), 1);
        assert_eq!(f.strategies[0].param("rollout").as_deref(), Some("25"));
        assert_eq!(f.strategies[0].param("groupId").as_deref(), Some("a"));
        assert_eq!(rollout_of(&f), 25);
        let f = set_rollout(f, 50, Some("sessionId")).expect("rollout");
        assert_eq!(
            f.strategies[0].param("stickiness").as_deref(),
            Some("sessionId")
        );
        assert_eq!(rollout_of(&f), 50);
        assert!(set_rollout(f, 101, None).is_err());
    }

    #[test]
    fn variants_share_what_is_not_given() {
        let v = variants_from(
            &[
                ("a".into(), Some(50.0), None),
                ("b".into(), None, None),
                ("c".into(), None, None),
            ],
            None,
        )
        .expect("variants");
        let weights: Vec<u32> = v.iter().map(|v| v.weight).collect();
        assert_eq!(weights, [500, 250, 250]);
        let v = variants_from(
            &[
                ("a".into(), None, None),
                ("b".into(), None, None),
                ("c".into(), None, None),
            ],
            None,
        )
        .expect("variants");
        assert_eq!(v.iter().map(|v| v.weight).sum::<u32>(), TOTAL_WEIGHT);
        let e = variants_from(
            &[
                ("a".into(), Some(30.0), None),
                ("b".into(), Some(30.0), None),
            ],
            None,
        )
        .expect_err("60 %");
        assert!(e.message.contains("add up to 60"), "{e}");
        let thirds = |a, b, c| {
            variants_from(
                &[
                    ("a".into(), Some(a), None),
                    ("b".into(), Some(b), None),
                    ("c".into(), Some(c), None),
                ],
                None,
            )
            .map(|v| v.iter().map(|v| v.weight).collect::<Vec<u32>>())
        };
        // Each rounds to 333 thousandths; the one left goes to the largest remainder.
        assert_eq!(thirds(33.33, 33.33, 33.34).expect("100 %"), [333, 333, 334]);
        assert_eq!(thirds(33.35, 33.35, 33.3).expect("100 %"), [334, 333, 333]);
        let e = thirds(33.3, 33.3, 33.3).expect_err("99.9 %");
        assert!(e.message.contains("add up to 99.9,"), "{e}");
        let v = variants_from(
            &[
                ("a".into(), Some(12.34), None),
                ("b".into(), Some(0.06), None),
                ("c".into(), None, None),
            ],
            None,
        )
        .expect("open share");
        assert_eq!(
            v.iter().map(|v| v.weight).collect::<Vec<_>>(),
            [123, 1, 876]
        );
    }

    #[test]
    fn bad_flags_are_refused_with_a_location() {
        let mut f = new_flag("a", None);
        f.strategies[0]
            .constraints
            .push(super::super::model::Constraint {
                context_name: "version".into(),
                operator: Operator::SemverGt,
                values: vec![],
                value: Some("v1".into()),
                inverted: false,
                case_insensitive: false,
            });
        let e = validate(&f).expect_err("bad semver");
        assert_eq!(e.at, "flag a.strategies[0].constraints[0]");
        assert!(check_name("bad name").is_err());
        assert!(check_name("checkout.v2-new_UI:x").is_ok());
        let mut f = new_flag("a", None);
        f.strategies[0].name = "applicationHostname".into();
        assert!(
            validate(&f)
                .expect_err("unknown")
                .message
                .contains("unknown strategy")
        );
    }

    #[test]
    fn strategy_parameters_are_strings_or_numbers() {
        let mut f = new_flag("a", None);
        f.strategies[0]
            .parameters
            .insert("groupId".into(), "g".into());
        f.strategies[0]
            .parameters
            .insert("rollout".into(), 50.into());
        assert!(validate(&f).is_ok());
        for bad in [
            serde_json::Value::Null,
            true.into(),
            serde_json::json!([]),
            serde_json::json!({}),
        ] {
            f.strategies[0].parameters.insert("x".into(), bad.clone());
            let e = validate(&f).expect_err("not a string or number");
            assert_eq!(e.at, "flag a.strategies[0].parameters.x", "{bad}");
            let doc = ClientFeatures {
                features: vec![f.clone()],
                ..ClientFeatures::default()
            };
            assert!(validate_document(&doc).is_err(), "import of {bad}");
        }
    }

    #[test]
    fn segment_ids_beyond_what_json_holds_exactly_are_refused() {
        let mut f = new_flag("a", None);
        f.strategies[0].segments = vec![MAX_SEGMENT_ID, -MAX_SEGMENT_ID];
        assert!(validate(&f).is_ok());
        f.strategies[0].segments.push(-MAX_SEGMENT_ID - 1);
        let e = validate(&f).expect_err("unsafe id");
        assert_eq!(e.at, "flag a.strategies[0].segments[2]");
        let doc: ClientFeatures = serde_json::from_str(
            r#"{"features": [], "segments": [{"id": -9007199254740992, "constraints": []}]}"#,
        )
        .expect("parses");
        let e = validate_document(&doc).expect_err("unsafe segment id");
        assert_eq!(e.at, "segments[0].id");
        assert!(e.message.contains("-9007199254740992"), "{e}");
    }
}
