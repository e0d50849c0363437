//! The `model_performance_logs` table: evaluations of models on labelled datasets.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{EventKind, ModelRecord, Pool, Registry};
use crate::error::Result;

/// The dataset an evaluation ran on, as the registry keeps it: its name and the sha256 of its
/// files.
#[derive(Debug, Clone, Copy)]
pub struct DatasetRef<'a> {
    /// The dataset's name (its file name).
    pub name: &'a str,
    /// The sha256 of its files.
    pub sha256: &'a str,
}

/// Precision and recall of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassFigures {
    /// The class index.
    pub class: i64,
    /// Of the rows predicted as this class, the share that are (0 when none were predicted).
    pub precision: f64,
    /// Of the rows of this class, the share predicted so (0 when there are none).
    pub recall: f64,
    /// Rows of this class.
    pub support: u64,
}

/// What an evaluation measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Rows evaluated.
    pub samples: u64,
    /// Share of rows whose top prediction is the label.
    pub accuracy: f64,
    /// Share of rows whose label is among the 3 highest scores; `None` when the model gives
    /// no scores (only a label output).
    pub top3_accuracy: Option<f64>,
    /// Per class, in class order.
    pub classes: Vec<ClassFigures>,
    /// `confusion[label][predicted]`: rows of that label predicted as that class.
    pub confusion: Vec<Vec<u64>>,
    /// Time per row through the request path's tensor code and the engine (batch 1), in µs.
    pub latency_mean_us: f64,
    /// Median of the same.
    pub latency_p50_us: f64,
    /// 99th percentile of the same.
    pub latency_p99_us: f64,
    /// The output the predictions were read from.
    pub output: String,
}

/// A `model_performance_logs` row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema)]
pub struct EvaluationRecord {
    /// Increasing id.
    pub log_id: i64,
    /// The model; `None` once its record was deleted.
    pub model_id: Option<i64>,
    /// Its name at the time.
    pub model_name: String,
    /// The sha256 of the model file that was evaluated.
    pub model_sha256: String,
    /// The dataset's file name.
    pub dataset_name: String,
    /// The dataset's sha256 (features and labels).
    pub dataset_sha256: String,
    /// When.
    pub evaluated_at: DateTime<Utc>,
    /// Share of rows predicted right.
    pub accuracy: f64,
    /// Share of rows whose label is among the 3 best scores, when the model gives scores.
    pub top3_accuracy: Option<f64>,
    /// Rows evaluated.
    pub sample_size: i64,
    /// Time per row, mean, in µs.
    pub latency_mean_us: f64,
    /// Median.
    pub latency_p50_us: f64,
    /// 99th percentile.
    pub latency_p99_us: f64,
    /// JSON of the whole [`Figures`] (per-class figures, confusion matrix, output read); not
    /// in the REST answers, which carry the summary figures.
    #[serde(skip)]
    pub details: String,
    /// Free text.
    pub notes: String,
    /// Who ran it.
    pub evaluated_by: String,
}

impl EvaluationRecord {
    /// The stored figures.
    pub fn figures(&self) -> Option<Figures> {
        serde_json::from_str(&self.details).ok()
    }

    /// The figures [`crate::evaluation::better`] decides on (accuracy, top-3, median latency).
    pub fn summary(&self) -> Figures {
        Figures {
            samples: u64::try_from(self.sample_size).unwrap_or(0),
            accuracy: self.accuracy,
            top3_accuracy: self.top3_accuracy,
            classes: Vec::new(),
            confusion: Vec::new(),
            latency_mean_us: self.latency_mean_us,
            latency_p50_us: self.latency_p50_us,
            latency_p99_us: self.latency_p99_us,
            output: String::new(),
        }
    }
}

macro_rules! evaluation_columns {
    () => {
        "log_id, model_id, model_name, model_sha256, dataset_name, dataset_sha256, evaluated_at, accuracy, \
         top3_accuracy, sample_size, latency_mean_us, latency_p50_us, latency_p99_us, details, notes, evaluated_by"
    };
}

