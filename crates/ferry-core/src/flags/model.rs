//! The flag state in Unleash's client-features format (what `GET /api/client/features`
//! serves and `ferry flags import|export` read and write), and the evaluation context.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A whole client-features document: the flags of one app environment and the segments
/// they reference.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientFeatures {
    #[serde(default = "one", deserialize_with = "crate::whole::u32")]
    pub version: u32,
    #[serde(default)]
    pub features: Vec<Feature>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<Segment>,
}

fn one() -> u32 {
    1
}

/// One flag as SDKs see it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Feature {
    pub name: String,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub stale: bool,
    #[serde(default)]
    pub impression_data: bool,
    #[serde(default)]
    pub strategies: Vec<Strategy>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub variants: Vec<Variant>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<Dependency>,
}

/// An activation strategy: it is on for a context when its constraints, its segments'
/// constraints and its own rule (by `name`) all hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub parameters: BTreeMap<String, serde_json::Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub constraints: Vec<Constraint>,
    #[serde(
        default,
        deserialize_with = "crate::whole::i64s",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub segments: Vec<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<Variant>,
}

impl Strategy {
    /// A parameter as text (numbers are accepted as well as strings).
    pub fn param(&self, key: &str) -> Option<String> {
        match self.parameters.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Segment {
    #[serde(deserialize_with = "crate::whole::i64")]
    pub id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default)]
    pub constraints: Vec<Constraint>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Constraint {
    pub context_name: String,
    pub operator: Operator,
    /// Always served, even empty: SDKs read it for every operator (unleash-client for
    /// Node fails on an `IN` constraint without it).
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default)]
    pub inverted: bool,
    #[serde(default)]
    pub case_insensitive: bool,
}

/// Every constraint operator of Unleash. An operator this version does not know is kept
/// as `Unknown` and never matches (as the specification asks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Operator {
    In,
    NotIn,
    StrContains,
    StrStartsWith,
    StrEndsWith,
    NumEq,
    NumGt,
    NumGte,
    NumLt,
    NumLte,
    DateAfter,
    DateBefore,
    SemverEq,
    SemverGt,
    SemverGte,
    SemverLt,
    SemverLte,
    Regex,
    InCidr,
    #[serde(other)]
    Unknown,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Variant {
    pub name: String,
    #[serde(default, deserialize_with = "crate::whole::u32")]
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stickiness: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Payload>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<Override>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// `string`, `json`, `csv` or `number`.
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Override {
    pub context_name: String,
    #[serde(default)]
    pub values: Vec<String>,
}

/// A flag this one depends on: the parent must be enabled (or disabled, with
/// `enabled: false`), and when `variants` is not empty its variant must be one of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    pub feature: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variants: Option<Vec<String>>,
}

/// What the flags are evaluated for. Unknown fields go to `properties`; a property that is
/// `null` counts as absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Context {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
    /// RFC 3339; the evaluation's `now` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_time: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, Option<String>>,
}

impl Context {
    /// A context field by name: the standard fields first, then `properties`.
    pub fn field(&self, name: &str) -> Option<&str> {
        let standard = match name {
            "userId" => &self.user_id,
            "sessionId" => &self.session_id,
            "remoteAddress" => &self.remote_address,
            "environment" => &self.environment,
            "appName" => &self.app_name,
            "currentTime" => &self.current_time,
            _ => return self.properties.get(name).and_then(|v| v.as_deref()),
        };
        standard.as_deref()
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One change of Unleash's delta API (`/api/client/delta`), applied by [`apply_delta`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum DeltaEvent {
    Hydration {
        #[serde(default)]
        features: Vec<Feature>,
        #[serde(default)]
        segments: Vec<Segment>,
    },
    FeatureUpdated {
        feature: Feature,
    },
    #[serde(rename_all = "camelCase")]
    FeatureRemoved {
        feature_name: String,
    },
    SegmentUpdated {
        segment: Segment,
    },
    SegmentRemoved {
        #[serde(rename = "segmentId")]
        segment_id: i64,
    },
}

/// Apply one delta event to a state (a hydration replaces it).
pub fn apply_delta(state: &mut ClientFeatures, event: DeltaEvent) {
    match event {
        DeltaEvent::Hydration { features, segments } => {
            state.features = features;
            state.segments = segments;
        }
        DeltaEvent::FeatureUpdated { feature } => {
            match state.features.iter_mut().find(|f| f.name == feature.name) {
                Some(existing) => *existing = feature,
                None => state.features.push(feature),
            }
        }
        DeltaEvent::FeatureRemoved { feature_name } => {
            state.features.retain(|f| f.name != feature_name);
        }
        DeltaEvent::SegmentUpdated { segment } => {
            match state.segments.iter_mut().find(|s| s.id == segment.id) {
                Some(existing) => *existing = segment,
                None => state.segments.push(segment),
            }
        }
        DeltaEvent::SegmentRemoved { segment_id } => {
            state.segments.retain(|s| s.id != segment_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_may_be_written_as_floats() {
        let doc: ClientFeatures = serde_json::from_str(
            r#"{"version": 2.0, "features": [{"name": "f", "strategies": [{"name": "default",
                "segments": [1.0, 2]}], "variants": [{"name": "a", "weight": 1000.0}]}],
                "segments": [{"id": 1.0, "constraints": []}]}"#,
        )
        .expect("whole floats are whole numbers");
        assert_eq!(doc.version, 2);
        assert_eq!(doc.features[0].variants[0].weight, 1000);
        assert_eq!(doc.features[0].strategies[0].segments, vec![1, 2]);
        assert_eq!(doc.segments[0].id, 1);
        for bad in [
            r#"{"name": "a", "weight": 500.5}"#,
            r#"{"name": "a", "weight": -1}"#,
            r#"{"name": "a", "weight": 5e300}"#,
            r#"{"name": "a", "weight": "500"}"#,
        ] {
            let err = serde_json::from_str::<Variant>(bad).expect_err(bad);
            assert!(
                err.to_string().contains("weight") || err.line() == 1,
                "{bad}: {err}"
            );
        }
    }
}
