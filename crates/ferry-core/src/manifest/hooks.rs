//! `hooks:` — commands and HTTP smoke tests run at fixed points of a deployment.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;

/// Default time a hook may run before its process group is killed.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(300);

/// Hooks of an app, by the point of a deployment where they run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hooks {
    /// Run in order, each to completion, before any new replica starts or traffic moves.
    /// A failure ends the deployment `failed` with nothing changed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_deploy: Vec<Hook>,
    /// Smoke tests against the new version before it is declared serving (through the
    /// preview route for canary and blue/green). A failure rolls the deployment back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_deploy: Vec<Hook>,
    /// Run when a deployment ends rolled back (automatically or by `ferry rollback`); a
    /// failure is reported, not fatal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_rollback: Vec<Hook>,
}

impl Hooks {
    pub fn is_empty(&self) -> bool {
        self.pre_deploy.is_empty() && self.post_deploy.is_empty() && self.on_rollback.is_empty()
    }
}

/// One hook: a command (`run`) or an HTTP check (`http`), not both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Hook {
    /// Name, unique within its phase (shown on the timeline and by `ferry logs --hook`).
    pub name: String,
    /// Command line (argv), not run through a shell; cwd is the manifest's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Vec<String>>,
    /// HTTP check requested on the environment's listener (or its preview route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHook>,
    /// How long one attempt may take (default 5m); the process group is killed then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<HumanDuration>,
    /// How many times a failed attempt is retried (default 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// Only in these environments (default: every environment).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub environments: Vec<String>,
    /// Extra environment variables (besides the environment's vars and secrets).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("propertyNames" = { "pattern": "^[A-Za-z_][A-Za-z0-9_]*$" }))]
    pub env: BTreeMap<String, String>,
    /// What recovery does when the server died while this hook ran: `fail` the deployment
    /// (default) or `rerun` the hook as a new attempt.
    #[serde(default)]
    pub on_interrupt: OnInterrupt,
    /// Marks a `pre_deploy` hook as a schema migration: `irreversible` (a rollback past it
    /// is refused unless forced) or `{ down: [argv] }` (run after a rollback past it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Migration>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Hook {
    /// The attempt timeout (default 5m).
    pub fn timeout(&self) -> Duration {
        self.timeout
            .map(|t| t.get())
            .unwrap_or(DEFAULT_HOOK_TIMEOUT)
    }

    /// Whether this hook runs in `env`.
    pub fn applies_to(&self, env: &str) -> bool {
        self.environments.is_empty() || self.environments.iter().any(|e| e == env)
    }
}

/// Recovery policy for a hook that was running when the server died.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnInterrupt {
    #[default]
    Fail,
    Rerun,
}

/// `migration: irreversible` or `migration: { down: [...] }`.
#[derive(Debug, Clone, PartialEq)]
pub enum Migration {
    Irreversible,
    Down(Vec<String>),
}

impl Serialize for Migration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Migration::Irreversible => s.serialize_str("irreversible"),
            Migration::Down(down) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("down", down)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Migration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Reversible {
            down: Vec<String>,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Migration;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("`irreversible` or `{ down: [\"argv\", ...] }`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Migration, E> {
                if v == "irreversible" {
                    Ok(Migration::Irreversible)
                } else {
                    Err(E::custom(format!(
                        "unknown migration kind {v:?}: write `irreversible` or `{{ down: [\"sh\", \"-c\", \"...\"] }}`"
                    )))
                }
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Migration, A::Error> {
                let r = Reversible::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Migration::Down(r.down))
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl JsonSchema for Migration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Migration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "`irreversible` (a rollback past this deployment is refused unless forced with a reason) or `{ down: [argv] }` (run after a rollback past it).",
            "oneOf": [
                { "type": "string", "enum": ["irreversible"] },
                {
                    "type": "object",
                    "properties": { "down": { "type": "array", "items": { "type": "string" }, "minItems": 1 } },
                    "required": ["down"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

/// An HTTP smoke test: `GET path` on the environment's listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpHook {
    /// Path requested, starting with `/`.
    #[schemars(regex(pattern = r"^/"))]
    pub path: String,
    /// Expected status (default: any 2xx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// Text the body must contain (`${VERSION}` is substituted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_body: Option<String>,
    /// A JSON value the body must hold at a JSON pointer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_json: Option<ExpectJson>,
    /// Longest acceptable answer time, e.g. `500ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency: Option<HumanDuration>,
}

/// `{ pointer: /version, equals: "${VERSION}" }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExpectJson {
    /// RFC 6901 JSON pointer, e.g. `/version`.
    pub pointer: String,
    /// Expected value; a string is compared with `${VERSION}` substituted, and also
    /// matches a number or boolean that prints the same.
    pub equals: serde_json::Value,
}
