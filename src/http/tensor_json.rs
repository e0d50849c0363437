//! The Open Inference Protocol's JSON tensors: a tensor's `data` (nested arrays, row-major)
//! read straight into little-endian bytes and checked against its shape as it is parsed, and
//! bytes written back as a flat JSON array. `/v2/.../infer` and `/api/v1/predict` both use it.

use std::fmt::Write as _;

use serde_json::Value;

use crate::error::Error;
use crate::model::DataType;

fn bad(message: impl Into<String>) -> Error {
    Error::InvalidArgument(message.into())
}

/// Flattens a tensor's JSON `data` (nested arrays, row-major) into little-endian `datatype`
/// elements as it is parsed: no JSON tree is built, and parsing stops at the first value past
/// the `limit` the tensor's shape holds (a 60 MB body for a [1,64] input costs 64 values).
struct Flatten<'a> {
    name: &'a str,
    datatype: DataType,
    limit: usize,
    out: &'a mut Vec<u8>,
}

impl<'de> serde::de::DeserializeSeed<'de> for &mut Flatten<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for &mut Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} values, in arrays nested as the shape", self.datatype.name())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(&mut *self)?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        self.push(Number::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.push(Number::Int(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.push(Number::Uint(v))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.push(Number::Float(v))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        Err(E::custom(format!(
            "input {:?}: {:?} is not a {} value",
            self.name,
            crate::error::cut(v, 40),
            self.datatype.name()
        )))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Err(E::custom(format!(
            "input {:?}: null is not a {} value",
            self.name,
            self.datatype.name()
        )))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(serde::de::Error::custom(format!(
            "input {:?}: an object is not a {} value",
            self.name,
            self.datatype.name()
        )))
    }
}

/// One JSON scalar.
#[derive(Debug, Clone, Copy)]
enum Number {
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(i) => write!(f, "{i}"),
            Self::Uint(u) => write!(f, "{u}"),
            Self::Float(x) => write!(f, "{x}"),
        }
    }
}

impl Flatten<'_> {
    fn push<E: serde::de::Error>(&mut self, v: Number) -> Result<(), E> {
        if self.out.len() / self.datatype.size() >= self.limit {
            return Err(E::custom(format!(
                "input {:?}: data has more values than its shape holds ({})",
                self.name, self.limit
            )));
        }
        let wrong = || {
            E::custom(format!(
                "input {:?}: {v} is not a {} value",
                self.name,
                self.datatype.name()
            ))
        };
        macro_rules! int {
            ($t:ty) => {{
                let n = match v {
                    Number::Int(i) => <$t>::try_from(i).ok(),
                    Number::Uint(u) => <$t>::try_from(u).ok(),
                    _ => None,
                };
                self.out.extend_from_slice(&n.ok_or_else(wrong)?.to_le_bytes());
            }};
        }
        let float = match v {
            Number::Int(i) => Some(i as f64),
            Number::Uint(u) => Some(u as f64),
            Number::Float(x) => Some(x),
            Number::Bool(_) => None,
        };
        match self.datatype {
            DataType::Bool => match v {
                Number::Bool(b) => self.out.push(u8::from(b)),
                _ => return Err(wrong()),
            },
            DataType::Fp32 => self
                .out
                .extend_from_slice(&(float.ok_or_else(wrong)? as f32).to_le_bytes()),
            DataType::Fp64 => self.out.extend_from_slice(&float.ok_or_else(wrong)?.to_le_bytes()),
            DataType::Int8 => int!(i8),
            DataType::Int16 => int!(i16),
            DataType::Int32 => int!(i32),
            DataType::Int64 => int!(i64),
            DataType::Uint8 => int!(u8),
            DataType::Uint16 => int!(u16),
            DataType::Uint32 => int!(u32),
            DataType::Uint64 => int!(u64),
        }
        Ok(())
    }
}

