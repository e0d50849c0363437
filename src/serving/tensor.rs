//! Request tensors in and out: checks every input against the signature with messages that say
//! what was expected and what came, and converts between wire data and tract tensors.

use tract_onnx::prelude::{DatumType, TValue, TVec, Tensor};

use crate::error::{Error, Result};
use crate::model::{DataType, Signature, TensorSpec};

/// An input's data as it arrived: raw little-endian bytes or one typed list.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// Little-endian, row-major bytes.
    Raw(&'a [u8]),
    /// FP32 values.
    Fp32(&'a [f32]),
    /// FP64 values.
    Fp64(&'a [f64]),
    /// INT8, INT16, INT32 values.
    Int32(&'a [i32]),
    /// INT64 values.
    Int64(&'a [i64]),
    /// UINT8, UINT16, UINT32 values.
    Uint32(&'a [u32]),
    /// UINT64 values.
    Uint64(&'a [u64]),
    /// BOOL values.
    Bool(&'a [bool]),
}

impl<'a> Payload<'a> {
    /// The one field of a wire tensor that carries data: wire messages offer several fields
    /// (raw bytes, typed lists), and exactly one may be used. A tensor with no data at all (a
    /// zero-sized dimension) is an empty raw payload.
    ///
    /// # Errors
    /// `InvalidArgument` when more than one field carries data.
    pub fn only_one(input: &str, fields: impl IntoIterator<Item = Payload<'a>>) -> Result<Self> {
        let mut present = fields.into_iter().filter(|p| p.len() > 0);
        match (present.next(), present.next()) {
            (Some(p), None) => Ok(p),
            (None, _) => Ok(Payload::Raw(&[])),
            (Some(a), Some(b)) => Err(Error::InvalidArgument(format!(
                "input {input:?} carries data in more than one field ({} and {}); use one",
                a.field(),
                b.field()
            ))),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Raw(v) => v.len(),
            Self::Fp32(v) => v.len(),
            Self::Fp64(v) => v.len(),
            Self::Int32(v) => v.len(),
            Self::Int64(v) => v.len(),
            Self::Uint32(v) => v.len(),
            Self::Uint64(v) => v.len(),
            Self::Bool(v) => v.len(),
        }
    }

    fn field(&self) -> &'static str {
        match self {
            Self::Raw(_) => "raw data",
            Self::Fp32(_) => "FP32 values",
            Self::Fp64(_) => "FP64 values",
            Self::Int32(_) => "INT32 values",
            Self::Int64(_) => "INT64 values",
            Self::Uint32(_) => "UINT32 values",
            Self::Uint64(_) => "UINT64 values",
            Self::Bool(_) => "BOOL values",
        }
    }
}

/// One request input, borrowed from the wire message.
#[derive(Debug, Clone, Copy)]
pub struct InputRef<'a> {
    /// Input name.
    pub name: &'a str,
    /// Open Inference Protocol datatype name.
    pub datatype: &'a str,
    /// Dimensions as sent.
    pub shape: &'a [i64],
    /// The data.
    pub payload: Payload<'a>,
}

/// An output's data.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputData {
    /// Little-endian, row-major bytes.
    Raw(Vec<u8>),
    /// FP32 values.
    Fp32(Vec<f32>),
    /// FP64 values.
    Fp64(Vec<f64>),
    /// INT8, INT16, INT32 values.
    Int32(Vec<i32>),
    /// INT64 values.
    Int64(Vec<i64>),
    /// UINT8, UINT16, UINT32 values.
    Uint32(Vec<u32>),
    /// UINT64 values.
    Uint64(Vec<u64>),
    /// BOOL values.
    Bool(Vec<bool>),
}

/// One model output, ready for the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputTensor {
    /// Output name.
    pub name: String,
    /// Element type.
    pub datatype: DataType,
    /// Dimensions.
    pub shape: Vec<i64>,
    /// The data.
    pub data: OutputData,
}

fn shape_text(shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(","))
}

/// Checks the request against the signature and builds tract's inputs in signature order.
///
/// # Errors
/// `InvalidArgument` naming the input, what was expected and what came.
pub fn prepare_inputs(model: &str, signature: &Signature, inputs: &[InputRef<'_>]) -> Result<TVec<TValue>> {
    for (i, input) in inputs.iter().enumerate() {
        if !signature.inputs.iter().any(|s| s.name == input.name) {
            let known: Vec<String> = signature.inputs.iter().map(|s| format!("{:?}", s.name)).collect();
            return Err(Error::InvalidArgument(format!(
                "model {} has no input {:?}; its inputs are {}",
                crate::name::quoted(model),
                input.name,
                known.join(", ")
            )));
        }
        if inputs[..i].iter().any(|o| o.name == input.name) {
            return Err(Error::InvalidArgument(format!(
                "input {:?} is given more than once",
                input.name
            )));
        }
    }
    signature
        .inputs
        .iter()
        .map(|spec| {
            let input = inputs.iter().find(|i| i.name == spec.name).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "missing input {:?}: expected {} {}",
                    spec.name,
                    spec.shape_text(),
                    spec.datatype
                ))
            })?;
            build_tensor(spec, input).map(TValue::from)
        })
        .collect()
}

