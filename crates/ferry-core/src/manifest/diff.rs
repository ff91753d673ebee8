//! `Manifest::diff`: what `ferry apply --dry-run` prints.

use serde_json::{Map, Value};

use super::Manifest;

pub(super) fn diff(new: &Manifest, old: Option<&Manifest>) -> Vec<String> {
    let new_value = to_value(new);
    let old_value = match old {
        Some(old) => to_value(old),
        // Nothing applied yet: list the app, then each service and environment as added.
        None => serde_json::json!({ "services": {}, "environments": {} }),
    };
    // Environments are listed in promotion order: the new manifest's, then removed ones.
    let mut env_order: Vec<String> = new.environments.keys().map(String::from).collect();
    if let Some(old) = old {
        env_order.extend(
            old.environments
                .keys()
                .filter(|k| new.environments.get(k).is_none())
                .map(String::from),
        );
    }
    let mut out = Vec::new();
    Walk {
        env_order: &env_order,
        out: &mut out,
    }
    .walk("", &old_value, &new_value);
    out
}

fn to_value(m: &Manifest) -> Value {
    serde_json::to_value(m).unwrap_or(Value::Null)
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Short text for a value: scalars as written, lists inline, a one-key map (a strategy
/// like `{ rolling: {...} }`) by its key, other maps as `{…}`.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Object(map) if map.len() == 1 => map.keys().next().cloned().unwrap_or_default(),
        Value::Object(_) => "{…}".to_string(),
        other => other.to_string(),
    }
}

/// Whole services and environments are added or removed as one line; smaller maps (`env`,
/// `vars`, `health`) line by line.
fn is_unit(path: &str) -> bool {
    matches!(
        path.split('.').collect::<Vec<_>>().as_slice(),
        ["services" | "environments", _]
    )
}

struct Walk<'a> {
    env_order: &'a [String],
    out: &'a mut Vec<String>,
}

impl Walk<'_> {
    /// Keys of both maps in a stable order: top level as written in a manifest,
    /// environments in promotion order, everything else sorted.
    fn keys(&self, path: &str, o: &Map<String, Value>, n: &Map<String, Value>) -> Vec<String> {
        let mut keys: Vec<String> = n.keys().chain(o.keys()).cloned().collect();
        keys.sort();
        keys.dedup();
        let rank = |k: &String| -> usize {
            match path {
                "" => ["app", "services", "environments"]
                    .iter()
                    .position(|t| t == k)
                    .unwrap_or(3),
                "environments" => self
                    .env_order
                    .iter()
                    .position(|t| t == k)
                    .unwrap_or(usize::MAX),
                _ => 0,
            }
        };
        keys.sort_by_key(rank);
        keys
    }

    fn walk(&mut self, path: &str, old: &Value, new: &Value) {
        if old == new {
            return;
        }
        match (old, new) {
            (Value::Object(o), Value::Object(n)) if !is_variant_switch(o, n) => {
                for key in self.keys(path, o, n) {
                    let p = join(path, &key);
                    match (o.get(&key), n.get(&key)) {
                        (Some(ov), Some(nv)) => self.walk(&p, ov, nv),
                        (None, Some(nv)) => self.added(&p, nv),
                        (Some(ov), None) => self.removed(&p, ov),
                        (None, None) => {}
                    }
                }
            }
            _ => self
                .out
                .push(format!("~ {path}: {} -> {}", show(old), show(new))),
        }
    }

    fn added(&mut self, path: &str, v: &Value) {
        match v {
            Value::Object(_) if is_unit(path) => self.out.push(format!("+ {path}")),
            Value::Object(map) => {
                for (k, child) in map {
                    self.added(&join(path, k), child);
                }
            }
            other => self.out.push(format!("+ {path}: {}", show(other))),
        }
    }

    fn removed(&mut self, path: &str, v: &Value) {
        match v {
            Value::Object(_) if is_unit(path) => self.out.push(format!("- {path}")),
            Value::Object(map) => {
                for (k, child) in map {
                    self.removed(&join(path, k), child);
                }
            }
            other => self.out.push(format!("- {path}: {}", show(other))),
        }
    }
}

/// Two one-key maps with different keys (`{ rolling: … }` → `{ canary: … }`) are a change of
/// kind, shown as one line rather than a removal and an addition.
fn is_variant_switch(o: &Map<String, Value>, n: &Map<String, Value>) -> bool {
    o.len() == 1 && n.len() == 1 && o.keys().next() != n.keys().next()
}
