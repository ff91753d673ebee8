//! Whole numbers in request bodies, also when written as a float (`1000.0`): JSON Schema
//! calls `185.0` an integer, and JSON tools and schema-driven clients send one. Use with
//! `#[serde(deserialize_with = "crate::whole::i64")]` (or `ferry_core::whole::…`).

use serde::Deserialize;

/// A whole number that fits an `i64`, written as an integer or as a whole float.
struct Whole(i64);

impl<'de> Deserialize<'de> for Whole {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Whole;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Whole, E> {
                Ok(Whole(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Whole, E> {
                i64::try_from(v)
                    .map(Whole)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Whole, E> {
                // 2^63: beyond it the cast would saturate.
                if v.fract() == 0.0 && v.abs() < 9.223_372_036_854_776e18 {
                    Ok(Whole(v as i64))
                } else {
                    Err(E::custom(format!("{v} is not a whole number")))
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

pub fn i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Whole::deserialize(d).map(|w| w.0)
}

/// An optional whole number (`null` or absent is `None`; use with `#[serde(default)]`).
pub fn opt_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(Option::<Whole>::deserialize(d)?.map(|w| w.0))
}

pub fn u32<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let Whole(v) = Whole::deserialize(d)?;
    u32::try_from(v).map_err(|_| serde::de::Error::custom(format!("{v} is out of range")))
}

/// A count: a whole number from 0 to `i64::MAX`.
pub fn u64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let Whole(v) = Whole::deserialize(d)?;
    u64::try_from(v).map_err(|_| serde::de::Error::custom(format!("{v} is out of range")))
}

pub fn i64s<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
    Ok(Vec::<Whole>::deserialize(d)?
        .into_iter()
        .map(|w| w.0)
        .collect())
}

/// Counts by name (a map of [`u64`]).
pub fn u64_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::collections::BTreeMap<String, u64>, D::Error> {
    std::collections::BTreeMap::<String, Whole>::deserialize(d)?
        .into_iter()
        .map(|(k, Whole(v))| {
            u64::try_from(v)
                .map(|v| (k, v))
                .map_err(|_| serde::de::Error::custom(format!("{v} is out of range")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[derive(serde::Deserialize, Debug)]
    struct Body {
        #[serde(default, deserialize_with = "super::opt_i64")]
        n: Option<i64>,
        #[serde(default, deserialize_with = "super::u64")]
        count: u64,
    }

    fn parse(json: &str) -> Result<Body, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn whole_floats_are_whole_numbers_and_the_rest_is_refused() {
        assert_eq!(parse(r#"{"n": 185.0}"#).unwrap().n, Some(185));
        assert_eq!(parse(r#"{"n": 185}"#).unwrap().n, Some(185));
        assert_eq!(parse(r#"{"n": null}"#).unwrap().n, None);
        assert_eq!(parse("{}").unwrap().n, None);
        assert_eq!(parse(r#"{"count": 7.0}"#).unwrap().count, 7);
        assert!(
            parse(r#"{"n": 1.5}"#)
                .unwrap_err()
                .contains("not a whole number")
        );
        assert!(parse(r#"{"n": 6.001392404504116e21}"#).is_err());
        assert!(
            parse(r#"{"n": 9223372036854775808}"#)
                .unwrap_err()
                .contains("too large")
        );
        assert!(
            parse(r#"{"count": -1}"#)
                .unwrap_err()
                .contains("out of range")
        );
        assert!(parse(r#"{"n": "1"}"#).is_err());
    }

    #[test]
    fn whole_floats_near_2_pow_52_are_read_exactly() {
        // Without serde_json's `float_roundtrip` this parsed as -3647706664242694.5.
        assert_eq!(
            parse(r#"{"n": -3647706664242694.0}"#).unwrap().n,
            Some(-3_647_706_664_242_694)
        );
        assert_eq!(
            parse(r#"{"n": 9007199254740991.0}"#).unwrap().n,
            Some(9_007_199_254_740_991)
        );
    }
}