fn build_tensor(spec: &TensorSpec, input: &InputRef<'_>) -> Result<Tensor> {
    let mismatch = || {
        Error::InvalidArgument(format!(
            "input {:?}: expected {} {}, got {} {}",
            spec.name,
            spec.shape_text(),
            spec.datatype,
            shape_text(input.shape),
            input.datatype
        ))
    };
    let datatype =
        DataType::parse(input.datatype).map_err(|e| Error::InvalidArgument(format!("input {:?}: {e}", spec.name)))?;
    if datatype != spec.datatype || input.shape.len() != spec.shape.len() {
        return Err(mismatch());
    }
    let mut shape = Vec::with_capacity(input.shape.len());
    for (&got, &want) in input.shape.iter().zip(&spec.shape) {
        if got < 0 || (want >= 0 && got != want) {
            return Err(mismatch());
        }
        shape.push(usize::try_from(got).map_err(|_| mismatch())?);
    }
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "input {:?}: shape {} is too large",
                spec.name,
                shape_text(input.shape)
            ))
        })?;
    let expected_len = match input.payload {
        Payload::Raw(_) => count.checked_mul(datatype.size()),
        _ => Some(count),
    };
    if expected_len != Some(input.payload.len()) {
        let unit = if matches!(input.payload, Payload::Raw(_)) {
            "bytes of"
        } else {
            ""
        };
        return Err(Error::InvalidArgument(
            format!(
                "input {:?}: shape {} {} needs {} {unit} {}, got {}",
                spec.name,
                shape_text(input.shape),
                datatype,
                expected_len.map_or_else(|| "too many".to_string(), |n| n.to_string()),
                input.payload.field(),
                input.payload.len()
            )
            .replace("  ", " "),
        ));
    }
    let wrong_field = || {
        Error::InvalidArgument(format!(
            "input {:?}: datatype {} cannot be sent as {}",
            spec.name,
            datatype,
            input.payload.field()
        ))
    };
    let out_of_range = |v: &dyn std::fmt::Display| -> Error {
        Error::InvalidArgument(format!("input {:?}: value {v} does not fit {}", spec.name, datatype))
    };
    let tensor = match (input.payload, datatype) {
        (Payload::Raw(bytes), _) => {
            if datatype == DataType::Bool && bytes.iter().any(|&b| b > 1) {
                return Err(Error::InvalidArgument(format!(
                    "input {:?}: BOOL raw data must be bytes 0 or 1",
                    spec.name
                )));
            }
            // SAFETY: the length matches shape x element size (checked above) and, for BOOL,
            // every byte is 0 or 1, so every bit pattern is a valid value of the element type.
            unsafe { Tensor::from_raw_dt(crate::model::datum(datatype), &shape, bytes) }
        }
        (Payload::Fp32(v), DataType::Fp32) => Tensor::from_shape(&shape, v),
        (Payload::Fp64(v), DataType::Fp64) => Tensor::from_shape(&shape, v),
        (Payload::Int64(v), DataType::Int64) => Tensor::from_shape(&shape, v),
        (Payload::Uint64(v), DataType::Uint64) => Tensor::from_shape(&shape, v),
        (Payload::Bool(v), DataType::Bool) => Tensor::from_shape(&shape, v),
        (Payload::Int32(v), DataType::Int32) => Tensor::from_shape(&shape, v),
        (Payload::Int32(v), DataType::Int16) => narrowed::<_, i16>(&shape, v, out_of_range)?,
        (Payload::Int32(v), DataType::Int8) => narrowed::<_, i8>(&shape, v, out_of_range)?,
        (Payload::Uint32(v), DataType::Uint32) => Tensor::from_shape(&shape, v),
        (Payload::Uint32(v), DataType::Uint16) => narrowed::<_, u16>(&shape, v, out_of_range)?,
        (Payload::Uint32(v), DataType::Uint8) => narrowed::<_, u8>(&shape, v, out_of_range)?,
        _ => return Err(wrong_field()),
    };
    tensor.map_err(|e| Error::internal(format!("cannot build input {:?}: {e}", spec.name)))
}

