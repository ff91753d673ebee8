//! Settings of the progressive strategies: `canary` and `blue_green`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::analysis::AnalysisSpec;
use crate::duration::HumanDuration;

/// Header that forces a request onto the new version while a rollout runs.
pub const DEFAULT_PREVIEW_HEADER: &str = "X-Ferry-Preview";

/// Shift traffic to the new version step by step, with analysis between steps.
///
/// ```yaml
/// strategy:
///   canary:
///     steps:
///       - weight: 5
///       - pause: 1m
///       - weight: 25
///         analysis: { metrics: [{ name: errors, builtin: error_rate, max: 0.01 }] }
///       - pause: {}          # until `ferry promote`
///       - weight: 50
///     analysis:               # in the background for the whole rollout
///       metrics: [{ name: p95, builtin: latency_p95, max: 500ms }]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// The steps, in order. A step may set a `weight`, run an `analysis`, `pause`, or
    /// several of these (applied in that order). After the last step the new version
    /// takes all traffic and the old one is stopped.
    pub steps: Vec<CanaryStep>,
    /// Analysis run in the background from the first weighted step to the end; a
    /// failure rolls back at once. It also counts toward promotion: the rollout holds
    /// before the final promotion until it has passed (Inconclusive holds and says why,
    /// then applies its `on_inconclusive`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// Let the rollout finish without a conclusive verdict from the background `analysis`
    /// (default false). The timeline and the change record then say "finished without a
    /// conclusive verdict".
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unjudged: bool,
    /// Keep each client on the same side for the whole rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<Stickiness>,
    /// A request carrying this header (any value but `0`/`false`) from this host (a
    /// loopback client, e.g. the smoke tests) always goes to the new version, so testers
    /// can try it at any weight. Default `X-Ferry-Preview`.
    #[serde(default = "default_preview_header")]
    pub preview_header: String,
    /// Name of a secret of the environment: clients from other hosts reach the new
    /// version only when the preview header's value is that secret. Without it the
    /// header is ignored for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_secret: Option<String>,
}

/// One canary step. Keys present are applied in the order weight → analysis → pause.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryStep {
    /// Percentage of requests (0..=100, two decimals at most) sent to the new version.
    /// Exact: counted per request, not approximated by replica counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<f64>,
    /// Replicas of the new version during this step (default: the environment's replica
    /// count scaled by the weight, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Analysis that must pass before the next step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// Wait this long (`60s`), or until `ferry promote` (`{}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
}

/// A pause: a duration, or `{}` for "until promoted by hand".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pause {
    For(HumanDuration),
    UntilPromoted,
}

impl Serialize for Pause {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match self {
            Pause::For(d) => d.serialize(s),
            Pause::UntilPromoted => s.serialize_map(Some(0))?.end(),
        }
    }
}

impl<'de> Deserialize<'de> for Pause {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Pause;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a duration like `60s`, or `{}` to wait for `ferry promote`")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Pause, E> {
                v.parse::<HumanDuration>()
                    .map(Pause::For)
                    .map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Pause, A::Error> {
                match map.next_key::<String>()? {
                    Some(key) => Err(serde::de::Error::unknown_field(&key, &[])),
                    None => Ok(Pause::UntilPromoted),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

impl JsonSchema for Pause {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Pause".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let duration = generator.subschema_for::<HumanDuration>();
        schemars::json_schema!({
            "description": "A duration (`60s`), or `{}` to wait until `ferry promote`.",
            "oneOf": [duration, { "type": "object", "additionalProperties": false }]
        })
    }
}

/// What keeps a client on one side of a canary: a request header (e.g. a user id) or a
/// cookie. Clients without it are split per request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stickiness {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
}

/// Start the new version (green) beside the serving one (blue), let people and checks try
/// it, switch all traffic at once, keep blue warm for a quick way back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlueGreen {
    /// Listener that serves green before the switch (e.g. `127.0.0.1:8081`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_listen: Option<String>,
    /// On the main listener, requests with this header go to green. Default
    /// `X-Ferry-Preview`.
    #[serde(default = "default_preview_header")]
    pub preview_header: String,
    /// As for canary: the secret whose value lets clients from other hosts use the
    /// preview header (loopback clients need none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_secret: Option<String>,
    /// Switch as soon as green is ready and pre-promotion analysis passed (default
    /// true); `false` waits for `ferry promote`.
    #[serde(default = "default_true")]
    pub auto_promote: bool,
    /// With `auto_promote: false`, switch anyway after this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promote_after: Option<HumanDuration>,
    /// Analysis of green before the switch (through the preview route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis: Option<AnalysisSpec>,
    /// Analysis after the switch, while blue is still up: a failure switches back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis: Option<AnalysisSpec>,
    /// How long blue keeps running after the switch (default 30s).
    #[serde(default = "default_scale_down_delay")]
    pub scale_down_delay: HumanDuration,
}

impl Default for BlueGreen {
    fn default() -> Self {
        BlueGreen {
            preview_listen: None,
            preview_header: default_preview_header(),
            preview_secret: None,
            auto_promote: true,
            auto_promote_after: None,
            pre_promotion_analysis: None,
            post_promotion_analysis: None,
            scale_down_delay: default_scale_down_delay(),
        }
    }
}

fn default_preview_header() -> String {
    DEFAULT_PREVIEW_HEADER.to_string()
}

fn default_true() -> bool {
    true
}

fn default_scale_down_delay() -> HumanDuration {
    HumanDuration(std::time::Duration::from_secs(30))
}

/// A percentage with at most two decimals, as basis points (1% = 100).
pub fn weight_basis_points(percent: f64) -> Option<u32> {
    let bp = (percent * 100.0).round();
    let exact = (percent * 100.0 - bp).abs() < 1e-6;
    (exact && (0.0..=10_000.0).contains(&bp)).then_some(bp as u32)
}
