//! The `modeld` binary as users run it: registry commands on a SQLite file with the server up
//! or down, and `predict` against a running server.

mod common;

use common::*;
use modeld::api::pb;

#[tokio::test]
async fn registry_commands_work_without_a_server() {
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();

    let (ok, out, err) = modeld_cli(&db.url, root.path(), &["migrate"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("up to date"));

    let (ok, out, err) = modeld_cli(
        &db.url,
        root.path(),
        &[
            "register",
            "--name",
            "digits_v1",
            "--path",
            "digits_v1.onnx",
            "--version",
            "1.0.0",
            "--description",
            "logreg",
            "--type",
            "classifier",
            "--accuracy",
            "0.9",
            "--activate",
            "--json",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["model"]["model_name"], "digits_v1");
    assert_eq!(v["activation"]["active"]["is_active"], true);
    assert_eq!(
        v["model"]["signature"]["inputs"][0]["shape"],
        serde_json::json!([-1, 64])
    );

    let (ok, _, err) = modeld_cli(
        &db.url,
        root.path(),
        &[
            "register",
            "--name",
            "digits_v2",
            "--path",
            "digits_v2.onnx",
            "--version",
            "2.0.0",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, _, err) = modeld_cli(
        &db.url,
        root.path(),
        &["register", "--name", "digits_v2", "--path", "digits_v2.onnx"],
    )
    .await;
    assert!(!ok, "duplicate names are refused");
    assert!(err.contains("already registered"), "{err}");
    let (ok, _, err) = modeld_cli(
        &db.url,
        root.path(),
        &["register", "--name", "evil", "--path", "/etc/passwd"],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("is outside the model root"), "{err}");

    let (ok, out, _) = modeld_cli(&db.url, root.path(), &["list"]).await;
    assert!(ok);
    let active_line = out.lines().find(|l| l.contains("digits_v1")).unwrap();
    assert!(
        active_line.split_whitespace().any(|w| w == "active"),
        "the active model's role says so: {out}"
    );

    let (ok, out, err) = modeld_cli(
        &db.url,
        root.path(),
        &["activate", "digits_v2", "--reason", "better", "--json"],
    )
    .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["active"]["model_name"], "digits_v2");
    assert_eq!(v["previous"]["model_name"], "digits_v1");

    let (ok, _, err) = modeld_cli(&db.url, root.path(), &["delete", "digits_v2"]).await;
    assert!(!ok, "the active model cannot be deleted");
    assert!(err.contains("active"), "{err}");

    let (ok, out, err) = modeld_cli(&db.url, root.path(), &["rollback", "--json"]).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["active"]["model_name"], "digits_v1");

    let (ok, out, _) = modeld_cli(&db.url, root.path(), &["show", "digits_v1"]).await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["is_active"], true);

    let (ok, out, err) = modeld_cli(&db.url, root.path(), &["delete", "digits_v2"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("kept"));
    assert!(root.path().join("digits_v2.onnx").exists());
    let (ok, _, err) = modeld_cli(&db.url, root.path(), &["show", "digits_v2"]).await;
    assert!(!ok);
    assert!(err.contains("not registered"), "{err}");
}

#[tokio::test]
async fn cli_changes_reach_the_registry_a_server_uses_and_predict_prints_outputs() {
    let server = TestServer::start(Backend::Sqlite).await;
    let root = server.root.path();

    // The CLI works on the same SQLite file while the server runs.
    let (ok, out, err) = modeld_cli(&server.db.url, root, &["list", "--json"]).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 3);

    // predict with a .npy file (raw) and a .json file (typed).
    let (_, x) = npy_f32("eval/digits_x.npy");
    let npy = root.join("one.npy");
    {
        let mut f = std::fs::File::create(&npy).unwrap();
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&[2, 64])
            .writer(&mut f)
            .begin_nd()
            .unwrap();
        w.extend(x[..128].iter().copied()).unwrap();
        w.finish().unwrap();
    }
    let (ok, out, err) = modeld_cli(
        &server.db.url,
        root,
        &["predict", "--server", &server.url(), "--input", npy.to_str().unwrap()],
    )
    .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["model_name"], "digits_v2");
    assert_eq!(v["outputs"][0]["shape"], serde_json::json!([2, 10]));
    let labels: Vec<i64> = serde_json::from_value(v["outputs"][1]["data"].clone()).unwrap();
    assert_eq!(labels, npy_i64("expected/digits_v2_label.npy")[..2]);

    let json_in = root.join("one.json");
    let row: Vec<f32> = x[..64].to_vec();
    std::fs::write(&json_in, serde_json::to_string(&vec![row]).unwrap()).unwrap();
    let (ok, out, err) = modeld_cli(
        &server.db.url,
        root,
        &[
            "predict",
            "--server",
            &server.url(),
            "--model",
            "digits_v2",
            "--input",
            json_in.to_str().unwrap(),
        ],
    )
    .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let probs: Vec<f32> = serde_json::from_value(v["outputs"][0]["data"].clone()).unwrap();
    let (_, want) = npy_f32("expected/digits_v2_probabilities.npy");
    assert_close(&probs, &want[..10], 1e-5);

    // A bad input reaches the user as the server's message.
    std::fs::write(&json_in, "[[1, 2, 3]]").unwrap();
    let (ok, _, err) = modeld_cli(
        &server.db.url,
        root,
        &[
            "predict",
            "--server",
            &server.url(),
            "--input",
            json_in.to_str().unwrap(),
        ],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("expected [N,64] FP32, got [1,3] FP32"), "{err}");

    // An activation made by the CLI is in the registry the server reads.
    let (ok, _, err) = modeld_cli(&server.db.url, root, &["activate", "digits_v1"]).await;
    assert!(ok, "{err}");
    let active = server
        .registry()
        .await
        .get_active_model(pb::GetActiveModelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.model.unwrap().model_name, "digits_v1");
}

