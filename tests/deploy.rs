//! The deployment recipes in deploy/, checked offline: the Kubernetes manifests against the
//! API's schemas (kubernetes-validate, from PyPI), their references to each other, and their
//! probes against the real binary started with the manifest's own arguments; the KServe
//! ClusterServingRuntime's documented fields, and its container arguments run for real on a
//! model directory as KServe mounts it.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::Value;

fn deploy(file: &str) -> PathBuf {
    bundled_models().join("../deploy").join(file)
}

/// Runs a program from the client tools' environment.
async fn tool(program: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args);
    for (k, v) in client_env() {
        cmd.env(k, v);
    }
    cmd.output().await.unwrap_or_else(|e| panic!("{program}: {e}"))
}

/// The YAML documents of `file`, as JSON (PyYAML, from the tools' environment).
async fn documents(file: &str) -> Vec<Value> {
    let path = deploy(file);
    let out = tool(
        "python",
        &[
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
            path.to_str().unwrap(),
        ],
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

/// The value of `--flag=value` among `args`.
fn flag<'a>(args: &'a [Value], name: &str) -> &'a str {
    args.iter()
        .filter_map(Value::as_str)
        .find_map(|a| a.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {args:?}"))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_manifests_validate_and_their_probes_answer() {
    let file = deploy("kubernetes/modeld.yaml");
    let out = tool("kubernetes-validate", &["--strict", file.to_str().unwrap()]).await;
    assert!(
        out.status.success(),
        "kubernetes-validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = documents("kubernetes/modeld.yaml").await;
    let deployment = of_kind(&docs, "Deployment");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(
        &of_kind(&docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        labels
    );
    assert_eq!(&of_kind(&docs, "Service")["spec"]["selector"], labels);
    assert_eq!(
        of_kind(&docs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"],
        deployment["metadata"]["name"]
    );
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args = container["args"].as_array().unwrap();
    // The named ports are the ones the server listens on, and the Service targets them.
    let ports = container["ports"].as_array().unwrap();
    let named = |n: &str| {
        ports
            .iter()
            .find(|p| p["name"] == n)
            .unwrap_or_else(|| panic!("no port {n}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(named("grpc"), port_of(flag(args, "--listen")));
    assert_eq!(named("http"), port_of(flag(args, "--http-listen")));
    for p in of_kind(&docs, "Service")["spec"]["ports"].as_array().unwrap() {
        named(p["targetPort"].as_str().unwrap());
    }
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "http", "{probe}");
    }
    // Every secret key the pod reads exists.
    let secret = &of_kind(&docs, "Secret")["stringData"];
    for e in container["env"].as_array().unwrap() {
        if let Some(key) = e["valueFrom"]["secretKeyRef"]["key"].as_str() {
            assert!(secret.get(key).is_some(), "secret key {key}");
        }
    }

    // The real binary with the manifest's arguments (on loopback ports the test picks): the
    // probes' paths answer, with the manifest's empty tokens file (everything else locked).
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.jsonl");
    std::fs::write(&tokens, "").unwrap();
    let tokens_arg = format!("--tokens-file={}", tokens.display());
    let mut run: Vec<String> = Vec::new();
    for a in args.iter().filter_map(Value::as_str).skip(1) {
        if a.starts_with("--listen=") || a.starts_with("--http-listen=") || a.starts_with("--log-format=") {
            continue; // the test's own loopback ports and JSON logs
        }
        run.push(if a.starts_with("--tokens-file=") {
            tokens_arg.clone()
        } else {
            a.to_string()
        });
    }
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let db = TestDb::new(Backend::Sqlite).await;
    let root = model_root();
    let server = LoggedServer::start(&db.url, root.path(), &run, &[]).await;
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        let path = container[probe]["httpGet"]["path"].as_str().unwrap();
        let r = reqwest::get(server.http_url(path)).await.unwrap();
        assert_eq!(r.status(), 200, "{probe} {path}");
    }
    let r = reqwest::get(server.http_url("/api/v1/models")).await.unwrap();
    assert_eq!(
        r.status(),
        401,
        "with the manifest's empty tokens file, the API is locked"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kserve_runtime_has_what_kserve_reads_and_its_arguments_serve() {
    let docs = documents("kserve/cluster-serving-runtime.yaml").await;
    let runtime = of_kind(&docs, "ClusterServingRuntime");
    assert_eq!(runtime["apiVersion"], "serving.kserve.io/v1alpha1");
    let spec = &runtime["spec"];
    let formats = spec["supportedModelFormats"].as_array().unwrap();
    assert!(
        formats.iter().any(|f| f["name"] == "onnx" && f["autoSelect"] == true),
        "{formats:?}"
    );
    let protocols: Vec<&str> = spec["protocolVersions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        protocols.contains(&"v2") && protocols.contains(&"grpc-v2"),
        "{protocols:?}"
    );
    let container = &spec["containers"][0];
    assert_eq!(container["name"], "kserve-container", "the name KServe looks for");
    let args = container["args"].as_array().unwrap();
    assert_eq!(flag(args, "--model-dir"), "/mnt/models", "where KServe puts the model");
    assert_eq!(flag(args, "--model-name"), "{{.Name}}");
    assert_eq!(
        container["ports"][0]["containerPort"].as_u64().unwrap(),
        port_of(flag(args, "--http-listen")),
        "KServe routes to the first container port: the HTTP port"
    );
    let isvc = of_kind(&docs, "InferenceService");
    assert_eq!(
        isvc["spec"]["predictor"]["model"]["runtime"],
        runtime["metadata"]["name"]
    );

    // The arguments as KServe runs them: /mnt/models holding the model, the name filled in.
    let mnt = tempfile::tempdir().unwrap();
    std::fs::copy(bundled_models().join("digits_v2.onnx"), mnt.path().join("model.onnx")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut run: Vec<String> = Vec::new();
    for a in args.iter().filter_map(Value::as_str).skip(1) {
        if a.starts_with("--listen=") || a.starts_with("--http-listen=") {
            continue;
        }
        run.push(
            a.replace("/mnt/models", mnt.path().to_str().unwrap())
                .replace("{{.Name}}", "digits"),
        );
    }
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    let server = LoggedServer::start(
        modeld::config::DEFAULT_DATABASE_URL,
        mnt.path(),
        &run,
        &[("TMPDIR", tmp.path().to_str().unwrap())],
    )
    .await;
    for path in ["/v2/health/ready", "/v2/models/digits/ready", "/v2/models/digits"] {
        let r = reqwest::get(server.http_url(path)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    server.stop().await;
}

/// The metric names an expression reads.
fn metrics_in(e: &promql_parser::parser::Expr, out: &mut Vec<String>) {
    use promql_parser::parser::Expr;
    let vs = |v: &promql_parser::parser::VectorSelector, out: &mut Vec<String>| {
        if let Some(n) = &v.name {
            out.push(n.clone());
        }
    };
    match e {
        Expr::Aggregate(a) => {
            metrics_in(&a.expr, out);
            if let Some(p) = &a.param {
                metrics_in(p, out);
            }
        }
        Expr::Unary(u) => metrics_in(&u.expr, out),
        Expr::Binary(b) => {
            metrics_in(&b.lhs, out);
            metrics_in(&b.rhs, out);
        }
        Expr::Paren(p) => metrics_in(&p.expr, out),
        Expr::Subquery(s) => metrics_in(&s.expr, out),
        Expr::VectorSelector(v) => vs(v, out),
        Expr::MatrixSelector(m) => vs(&m.vs, out),
        Expr::Call(c) => {
            for a in &c.args.args {
                metrics_in(a, out);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Every metric a running server declares (`# TYPE` lines; a histogram's series too), with a
/// shadow set and requests served so that every family is there.
async fn exported_metrics() -> Vec<String> {
    use modeld::api::pb;
    let server = TestServer::start(Backend::Sqlite).await;
    let mut reg = server.registry().await;
    reg.set_shadow(pb::SetRolloutRequest {
        model: by_name("digits_v1"),
        percentage: 100,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut infer = server.inference().await;
    for _ in 0..3 {
        infer.predict(digits_request("", &eval_rows(2))).await.unwrap();
    }
    let text = server.metrics().await;
    let mut names = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        {
            names.push(name.to_string());
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    names.push(format!("{name}{s}"));
                }
            }
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alert_rules_and_the_dashboard_parse_and_name_metrics_that_exist() {
    let exported = exported_metrics().await;
    assert!(exported.iter().any(|n| n == "modeld_requests_total"), "{exported:?}");
    let check = |what: &str, expr: &str| {
        let parsed = promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{what}: {e}\n{expr}"));
        let mut names = Vec::new();
        metrics_in(&parsed, &mut names);
        assert!(!names.is_empty(), "{what} reads no metric");
        for n in names {
            assert!(exported.contains(&n), "{what} reads {n}, which modeld does not export");
        }
    };

    let rules = documents("monitoring/alerts.yaml").await;
    let groups = rules[0]["groups"].as_array().unwrap();
    let mut alerts = Vec::new();
    for rule in groups.iter().flat_map(|g| g["rules"].as_array().unwrap()) {
        let name = rule["alert"].as_str().expect("every rule is an alert");
        assert!(
            name.starts_with("Modeld") && name.chars().all(char::is_alphanumeric),
            "{name}"
        );
        assert!(
            ["critical", "warning", "info"].contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity"
        );
        assert!(rule["annotations"]["summary"].is_string(), "{name}: summary");
        if let Some(f) = rule.get("for") {
            let f = f.as_str().unwrap();
            assert!(
                f.len() > 1 && f[..f.len() - 1].parse::<u32>().is_ok() && "smh".contains(&f[f.len() - 1..]),
                "{name}: for {f}"
            );
        }
        check(name, rule["expr"].as_str().unwrap());
        alerts.push(name.to_string());
    }
    for want in [
        "ModeldHighErrorRate",
        "ModeldRolloutErrorRate",
        "ModeldDegraded",
        "ModeldReloadFailures",
        "ModeldRegistryUnreachable",
        "ModeldShadowDisagrees",
    ] {
        assert!(alerts.iter().any(|a| a == want), "{want} missing");
    }

    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("monitoring/grafana-dashboard.json")).unwrap()).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 6);
    for p in panels {
        let title = p["title"].as_str().unwrap();
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}");
        for t in targets {
            check(title, t["expr"].as_str().unwrap());
        }
    }
}
