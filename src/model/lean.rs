//! Reading an ONNX file without holding it whole, so that loading a model costs little more
//! memory than the loaded model.
//!
//! The plain way (read the file, decode the protobuf, let tract copy each initializer into its
//! tensor) holds three copies of the weights at once: the file's bytes, the decoded message's,
//! and the tensors. Here the file is read once, front to back, through the sha256 hasher; each
//! large initializer's `raw_data` is read straight from the file into the tensor that the model
//! keeps, and the rest (the graph, small initializers) becomes a small "skeleton" message in
//! which each large initializer is a unique stand-in. tract parses the skeleton; the stand-ins'
//! constants are then replaced by the real tensors. Anything unusual about an initializer
//! (a datatype kept as typed values, `raw_data` before its shape, external data) keeps it in
//! the skeleton as it was, for tract to read the plain way.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use anyhow::Context;
use prost::Message;
use sha2::{Digest, Sha256};
use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;

/// Initializers at least this large are read straight into their tensors.
const LARGE: u64 = 1 << 20;

/// The first value of a stand-in (its second is its index): "modeld" in ASCII, a value no real
/// model's two-element INT64 constant is likely to hold.
const STAND_IN: i64 = 0x6d6f_6465_6c64;

/// A file read the lean way: the skeleton, the tensors read out of it, the file's sha256.
pub(super) struct Lean {
    pub proto: pb::ModelProto,
    tensors: Vec<(String, Tensor)>,
    pub sha256: String,
    pub size: u64,
}

/// Why a lean read failed.
pub(super) enum Failure {
    /// Reading the file failed.
    Io(io::Error),
    /// The bytes are not an ONNX model (the message continues "model file X ...").
    Format(String),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Self::Format("is not a loadable ONNX model: it ends inside a field (truncated?)".into())
        } else {
            Self::Io(e)
        }
    }
}

fn bad(what: &str) -> Failure {
    Failure::Format(format!("is not a loadable ONNX model: {what}"))
}

/// The file, read front to back once: every byte read goes through the hasher.
struct Source {
    file: BufReader<File>,
    hasher: Sha256,
}

impl Source {
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact(buf)?;
        self.hasher.update(&*buf);
        Ok(())
    }

    fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8];
        self.fill(&mut b)?;
        Ok(b[0])
    }

    /// A varint and how many bytes it took.
    fn varint(&mut self) -> Result<(u64, u64), Failure> {
        let mut value = 0u64;
        for i in 0..10 {
            let b = self.byte()?;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((value, i + 1));
            }
        }
        Err(bad("a varint longer than 10 bytes"))
    }

    /// Appends `n` bytes to `out`.
    fn copy(&mut self, n: u64, out: &mut Vec<u8>) -> Result<(), Failure> {
        let start = out.len();
        let got = (&mut self.file).take(n).read_to_end(out)?;
        if (got as u64) < n {
            return Err(bad("it ends inside a field (truncated?)"));
        }
        self.hasher.update(&out[start..]);
        Ok(())
    }
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads `path` the lean way. The sha256 covers every byte of the file.
pub(super) fn read(path: &Path) -> Result<Lean, Failure> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut src = Source {
        file: BufReader::with_capacity(1 << 16, file),
        hasher: Sha256::new(),
    };
    let mut skeleton = Vec::new();
    let mut tensors = Vec::new();
    message(&mut src, size, &mut skeleton, &mut |src, field, out| {
        let Field::Delimited(7, len) = field else {
            return Ok(false);
        };
        // ModelProto.graph: its large initializers come out.
        let mut graph = Vec::new();
        message(src, len, &mut graph, &mut |src, field, out| match field {
            Field::Delimited(5, len) if len >= LARGE => {
                initializer(src, len, out, &mut tensors)?;
                Ok(true)
            }
            _ => Ok(false),
        })?;
        put_varint(out, 7 << 3 | 2);
        put_varint(out, graph.len() as u64);
        out.extend_from_slice(&graph);
        Ok(true)
    })?;
    // Anything after the declared size (a file still being written) is read and hashed too:
    // the checksum is of the file, and the decoder refuses the extra bytes.
    let mut rest = Vec::new();
    src.file.read_to_end(&mut rest)?;
    if !rest.is_empty() {
        return Err(bad("it has bytes after its end"));
    }
    let proto = pb::ModelProto::decode(&skeleton[..]).map_err(|e| bad(&e.to_string()))?;
    Ok(Lean {
        proto,
        tensors,
        sha256: hex::encode(src.hasher.finalize()),
        size,
    })
}