#[tokio::test]
async fn an_unknown_engine_is_refused_before_anything_starts() {
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();
    let (ok, _, err) = modeld_cli(
        &db.url,
        root.path(),
        &["serve", "--listen", "127.0.0.1:0", "--engine", "tensorrt"],
    )
    .await;
    assert!(!ok);
    assert!(
        err.contains("invalid value 'tensorrt' for '--engine <ENGINE>'")
            && err.contains("[possible values: tract, onnxruntime, auto]"),
        "{err}"
    );
}

/// A backend directory as the guide lays it out: `models/` beside where the user runs
/// commands, with the guide's model file (an `.onnx` one here, not `.keras`).
fn backend_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("models")).unwrap();
    std::fs::copy(
        bundled_models().join("digits_v1.onnx"),
        dir.path().join("models/my_yamnet_human_model.onnx"),
    )
    .unwrap();
    dir
}

/// Nothing on stdout but the answer: no log line, no colour code.
fn assert_no_log_lines(out: &str) {
    for level in ["INFO", "WARN", "DEBUG", "TRACE", "ERROR"] {
        assert!(!out.contains(level), "a log line on stdout: {out}");
    }
    assert!(!out.contains('\u{1b}'), "a colour code on stdout: {out:?}");
}

/// The guide's register command, with modeld in place of its script and the same flags and
/// values, run from the directory that holds `models/` with every setting at its default.
#[tokio::test]
async fn the_guides_register_command_works_as_typed() {
    let dir = backend_dir();
    let cwd = dir.path();
    let run = run_modeld(
        cwd,
        &[],
        &[
            "register",
            "--name",
            "YAMNet Human Detection v1",
            "--path",
            "models/my_yamnet_human_model.onnx",
            "--version",
            "v1.0",
            "--description",
            "YAMNet-based model for human distress detection",
            "--type",
            "yamnet",
            "--activate",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stderr, "", "quiet: warnings only, and there are none");
    assert_no_log_lines(&run.stdout);
    assert!(
        run.stdout
            .starts_with("registered \"YAMNet Human Detection v1\" (id 1, version \"v1.0\")"),
        "{}",
        run.stdout
    );
    assert!(cwd.join("modeld.db").exists(), "the embedded default registry");

    let run = run_modeld(cwd, &[], &["show", "YAMNet Human Detection v1"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        v["file_path"], "my_yamnet_human_model.onnx",
        "stored relative to the root"
    );
    assert_eq!(v["model_type"], "yamnet");
    assert_eq!(v["version"], "v1.0");
    assert_eq!(v["is_active"], true);

    // The same file by its absolute path, and by its path relative to the root.
    let abs = cwd.join("models/my_yamnet_human_model.onnx");
    for (name, path) in [
        ("by absolute path", abs.to_str().unwrap()),
        ("by root path", "my_yamnet_human_model.onnx"),
    ] {
        let run = run_modeld(cwd, &[], &["register", "--name", name, "--path", path, "--json"]).await;
        assert_eq!(run.code, 0, "{run:?}");
        let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(v["model"]["file_path"], "my_yamnet_human_model.onnx");
    }

    // A file outside the root is refused, naming the root and what sets it.
    std::fs::copy(bundled_models().join("digits_v1.onnx"), cwd.join("stray.onnx")).unwrap();
    let run = run_modeld(cwd, &[], &["register", "--name", "stray", "--path", "stray.onnx"]).await;
    assert_eq!(run.code, 4, "{run:?}");
    let root = cwd.join("models").canonicalize().unwrap();
    assert!(
        run.stderr.contains("is outside the model root")
            && run.stderr.contains(&*root.to_string_lossy())
            && run.stderr.contains("--model-root / MODELD_MODEL_ROOT"),
        "{}",
        run.stderr
    );
    let run = run_modeld(cwd, &[], &["register", "--name", "none", "--path", "models/none.onnx"]).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr.contains("not found") && run.stderr.contains("--model-root"),
        "{}",
        run.stderr
    );
}

/// Exit codes a script can act on, each from a command as a user would get it wrong.
#[tokio::test]
async fn exit_codes_say_what_kind_of_failure_it_was() {
    let dir = backend_dir();
    let cwd = dir.path();
    let ok = run_modeld(
        cwd,
        &[],
        &["register", "--name", "m", "--path", "models/my_yamnet_human_model.onnx"],
    )
    .await;
    assert_eq!(ok.code, 0, "{ok:?}");
    let cases: [(&[&str], i32, &str); 8] = [
        (&["show", "nope"], 3, "not registered"),
        (&["activate", "nope"], 3, "not registered"),
        (
            &["register", "--name", "m", "--path", "models/my_yamnet_human_model.onnx"],
            4,
            "already registered",
        ),
        (
            &[
                "register",
                "--name",
                "Active",
                "--path",
                "models/my_yamnet_human_model.onnx",
            ],
            4,
            "reserved",
        ),
        (&["register", "--name", "m", "--path", "../x.onnx"], 4, "not found"),
        (&["show"], 2, "Usage"),
        (&["list", "--databse-url", "x"], 2, "unexpected argument"),
        (
            &["list", "--database-url", "postgres://postgres@127.0.0.1:9/none"],
            5,
            "cannot connect",
        ),
    ];
    for (args, code, says) in cases {
        let run = run_modeld(cwd, &[], args).await;
        assert_eq!(run.code, code, "{args:?}: {run:?}");
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
        assert_eq!(run.stdout, "", "{args:?}: problems go to stderr");
    }
    let run = run_modeld(
        cwd,
        &[],
        &["predict", "--server", "http://127.0.0.1:9", "--input", "x.json"],
    )
    .await;
    assert_eq!(run.code, 5, "{run:?}");
    let run = run_modeld(cwd, &[], &["predict", "--server", "not a uri", "--input", "x.json"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("is not a server address"), "{}", run.stderr);
    let run = run_modeld(cwd, &[], &["show", "id:seven"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("name:id:seven"), "{}", run.stderr);
    let run = run_modeld(cwd, &[], &["show", "id:1"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let help = run_modeld(cwd, &[], &["--help"]).await;
    assert_eq!(help.code, 0);
    assert!(
        help.stdout.contains("Exit codes:") && help.stdout.contains("5  unreachable"),
        "{}",
        help.stdout
    );
    // --log still turns the logs on, on stderr only.
    let run = run_modeld(cwd, &[], &["--log", "info", "list"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_no_log_lines(&run.stdout);
    assert!(
        !run.stderr.contains('\u{1b}'),
        "no colour when stderr is not a terminal: {:?}",
        run.stderr
    );
}

/// `modeld serve` as an operator starts it, with every engine setting at its default and no
/// ONNX Runtime library anywhere: a few readable start-up lines (password redacted), `auto`
/// serving with tract, and one line, not a warning, on how to get the faster engine.
#[tokio::test]
async fn start_up_says_what_it_does_in_a_few_lines() {
    use tokio::io::AsyncBufReadExt;
    let db = TestDb::new(Backend::Postgres).await;
    let url = db.url.replacen("postgres@", "postgres:s3cret@", 1);
    let root = model_root();
    let mut cmd = modeld_command();
    let mut child = as_a_user(&mut cmd)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--database-url",
            &url,
        ])
        .arg("--model-root")
        .arg(root.path())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    while !seen
        .last()
        .is_some_and(|l: &String| l.contains("serving \"digits_v2\" version \"2\""))
    {
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap_or_else(|| panic!("modeld stopped; it said:\n{}", seen.join("\n")));
        seen.push(line);
    }
    tokio::spawn(async move { while lines.next_line().await.ok().flatten().is_some() {} });
    let all = seen.join("\n");
    assert!(seen.len() <= 10, "a few lines, not a dump:\n{all}");
    for says in [
        "listening on 127.0.0.1:",
        "registry: postgres://postgres:***@",
        "(PostgreSQL)",
        "model root: ",
        "engine: tract",
        "ONNX Runtime, faster on heavy models, is not installed",
        "docs/operations.md, \"Engines\", says how to add it",
        "serving \"digits_v2\" version \"2\" (id 2) on tract",
    ] {
        assert!(all.contains(says), "{says:?} missing from:\n{all}");
    }
    assert_eq!(all.matches("Engines").count(), 1, "said once:\n{all}");
    // The loader's own words (dlopen's message, the library's path) stay in the debug log.
    assert!(!all.contains("cannot open shared object"), "{all}");
    for line in &seen {
        assert!(line.chars().count() <= 260, "a line a terminal shows whole:\n{line}");
    }
    assert!(!all.contains("s3cret"), "the password is redacted:\n{all}");
    assert!(!all.contains("ServeConfig") && !all.contains(" WARN "), "{all}");
    assert!(!all.contains('\u{1b}'), "no colour when stderr is not a terminal");

    let line = seen.iter().find(|l| l.contains("listening on ")).unwrap();
    let addr = line.split("listening on ").nth(1).unwrap().split(": ").next().unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = pb::model_registry_client::ModelRegistryClient::new(channel)
        .get_server_status(pb::GetServerStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let engine = status.engine.unwrap();
    assert_eq!(engine.preferred_engine, "auto", "the default");
    assert_eq!(engine.serving_engine, "tract");
    child.kill().await.unwrap();
}

/// Share of equal entries.
fn agreement(a: &[i64], b: &[i64]) -> f64 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64
}

/// `modeld evaluate` and `modeld compare` on the bundled evaluation set, checked against the
/// labels onnxruntime computed for the same rows (models/expected), and their bad inputs.
#[tokio::test]
async fn evaluate_and_compare_on_the_bundled_digits() {
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();
    for (name, file) in [
        ("digits_v1", "digits_v1.onnx"),
        ("digits_v2", "digits_v2.onnx"),
        ("cnn", "cnn.onnx"),
    ] {
        let (ok, _, err) = modeld_cli(&db.url, root.path(), &["register", "--name", name, "--path", file]).await;
        assert!(ok, "{err}");
    }
    let x = bundled_models().join("eval/digits_x.npy");
    let x = x.to_str().unwrap();
    let truth = npy_i64("eval/digits_y.npy");
    let (v1, v2) = (
        npy_i64("expected/digits_v1_label.npy"),
        npy_i64("expected/digits_v2_label.npy"),
    );

    let (ok, out, err) = modeld_cli(
        &db.url,
        root.path(),
        &["evaluate", "digits_v2", "--dataset", x, "--json"],
    )
    .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let f = &v["figures"];
    assert_eq!(f["samples"], 360);
    assert_eq!(f["output"], "probabilities");
    assert!(
        (f["accuracy"].as_f64().unwrap() - agreement(&truth, &v2)).abs() < 1e-12,
        "{f}"
    );
    assert!(f["top3_accuracy"].as_f64().unwrap() >= f["accuracy"].as_f64().unwrap());
    let confusion: Vec<Vec<u64>> = serde_json::from_value(f["confusion"].clone()).unwrap();
    assert_eq!(confusion.len(), 10);
    assert_eq!(confusion.iter().flatten().sum::<u64>(), 360);
    let diagonal: u64 = (0..10).map(|i| confusion[i][i]).sum();
    assert_eq!(diagonal as f64 / 360.0, f["accuracy"].as_f64().unwrap());
    assert!(f["latency_p99_us"].as_f64().unwrap() >= f["latency_p50_us"].as_f64().unwrap());
    assert_eq!(v["dataset"]["name"], "digits_x.npy");

    // The latest evaluation shows with the model.
    let (ok, out, _) = modeld_cli(&db.url, root.path(), &["show", "digits_v2"]).await;
    assert!(ok);
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["latest_evaluation"]["accuracy"], f["accuracy"]);
    assert_eq!(shown["latest_evaluation"]["sample_size"], 360);

    // Compare: the same rows, side by side, which is better and where they disagree.
    let (ok, out, err) = modeld_cli(
        &db.url,
        root.path(),
        &["compare", "digits_v1", "digits_v2", "--dataset", x, "--json"],
    )
    .await;
    assert!(ok, "{err}");
    let c: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(c["better"], "digits_v2");
    assert_eq!(c["decided_by"], "higher accuracy");
    let disagree = v1.iter().zip(&v2).filter(|(a, b)| a != b).count();
    assert_eq!(c["disagreements"], disagree as u64);
    let diff = c["difference"]["accuracy"].as_f64().unwrap();
    assert!(
        (diff - (agreement(&truth, &v2) - agreement(&truth, &v1))).abs() < 1e-12,
        "{c}"
    );
    let (ok, text, _) = modeld_cli(
        &db.url,
        root.path(),
        &["compare", "digits_v1", "digits_v2", "--dataset", x],
    )
    .await;
    assert!(ok);
    assert!(text.contains("better: \"digits_v2\" (higher accuracy)"), "{text}");
    assert!(
        text.contains(&format!("predictions differ on {disagree} of 360 rows")),
        "{text}"
    );

    // A CSV dataset with a label column gives the same figures on the same rows.
    let (_, rows) = npy_f32("eval/digits_x.npy");
    let mut csv = (0..64).map(|i| format!("p{i}")).collect::<Vec<_>>().join(",") + ",digit\n";
    for (r, label) in truth.iter().enumerate().take(40) {
        let cells: Vec<String> = rows[r * 64..(r + 1) * 64].iter().map(|v| v.to_string()).collect();
        csv += &format!("{},{label}\n", cells.join(","));
    }
    let csv_path = root.path().join("digits.csv");
    std::fs::write(&csv_path, csv).unwrap();
    let (ok, out, err) = modeld_cli(
        &db.url,
        root.path(),
        &[
            "evaluate",
            "digits_v2",
            "--dataset",
            csv_path.to_str().unwrap(),
            "--label-column",
            "digit",
            "--json",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["figures"]["samples"], 40);
    assert!((v["figures"]["accuracy"].as_f64().unwrap() - agreement(&truth[..40], &v2[..40])).abs() < 1e-12);

    // Bad inputs: refused (4) with what is wrong, or not found (3).
    let csv = csv_path.to_str().unwrap();
    for (args, code, says) in [
        (
            vec!["evaluate", "cnn", "--dataset", x],
            4,
            "expected [N,3,224,224] FP32, got [1,64] FP32",
        ),
        (vec!["evaluate", "nope", "--dataset", x], 3, "not registered"),
        (
            vec!["evaluate", "digits_v2", "--dataset", "missing_x.npy"],
            4,
            "cannot read",
        ),
        (
            vec!["evaluate", "digits_v2", "--dataset", csv],
            4,
            "no column \"label\"",
        ),
        (
            vec!["evaluate", "digits_v2", "--dataset", "models.json"],
            4,
            "use an .npy features file",
        ),
        (
            vec!["evaluate", "digits_v2", "--dataset", x, "--output", "nope"],
            4,
            "has no output \"nope\"",
        ),
    ] {
        let (ok, _, err) = modeld_cli(&db.url, root.path(), &args).await;
        assert!(!ok, "{args:?}");
        assert!(err.contains(says), "{args:?}: {err}");
        let run = run_modeld(
            root.path(),
            &[
                ("MODELD_DATABASE_URL", &db.url),
                ("MODELD_MODEL_ROOT", root.path().to_str().unwrap()),
            ],
            &args,
        )
        .await;
        assert_eq!(run.code, code, "{args:?}: {run:?}");
    }
}

/// `activate --require-better`: a worse candidate is refused with both numbers, one without an
/// evaluation on the active model's dataset is told to evaluate first (or evaluated on the spot
/// with --evaluate), a better one goes through.
#[tokio::test]
async fn gated_activation_refuses_a_worse_model() {
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();
    let cli = |args: Vec<&str>| {
        let (url, root) = (db.url.clone(), root.path().to_path_buf());
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run_modeld(
                &root,
                &[
                    ("MODELD_DATABASE_URL", &url),
                    ("MODELD_MODEL_ROOT", root.to_str().unwrap()),
                ],
                &args,
            )
            .await
        }
    };
    let x = bundled_models().join("eval/digits_x.npy").to_str().unwrap().to_string();
    for (name, file) in [
        ("digits_v1", "digits_v1.onnx"),
        ("digits_v2", "digits_v2.onnx"),
        ("copy_of_v1", "digits_v1.onnx"),
    ] {
        let run = cli(vec!["register", "--name", name, "--path", file]).await;
        assert_eq!(run.code, 0, "{run:?}");
    }
    let run = cli(vec!["activate", "digits_v2"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    // The active model has no evaluation yet: nothing to compare with.
    let run = cli(vec!["activate", "digits_v1", "--require-better"]).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr.contains("the active model \"digits_v2\" has no evaluation"),
        "{}",
        run.stderr
    );
    for name in ["digits_v1", "digits_v2"] {
        assert_eq!(cli(vec!["evaluate", name, "--dataset", &x]).await.code, 0);
    }
    let run = cli(vec!["activate", "digits_v1", "--require-better"]).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr
            .contains("\"digits_v1\" is worse than the active model \"digits_v2\" on \"digits_x.npy\"")
            && run.stderr.contains("accuracy 0.9000 vs 0.9722"),
        "{}",
        run.stderr
    );
    let run = cli(vec!["activate", "copy_of_v1", "--require-better"]).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr
            .contains("\"copy_of_v1\" has no evaluation on \"digits_x.npy\"")
            && run.stderr.contains("evaluate it first"),
        "{}",
        run.stderr
    );
    let run = cli(vec!["activate", "copy_of_v1", "--require-better", "--evaluate", &x]).await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("is worse than the active model"), "{}", run.stderr);
    let (ok, out, _) = modeld_cli(&db.url, root.path(), &["show", "copy_of_v1"]).await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["latest_evaluation"]["notes"], "evaluated for --require-better");
    assert_eq!(v["is_active"], false, "refused: nothing changed");
    // A better model goes through the gate.
    assert_eq!(cli(vec!["activate", "digits_v1"]).await.code, 0);
    let run = cli(vec!["activate", "digits_v2", "--require-better"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let (_, out, _) = modeld_cli(&db.url, root.path(), &["show", "digits_v2"]).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["is_active"], true);
}

/// `modeld token create|list|revoke`: the token is printed once, the file keeps only its hash,
/// names and scopes are checked.
#[tokio::test]
async fn tokens_are_created_once_listed_without_secrets_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &'static [&'static str]| run_modeld(dir.path(), &[], args);
    let made = run(&[
        "token", "create", "--name", "ci", "--scope", "predict", "--scope", "read",
    ])
    .await;
    assert_eq!(made.code, 0, "{}", made.stderr);
    let token = made.stdout.trim().to_string();
    assert!(token.starts_with("mdl_") && token.len() == 68, "{token:?}");
    assert!(made.stderr.contains("shown once") && !made.stderr.contains(&token));
    let file = std::fs::read_to_string(dir.path().join("modeld-tokens.jsonl")).unwrap();
    assert!(!file.contains(&token[4..]), "the file holds the hash only:\n{file}");
    let tokens = modeld::auth::Tokens::parse(&file).unwrap();
    let e = tokens.check(&token, chrono::Utc::now()).unwrap();
    assert_eq!(e.name, "ci");
    assert!(e.allows(modeld::auth::Scope::Predict) && !e.allows(modeld::auth::Scope::Admin));

    let again = run(&["token", "create", "--name", "ci", "--scope", "read"]).await;
    assert_ne!(again.code, 0);
    assert!(again.stderr.contains("exists; revoke it first"), "{}", again.stderr);
    let bad = run(&["token", "create", "--name", "x", "--scope", "root"]).await;
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("admin, predict and read"), "{}", bad.stderr);
    let timed = run(&[
        "token",
        "create",
        "--name",
        "tmp",
        "--scope",
        "admin",
        "--expires-in-days",
        "7",
    ])
    .await;
    assert_eq!(timed.code, 0, "{}", timed.stderr);

    let list = run(&["token", "list"]).await;
    assert_eq!(list.code, 0);
    assert!(
        list.stdout.contains("ci  predict,read  expires never"),
        "{}",
        list.stdout
    );
    assert!(list.stdout.contains("tmp  admin  expires 20"), "{}", list.stdout);
    assert!(!list.stdout.contains(&token) && !list.stdout.contains(&e.sha256));

    let revoked = run(&["token", "revoke", "ci"]).await;
    assert_eq!((revoked.code, revoked.stdout.trim()), (0, "token \"ci\" revoked"));
    let file = std::fs::read_to_string(dir.path().join("modeld-tokens.jsonl")).unwrap();
    assert!(
        modeld::auth::Tokens::parse(&file)
            .unwrap()
            .check(&token, chrono::Utc::now())
            .is_err()
    );
    let gone = run(&["token", "revoke", "ci"]).await;
    assert_ne!(gone.code, 0);
    assert!(gone.stderr.contains("no token named \"ci\""), "{}", gone.stderr);
}

