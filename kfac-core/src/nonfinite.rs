//! JSON for numbers that may not be finite.
//!
//! JSON has no NaN and no infinity: `serde_json` writes them as `null`,
//! which reads back as no number at all (or not at all, into an `f64`). The
//! records of a run can hold them: the loss of a step skipped because the
//! loss was not finite is that NaN or infinity, and a ratio of the adaptive
//! machinery can be one too. So the records' numbers are written with this
//! module:
//!
//! | value | JSON |
//! |---|---|
//! | a finite number | the number, as `serde_json` writes it (shortest round trip) |
//! | NaN | the string `"NaN"` |
//! | $+\infty$ | the string `"inf"` |
//! | $-\infty$ | the string `"-inf"` |
//!
//! Reading accepts exactly these, so every value round-trips, the sign of a
//! NaN aside. Finite numbers are written as before, so files without a
//! non-finite number are unchanged. `metrics.json`, `compare.json` and the
//! `state` entry of checkpoints use it. Use the module with
//! `#[serde(with = "kfac_core::nonfinite")]` on an `f64` field, or its
//! [`option`] and [`map`] submodules on `Option<f64>` and
//! `BTreeMap<String, f64>` fields.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// An `f64` that serialises as described in the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Number(pub f64);

impl Serialize for Number {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let x = self.0;
        if x.is_finite() {
            s.serialize_f64(x)
        } else if x.is_nan() {
            s.serialize_str("NaN")
        } else if x > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }
}

struct NumberVisitor;

impl Visitor<'_> for NumberVisitor {
    type Value = Number;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, or one of the strings \"NaN\", \"inf\", \"-inf\"")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Number, E> {
        Ok(Number(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Number, E> {
        Ok(Number(v as f64))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Number, E> {
        Ok(Number(v as f64))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Number, E> {
        match v {
            "NaN" => Ok(Number(f64::NAN)),
            "inf" => Ok(Number(f64::INFINITY)),
            "-inf" => Ok(Number(f64::NEG_INFINITY)),
            _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
        }
    }
}

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NumberVisitor)
    }
}

/// Serialises an `f64` field.
///
/// # Errors
///
/// Those of the serializer.
pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
    Number(*x).serialize(s)
}

/// Deserialises an `f64` field.
///
/// # Errors
///
/// A value that is neither a number nor one of the three strings.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Number::deserialize(d).map(|n| n.0)
}

/// The same for `Option<f64>` (`None` is `null`).
pub mod option {
    use super::{Deserialize, Deserializer, Number, Serialize, Serializer};

    /// Serialises an `Option<f64>` field.
    ///
    /// # Errors
    ///
    /// Those of the serializer.
    pub fn serialize<S: Serializer>(x: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        x.map(Number).serialize(s)
    }

    /// Deserialises an `Option<f64>` field.
    ///
    /// # Errors
    ///
    /// A value that is neither `null`, a number nor one of the three strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<Number>::deserialize(d).map(|o| o.map(|n| n.0))
    }
}

/// The same for `BTreeMap<String, f64>`.
pub mod map {
    use super::{BTreeMap, Deserialize, Deserializer, Number, Serialize, Serializer};

    /// Serialises a map of named numbers.
    ///
    /// # Errors
    ///
    /// Those of the serializer.
    pub fn serialize<S: Serializer>(m: &BTreeMap<String, f64>, s: S) -> Result<S::Ok, S::Error> {
        m.iter().map(|(k, &v)| (k, Number(v))).collect::<BTreeMap<_, _>>().serialize(s)
    }

    /// Deserialises a map of named numbers.
    ///
    /// # Errors
    ///
    /// A value that is neither a number nor one of the three strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, f64>, D::Error> {
        BTreeMap::<String, Number>::deserialize(d).map(|m| m.into_iter().map(|(k, v)| (k, v.0)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        #[serde(with = "super")]
        x: f64,
        #[serde(with = "super::option")]
        y: Option<f64>,
        #[serde(with = "super::map")]
        m: BTreeMap<String, f64>,
    }

    #[test]
    fn every_value_round_trips() {
        for x in [0.0, -0.0, 1.5, -3e-310, f64::MAX, f64::MIN_POSITIVE, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let r = Rec { x, y: Some(x), m: BTreeMap::from([("k".to_string(), x)]) };
            let json = serde_json::to_string(&r).unwrap();
            let back: Rec = serde_json::from_str(&json).unwrap();
            let same = |a: f64, b: f64| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
            assert!(same(back.x, x) && same(back.y.unwrap(), x) && same(back.m["k"], x), "{x}: {json}");
        }
        let json = serde_json::to_string(&Rec { x: f64::NAN, y: None, m: BTreeMap::new() }).unwrap();
        assert_eq!(json, r#"{"x":"NaN","y":null,"m":{}}"#);
        assert_eq!(serde_json::to_string(&Number(f64::NEG_INFINITY)).unwrap(), r#""-inf""#);
        assert_eq!(serde_json::to_string(&Number(0.1)).unwrap(), "0.1");
        assert!(serde_json::from_str::<Rec>(r#"{"x":"nan","y":null,"m":{}}"#).is_err());
        assert!(serde_json::from_str::<Rec>(r#"{"x":null,"y":null,"m":{}}"#).is_err());
        let ints: Rec = serde_json::from_str(r#"{"x":3,"y":-2,"m":{"a":1}}"#).unwrap();
        assert_eq!((ints.x, ints.y, ints.m["a"]), (3.0, Some(-2.0), 1.0));
    }
}
