//! Which engine computes a loaded model: tract, which loaded and warmed it up already, unless
//! ONNX Runtime is asked for (or `--engine auto`), compiles the same bytes, gives tract's outputs
//! on a test input (the cross-check) and, for auto, warms up faster.

use std::time::Duration;

use tract_onnx::prelude::*;

use super::Plan;
use super::engine::{Engine, EngineChoice, EngineSettings};
use super::loader::{Unloadable, WarmUp, test_inputs};
use crate::signature::Signature;

/// How another engine's outputs differ from tract's on the cross-check input.
#[derive(Debug)]
pub enum Disagreement {
    /// Not as many outputs.
    Count {
        /// Outputs the other engine returned.
        got: usize,
        /// Outputs tract returned.
        want: usize,
    },
    /// An output of another type or shape.
    Shape {
        /// The output.
        name: String,
        /// The other engine's type and shape.
        got: String,
        /// tract's type and shape.
        want: String,
    },
    /// Integer or boolean values differ.
    Integers(String),
    /// An output whose values cannot be compared.
    Incomparable(String),
    /// A float differs by more than the tolerance.
    Element {
        /// The output.
        name: String,
        /// Where.
        index: usize,
        /// The other engine's value.
        got: f64,
        /// tract's value.
        want: f64,
    },
}

impl std::fmt::Display for Disagreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Count { got, want } => write!(f, "returned {got} outputs, tract {want}"),
            Self::Shape { name, got, want } => {
                write!(f, "output {name:?} differs from tract's: {got} vs tract's {want}")
            }
            Self::Integers(name) => write!(f, "output {name:?} differs from tract's (integer values)"),
            Self::Incomparable(name) => write!(f, "output {name:?} cannot be compared"),
            Self::Element { name, index, got, want } => {
                write!(
                    f,
                    "output {name:?} differs from tract's at element {index}: {got} vs tract's {want}"
                )
            }
        }
    }
}

/// The engine chosen for a model, and why.
pub(super) struct Chosen {
    pub(super) engine: Engine,
    pub(super) warm: WarmUp,
    pub(super) note: Option<String>,
    pub(super) fell_back: bool,
}

/// ONNX Runtime must be at least this much faster than tract for `--engine auto` to pick it:
/// warm-up costs of microsecond models differ by noise, and tract is the default.
const AUTO_MARGIN: f64 = 1.1;

/// tract, which loaded and warmed up the model already, computes it unless `settings` asks for
/// ONNX Runtime (or auto) and ONNX Runtime compiles the same bytes, gives tract's outputs on a
/// test input and warms up; auto then keeps whichever warmed up faster. Anything else keeps
/// tract and says why: a model tract serves is never refused because of the other engine.
pub(super) fn choose_engine(
    bytes: &[u8],
    plan: Plan,
    signature: &Signature,
    settings: EngineSettings,
    tract_warm: WarmUp,
) -> Chosen {
    let tract = |warm, note, fell_back| Chosen {
        engine: Engine::Tract(Arc::clone(&plan)),
        warm,
        note,
        fell_back,
    };
    if !settings.preferred.wants_onnxruntime() {
        return tract(tract_warm, None, false);
    }
    let (engine, warm, agreement) = match onnxruntime_engine(bytes, &plan, signature, settings.concurrency) {
        Ok(ort) => ort,
        Err(why) => {
            // Without the library, `auto` (the default) serves with tract as expected; start-up
            // said once how to get it. A model ONNX Runtime refuses, or one it was asked for by
            // name, is a fallback worth a warning.
            let library_loaded = matches!(super::engine::onnxruntime_status(), Some(Ok(_)));
            let asked = settings.preferred == EngineChoice::Onnxruntime;
            let note = if asked || library_loaded {
                format!("onnxruntime not used: {why}")
            } else {
                "onnxruntime not used: its library is not loaded (see the start-up log)".into()
            };
            return tract(tract_warm, Some(note), asked || library_loaded);
        }
    };
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let costs = format!(
        "warm-up cost onnxruntime {:.0} µs, tract {:.0} µs",
        us(warm.cost),
        us(tract_warm.cost)
    );
    if settings.preferred == EngineChoice::Auto && us(warm.cost) * AUTO_MARGIN > us(tract_warm.cost) {
        let note = format!("tract chosen: {costs} (tract must cost 1.1x onnxruntime to switch); {agreement}");
        return tract(tract_warm, Some(note), false);
    }
    let note = match settings.preferred {
        EngineChoice::Auto => format!("onnxruntime chosen: {costs}; {agreement}"),
        _ => agreement,
    };
    Chosen {
        engine,
        warm,
        note: Some(note),
        fell_back: false,
    }
}

#[cfg(feature = "onnxruntime")]
fn onnxruntime_engine(
    bytes: &[u8],
    plan: &Plan,
    signature: &Signature,
    sessions: usize,
) -> std::result::Result<(Engine, WarmUp, String), Unloadable> {
    fn names(specs: &[crate::signature::TensorSpec]) -> Vec<&str> {
        specs.iter().map(|s| s.name.as_str()).collect()
    }
    let model =
        super::onnxruntime::OrtModel::new(bytes, sessions, &names(&signature.inputs), &names(&signature.outputs))?;
    let engine = Engine::Onnxruntime(Arc::new(model));
    let agreement = cross_check(plan, &engine, signature)?;
    let warm = super::loader::warm_up(&engine, signature).map_err(|e| Unloadable::OtherWarmUp(Box::new(e)))?;
    Ok((engine, warm, agreement))
}