/// Builds a tensor of a narrower integer type from wire values, refusing values that do not fit.
fn narrowed<W, N>(
    shape: &[usize],
    values: &[W],
    out_of_range: impl Fn(&dyn std::fmt::Display) -> Error,
) -> Result<tract_onnx::prelude::TractResult<Tensor>>
where
    W: Copy + std::fmt::Display,
    N: TryFrom<W> + tract_onnx::prelude::Datum + Copy,
{
    let v: Vec<N> = values
        .iter()
        .map(|&x| N::try_from(x).map_err(|_| out_of_range(&x)))
        .collect::<Result<_>>()?;
    Ok(Tensor::from_shape(shape, &v))
}

/// Turns tract's outputs into wire tensors: raw bytes, or typed values.
///
/// # Errors
/// `Internal` when the model returns a type or count its signature does not declare.
pub fn encode_outputs(signature: &Signature, outputs: TVec<TValue>, raw: bool) -> Result<Vec<OutputTensor>> {
    if outputs.len() != signature.outputs.len() {
        return Err(Error::internal(format!(
            "model returned {} outputs, its signature has {}",
            outputs.len(),
            signature.outputs.len()
        )));
    }
    signature
        .outputs
        .iter()
        .zip(outputs)
        .map(|(spec, value)| {
            let t: &Tensor = &value;
            let datatype = crate::model::served_datatype(t.datum_type()).ok_or_else(|| {
                Error::internal(format!(
                    "output {:?} has unsupported type {:?}",
                    spec.name,
                    t.datum_type()
                ))
            })?;
            let shape = t.shape().iter().map(|&d| d as i64).collect();
            let data = if raw {
                let view = t
                    .try_as_plain_ram()
                    .map_err(|e| Error::internal(format!("cannot read output: {e}")))?;
                OutputData::Raw(view.as_bytes().to_vec())
            } else {
                typed(t)?
            };
            Ok(OutputTensor {
                name: spec.name.clone(),
                datatype,
                shape,
                data,
            })
        })
        .collect()
}

fn slice<D: tract_onnx::prelude::Datum>(t: &Tensor) -> Result<&[D]> {
    t.try_as_plain_ram()
        .and_then(|v| v.as_slice::<D>())
        .map_err(|e| Error::internal(format!("cannot read output: {e}")))
}