/// A field as a message's handler sees it.
enum Field {
    /// A varint field: its number and value (kept as it is, whatever the handler says).
    Varint(u64, u64),
    /// A length-delimited field: its number and length.
    Delimited(u64, u64),
}

/// What a message's field handler does with a field: `Ok(true)` when it consumed a
/// length-delimited field's bytes and wrote what it wants kept to the buffer it is given,
/// `Ok(false)` to keep the field as it is.
type Handler<'a> = dyn FnMut(&mut Source, Field, &mut Vec<u8>) -> Result<bool, Failure> + 'a;

/// Copies a message of `len` bytes to `out`, field by field, showing `handle` its varint and
/// length-delimited fields.
fn message(src: &mut Source, len: u64, out: &mut Vec<u8>, handle: &mut Handler<'_>) -> Result<(), Failure> {
    let mut left = len;
    let take = |n: u64, left: &mut u64| -> Result<(), Failure> {
        *left = left
            .checked_sub(n)
            .ok_or_else(|| bad("a field runs past the end of its message"))?;
        Ok(())
    };
    while left > 0 {
        let (key, n) = src.varint()?;
        take(n, &mut left)?;
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let (v, n) = src.varint()?;
                take(n, &mut left)?;
                put_varint(out, key);
                put_varint(out, v);
                handle(src, Field::Varint(field, v), &mut Vec::new())?;
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                take(n, &mut left)?;
                put_varint(out, key);
                src.copy(n, out)?;
            }
            2 => {
                let (flen, n) = src.varint()?;
                take(n, &mut left)?;
                take(flen, &mut left)?;
                let mut kept = Vec::new();
                if handle(src, Field::Delimited(field, flen), &mut kept)? {
                    out.extend_from_slice(&kept);
                } else {
                    put_varint(out, key);
                    put_varint(out, flen);
                    src.copy(flen, out)?;
                }
            }
            _ => return Err(bad(&format!("wire type {wire} (groups are not used by ONNX)"))),
        }
    }
    Ok(())
}

/// The datatypes whose `raw_data` is the tensor's bytes as they are (little-endian).
fn plain_datatype(onnx: i32) -> Option<DatumType> {
    use pb::tensor_proto::DataType as D;
    let dt = match D::try_from(onnx).ok()? {
        D::Float => DatumType::F32,
        D::Uint8 => DatumType::U8,
        D::Int8 => DatumType::I8,
        D::Uint16 => DatumType::U16,
        D::Int16 => DatumType::I16,
        D::Int32 => DatumType::I32,
        D::Int64 => DatumType::I64,
        D::Float16 => DatumType::F16,
        D::Double => DatumType::F64,
        D::Uint32 => DatumType::U32,
        D::Uint64 => DatumType::U64,
        _ => return None,
    };
    Some(dt)
}

