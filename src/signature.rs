//! What a model takes and returns: input/output names, Open Inference Protocol datatypes and
//! shapes (-1 for a dynamic dimension). Stored in the registry as JSON.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The tensor element types modeld serves, by their Open Inference Protocol names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DataType {
    /// 32-bit float, "FP32".
    Fp32,
    /// 64-bit float, "FP64".
    Fp64,
    /// "INT8".
    Int8,
    /// "INT16".
    Int16,
    /// "INT32".
    Int32,
    /// "INT64".
    Int64,
    /// "UINT8".
    Uint8,
    /// "UINT16".
    Uint16,
    /// "UINT32".
    Uint32,
    /// "UINT64".
    Uint64,
    /// "BOOL", one byte per element in raw form.
    Bool,
}

impl DataType {
    /// Every supported type, for error messages and docs.
    pub const ALL: [DataType; 11] = [
        Self::Fp32,
        Self::Fp64,
        Self::Int8,
        Self::Int16,
        Self::Int32,
        Self::Int64,
        Self::Uint8,
        Self::Uint16,
        Self::Uint32,
        Self::Uint64,
        Self::Bool,
    ];

    /// The Open Inference Protocol name, e.g. "FP32".
    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "FP32",
            Self::Fp64 => "FP64",
            Self::Int8 => "INT8",
            Self::Int16 => "INT16",
            Self::Int32 => "INT32",
            Self::Int64 => "INT64",
            Self::Uint8 => "UINT8",
            Self::Uint16 => "UINT16",
            Self::Uint32 => "UINT32",
            Self::Uint64 => "UINT64",
            Self::Bool => "BOOL",
        }
    }

    /// Parses an Open Inference Protocol name.
    ///
    /// # Errors
    /// `InvalidArgument` listing the supported names.
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|d| d.name()).collect();
            Error::InvalidArgument(format!(
                "unsupported datatype {name:?}; supported: {}",
                names.join(", ")
            ))
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::Int8 | Self::Uint8 | Self::Bool => 1,
            Self::Int16 | Self::Uint16 => 2,
            Self::Fp32 | Self::Int32 | Self::Uint32 => 4,
            Self::Fp64 | Self::Int64 | Self::Uint64 => 8,
        }
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One input or output of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    /// Name in the ONNX graph.
    pub name: String,
    /// Element type.
    pub datatype: DataType,
    /// Dimensions; -1 is dynamic.
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// The shape as people write it: `[N,64]` (a leading dynamic dim is N, others `?`).
    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self
            .shape
            .iter()
            .enumerate()
            .map(|(i, d)| match (*d, i) {
                (-1, 0) => "N".to_string(),
                (-1, _) => "?".to_string(),
                (d, _) => d.to_string(),
            })
            .collect();
        format!("[{}]", dims.join(","))
    }

    /// Whether the first dimension is dynamic (a batch dimension).
    pub fn has_batch_dim(&self) -> bool {
        self.shape.first() == Some(&-1)
    }
}

/// Inputs and outputs of a model, in graph order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    /// Model inputs, in the order tract expects them.
    pub inputs: Vec<TensorSpec>,
    /// Model outputs, in the order tract returns them.
    pub outputs: Vec<TensorSpec>,
}

impl Signature {
    /// Serialises for the registry's `signature` column.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a signature always serialises")
    }

    /// Parses the registry's `signature` column.
    ///
    /// # Errors
    /// `Internal` when the stored text is not a signature (the registry was edited by hand).
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::internal_from("stored model signature is not valid", e))
    }
}

