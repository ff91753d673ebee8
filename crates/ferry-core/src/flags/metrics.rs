//! What Unleash SDKs post to `/api/client/register` and `/api/client/metrics`, bounded.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// At most this many flags in one metrics report, and variants per flag.
pub const MAX_REPORTED_FLAGS: usize = 5_000;
pub const MAX_REPORTED_VARIANTS: usize = 100;
const MAX_TEXT: usize = 200;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    #[serde(default)]
    pub app_name: String,
    #[serde(default)]
    pub instance_id: String,
    #[serde(default)]
    pub sdk_version: String,
}

impl Registration {
    /// Texts cut to a bounded length.
    pub fn bounded(mut self) -> Registration {
        for t in [
            &mut self.app_name,
            &mut self.instance_id,
            &mut self.sdk_version,
        ] {
            if t.len() > MAX_TEXT {
                let mut end = MAX_TEXT;
                while !t.is_char_boundary(end) {
                    end -= 1;
                }
                t.truncate(end);
            }
        }
        self
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricsReport {
    #[serde(default)]
    pub app_name: String,
    #[serde(default)]
    pub instance_id: String,
    pub bucket: Bucket,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bucket {
    #[serde(default)]
    pub toggles: BTreeMap<String, ToggleCount>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ToggleCount {
    #[serde(default, deserialize_with = "crate::whole::u64")]
    pub yes: u64,
    #[serde(default, deserialize_with = "crate::whole::u64")]
    pub no: u64,
    #[serde(default, deserialize_with = "crate::whole::u64_map")]
    pub variants: BTreeMap<String, u64>,
}

impl MetricsReport {
    /// Refuses a report over the bounds (an error message for the 400 answer).
    pub fn check(&self) -> Result<(), String> {
        let toggles = &self.bucket.toggles;
        if toggles.len() > MAX_REPORTED_FLAGS {
            return Err(format!(
                "a report counts at most {MAX_REPORTED_FLAGS} flags"
            ));
        }
        for (name, c) in toggles {
            if name.len() > MAX_TEXT || c.variants.keys().any(|v| v.len() > MAX_TEXT) {
                return Err(format!("names are at most {MAX_TEXT} bytes"));
            }
            if c.variants.len() > MAX_REPORTED_VARIANTS {
                return Err(format!("{name}: at most {MAX_REPORTED_VARIANTS} variants"));
            }
        }
        Ok(())
    }
}