/// `modeld serve --model-dir DIR` (KServe's /mnt/models): the files under DIR are registered
/// into an embedded registry in the temp dir and the first is served, under `--model-name`
/// for a single file; DIR is only read, and a restart registers nothing twice.
#[tokio::test]
async fn serve_model_dir_registers_what_it_finds_and_serves_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(bundled_models().join("digits_v2.onnx"), dir.path().join("model.onnx")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let tmp_s = tmp.path().to_str().unwrap().to_string();
    let dir_s = dir.path().to_str().unwrap().to_string();
    let args = ["--model-dir", dir_s.as_str(), "--model-name", "digits"];
    for round in 0..2 {
        let server = LoggedServer::start(
            modeld::config::DEFAULT_DATABASE_URL,
            dir.path(),
            &args,
            &[("TMPDIR", tmp_s.as_str())],
        )
        .await;
        let r = reqwest::get(server.http_url("/v2/models/digits/ready")).await.unwrap();
        assert_eq!(r.status(), 200, "round {round}");
        let mut reg = pb::model_registry_client::ModelRegistryClient::new(server.channel().await);
        let list = reg
            .list_models(pb::ListModelsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .models;
        assert_eq!(list.len(), 1, "round {round}: registered once: {list:?}");
        assert_eq!((list[0].model_name.as_str(), list[0].is_active), ("digits", true));
        let mut infer = pb::inference_client::InferenceClient::new(server.channel().await);
        assert_eq!(predict_as(&mut infer, "digits", 2, "digits_v2").await, "digits");
        server.stop().await;
    }
    let in_dir: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(in_dir, vec![std::ffi::OsString::from("model.onnx")], "DIR is only read");
    assert!(
        std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("modeld-model-dir-")),
        "the embedded registry is in the temp dir"
    );

    // Several files: named by their paths, the first served; an empty directory is refused.
    let many = tempfile::tempdir().unwrap();
    std::fs::create_dir(many.path().join("a")).unwrap();
    std::fs::copy(bundled_models().join("digits_v1.onnx"), many.path().join("a/x.onnx")).unwrap();
    std::fs::copy(bundled_models().join("digits_v2.onnx"), many.path().join("b.onnx")).unwrap();
    let many_s = many.path().to_str().unwrap().to_string();
    let server = LoggedServer::start(
        modeld::config::DEFAULT_DATABASE_URL,
        many.path(),
        &["--model-dir", many_s.as_str()],
        &[("TMPDIR", tmp_s.as_str())],
    )
    .await;
    let mut reg = pb::model_registry_client::ModelRegistryClient::new(server.channel().await);
    let active = reg
        .get_active_model(pb::GetActiveModelRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.model.unwrap().model_name, "a-x");
    reg.get_model(pb::GetModelRequest { model: by_name("b") })
        .await
        .unwrap();
    server.stop().await;
    let empty = tempfile::tempdir().unwrap();
    let r = run_modeld(
        tmp.path(),
        &[("TMPDIR", tmp_s.as_str())],
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "off",
            "--model-dir",
            empty.path().to_str().unwrap(),
        ],
    )
    .await;
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("no .onnx file"), "{r:?}");
}