fn typed(t: &Tensor) -> Result<OutputData> {
    Ok(match t.datum_type() {
        DatumType::F32 => OutputData::Fp32(slice::<f32>(t)?.to_vec()),
        DatumType::F64 => OutputData::Fp64(slice::<f64>(t)?.to_vec()),
        DatumType::I64 => OutputData::Int64(slice::<i64>(t)?.to_vec()),
        DatumType::U64 => OutputData::Uint64(slice::<u64>(t)?.to_vec()),
        DatumType::Bool => OutputData::Bool(slice::<bool>(t)?.to_vec()),
        DatumType::I32 => OutputData::Int32(slice::<i32>(t)?.to_vec()),
        DatumType::I16 => OutputData::Int32(slice::<i16>(t)?.iter().map(|&x| x.into()).collect()),
        DatumType::I8 => OutputData::Int32(slice::<i8>(t)?.iter().map(|&x| x.into()).collect()),
        DatumType::U32 => OutputData::Uint32(slice::<u32>(t)?.to_vec()),
        DatumType::U16 => OutputData::Uint32(slice::<u16>(t)?.iter().map(|&x| x.into()).collect()),
        DatumType::U8 => OutputData::Uint32(slice::<u8>(t)?.iter().map(|&x| x.into()).collect()),
        other => return Err(Error::internal(format!("unsupported output type {other:?}"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig() -> Signature {
        Signature {
            inputs: vec![TensorSpec {
                name: "input".into(),
                datatype: DataType::Fp32,
                shape: vec![-1, 4],
            }],
            outputs: vec![],
        }
    }

    fn err(inputs: &[InputRef<'_>]) -> String {
        match prepare_inputs("m", &sig(), inputs) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn good_inputs_in_both_encodings() {
        let raw: Vec<u8> = [1f32, 2., 3., 4., 5., 6., 7., 8.]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        let t = prepare_inputs(
            "m",
            &sig(),
            &[InputRef {
                name: "input",
                datatype: "FP32",
                shape: &[2, 4],
                payload: Payload::Raw(&raw),
            }],
        )
        .unwrap();
        assert_eq!(t[0].shape(), &[2, 4]);
        assert_eq!(slice::<f32>(&t[0]).unwrap()[7], 8.0);
        let v = [f32::NAN, 1., 2., 3.];
        let t = prepare_inputs(
            "m",
            &sig(),
            &[InputRef {
                name: "input",
                datatype: "FP32",
                shape: &[1, 4],
                payload: Payload::Fp32(&v),
            }],
        )
        .unwrap();
        assert!(slice::<f32>(&t[0]).unwrap()[0].is_nan(), "NaN passes through untouched");
    }

    #[test]
    fn bad_inputs_say_what_was_expected_and_what_came() {
        let v = [0f32; 3];
        let m = err(&[InputRef {
            name: "input",
            datatype: "FP32",
            shape: &[1, 3],
            payload: Payload::Fp32(&v),
        }]);
        assert_eq!(m, "input \"input\": expected [N,4] FP32, got [1,3] FP32");
        let m = err(&[InputRef {
            name: "input",
            datatype: "FP64",
            shape: &[1, 4],
            payload: Payload::Fp64(&[0.; 4]),
        }]);
        assert_eq!(m, "input \"input\": expected [N,4] FP32, got [1,4] FP64");
        let m = err(&[InputRef {
            name: "input",
            datatype: "FP32",
            shape: &[1, 4],
            payload: Payload::Raw(&[0; 15]),
        }]);
        assert!(m.contains("needs 16 bytes of raw data, got 15"), "{m}");
        let m = err(&[InputRef {
            name: "input",
            datatype: "FP32",
            shape: &[2, 4],
            payload: Payload::Fp32(&[0.; 4]),
        }]);
        assert!(m.contains("needs 8 FP32 values, got 4"), "{m}");
        let m = err(&[InputRef {
            name: "input",
            datatype: "FP32",
            shape: &[1, 4],
            payload: Payload::Int64(&[0; 4]),
        }]);
        assert!(m.contains("cannot be sent as INT64 values"), "{m}");
        let m = err(&[InputRef {
            name: "image",
            datatype: "FP32",
            shape: &[1, 4],
            payload: Payload::Fp32(&[0.; 4]),
        }]);
        assert!(m.contains("has no input \"image\""), "{m}");
        let m = err(&[]);
        assert_eq!(m, "missing input \"input\": expected [N,4] FP32");
        let m = err(&[InputRef {
            name: "input",
            datatype: "FP32",
            shape: &[-1, 4],
            payload: Payload::Fp32(&[]),
        }]);
        assert!(m.contains("expected [N,4] FP32, got [-1,4]"), "{m}");
        let m = err(&[InputRef {
            name: "input",
            datatype: "HALF",
            shape: &[1, 4],
            payload: Payload::Fp32(&[0.; 4]),
        }]);
        assert!(m.contains("unsupported datatype \"HALF\""), "{m}");
        let m = err(&[InputRef {
            name: "input",
            datatype: "FP32",
            shape: &[i64::MAX, 4],
            payload: Payload::Fp32(&[]),
        }]);
        assert!(m.contains("too large") || m.contains("needs"), "{m}");
    }

    #[test]
    fn bool_raw_bytes_must_be_zero_or_one() {
        let sig = Signature {
            inputs: vec![TensorSpec {
                name: "b".into(),
                datatype: DataType::Bool,
                shape: vec![2],
            }],
            outputs: vec![],
        };
        let bad = [0u8, 2];
        let r = prepare_inputs(
            "m",
            &sig,
            &[InputRef {
                name: "b",
                datatype: "BOOL",
                shape: &[2],
                payload: Payload::Raw(&bad),
            }],
        );
        assert!(matches!(r, Err(Error::InvalidArgument(_))));
        let good = [0u8, 1];
        let t = prepare_inputs(
            "m",
            &sig,
            &[InputRef {
                name: "b",
                datatype: "BOOL",
                shape: &[2],
                payload: Payload::Raw(&good),
            }],
        )
        .unwrap();
        assert_eq!(slice::<bool>(&t[0]).unwrap(), &[false, true]);
    }

    #[test]
    fn narrow_integers_are_range_checked() {
        let sig = Signature {
            inputs: vec![TensorSpec {
                name: "x".into(),
                datatype: DataType::Uint8,
                shape: vec![2],
            }],
            outputs: vec![],
        };
        let r = prepare_inputs(
            "m",
            &sig,
            &[InputRef {
                name: "x",
                datatype: "UINT8",
                shape: &[2],
                payload: Payload::Uint32(&[1, 256]),
            }],
        );
        assert!(
            matches!(r, Err(Error::InvalidArgument(ref m)) if m.contains("256")),
            "{r:?}"
        );
    }
}