impl Registry {
    /// Stores an evaluation of `model` on `dataset`, with an `evaluated` event.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn add_evaluation(
        &self,
        model: &ModelRecord,
        dataset: &DatasetRef<'_>,
        figures: &Figures,
        notes: &str,
        evaluated_by: &str,
    ) -> Result<EvaluationRecord> {
        super::text::NOTES.check(notes)?;
        super::text::WHO.check(evaluated_by)?;
        let sql = concat!(
            "INSERT INTO model_performance_logs (model_id, model_name, model_sha256, dataset_name, dataset_sha256, \
             evaluated_at, accuracy, top3_accuracy, sample_size, latency_mean_us, latency_p50_us, latency_p99_us, \
             details, notes, evaluated_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             RETURNING ",
            evaluation_columns!()
        );
        let now = Utc::now();
        let details = serde_json::to_string(figures).map_err(crate::error::Error::internal)?;
        let detail = format!(
            "accuracy {:.4} on {} ({} rows)",
            figures.accuracy, dataset.name, figures.samples
        );
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let row: EvaluationRecord = sqlx::query_as(sql)
                .bind(model.model_id)
                .bind(&model.model_name)
                .bind(&model.checksum_sha256)
                .bind(dataset.name)
                .bind(dataset.sha256)
                .bind(now)
                .bind(figures.accuracy)
                .bind(figures.top3_accuracy)
                .bind(i64::try_from(figures.samples).unwrap_or(i64::MAX))
                .bind(figures.latency_mean_us)
                .bind(figures.latency_p50_us)
                .bind(figures.latency_p99_us)
                .bind(&details)
                .bind(notes)
                .bind(evaluated_by)
                .fetch_one(&mut *tx)
                .await?;
            record_event!(&mut *tx, self.origin, EventKind::Evaluated, Some(model.model_id), &model.model_name, &detail, now);
            // Lifecycle: an evaluated model is being tested.
            sqlx::query("UPDATE ml_models SET status = 'testing', updated_at = $1 WHERE model_id = $2 AND status = 'registered'")
                .bind(now)
                .bind(model.model_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(row)
        })
    }

    /// The latest evaluation of `model_id`, on any dataset or on the one with `dataset_sha256`.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn latest_evaluation(
        &self,
        model_id: i64,
        dataset_sha256: Option<&str>,
    ) -> Result<Option<EvaluationRecord>> {
        let sql = concat!(
            "SELECT ",
            evaluation_columns!(),
            " FROM model_performance_logs WHERE model_id = $1 AND ($2 IS NULL OR dataset_sha256 = $2) \
             ORDER BY log_id DESC LIMIT 1"
        );
        Ok(with_pool!(self, p => sqlx::query_as(sql).bind(model_id).bind(dataset_sha256).fetch_optional(p).await?))
    }

    /// The evaluations of `model_id`, newest first, at most `limit`.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn evaluations_of(&self, model_id: i64, limit: i64) -> Result<Vec<EvaluationRecord>> {
        let sql = concat!(
            "SELECT ",
            evaluation_columns!(),
            " FROM model_performance_logs WHERE model_id = $1 ORDER BY log_id DESC LIMIT $2"
        );
        Ok(with_pool!(self, p => sqlx::query_as(sql).bind(model_id).bind(limit).fetch_all(p).await?))
    }

    /// The latest evaluation of each of `model_ids` that has one.
    ///
    /// # Errors
    /// `Unavailable` when the database is unreachable.
    pub async fn latest_evaluations(&self, model_ids: &[i64]) -> Result<Vec<EvaluationRecord>> {
        let sql = concat!(
            "SELECT ",
            evaluation_columns!(),
            " FROM model_performance_logs WHERE log_id IN \
             (SELECT MAX(log_id) FROM model_performance_logs WHERE model_id IS NOT NULL GROUP BY model_id)"
        );
        let all: Vec<EvaluationRecord> = with_pool!(self, p => sqlx::query_as(sql).fetch_all(p).await?);
        Ok(all
            .into_iter()
            .filter(|e| e.model_id.is_some_and(|id| model_ids.contains(&id)))
            .collect())
    }
}