#[cfg(not(feature = "onnxruntime"))]
fn onnxruntime_engine(
    _: &[u8],
    _: &Plan,
    _: &Signature,
    _: usize,
) -> std::result::Result<(Engine, WarmUp, String), Unloadable> {
    Err(super::engine::Unavailable::NotBuilt.into())
}

/// Runs tract and `other` on the same deterministic test input (batch 1, values in [0, 1) for
/// FP32 and FP64 inputs, zeros otherwise) and compares every output: same shape and type,
/// integers and booleans equal, floats within 1e-4 + 1e-3 x |tract's value| (NaN only against
/// NaN, infinities only against the same infinity). Returns a line for the logs.
#[cfg_attr(not(feature = "onnxruntime"), allow(dead_code))]
fn cross_check(plan: &Plan, other: &Engine, signature: &Signature) -> std::result::Result<String, Unloadable> {
    let inputs = || test_inputs(signature, 1, true);
    let reference = plan.run(inputs()?).map_err(Unloadable::CrossCheckTract)?;
    let got = other.run(inputs()?).map_err(|source| Unloadable::CrossCheckOther {
        engine: other.kind(),
        source,
    })?;
    let worst = compare_outputs(signature, &reference, &got).map_err(Unloadable::Disagrees)?;
    Ok(format!(
        "outputs match tract's on the load-time cross-check (largest difference {worst:.1e})"
    ))
}

/// Compares `got` with tract's `reference` output by output (see [`cross_check`]); returns the
/// largest difference between finite floats.
fn compare_outputs(
    signature: &Signature,
    reference: &[TValue],
    got: &[TValue],
) -> std::result::Result<f64, Disagreement> {
    if got.len() != reference.len() {
        return Err(Disagreement::Count {
            got: got.len(),
            want: reference.len(),
        });
    }
    let mut worst = 0f64;
    for ((spec, want), have) in signature.outputs.iter().zip(reference).zip(got) {
        let name = &spec.name;
        if want.shape() != have.shape() || want.datum_type() != have.datum_type() {
            return Err(Disagreement::Shape {
                name: name.clone(),
                got: format!("{:?} {:?}", have.datum_type(), have.shape()),
                want: format!("{:?} {:?}", want.datum_type(), want.shape()),
            });
        }
        if !want.datum_type().is_float() {
            // Integers and booleans: equal, element for element.
            if want != have {
                return Err(Disagreement::Integers(name.clone()));
            }
            continue;
        }
        let as_f64 = |t: &Tensor| {
            t.cast_to::<f64>()
                .and_then(|c| c.try_as_plain_ram()?.as_slice::<f64>().map(<[f64]>::to_vec))
        };
        let (Ok(w), Ok(h)) = (as_f64(want), as_f64(have)) else {
            return Err(Disagreement::Incomparable(name.clone()));
        };
        for (i, (a, b)) in w.iter().zip(&h).enumerate() {
            let agree = if a.is_nan() || b.is_nan() {
                a.is_nan() && b.is_nan()
            } else if a.is_infinite() || b.is_infinite() {
                a == b
            } else {
                let diff = (a - b).abs();
                worst = worst.max(diff);
                diff <= 1e-4 + 1e-3 * a.abs()
            };
            if !agree {
                return Err(Disagreement::Element {
                    name: name.clone(),
                    index: i,
                    got: *b,
                    want: *a,
                });
            }
        }
    }
    Ok(worst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{DataType, TensorSpec};

    #[test]
    fn outputs_are_compared_with_tolerance_and_exactly_where_they_must_be() {
        let sig = |dt: DataType| Signature {
            inputs: vec![],
            outputs: vec![TensorSpec {
                name: "y".into(),
                datatype: dt,
                shape: vec![-1],
            }],
        };
        let f32s = |v: &[f32]| tvec![TValue::from(Tensor::from_shape(&[v.len()], v).unwrap())];
        let i64s = |v: &[i64]| tvec![TValue::from(Tensor::from_shape(&[v.len()], v).unwrap())];
        let fp32 = sig(DataType::Fp32);
        let inf = f32::INFINITY;
        let worst = compare_outputs(&fp32, &f32s(&[1.0, 100.0]), &f32s(&[1.00005, 100.05])).unwrap();
        assert!((worst - 0.05).abs() < 1e-3, "{worst}");
        assert!(compare_outputs(&fp32, &f32s(&[1.0]), &f32s(&[1.01])).is_err());
        assert!(compare_outputs(&fp32, &f32s(&[f32::NAN]), &f32s(&[f32::NAN])).is_ok());
        assert!(compare_outputs(&fp32, &f32s(&[f32::NAN]), &f32s(&[0.0])).is_err());
        assert!(compare_outputs(&fp32, &f32s(&[0.0]), &f32s(&[f32::NAN])).is_err());
        assert!(compare_outputs(&fp32, &f32s(&[inf]), &f32s(&[inf])).is_ok());
        assert!(compare_outputs(&fp32, &f32s(&[inf]), &f32s(&[-inf])).is_err());
        assert!(compare_outputs(&fp32, &f32s(&[inf]), &f32s(&[1e30])).is_err());
        assert!(
            compare_outputs(&fp32, &f32s(&[1.0]), &f32s(&[1.0, 2.0])).is_err(),
            "shapes differ"
        );
        let int64 = sig(DataType::Int64);
        // 2^53 + 1 and 2^53 are equal as f64: integers are compared as integers.
        let big = 1i64 << 53;
        assert!(compare_outputs(&int64, &i64s(&[big + 1]), &i64s(&[big])).is_err());
        assert!(compare_outputs(&int64, &i64s(&[big]), &i64s(&[big])).is_ok());
        assert!(
            compare_outputs(&int64, &i64s(&[1]), &f32s(&[1.0])).is_err(),
            "types differ"
        );
    }
}
