//! Request bodies read as openapi.json describes them. serde reads a JSON array into a
//! struct's fields in order: `["x"]` is read as `{"name": "x"}`, and `[]` as a struct whose
//! fields all have defaults. So a body with an array where its schema has an object would
//! be accepted (and `{"bucket": []}` counted as an empty metrics report). [`from_value`]
//! refuses it and says where.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Reads `sent` as a `T`, refusing an array read as an object anywhere in it (the error
/// names the place, `features[0].strategies[1]`).
pub fn from_value<T: DeserializeOwned + Serialize>(sent: Value) -> Result<T, String> {
    let read: T = serde_json::from_value(sent.clone()).map_err(|e| e.to_string())?;
    // What was read, written back: an object wherever `T` has a struct or a map.
    let written = serde_json::to_value(&read).map_err(|e| e.to_string())?;
    match array_read_as_object(&sent, &written, "") {
        Some(at) if at.is_empty() => Err("the body must be a JSON object, not an array".into()),
        Some(at) => Err(format!("{at}: an object is expected, not an array")),
        None => Ok(read),
    }
}

fn array_read_as_object(sent: &Value, written: &Value, at: &str) -> Option<String> {
    match (sent, written) {
        (Value::Array(_), Value::Object(_)) => Some(at.to_string()),
        (Value::Object(sent), Value::Object(written)) => sent.iter().find_map(|(key, v)| {
            let at = if at.is_empty() {
                key.clone()
            } else {
                format!("{at}.{key}")
            };
            written
                .get(key)
                .and_then(|w| array_read_as_object(v, w, &at))
        }),
        (Value::Array(sent), Value::Array(written)) => sent
            .iter()
            .zip(written)
            .enumerate()
            .find_map(|(i, (v, w))| array_read_as_object(v, w, &format!("{at}[{i}]"))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Inner {
        name: String,
        #[serde(default)]
        weight: u32,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Outer {
        #[serde(default)]
        items: Vec<Inner>,
        #[serde(default)]
        one: Option<Inner>,
        #[serde(default)]
        free: Vec<Value>,
    }

    use serde_json::Value;

    #[test]
    fn arrays_read_as_objects_are_refused_where_they_are() {
        let ok: Outer = super::from_value(json!({
            "items": [{"name": "a", "weight": 1}], "free": [[1], {"x": []}]
        }))
        .expect("objects are objects");
        assert_eq!(ok.items[0].name, "a");
        // serde alone takes each of these.
        for (sent, at) in [
            (json!({"items": [{"name": "a"}, ["b", 2]]}), "items[1]"),
            (json!({"one": ["c"]}), "one"),
            (json!({"items": [], "one": {"name": "d"}, "free": []}), ""),
        ] {
            assert!(
                serde_json::from_value::<Outer>(sent.clone()).is_ok(),
                "{sent}"
            );
            match super::from_value::<Outer>(sent.clone()) {
                Ok(_) => assert_eq!(at, "", "{sent}"),
                Err(e) => assert_eq!(e, format!("{at}: an object is expected, not an array")),
            }
        }
        assert!(serde_json::from_value::<Inner>(json!(["e", 3])).is_ok());
        let e = super::from_value::<Inner>(json!(["e", 3])).expect_err("a top-level array");
        assert!(e.contains("not an array"), "{e}");
        assert!(super::from_value::<Outer>(json!({"items": [{"weight": 1}]})).is_err());
    }
}