#[tokio::test]
async fn deployment_commands_create_list_show_and_delete() {
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();
    let cli = async |args: &[&str]| modeld_cli(&db.url, root.path(), args).await;
    let (ok, _, err) = cli(&[
        "register",
        "--name",
        "digits_v1",
        "--path",
        "digits_v1.onnx",
        "--activate",
    ])
    .await;
    assert!(ok, "{err}");

    let (ok, out, err) = cli(&["deployment", "create", "yamnet", "--description", "sounds"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("created deployment \"yamnet\""), "{out}");
    for (name, why) in [
        ("yamnet", "already exists"),
        ("digits_v1", "namespace"),
        ("active", "reserved"),
    ] {
        let (ok, _, err) = cli(&["deployment", "create", name]).await;
        assert!(!ok, "{name} is refused");
        assert!(err.contains(why), "{name}: {err}");
    }

    let (ok, out, err) = cli(&["deployment", "list"]).await;
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        lines[1].contains("default") && lines[1].contains("digits_v1 (id 1)"),
        "{out}"
    );
    assert!(
        lines[2].contains("yamnet") && lines[2].trim_end().ends_with('-'),
        "{out}"
    );
    let (ok, out, err) = cli(&["deployment", "list", "--json"]).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["name"], "default");
    assert_eq!(v[0]["models"], 1);
    assert_eq!(v[0]["active"]["model_name"], "digits_v1");
    assert_eq!(v[1]["active"], serde_json::Value::Null);

    let (ok, out, err) = cli(&["deployment", "show", "yamnet", "--json"]).await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["description"].as_str(), v["models"].as_i64()),
        (Some("sounds"), Some(0))
    );
    let (ok, _, err) = cli(&["deployment", "show", "yamnt"]).await;
    assert!(!ok);
    assert!(err.contains("modeld deployment list"), "{err}");

    // A model cannot take a deployment's name.
    let (ok, _, err) = cli(&["register", "--name", "yamnet", "--path", "digits_v2.onnx"]).await;
    assert!(!ok);
    assert!(err.contains("deployment"), "{err}");

    let (ok, _, err) = cli(&["deployment", "delete", "default"]).await;
    assert!(!ok);
    assert!(err.contains("cannot be deleted"), "{err}");
    let (ok, out, err) = cli(&["deployment", "delete", "yamnet"]).await;
    assert!(ok, "{err}");
    assert!(out.contains("deleted deployment \"yamnet\""), "{out}");
    let (ok, out, _) = cli(&["deployment", "list", "--json"]).await;
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