/// A large initializer (a TensorProto of `len` bytes): its raw data goes straight into a
/// tensor and a stand-in into `out`; or, when it is unusual, it goes to `out` as it was.
fn initializer(
    src: &mut Source,
    len: u64,
    out: &mut Vec<u8>,
    tensors: &mut Vec<(String, Tensor)>,
) -> Result<(), Failure> {
    let mut head = Vec::new();
    let (mut dims, mut datatype, mut name, mut data) = (Vec::<i64>::new(), None, None::<String>, None::<Tensor>);
    let mut plain = cfg!(target_endian = "little");
    let keep_bytes = |src: &mut Source, field: u64, flen: u64, kept: &mut Vec<u8>| -> Result<Vec<u8>, Failure> {
        let mut bytes = Vec::new();
        src.copy(flen, &mut bytes)?;
        put_varint(kept, field << 3 | 2);
        put_varint(kept, flen);
        kept.extend_from_slice(&bytes);
        Ok(bytes)
    };
    message(src, len, &mut head, &mut |src, field, kept| match field {
        Field::Varint(1, v) => {
            dims.push(v as i64);
            Ok(false)
        }
        Field::Varint(2, v) => {
            datatype = i32::try_from(v).ok();
            Ok(false)
        }
        Field::Varint(14, v) => {
            // data_location EXTERNAL: tract reads it the plain way.
            plain &= v == 0;
            Ok(false)
        }
        Field::Varint(..) => Ok(false),
        Field::Delimited(1, flen) => {
            // dims, packed.
            let bytes = keep_bytes(src, 1, flen, kept)?;
            let mut at = &bytes[..];
            while !at.is_empty() {
                let v = prost::encoding::decode_varint(&mut at).map_err(|e| bad(&e.to_string()))?;
                dims.push(v as i64);
            }
            Ok(true)
        }
        Field::Delimited(8, flen) => {
            let bytes = keep_bytes(src, 8, flen, kept)?;
            name = Some(String::from_utf8(bytes).map_err(|_| bad("a tensor name is not UTF-8"))?);
            Ok(true)
        }
        Field::Delimited(9, flen) if plain && data.is_none() => {
            let dt = datatype.and_then(plain_datatype);
            let shape: Option<Vec<usize>> = dims.iter().map(|&d| usize::try_from(d).ok()).collect();
            match (dt, shape) {
                (Some(dt), Some(shape))
                    if shape.iter().try_fold(dt.size_of(), |n, &d| n.checked_mul(d)) == usize::try_from(flen).ok() =>
                {
                    let mut t = Tensor::zero_dt(dt, &shape).map_err(|e| bad(&e.to_string()))?;
                    src.fill(t.as_bytes_mut())?;
                    data = Some(t);
                    Ok(true)
                }
                _ => {
                    // raw_data before the shape or datatype, or of another size: plain way.
                    plain = false;
                    Ok(false)
                }
            }
        }
        Field::Delimited(13, _) => {
            // external_data entries.
            plain = false;
            Ok(false)
        }
        Field::Delimited(..) => Ok(false),
    })?;
    put_varint(out, 5 << 3 | 2);
    match (data, name) {
        (Some(tensor), Some(name)) if plain => {
            let stand_in = pb::TensorProto {
                dims: vec![2],
                data_type: pb::tensor_proto::DataType::Int64 as i32,
                name: name.clone(),
                int64_data: vec![STAND_IN, tensors.len() as i64],
                ..Default::default()
            }
            .encode_to_vec();
            tensors.push((name, tensor));
            put_varint(out, stand_in.len() as u64);
            out.extend_from_slice(&stand_in);
        }
        (Some(tensor), _) => {
            // Read straight, but unusual after all (no name, external data after it): back
            // into the message as its raw_data, for tract to read the plain way.
            let raw = tensor.as_bytes();
            let mut field = Vec::new();
            put_varint(&mut field, 9 << 3 | 2);
            put_varint(&mut field, raw.len() as u64);
            put_varint(out, (head.len() + field.len() + raw.len()) as u64);
            out.extend_from_slice(&head);
            out.extend_from_slice(&field);
            out.extend_from_slice(raw);
        }
        (None, _) => {
            put_varint(out, head.len() as u64);
            out.extend_from_slice(&head);
        }
    }
    Ok(())
}