/// Writes little-endian `datatype` elements as a flat JSON array (floats in their shortest
/// exact form; a value JSON cannot hold, NaN or an infinity, as null).
pub(crate) fn decode_json(datatype: DataType, bytes: &[u8], out: &mut String) {
    out.push('[');
    let n = bytes.len() / datatype.size();
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        let b = &bytes[i * datatype.size()..(i + 1) * datatype.size()];
        let mut arr8 = [0u8; 8];
        arr8[..b.len()].copy_from_slice(b);
        let _ = match datatype {
            DataType::Bool => write!(out, "{}", b[0] != 0),
            DataType::Fp32 => {
                let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if x.is_finite() {
                    write!(out, "{x}")
                } else {
                    write!(out, "null")
                }
            }
            DataType::Fp64 => {
                let x = f64::from_le_bytes(arr8);
                if x.is_finite() {
                    write!(out, "{x}")
                } else {
                    write!(out, "null")
                }
            }
            DataType::Int8 => write!(out, "{}", i8::from_le_bytes([b[0]])),
            DataType::Int16 => write!(out, "{}", i16::from_le_bytes([b[0], b[1]])),
            DataType::Int32 => write!(out, "{}", i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            DataType::Int64 => write!(out, "{}", i64::from_le_bytes(arr8)),
            DataType::Uint8 => write!(out, "{}", b[0]),
            DataType::Uint16 => write!(out, "{}", u16::from_le_bytes([b[0], b[1]])),
            DataType::Uint32 => write!(out, "{}", u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            DataType::Uint64 => write!(out, "{}", u64::from_le_bytes(arr8)),
        };
    }
    out.push(']');
}

/// The little-endian bytes of a JSON tensor's `data` (any serde deserializer of it: the raw
/// text of a request, or a parsed value), checked against its shape as it is read.
///
/// # Errors
/// `InvalidArgument` for an unknown datatype, a value of the wrong type or range, or a count
/// of values the shape does not hold.
pub(crate) fn json_tensor_bytes<'de, D>(name: &str, datatype: &str, shape: &[i64], data: D) -> Result<Vec<u8>, Error>
where
    D: serde::Deserializer<'de>,
{
    use serde::de::DeserializeSeed as _;
    let datatype = DataType::parse(datatype).map_err(|e| bad(format!("input {name:?}: {e}")))?;
    let Some(want) = elements(shape) else {
        return Err(bad(format!(
            "input {name:?}: shape {shape:?} holds a negative or huge count"
        )));
    };
    // The shape's bytes, unless that is a claim the data cannot back (then grown as read).
    let mut out = Vec::with_capacity(want.saturating_mul(datatype.size()).min(1 << 20));
    let mut flatten = Flatten {
        name,
        datatype,
        limit: want,
        out: &mut out,
    };
    (&mut flatten).deserialize(data).map_err(|e| {
        let text = e.to_string();
        // serde_json appends where it stopped; the message names the input already.
        bad(text.split(" at line ").next().unwrap_or(&text).to_string())
    })?;
    let got = out.len() / datatype.size();
    if got != want {
        return Err(bad(format!(
            "input {name:?}: data has {got} values, shape {shape:?} holds {want}"
        )));
    }
    Ok(out)
}

/// Little-endian `datatype` bytes as a flat JSON array.
pub(crate) fn bytes_json(datatype: DataType, bytes: &[u8]) -> Value {
    let mut text = String::new();
    decode_json(datatype, bytes, &mut text);
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn elements(shape: &[i64]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn json_values_encode_and_decode_by_datatype() {
        let out = json_tensor_bytes("x", "FP32", &[2, 2], json!([[1.5, -2], [0.1, 3]])).unwrap();
        let mut text = String::new();
        decode_json(DataType::Fp32, &out, &mut text);
        assert_eq!(text, "[1.5,-2,0.1,3]");
        let out = json_tensor_bytes("x", "BOOL", &[2], json!([true, false])).unwrap();
        assert_eq!(out, vec![1, 0]);
        let mut raw = serde_json::Deserializer::from_str("[-5, 7]");
        let out = json_tensor_bytes("x", "INT64", &[2], &mut raw).unwrap();
        let mut text = String::new();
        decode_json(DataType::Int64, &out, &mut text);
        assert_eq!(text, "[-5,7]");
        for (d, v) in [
            ("INT8", json!(300)),
            ("UINT8", json!(-1)),
            ("INT32", json!(1.5)),
            ("BOOL", json!(1)),
            ("FP32", json!("1")),
            ("FP32", json!(null)),
        ] {
            let e = json_tensor_bytes("x", d, &[1], json!([v])).unwrap_err();
            assert!(e.to_string().contains("is not a"), "{e}");
        }
        let mut text = String::new();
        decode_json(DataType::Fp32, &f32::NAN.to_le_bytes(), &mut text);
        assert_eq!(text, "[null]");
    }

    #[test]
    fn json_data_stops_at_the_first_value_its_shape_does_not_hold() {
        let long = format!("[{}0]", "0,".repeat(1_000_000));
        let mut raw = serde_json::Deserializer::from_str(&long);
        let e = json_tensor_bytes("x", "FP32", &[1, 64], &mut raw).unwrap_err();
        assert!(e.to_string().contains("more values than its shape holds (64)"), "{e}");
        let e = json_tensor_bytes("x", "FP32", &[1, 3], json!([1, 2])).unwrap_err();
        assert!(e.to_string().contains("data has 2 values, shape [1, 3] holds 3"), "{e}");
        let e = json_tensor_bytes("x", "FP32", &[-1, 3], json!([1, 2])).unwrap_err();
        assert!(e.to_string().contains("negative or huge"), "{e}");
    }
}
