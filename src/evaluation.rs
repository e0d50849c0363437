//! Evaluating a classifier on a labelled dataset: reading the dataset (an `.npy` features/labels
//! pair, or a CSV file with a label column), running the model row by row on the request path's
//! own tensor code, and the figures (accuracy, top-3 accuracy, per-class precision and recall,
//! confusion matrix, latency) that `modeld evaluate`, `modeld compare` and the registry's
//! `model_performance_logs` report.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::model::loader::sha256_hex;
use crate::model::{DataType, LoadedModel};
pub use crate::registry::{ClassFigures, Figures};
use crate::serving::tensor::{InputRef, OutputData, Payload, encode_outputs, prepare_inputs};

/// A labelled dataset in memory: `rows` feature rows of `row_len` FP32 values, one label each.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Its file name, as the performance log records it.
    pub name: String,
    /// Hex sha256 of the features file's bytes followed by the labels file's (or of the CSV).
    pub sha256: String,
    /// The shape of one row (without the batch dimension).
    pub row_shape: Vec<usize>,
    /// Row-major features, `rows × row_len`.
    pub features: Vec<f32>,
    /// One class index a row.
    pub labels: Vec<i64>,
}

impl Dataset {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    fn row_len(&self) -> usize {
        self.row_shape.iter().product()
    }

    /// Reads `path`: `.npy` features (FP32 or FP64, shape `[rows, ...]`) with their labels in
    /// `labels` or, when not given, in the file named like `path` with `_x` replaced by `_y`
    /// (`digits_x.npy` → `digits_y.npy`); or a `.csv` file with a header row, numeric values and
    /// the label in `label_column`.
    ///
    /// # Errors
    /// `InvalidArgument` naming the file and what is wrong with it.
    pub fn load(path: &Path, labels: Option<&Path>, label_column: &str) -> Result<Self> {
        let name = path
            .file_name()
            .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        let bad = |what: String| Error::InvalidArgument(format!("dataset {name:?}: {what}"));
        // A relative path is named as it was typed (`models/eval/digit_x.npy`, so a typo in
        // the directory shows); an absolute one by its file name: over the API these are the
        // server's paths.
        let file = |p: &Path| {
            if p.is_relative() {
                return p.display().to_string();
            }
            p.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        };
        let read = |p: &Path| std::fs::read(p).map_err(|e| bad(format!("cannot read {:?}: {e}", file(p))));
        match path.extension().and_then(|e| e.to_str()) {
            Some("npy") => {
                let xb = read(path)?;
                let labels_path = match labels {
                    Some(l) => l.to_path_buf(),
                    None => paired_labels(path).ok_or_else(|| {
                        bad(
                            "give the labels file with --labels (or name the pair <name>_x.npy and <name>_y.npy)"
                                .into(),
                        )
                    })?,
                };
                let yb = read(&labels_path)?;
                let (shape, features) = npy_features(&xb).map_err(|e| bad(e.to_string()))?;
                let labels = npy_labels(&yb).map_err(|e| bad(format!("labels {:?}: {e}", file(&labels_path))))?;
                if labels.is_empty() {
                    return Err(bad("no rows".into()));
                }
                if shape.first().copied() != Some(labels.len()) {
                    return Err(bad(format!(
                        "{} feature rows but {} labels",
                        shape.first().copied().unwrap_or(0),
                        labels.len()
                    )));
                }
                let mut both = xb;
                both.extend_from_slice(&yb);
                Ok(Self {
                    name,
                    sha256: sha256_hex(&both),
                    row_shape: shape[1..].to_vec(),
                    features,
                    labels,
                })
            }
            Some("csv") => {
                let bytes = read(path)?;
                let text = String::from_utf8(bytes.clone()).map_err(|_| bad("is not UTF-8 text".into()))?;
                let (features, labels, width) = csv_rows(&text, label_column).map_err(|e| bad(e.to_string()))?;
                Ok(Self {
                    name,
                    sha256: sha256_hex(&bytes),
                    row_shape: vec![width],
                    features,
                    labels,
                })
            }
            _ => Err(bad("use an .npy features file (with its labels) or a .csv file".into())),
        }
    }
}

