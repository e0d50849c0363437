//! `modeld evaluate` and `modeld compare`: in this process, on the registry's models, with
//! progress on a terminal and the figures on stdout.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use serde_json::{Value, json};

use super::args::{CompareArgs, DatasetArgs, EvaluateArgs, ModelArg};
use super::output::{describe, record_json};
use super::{cli_origin, model_ref};
use crate::app;
use crate::evaluation::{Dataset, decided_by};
use crate::name::quoted;
use crate::ops::{EvaluateOptions, Evaluated};

fn load(d: &DatasetArgs) -> anyhow::Result<(Arc<Dataset>, EvaluateOptions)> {
    let dataset = Dataset::load(&d.dataset, d.labels.as_deref(), &d.label_column)?;
    let options = EvaluateOptions {
        output: d.output.clone(),
        notes: d.notes.clone(),
        evaluated_by: d.by.clone(),
    };
    Ok((Arc::new(dataset), options))
}

/// A progress line on stderr when it is a terminal (nothing on a pipe).
fn progress(label: String) -> impl FnMut(usize, usize) + Send + 'static {
    let terminal = std::io::stderr().is_terminal();
    move |done, total| {
        if terminal {
            let mut err = std::io::stderr();
            let _ = write!(err, "\r{label}: {done}/{total} rows");
            if done == total {
                let _ = writeln!(err);
            }
        }
    }
}

/// `modeld evaluate`.
pub(super) async fn evaluate(a: EvaluateArgs) -> anyhow::Result<()> {
    let services = app::services(&a.registry, cli_origin()).await?;
    let (dataset, options) = load(&a.dataset)?;
    let which = model_ref(&a.model)?;
    let label = format!("evaluating {}", a.model.model);
    let done = services
        .evaluation
        .evaluate(&which, Arc::clone(&dataset), &options, progress(label))
        .await?;
    if a.dataset.json {
        println!("{}", evaluated_json(&done, &dataset));
    } else {
        print_evaluation(&done, &dataset);
    }
    Ok(())
}

/// `modeld compare`.
pub(super) async fn compare(a: CompareArgs) -> anyhow::Result<()> {
    let services = app::services(&a.registry, cli_origin()).await?;
    let (dataset, options) = load(&a.dataset)?;
    let (ra, rb) = (
        model_ref(&ModelArg { model: a.a.clone() })?,
        model_ref(&ModelArg { model: a.b.clone() })?,
    );
    let names = (a.a.clone(), a.b.clone());
    let terminal = std::io::stderr().is_terminal();
    let shown = move |which: &str, done: usize, total: usize| {
        if terminal {
            let name = if which == "a" { &names.0 } else { &names.1 };
            eprint!("\revaluating {name}: {done}/{total} rows");
            if done == total {
                eprintln!();
            }
        }
    };
    let c = services
        .evaluation
        .compare(&ra, &rb, Arc::clone(&dataset), &options, shown)
        .await?;
    let (fa, fb) = (&c.a.outcome.figures, &c.b.outcome.figures);
    let better = match c.a_is_better {
        Some(true) => Some(&c.a.model),
        Some(false) => Some(&c.b.model),
        None => None,
    };
    if a.dataset.json {
        println!(
            "{}",
            json!({
                "a": evaluated_json(&c.a, &dataset),
                "b": evaluated_json(&c.b, &dataset),
                "difference": {
                    "accuracy": fb.accuracy - fa.accuracy,
                    "top3_accuracy": fb.top3_accuracy.zip(fa.top3_accuracy).map(|(b, a)| b - a),
                    "latency_p50_us": fb.latency_p50_us - fa.latency_p50_us,
                    "latency_p99_us": fb.latency_p99_us - fa.latency_p99_us,
                },
                "rows": fa.samples,
                "disagreements": c.disagreements,
                "better": better.map(|m| m.model_name.clone()),
                "decided_by": decided_by(fa, fb),
            })
        );
        return Ok(());
    }
    let (qa, qb) = (quoted(&c.a.model.model_name), quoted(&c.b.model.model_name));
    let w = qa.chars().count().max(qb.chars().count()).max(10);
    println!(
        "{} rows of {} (sha256 {})",
        fa.samples,
        dataset.name,
        &dataset.sha256[..12]
    );
    println!("{:<16} {qa:>w$} {qb:>w$} {:>12}", "", "b - a");
    let row = |what: &str, x: f64, y: f64, digits: usize| {
        println!("{what:<16} {x:>w$.digits$} {y:>w$.digits$} {:>+12.digits$}", y - x);
    };
    row("accuracy", fa.accuracy, fb.accuracy, 4);
    if let (Some(x), Some(y)) = (fa.top3_accuracy, fb.top3_accuracy) {
        row("top-3 accuracy", x, y, 4);
    }
    row("latency mean µs", fa.latency_mean_us, fb.latency_mean_us, 1);
    row("latency p50 µs", fa.latency_p50_us, fb.latency_p50_us, 1);
    row("latency p99 µs", fa.latency_p99_us, fb.latency_p99_us, 1);
    println!("predictions differ on {} of {} rows", c.disagreements, fa.samples);
    match better {
        Some(m) => println!("better: {} ({})", quoted(&m.model_name), decided_by(fa, fb)),
        None => println!("neither is better: same accuracy, top-3 accuracy and median latency"),
    }
    Ok(())
}

fn evaluated_json(e: &Evaluated, dataset: &Dataset) -> Value {
    json!({
        "model": record_json(&e.model),
        "log_id": e.record.log_id,
        "dataset": {"name": dataset.name, "sha256": dataset.sha256, "rows": dataset.rows()},
        "evaluated_at": e.record.evaluated_at,
        "figures": e.outcome.figures,
    })
}

fn print_evaluation(e: &Evaluated, dataset: &Dataset) {
    let f = &e.outcome.figures;
    println!(
        "evaluated {} on {} ({} rows, sha256 {}), output {}",
        describe(&e.model),
        dataset.name,
        f.samples,
        &dataset.sha256[..12],
        quoted(&f.output)
    );
    println!(
        "accuracy {:.4}  top-3 {}  latency mean {:.1} µs  p50 {:.1} µs  p99 {:.1} µs",
        f.accuracy,
        f.top3_accuracy.map_or_else(|| "-".into(), |t| format!("{t:.4}")),
        f.latency_mean_us,
        f.latency_p50_us,
        f.latency_p99_us
    );
    println!("{:>5}  {:>9}  {:>6}  {:>7}", "class", "precision", "recall", "support");
    for c in &f.classes {
        println!(
            "{:>5}  {:>9.4}  {:>6.4}  {:>7}",
            c.class, c.precision, c.recall, c.support
        );
    }
    println!("confusion matrix (rows: label, columns: predicted)");
    let head: String = (0..f.confusion.len()).map(|c| format!("{c:>5}")).collect();
    println!("     {head}");
    for (label, row) in f.confusion.iter().enumerate() {
        let cells: String = row.iter().map(|n| format!("{n:>5}")).collect();
        println!("{label:>5}{cells}");
    }
    println!("stored as evaluation {} in the registry", e.record.log_id);
}
