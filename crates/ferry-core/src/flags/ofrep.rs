//! OpenFeature Remote Evaluation Protocol (OFREP) answers from the engine.
//!
//! Values: a flag without variants is a boolean (`true` when enabled for the context,
//! variant `on`/`off`); a flag with variants answers its variant's payload (`string` and
//! `csv` as a string, `number` as a number, `json` as the parsed JSON; the variant's name
//! when it has no payload), and `off` with the value `false` when disabled for the context.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::eval::{Engine, EvalEnv, Reason};
use super::model::Context;

/// At most this many context fields, each value at most [`MAX_CONTEXT_VALUE`] bytes.
pub const MAX_CONTEXT_FIELDS: usize = 100;
pub const MAX_CONTEXT_VALUE: usize = 1_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OfrepRequest {
    #[serde(default)]
    pub context: Option<Map<String, Value>>,
}

/// An OFREP error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    ParseError,
    TargetingKeyMissing,
    InvalidContext,
    FlagNotFound,
    General,
}

/// A successful evaluation of one flag.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub key: String,
    pub reason: Reason,
    pub variant: String,
    pub value: Value,
    pub metadata: Map<String, Value>,
}

/// A failed evaluation of one flag.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EvaluationError {
    pub key: String,
    pub error_code: ErrorCode,
    pub error_details: String,
}

/// OFREP's context → Unleash's: `targetingKey` is the `userId` (unless one is given), the
/// standard Unleash fields are taken by name, everything else goes to `properties`
/// (numbers and booleans as text). Objects and arrays, too many fields or too long values
/// are an `INVALID_CONTEXT`.
pub fn context_from(map: Option<&Map<String, Value>>) -> Result<Context, (ErrorCode, String)> {
    let mut ctx = Context::default();
    let Some(map) = map else { return Ok(ctx) };
    if map.len() > MAX_CONTEXT_FIELDS {
        return Err((
            ErrorCode::InvalidContext,
            format!("a context has at most {MAX_CONTEXT_FIELDS} fields"),
        ));
    }
    let mut targeting_key = None;
    for (k, v) in map {
        let text = match v {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Array(_) | Value::Object(_) => {
                return Err((
                    ErrorCode::InvalidContext,
                    format!("context field {k:?}: only strings, numbers and booleans are used"),
                ));
            }
        };
        if text.len() > MAX_CONTEXT_VALUE || k.len() > MAX_CONTEXT_VALUE {
            return Err((
                ErrorCode::InvalidContext,
                format!("context field {k:?}: at most {MAX_CONTEXT_VALUE} bytes"),
            ));
        }
        match k.as_str() {
            "targetingKey" => targeting_key = Some(text),
            "userId" => ctx.user_id = Some(text),
            "sessionId" => ctx.session_id = Some(text),
            "remoteAddress" => ctx.remote_address = Some(text),
            "environment" => ctx.environment = Some(text),
            "appName" => ctx.app_name = Some(text),
            "currentTime" => ctx.current_time = Some(text),
            _ => {
                ctx.properties.insert(k.clone(), Some(text));
            }
        }
    }
    if ctx.user_id.is_none() {
        ctx.user_id = targeting_key;
    }
    Ok(ctx)
}