/// What is wrong with a dataset file's contents.
#[derive(Debug, thiserror::Error)]
enum Problem {
    #[error("not an .npy file: {0}")]
    NotNpy(#[source] std::io::Error),
    #[error("{0}")]
    Values(#[source] std::io::Error),
    #[error("Fortran-ordered arrays are not supported; save with np.ascontiguousarray")]
    Fortran,
    #[error("features must be [rows, ...], got shape {0:?}")]
    FeatureShape(Vec<usize>),
    #[error("features must be float32 or float64, got {0:?}")]
    FeatureType(String),
    #[error("labels must be integers, got {0:?}")]
    LabelType(String),
    #[error("labels are class indices from 0; found {0}")]
    NegativeLabel(i64),
    #[error("the file is empty")]
    Empty,
    #[error("no column {column:?} (columns: {columns}); name it with --label-column")]
    NoColumn { column: String, columns: String },
    #[error("row {row} has {got} values, the header {want}")]
    Width { row: usize, got: usize, want: usize },
    #[error("row {row}: label {cell:?} is not a class index (0, 1, 2, ...)")]
    Label { row: usize, cell: String },
    #[error("row {row}, column {column:?}: {cell:?} is not a number")]
    Number { row: usize, column: String, cell: String },
    #[error("no rows")]
    NoRows,
}

/// `a/b_x.npy` → `a/b_y.npy`, when it exists.
fn paired_labels(features: &Path) -> Option<PathBuf> {
    let stem = features.file_stem()?.to_str()?;
    let base = stem.strip_suffix("_x").or_else(|| stem.strip_suffix("_X"))?;
    let candidate = features.with_file_name(format!("{base}_y.npy"));
    candidate.exists().then_some(candidate)
}

fn npy_features(bytes: &[u8]) -> std::result::Result<(Vec<usize>, Vec<f32>), Problem> {
    let npy = npyz::NpyFile::new(bytes).map_err(Problem::NotNpy)?;
    if npy.order() != npyz::Order::C {
        return Err(Problem::Fortran);
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    if shape.len() < 2 {
        return Err(Problem::FeatureShape(shape));
    }
    let descr = npy.dtype().descr();
    let values = match descr.trim_matches('\'').trim_start_matches(['<', '=']) {
        "f4" => npy.into_vec::<f32>().map_err(Problem::Values)?,
        "f8" => npy
            .into_vec::<f64>()
            .map_err(Problem::Values)?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        other => return Err(Problem::FeatureType(other.to_string())),
    };
    Ok((shape, values))
}

fn npy_labels(bytes: &[u8]) -> std::result::Result<Vec<i64>, Problem> {
    let npy = npyz::NpyFile::new(bytes).map_err(Problem::NotNpy)?;
    let descr = npy.dtype().descr();
    let labels: Vec<i64> = match descr.trim_matches('\'').trim_start_matches(['<', '|', '=']) {
        "i8" => npy.into_vec::<i64>().map_err(Problem::Values)?,
        "i4" => npy
            .into_vec::<i32>()
            .map_err(Problem::Values)?
            .into_iter()
            .map(i64::from)
            .collect(),
        "i2" => npy
            .into_vec::<i16>()
            .map_err(Problem::Values)?
            .into_iter()
            .map(i64::from)
            .collect(),
        "i1" => npy
            .into_vec::<i8>()
            .map_err(Problem::Values)?
            .into_iter()
            .map(i64::from)
            .collect(),
        "u1" => npy
            .into_vec::<u8>()
            .map_err(Problem::Values)?
            .into_iter()
            .map(i64::from)
            .collect(),
        other => return Err(Problem::LabelType(other.to_string())),
    };
    if let Some(&bad) = labels.iter().find(|&&l| l < 0) {
        return Err(Problem::NegativeLabel(bad));
    }
    Ok(labels)
}

/// A CSV of numbers with a header row: every column but `label_column` is a feature.
fn csv_rows(text: &str, label_column: &str) -> std::result::Result<(Vec<f32>, Vec<i64>, usize), Problem> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()
        .ok_or(Problem::Empty)?
        .split(',')
        .map(|h| h.trim().trim_matches('"').to_string())
        .collect();
    let label_at = header
        .iter()
        .position(|h| h == label_column)
        .ok_or_else(|| Problem::NoColumn {
            column: label_column.to_string(),
            columns: header.join(", "),
        })?;
    let width = header.len() - 1;
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    for (i, line) in lines.enumerate() {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != header.len() {
            return Err(Problem::Width {
                row: i + 1,
                got: cells.len(),
                want: header.len(),
            });
        }
        for (j, cell) in cells.iter().enumerate() {
            if j == label_at {
                let label: i64 = cell.parse().ok().filter(|l| *l >= 0).ok_or_else(|| Problem::Label {
                    row: i + 1,
                    cell: (*cell).to_string(),
                })?;
                labels.push(label);
            } else {
                features.push(cell.parse::<f32>().map_err(|_| Problem::Number {
                    row: i + 1,
                    column: header[j].clone(),
                    cell: (*cell).to_string(),
                })?);
            }
        }
    }
    if labels.is_empty() {
        return Err(Problem::NoRows);
    }
    Ok((features, labels, width))
}

/// An evaluation: its figures and each row's prediction (for comparisons; not stored).
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The figures.
    pub figures: Figures,
    /// The predicted class of each row.
    pub predictions: Vec<i64>,
}

/// Runs `model` on every row of `dataset`, one row per call as a request would, and measures.
/// `output` names the output to read (default: the first floating-point `[N, classes]`
/// output, else the first integer `[N]` or `[N, 1]` label output). `progress(done, total)` is
/// called every few rows. Blocking and CPU-heavy: call it from a blocking thread.
///
/// # Errors
/// `InvalidArgument` when the dataset's rows do not fit the model's input or the model has no
/// output to read classes from; `Internal` when the engine fails.
pub fn evaluate(
    model_name: &str,
    model: &LoadedModel,
    dataset: &Dataset,
    output: Option<&str>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Outcome> {
    let sig = &model.signature;
    let input = match sig.inputs.as_slice() {
        [one] => one,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "model {model_name:?} takes {} inputs; evaluation feeds one",
                sig.inputs.len()
            )));
        }
    };
    if input.datatype != DataType::Fp32 {
        return Err(Error::InvalidArgument(format!(
            "model {model_name:?} input {:?} is {}; evaluation feeds FP32 features",
            input.name,
            input.datatype.name()
        )));
    }
    let (out_index, scores) = pick_output(model_name, sig, output)?;
    let mut shape: Vec<i64> = vec![1];
    shape.extend(dataset.row_shape.iter().map(|&d| d as i64));
    let row_len = dataset.row_len();
    let total = dataset.rows();
    let (mut predictions, mut top3_hits, mut latencies) = (Vec::with_capacity(total), 0u64, Vec::with_capacity(total));
    let every = (total / 100).max(1);
    for (i, label) in dataset.labels.iter().enumerate() {
        let row = &dataset.features[i * row_len..(i + 1) * row_len];
        let bytes: Vec<u8> = row.iter().flat_map(|v| v.to_le_bytes()).collect();
        let started = Instant::now();
        let inputs = prepare_inputs(
            model_name,
            sig,
            &[InputRef {
                name: &input.name,
                datatype: "FP32",
                shape: &shape,
                payload: Payload::Raw(&bytes),
            }],
        )?;
        let outputs = model
            .engine
            .run(inputs)
            .map_err(|e| Error::internal_from(format_args!("model {model_name:?} failed on dataset row {i}"), e))?;
        let mut encoded = encode_outputs(sig, outputs, false)?;
        latencies.push(started.elapsed());
        let data = std::mem::replace(&mut encoded[out_index].data, OutputData::Raw(Vec::new()));
        let (predicted, top3) = read_prediction(data, scores, *label)?;
        predictions.push(predicted);
        top3_hits += u64::from(top3);
        if (i + 1) % every == 0 || i + 1 == total {
            progress(i + 1, total);
        }
    }
    let mut figures = tally(&dataset.labels, &predictions, &latencies)?;
    figures.top3_accuracy = scores.then(|| top3_hits as f64 / total as f64);
    figures.output = sig.outputs[out_index].name.clone();
    Ok(Outcome { figures, predictions })
}