impl Lean {
    /// Puts the tensors read out of the file in place of their stand-ins in `model` (parsed
    /// from the skeleton).
    ///
    /// # Errors
    /// When a stand-in is not where it should be (tract parsed the skeleton differently than
    /// expected): the caller loads the plain way instead.
    pub fn fill(self, model: &mut InferenceModel) -> TractResult<()> {
        for (index, (name, tensor)) in self.tensors.into_iter().enumerate() {
            let id = model.node_id_by_name(&name)?;
            let node = model.node(id);
            let konst = node
                .op_as::<Const>()
                .with_context(|| format!("initializer {name:?} is not a constant after parsing"))?;
            let expected = tensor1(&[STAND_IN, index as i64]);
            anyhow::ensure!(
                **konst.val() == expected,
                "initializer {name:?} is not its stand-in after parsing"
            );
            let tensor = tensor.into_arc_tensor();
            let fact = TypedFact::try_from(tensor.clone())?;
            let node = model.node_mut(id);
            node.op = Box::new(Const::new(tensor)?);
            node.outputs[0].fact = fact.into();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EngineSettings, load_model};

    /// `y = x · w + b` for x `[N, inputs]`, w `[inputs, outputs]` from `weight(i, j)`: one Gemm
    /// whose weight is large enough to be read the lean way when `inputs * outputs * 4` is at
    /// least a MiB.
    fn gemm_model(path: &Path, inputs: usize, outputs: usize, weight: impl Fn(usize, usize) -> f32) {
        let mut raw = Vec::with_capacity(inputs * outputs * 4);
        for i in 0..inputs {
            for j in 0..outputs {
                raw.extend_from_slice(&weight(i, j).to_le_bytes());
            }
        }
        let dim = |v: pb::tensor_shape_proto::dimension::Value| pb::tensor_shape_proto::Dimension {
            value: Some(v),
            ..Default::default()
        };
        let info = |name: &str, width: usize| pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(pb::TensorShapeProto {
                        dim: vec![
                            dim(pb::tensor_shape_proto::dimension::Value::DimParam("N".into())),
                            dim(pb::tensor_shape_proto::dimension::Value::DimValue(width as i64)),
                        ],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        };
        let model = pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 13,
            }],
            graph: Some(pb::GraphProto {
                node: vec![pb::NodeProto {
                    input: vec!["x".into(), "w".into(), "b".into()],
                    output: vec!["y".into()],
                    op_type: "Gemm".into(),
                    ..Default::default()
                }],
                initializer: vec![
                    pb::TensorProto {
                        dims: vec![inputs as i64, outputs as i64],
                        data_type: 1,
                        name: "w".into(),
                        raw_data: raw,
                        ..Default::default()
                    },
                    pb::TensorProto {
                        dims: vec![outputs as i64],
                        data_type: 1,
                        name: "b".into(),
                        float_data: (0..outputs).map(|j| j as f32 * 0.5).collect(),
                        ..Default::default()
                    },
                ],
                input: vec![info("x", inputs)],
                output: vec![info("y", outputs)],
                ..Default::default()
            }),
            ..Default::default()
        };
        std::fs::write(path, model.encode_to_vec()).unwrap();
    }

    fn run(path: &Path, x: &[f32], inputs: usize) -> Vec<f32> {
        let loaded = load_model(path, None, EngineSettings::default()).unwrap();
        assert_eq!(loaded.engine.kind(), crate::model::EngineKind::Tract);
        let input = Tensor::from_shape(&[1, inputs], x).unwrap();
        let out = loaded.engine.run(tvec!(input.into())).unwrap();
        out[0].try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
    }

    #[test]
    fn large_initializers_are_read_straight_into_their_tensors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gemm.onnx");
        let (inputs, outputs) = (512, 600);
        let weight = |i: usize, j: usize| ((i * 31 + j * 17) % 97) as f32 / 97.0 - 0.5;
        gemm_model(&path, inputs, outputs, weight);
        let lean = read(&path).unwrap_or_else(|_| panic!("a plain model reads the lean way"));
        assert_eq!(lean.tensors.len(), 1, "the 1.2 MB weight is read straight");
        assert_eq!(lean.tensors[0].1.shape(), &[inputs, outputs]);
        assert_eq!(lean.sha256, hex::encode(Sha256::digest(std::fs::read(&path).unwrap())));
        assert!(
            lean.proto.encoded_len() < 4096,
            "the skeleton is small: {}",
            lean.proto.encoded_len()
        );

        let x: Vec<f32> = (0..inputs).map(|i| (i % 13) as f32 / 13.0).collect();
        let got = run(&path, &x, inputs);
        for (j, g) in got.iter().enumerate() {
            let want: f64 = (0..inputs)
                .map(|i| f64::from(x[i]) * f64::from(weight(i, j)))
                .sum::<f64>()
                + j as f64 * 0.5;
            assert!((f64::from(*g) - want).abs() < 1e-3, "y[{j}] = {g}, want {want}");
        }
    }

    #[test]
    fn truncated_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gemm.onnx");
        gemm_model(&path, 512, 600, |i, j| (i + j) as f32);
        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.onnx");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        assert!(matches!(read(&cut), Err(Failure::Format(_))));
        let foreign = dir.path().join("foreign.onnx");
        std::fs::write(&foreign, b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").unwrap();
        assert!(matches!(read(&foreign), Err(Failure::Format(_))));
        assert!(matches!(read(&dir.path().join("missing.onnx")), Err(Failure::Io(_))));
        // And the loader says so in tract's words, after trying the plain way.
        let e = load_model(&cut, None, EngineSettings::default()).unwrap_err();
        assert!(e.to_string().contains("is not a loadable ONNX model"), "{e}");
    }
}