/// Evaluates one flag for OFREP; `Err` is `FLAG_NOT_FOUND`.
pub fn evaluate(
    engine: &Engine,
    key: &str,
    ctx: &Context,
    env: &mut EvalEnv,
) -> Result<Evaluation, EvaluationError> {
    let Some(r) = engine.resolve(key, ctx, env) else {
        return Err(EvaluationError {
            key: key.to_string(),
            error_code: ErrorCode::FlagNotFound,
            error_details: format!("no flag {key:?} in this environment"),
        });
    };
    let has_variants = engine.feature(key).is_some_and(|f| {
        !f.variants.is_empty() || f.strategies.iter().any(|s| !s.variants.is_empty())
    });
    let (variant, value) = match (&r.variant, r.enabled) {
        (Some(v), true) => {
            let value = match &v.payload {
                None => Value::String(v.name.clone()),
                Some(p) => match p.kind.as_str() {
                    "number" => p
                        .value
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .and_then(serde_json::Number::from_f64)
                        .map_or_else(|| Value::String(p.value.clone()), Value::Number),
                    "json" => serde_json::from_str(&p.value)
                        .unwrap_or_else(|_| Value::String(p.value.clone())),
                    _ => Value::String(p.value.clone()),
                },
            };
            (v.name.clone(), value)
        }
        (None, true) if !has_variants => ("on".to_string(), Value::Bool(true)),
        _ => ("off".to_string(), Value::Bool(false)),
    };
    let mut metadata = Map::new();
    metadata.insert("enabled".into(), Value::Bool(r.enabled));
    Ok(Evaluation {
        key: key.to_string(),
        reason: r.reason,
        variant,
        value,
        metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flags::ClientFeatures;

    fn engine() -> Engine {
        let doc: ClientFeatures = serde_json::from_value(serde_json::json!({"features": [
            {"name": "plain", "enabled": true, "strategies": [{"name": "default"}]},
            {"name": "off", "enabled": false, "strategies": [{"name": "default"}]},
            {"name": "beta", "enabled": true, "strategies": [{"name": "userWithId", "parameters": {"userIds": "u1"}}]},
            {"name": "color", "enabled": true, "strategies": [{"name": "default"}], "variants": [
                {"name": "blue", "weight": 500, "payload": {"type": "json", "value": "{\"hex\": \"00f\"}"}},
                {"name": "red", "weight": 500, "payload": {"type": "number", "value": "7"}}
            ]}
        ]}))
        .expect("doc");
        Engine::new(doc)
    }

    fn eval(key: &str, ctx: serde_json::Value) -> Result<Evaluation, EvaluationError> {
        let map = ctx.as_object().cloned();
        let ctx = context_from(map.as_ref()).expect("context");
        let mut random = || 4u32;
        let mut env = EvalEnv {
            now: "2026-01-01T00:00:00Z".parse().expect("time"),
            random: &mut random,
        };
        evaluate(&engine(), key, &ctx, &mut env)
    }

    #[test]
    fn booleans_reasons_and_variants_follow_the_protocol() {
        let e = eval("plain", serde_json::json!({})).expect("plain");
        assert_eq!(
            (e.value, e.variant.as_str(), e.reason),
            (Value::Bool(true), "on", Reason::Static)
        );
        let e = eval("off", serde_json::json!({})).expect("off");
        assert_eq!(
            (e.value, e.variant.as_str(), e.reason),
            (Value::Bool(false), "off", Reason::Disabled)
        );
        let e = eval("beta", serde_json::json!({"targetingKey": "u1"})).expect("beta");
        assert_eq!(
            (e.value, e.reason),
            (Value::Bool(true), Reason::TargetingMatch)
        );
        let e = eval("beta", serde_json::json!({"targetingKey": "u2"})).expect("beta");
        assert_eq!((e.value, e.reason), (Value::Bool(false), Reason::Default));
        let e = eval("color", serde_json::json!({"targetingKey": "someone"})).expect("color");
        assert_eq!(e.reason, Reason::Split);
        match e.variant.as_str() {
            "blue" => assert_eq!(e.value, serde_json::json!({"hex": "00f"})),
            "red" => assert_eq!(e.value, serde_json::json!(7.0)),
            other => panic!("variant {other}"),
        }
        let e = eval("nope", serde_json::json!({})).expect_err("missing");
        assert_eq!(e.error_code, ErrorCode::FlagNotFound);
    }

    #[test]
    fn contexts_are_bounded_and_flat() {
        let nested = serde_json::json!({"a": {"b": 1}});
        let err = context_from(nested.as_object()).expect_err("nested");
        assert_eq!(err.0, ErrorCode::InvalidContext);
        let long = serde_json::json!({"a": "x".repeat(MAX_CONTEXT_VALUE + 1)});
        assert_eq!(
            context_from(long.as_object()).expect_err("long").0,
            ErrorCode::InvalidContext
        );
        let ok =
            serde_json::json!({"targetingKey": "k", "plan": 3, "beta": true, "sessionId": "s"});
        let ctx = context_from(ok.as_object()).expect("ok");
        assert_eq!(ctx.user_id.as_deref(), Some("k"));
        assert_eq!(ctx.field("plan"), Some("3"));
        assert_eq!(ctx.field("beta"), Some("true"));
        assert_eq!(ctx.session_id.as_deref(), Some("s"));
    }
}