/// The output to read: its index and whether it holds scores (`false`: a label).
fn pick_output(model_name: &str, sig: &crate::model::Signature, wanted: Option<&str>) -> Result<(usize, bool)> {
    let is_scores = |s: &crate::model::TensorSpec| {
        matches!(s.datatype, DataType::Fp32 | DataType::Fp64) && s.shape.len() == 2 && s.shape[1] != 1
    };
    let is_label = |s: &crate::model::TensorSpec| {
        !matches!(s.datatype, DataType::Fp32 | DataType::Fp64 | DataType::Bool)
            && (s.shape.len() == 1 || (s.shape.len() == 2 && s.shape[1] == 1))
    };
    if let Some(name) = wanted {
        let (i, spec) = sig
            .outputs
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
            .ok_or_else(|| Error::InvalidArgument(format!("model {model_name:?} has no output {name:?}")))?;
        return match (is_scores(spec), is_label(spec)) {
            (true, _) => Ok((i, true)),
            (_, true) => Ok((i, false)),
            _ => Err(Error::InvalidArgument(format!(
                "output {name:?} of model {model_name:?} is neither class scores [N, classes] nor labels [N]"
            ))),
        };
    }
    if let Some(i) = sig.outputs.iter().position(is_scores) {
        return Ok((i, true));
    }
    sig.outputs
        .iter()
        .position(is_label)
        .map(|i| (i, false))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "model {model_name:?} has no output of class scores [N, classes] or labels [N] to evaluate"
            ))
        })
}