impl Signature {
    /// What would break a client of `self` that switches to `next` unchanged: an input or
    /// output removed or renamed, a changed datatype, rank or fixed dimension, a dimension
    /// that was dynamic becoming fixed, and a new input (existing clients do not send it). A
    /// new output, or a fixed dimension becoming dynamic, breaks nothing. Empty: compatible.
    pub fn breaks(&self, next: &Signature) -> Vec<String> {
        let mut out = Vec::new();
        // Inputs: a client's fixed dimension may become dynamic (the model takes more). Outputs:
        // a dynamic dimension may become fixed (the client gets what it handled before).
        let mut side = |kind: &str, old: &[TensorSpec], new: &[TensorSpec]| {
            for o in old {
                let Some(n) = new.iter().find(|n| n.name == o.name) else {
                    out.push(format!("{kind} {:?} is gone", o.name));
                    continue;
                };
                if n.datatype != o.datatype {
                    out.push(format!(
                        "{kind} {:?} changes from {} to {}",
                        o.name,
                        o.datatype.name(),
                        n.datatype.name()
                    ));
                }
                let widens = |nd: i64, od: i64| if kind == "input" { nd == -1 } else { od == -1 };
                let dims_ok = n.shape.len() == o.shape.len()
                    && n.shape
                        .iter()
                        .zip(&o.shape)
                        .all(|(&nd, &od)| nd == od || widens(nd, od));
                if !dims_ok {
                    out.push(format!(
                        "{kind} {:?} changes shape from {} to {}",
                        o.name,
                        o.shape_text(),
                        n.shape_text()
                    ));
                }
            }
        };
        side("input", &self.inputs, &next.inputs);
        side("output", &self.outputs, &next.outputs);
        for n in &next.inputs {
            if !self.inputs.iter().any(|o| o.name == n.name) {
                out.push(format!("input {:?} is new (clients do not send it)", n.name));
            }
        }
        out
    }

    /// The signature as people read it: `input [N,64] FP32 -> probabilities [N,10] FP32, label [N] INT64`.
    pub fn text(&self) -> String {
        let list = |specs: &[TensorSpec]| {
            specs
                .iter()
                .map(|s| format!("{} {} {}", s.name, s.shape_text(), s.datatype.name()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!("{} -> {}", list(&self.inputs), list(&self.outputs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, datatype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            datatype,
            shape: shape.to_vec(),
        }
    }

    #[test]
    fn what_breaks_a_client_and_what_does_not() {
        let served = Signature {
            inputs: vec![spec("input", DataType::Fp32, &[-1, 64])],
            outputs: vec![
                spec("probabilities", DataType::Fp32, &[-1, 10]),
                spec("label", DataType::Int64, &[-1]),
            ],
        };
        assert!(served.breaks(&served).is_empty());
        let mut more = served.clone();
        more.outputs.push(spec("logits", DataType::Fp32, &[-1, 10]));
        assert!(served.breaks(&more).is_empty(), "a new output breaks nothing");
        let mut no_label = served.clone();
        no_label.outputs.pop();
        assert_eq!(served.breaks(&no_label), ["output \"label\" is gone"]);
        let mut narrower = served.clone();
        narrower.inputs[0].shape = vec![-1, 63];
        assert_eq!(
            served.breaks(&narrower),
            ["input \"input\" changes shape from [N,64] to [N,63]"]
        );
        let mut fixed_batch = served.clone();
        fixed_batch.inputs[0].shape = vec![1, 64];
        assert_eq!(
            served.breaks(&fixed_batch).len(),
            1,
            "a dynamic dimension becoming fixed"
        );
        let mut f64s = served.clone();
        f64s.inputs[0].datatype = DataType::Fp64;
        assert_eq!(served.breaks(&f64s), ["input \"input\" changes from FP32 to FP64"]);
        let mut extra = served.clone();
        extra.inputs.push(spec("mask", DataType::Bool, &[-1]));
        assert_eq!(
            served.breaks(&extra),
            ["input \"mask\" is new (clients do not send it)"]
        );
        let mut loose_output = served.clone();
        loose_output.outputs[0].shape = vec![-1, -1];
        assert_eq!(
            served.breaks(&loose_output).len(),
            1,
            "an output's fixed dimension becoming dynamic"
        );
        assert_eq!(
            served.text(),
            "input [N,64] FP32 -> probabilities [N,10] FP32, label [N] INT64"
        );
    }

    #[test]
    fn names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::parse(d.name()).unwrap(), d);
        }
        let err = DataType::parse("FLOAT").unwrap_err();
        assert!(err.to_string().contains("FP32"), "{err}");
    }

    #[test]
    fn shape_text_marks_dynamic_dims() {
        let spec = TensorSpec {
            name: "x".into(),
            datatype: DataType::Fp32,
            shape: vec![-1, 3, -1],
        };
        assert_eq!(spec.shape_text(), "[N,3,?]");
        assert!(spec.has_batch_dim());
    }
}
