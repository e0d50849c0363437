//! Evaluation and comparison of registered models on a labelled dataset: the model is loaded
//! and verified like any load (or taken from memory when it is the one served), run row by row
//! off the async workers, and the figures stored in `model_performance_logs`.

use std::sync::Arc;

use super::Evaluation;
use crate::error::{Error, Result};
use crate::evaluation::{self, Dataset, Outcome};
use crate::model::LoadedModel;
use crate::model::slot::ServedModel;
use crate::registry::{EvaluationRecord, ModelRecord, ModelRef};

/// How to evaluate.
#[derive(Debug, Clone, Default)]
pub struct EvaluateOptions {
    /// The output to read classes from (default: the first scores output, else a label output).
    pub output: Option<String>,
    /// Stored with the row.
    pub notes: String,
    /// Stored as evaluated_by.
    pub evaluated_by: String,
}

/// One model's evaluation, as stored.
#[derive(Debug, Clone)]
pub struct Evaluated {
    /// The model evaluated.
    pub model: ModelRecord,
    /// The stored row.
    pub record: EvaluationRecord,
    /// The figures and each row's prediction.
    pub outcome: Outcome,
}

/// Two models on the same rows.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// The first model's evaluation.
    pub a: Evaluated,
    /// The second's.
    pub b: Evaluated,
    /// Rows where their predictions differ.
    pub disagreements: u64,
    /// Which is better (higher accuracy; on a tie higher top-3 accuracy, then lower p50
    /// latency): `Some(true)` for `a`, `Some(false)` for `b`, `None` when they tie on all three.
    pub a_is_better: Option<bool>,
}

/// A model ready to evaluate: the served one (shared) or one loaded for the evaluation.
enum Subject {
    Served(Arc<ServedModel>),
    Loaded(Box<LoadedModel>),
}

impl Subject {
    fn model(&self) -> &LoadedModel {
        match self {
            Self::Served(s) => &s.model,
            Self::Loaded(m) => m,
        }
    }
}

impl Evaluation {
    /// A dataset named by paths under the model root: features (`.npy` or `.csv`), and labels
    /// (`labels`, or the `<name>_y.npy` beside a `<name>_x.npy`, or the CSV's `label_column`,
    /// default `label`). Its messages name the paths as given.
    ///
    /// # Errors
    /// `InvalidArgument` for a path outside the root, a missing file, or one that is not a
    /// dataset.
    pub fn dataset(&self, path: &str, labels: &str, label_column: &str) -> Result<Arc<Dataset>> {
        if path.trim().is_empty() {
            return Err(Error::InvalidArgument(
                "name the dataset: a path under the model root, e.g. eval/digits_x.npy".into(),
            ));
        }
        let root = &self.core.root;
        let resolve = |p: &str| {
            root.resolve(p).map_err(|e| {
                Error::InvalidArgument(format!("dataset: {}", e.to_string().replacen("model file", "file", 1)))
            })
        };
        let features = resolve(path)?;
        // The labels file goes through the root's checks too, also the <name>_y.npy found
        // beside a <name>_x.npy.
        let labels = match (labels.is_empty(), path.strip_suffix("_x.npy")) {
            (false, _) => Some(resolve(labels)?),
            (true, Some(stem)) => Some(resolve(&format!("{stem}_y.npy"))?),
            (true, None) => None,
        };
        let column = if label_column.is_empty() { "label" } else { label_column };
        let mut dataset = Dataset::load(&features, labels.as_deref(), column)?;
        dataset.name = std::path::Path::new(path)
            .file_name()
            .map_or(path.to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Arc::new(dataset))
    }

    /// Evaluates `model` on `dataset` and stores the figures (`model_performance_logs`, with an
    /// `evaluated` event). `progress(done, total)` is called as rows are done.
    ///
    /// # Errors
    /// `NotFound` for an unknown model; as a load (`FailedPrecondition` for a missing, changed
    /// or broken file); `InvalidArgument` when the dataset does not fit the model.
    pub async fn evaluate(
        &self,
        model: &ModelRef,
        dataset: Arc<Dataset>,
        options: &EvaluateOptions,
        progress: impl FnMut(usize, usize) + Send + 'static,
    ) -> Result<Evaluated> {
        let record = self.core.registry.get(model).await?;
        let subject = self.subject(&record).await?;
        let name = record.model_name.clone();
        let output = options.output.clone();
        let data = Arc::clone(&dataset);
        let outcome = tokio::task::spawn_blocking(move || {
            evaluation::evaluate(&name, subject.model(), &data, output.as_deref(), progress)
        })
        .await
        .map_err(|e| Error::internal(format!("the evaluation crashed: {e}")))??;
        let by = if options.evaluated_by.is_empty() {
            "api"
        } else {
            &options.evaluated_by
        };
        let stored = self
            .core
            .registry
            .add_evaluation(
                &record,
                &crate::registry::DatasetRef {
                    name: &dataset.name,
                    sha256: &dataset.sha256,
                },
                &outcome.figures,
                &options.notes,
                by,
            )
            .await?;
        tracing::info!(
            model = %record.model_name,
            dataset = %dataset.name,
            accuracy = outcome.figures.accuracy,
            samples = outcome.figures.samples,
            "model evaluated"
        );
        self.core.status.wake_events();
        Ok(Evaluated {
            model: record,
            record: stored,
            outcome,
        })
    }

    /// Evaluates `a` and `b` on the same rows of `dataset` (both evaluations are stored) and
    /// says which is better.
    ///
    /// # Errors
    /// As [`Evaluation::evaluate`], for either model.
    pub async fn compare(
        &self,
        a: &ModelRef,
        b: &ModelRef,
        dataset: Arc<Dataset>,
        options: &EvaluateOptions,
        mut progress: impl FnMut(&str, usize, usize) + Send + Clone + 'static,
    ) -> Result<Comparison> {
        let mut pa = progress.clone();
        let ea = self
            .evaluate(a, Arc::clone(&dataset), options, move |d, t| pa("a", d, t))
            .await?;
        let eb = self
            .evaluate(b, dataset, options, move |d, t| progress("b", d, t))
            .await?;
        let disagreements = ea
            .outcome
            .predictions
            .iter()
            .zip(&eb.outcome.predictions)
            .filter(|(x, y)| x != y)
            .count() as u64;
        let a_is_better = match evaluation::better(&ea.outcome.figures, &eb.outcome.figures) {
            std::cmp::Ordering::Less => Some(true),
            std::cmp::Ordering::Greater => Some(false),
            std::cmp::Ordering::Equal => None,
        };
        Ok(Comparison {
            a: ea,
            b: eb,
            disagreements,
            a_is_better,
        })
    }

    /// The model to evaluate: the served one when it is this record's file, else loaded and
    /// verified for the evaluation (never published).
    async fn subject(&self, record: &ModelRecord) -> Result<Subject> {
        if let Some(served) = self.core.slot.active()
            && served.record.model_id == record.model_id
            && served.record.checksum_sha256 == record.checksum_sha256
        {
            return Ok(Subject::Served(served));
        }
        Ok(Subject::Loaded(Box::new(self.core.load_record(record).await?)))
    }
}