/// The predicted class of one row, and whether `label` is among its 3 best scores.
fn read_prediction(data: OutputData, scores: bool, label: i64) -> Result<(i64, bool)> {
    let values: Vec<f64> = match data {
        OutputData::Fp32(v) => v.into_iter().map(f64::from).collect(),
        OutputData::Fp64(v) => v,
        OutputData::Int64(v) => v.into_iter().map(|x| x as f64).collect(),
        OutputData::Int32(v) => v.into_iter().map(f64::from).collect(),
        OutputData::Uint32(v) => v.into_iter().map(f64::from).collect(),
        OutputData::Uint64(v) => v.into_iter().map(|x| x as f64).collect(),
        OutputData::Bool(_) | OutputData::Raw(_) => return Err(Error::internal("unexpected output encoding")),
    };
    if !scores {
        let predicted = values.first().copied().unwrap_or(-1.0) as i64;
        return Ok((predicted, predicted == label));
    }
    // Highest score first; NaN scores last (a total order).
    let key = |v: f64| if v.is_nan() { f64::NEG_INFINITY } else { v };
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| key(values[b]).total_cmp(&key(values[a])));
    let predicted = order.first().map_or(-1, |&c| c as i64);
    let top3 = order.iter().take(3).any(|&c| c as i64 == label);
    Ok((predicted, top3))
}

/// The most classes an evaluation counts (the confusion matrix is classes × classes).
pub const MAX_CLASSES: usize = 10_000;

/// Accuracy, per-class figures, the confusion matrix and latency quantiles.
fn tally(labels: &[i64], predictions: &[i64], latencies: &[Duration]) -> Result<Figures> {
    let classes = labels
        .iter()
        .chain(predictions)
        .copied()
        .filter(|c| *c >= 0)
        .max()
        .map_or(0, |m| m as usize + 1);
    if classes > MAX_CLASSES {
        return Err(Error::InvalidArgument(format!(
            "class index {} is beyond the {MAX_CLASSES} classes an evaluation counts",
            classes - 1
        )));
    }
    let mut confusion = vec![vec![0u64; classes]; classes];
    let mut correct = 0u64;
    for (&l, &p) in labels.iter().zip(predictions) {
        correct += u64::from(l == p);
        if p >= 0 {
            confusion[l as usize][p as usize] += 1;
        }
    }
    let per_class = (0..classes)
        .map(|c| {
            let tp = confusion[c][c];
            let predicted: u64 = confusion.iter().map(|row| row[c]).sum();
            let support = labels.iter().filter(|&&l| l == c as i64).count() as u64;
            let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
            ClassFigures {
                class: c as i64,
                precision: ratio(tp, predicted),
                recall: ratio(tp, support),
                support,
            }
        })
        .collect();
    let mut us: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        if us.is_empty() {
            0.0
        } else {
            us[((us.len() - 1) as f64 * q).round() as usize]
        }
    };
    Ok(Figures {
        samples: labels.len() as u64,
        accuracy: if labels.is_empty() {
            0.0
        } else {
            correct as f64 / labels.len() as f64
        },
        top3_accuracy: None,
        classes: per_class,
        confusion,
        latency_mean_us: if us.is_empty() {
            0.0
        } else {
            us.iter().sum::<f64>() / us.len() as f64
        },
        latency_p50_us: quantile(0.5),
        latency_p99_us: quantile(0.99),
        output: String::new(),
    })
}

/// Which of two evaluations on the same rows is better: higher accuracy; on a tie, higher
/// top-3 accuracy; then lower median latency. `Less` means `a` is better.
pub fn better(a: &Figures, b: &Figures) -> std::cmp::Ordering {
    b.accuracy
        .total_cmp(&a.accuracy)
        .then_with(|| match (a.top3_accuracy, b.top3_accuracy) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            // Only comparable when both give scores.
            _ => std::cmp::Ordering::Equal,
        })
        .then_with(|| a.latency_p50_us.total_cmp(&b.latency_p50_us))
}

/// Which rule of [`better`] decided between `a` and `b`.
pub fn decided_by(a: &Figures, b: &Figures) -> &'static str {
    if a.accuracy != b.accuracy {
        "higher accuracy"
    } else if a.top3_accuracy.is_some() && b.top3_accuracy.is_some() && a.top3_accuracy != b.top3_accuracy {
        "same accuracy, higher top-3 accuracy"
    } else if a.latency_p50_us != b.latency_p50_us {
        "same accuracy and top-3 accuracy, lower median latency"
    } else {
        "a tie"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_from_labels_and_predictions() {
        let labels = [0, 0, 1, 1, 2];
        let predictions = [0, 1, 1, 1, 0];
        let f = tally(&labels, &predictions, &[Duration::from_micros(10); 5]).unwrap();
        assert!(
            tally(&[0, 20_000], &[0, 0], &[Duration::ZERO; 2]).is_err(),
            "too many classes"
        );
        assert_eq!(f.samples, 5);
        assert!((f.accuracy - 0.6).abs() < 1e-12);
        assert_eq!(f.confusion, vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]);
        assert_eq!(f.classes[1].precision, 2.0 / 3.0);
        assert_eq!(f.classes[1].recall, 1.0);
        assert_eq!(
            (f.classes[2].precision, f.classes[2].recall, f.classes[2].support),
            (0.0, 0.0, 1)
        );
        assert_eq!(f.latency_p50_us, 10.0);
    }

    #[test]
    fn the_better_model_by_accuracy_then_top3_then_latency() {
        let f = |acc, top3, p50| Figures {
            samples: 1,
            accuracy: acc,
            top3_accuracy: Some(top3),
            classes: vec![],
            confusion: vec![],
            latency_mean_us: p50,
            latency_p50_us: p50,
            latency_p99_us: p50,
            output: String::new(),
        };
        use std::cmp::Ordering::*;
        assert_eq!(better(&f(0.9, 0.9, 9.0), &f(0.8, 1.0, 1.0)), Less);
        assert_eq!(better(&f(0.9, 0.95, 9.0), &f(0.9, 0.99, 1.0)), Greater);
        assert_eq!(better(&f(0.9, 0.99, 2.0), &f(0.9, 0.99, 3.0)), Less);
    }

    #[test]
    fn csv_datasets_need_a_label_column_and_numbers() {
        let (x, y, w) = csv_rows("a,b,label\n1,2,0\n3,4.5,1\n", "label").unwrap();
        assert_eq!((x, y, w), (vec![1.0, 2.0, 3.0, 4.5], vec![0, 1], 2));
        assert!(
            csv_rows("a,b\n1,2\n", "label")
                .unwrap_err()
                .to_string()
                .contains("no column \"label\"")
        );
        assert!(
            csv_rows("a,label\nx,1\n", "label")
                .unwrap_err()
                .to_string()
                .contains("not a number")
        );
        assert!(
            csv_rows("a,label\n1,-1\n", "label")
                .unwrap_err()
                .to_string()
                .contains("class index")
        );
        assert!(
            csv_rows("a,label\n1\n", "label")
                .unwrap_err()
                .to_string()
                .contains("has 1 values")
        );
    }
}
