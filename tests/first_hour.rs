//! The first hour, run as a newcomer runs it: the README's CLI block pasted as written from a
//! fresh copy of the checkout, the guides' requests as they write them, the errors a typo, a
//! missing server or a missing token gets, with the real binary on the embedded default.

mod common;

use std::path::Path;

use common::*;
use serde_json::{Value, json};

/// The commands of the first ```sh block after `heading` in `file` (README.md, docs/…):
/// continuation lines joined, comments dropped, as a shell reads them.
fn doc_block(file: &str, heading: &str) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    let section = &text[text.find(heading).unwrap_or_else(|| panic!("{heading} in {file}"))..];
    doc_block_of(section)
}

/// The commands of every ```sh block of `file`, block by block, as [`doc_block`] reads one.
fn doc_blocks(file: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
    let mut blocks = Vec::new();
    let mut rest = text.as_str();
    while let Some(at) = rest.find("```sh\n") {
        let section = &rest[at..];
        blocks.push(doc_block_of(section));
        rest = &section[6..];
    }
    blocks
}

/// The commands of the ```sh block `section` starts with.
fn doc_block_of(section: &str) -> Vec<String> {
    let start = section.find("```sh\n").unwrap() + 6;
    let block = &section[start..start + section[start..].find("```").unwrap()];
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let code = strip_comment(line);
        if let Some(head) = code.trim_end().strip_suffix('\\') {
            current.push_str(head);
            continue;
        }
        current.push_str(code);
        if !current.trim().is_empty() {
            commands.push(current.trim().to_string());
        }
        current.clear();
    }
    commands
}

/// A line without its `#` comment (a `#` outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            '#' if !quoted => return &line[..i],
            _ => {}
        }
    }
    line
}

/// Runs one pasted line with `bash` from `cwd`, `modeld` on the PATH, no MODELD_* variable but
/// `env`.
async fn paste(cwd: &Path, env: &[(&str, &str)], line: &str) -> CliRun {
    let bin = Path::new(MODELD_BIN).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = tokio::process::Command::new("bash");
    cmd.args(["-c", line]).current_dir(cwd).env("PATH", path);
    for (k, _) in std::env::vars() {
        if k.starts_with("MODELD_") && k != "MODELD_ONNXRUNTIME_DIR" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().await.unwrap();
    CliRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// README "The CLI", every line pasted in order against the server of "Run it", on a fresh
/// copy of the checkout: each one succeeds, and what it says is what happened.
#[tokio::test]
async fn the_readme_cli_block_runs_as_pasted() {
    let dir = checkout();
    let cwd = dir.path();
    let server = LoggedServer::start_in(cwd, &[], &[]).await;
    let address = format!("http://{}", server.grpc);
    let env = [("MODELD_SERVER", address.as_str())];
    let commands = doc_block("README.md", "## The CLI");
    assert!(commands.len() > 20, "{commands:?}");
    let mut said = Vec::new();
    for line in &commands {
        let run = paste(cwd, &env, line).await;
        assert_eq!(run.code, 0, "{line}\n{run:?}");
        said.push((line.clone(), run.stdout));
    }
    let output = |prefix: &str, nth: usize| -> &str {
        said.iter()
            .filter(|(l, _)| l.starts_with(prefix))
            .nth(nth)
            .map(|(_, out)| out.as_str())
            .unwrap_or_else(|| panic!("no {prefix:?} #{nth}"))
    };
    let role = |listing: &str, name: &str| -> String {
        let line = listing.lines().find(|l| l.contains(name)).unwrap_or_default();
        ["active", "canary 10%", "shadow 20%"]
            .into_iter()
            .find(|r| line.contains(r))
            .unwrap_or("")
            .to_string()
    };
    let first = output("modeld list", 0);
    assert_eq!(role(first, "YAMNet Human Detection v1"), "active", "{first}");
    assert_eq!(role(first, "digits_v3"), "", "{first}");
    // Rollbacks walk back: to YAMNet, then further to digits_v2.
    assert!(
        output("modeld rollback", 0).contains("active: \"YAMNet Human Detection v1\""),
        "{said:?}"
    );
    assert!(
        output("modeld rollback", 1).contains("active: \"digits_v2\""),
        "{said:?}"
    );
    assert!(
        output("modeld rollback --from", 0).contains("active: \"digits_v2\""),
        "{said:?}"
    );
    let second = output("modeld list", 1);
    assert_eq!(role(second, "digits_v1"), "shadow 20%", "{second}");
    assert_eq!(role(second, "YAMNet Human Detection v1"), "canary 10%", "{second}");
    assert!(cwd.join("digits_v2.onnx").exists(), "modeld download wrote the file");
    let predicted: Value = serde_json::from_str(output("modeld predict --input", 0)).unwrap();
    assert_eq!(predicted["outputs"][1]["data"], json!([2]), "{predicted}");
    drop(server);
}

/// A `predict` token runs `modeld predict` (which reads the model's signature first); a
/// command without a token is told how to pass one; the admin page's sign-in hint runs.
#[tokio::test]
async fn a_predict_token_is_enough_to_predict_and_a_missing_token_says_how_to_pass_one() {
    let dir = checkout();
    let cwd = dir.path();
    let made = paste(cwd, &[], "modeld token create --name app --scope predict").await;
    assert_eq!(made.code, 0, "{made:?}");
    let token = made.stdout.trim().to_string();
    let server = LoggedServer::start_in(cwd, &["--tokens-file", "modeld-tokens.jsonl"], &[]).await;
    let address = format!("http://{}", server.grpc);
    let with_token = [("MODELD_SERVER", address.as_str()), ("MODELD_TOKEN", token.as_str())];
    let run = paste(cwd, &with_token, "modeld predict --input models/examples/digit_2.json").await;
    assert_eq!(run.code, 0, "{run:?}");
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["outputs"][1]["data"], json!([2]), "{v}");
    // A predict token may not read the registry's status: refused, naming the scope.
    let run = paste(cwd, &with_token, "modeld status").await;
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("needs the read scope"), "{run:?}");
    // No token at all: how a CLI user passes one, not an HTTP header.
    let run = paste(cwd, &[("MODELD_SERVER", address.as_str())], "modeld status").await;
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("--token") && run.stderr.contains("MODELD_TOKEN") && !run.stderr.contains("header"),
        "{run:?}"
    );
    assert!(!run.stderr.contains("status: "), "no raw tonic formatting: {run:?}");
    // The admin page's sign-in hint is a command that runs.
    let page = reqwest::get(server.http_url("/admin"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let hint = page
        .split("<code>")
        .find_map(|p| {
            p.split_once("</code>")
                .map(|(c, _)| c)
                .filter(|c| c.starts_with("modeld token create"))
        })
        .unwrap_or_else(|| panic!("a token create hint on the sign-in page:\n{page}"));
    let run = paste(cwd, &[], &hint.replace("NAME", "ops")).await;
    assert_eq!(run.code, 0, "{hint}: {run:?}");
}

/// The errors a newcomer meets say what to do: no server, a typo, a wrong dataset path, a
/// server started where there is no `models/`, a file that is not ONNX.
#[tokio::test]
async fn errors_say_what_to_do() {
    let dir = checkout();
    let cwd = dir.path();
    // No server at the address: said once, with what to check.
    let run = paste(cwd, &[], "modeld status --server http://127.0.0.1:9").await;
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stderr.contains("is `modeld serve` running there?"), "{run:?}");
    assert_eq!(run.stderr.matches("connect").count(), 1, "said once: {run:?}");

    let run = paste(
        cwd,
        &[],
        "modeld register --name digits_v2 --path models/digits_v2.onnx",
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    // A typo: the close names, and where to see them all.
    let run = paste(cwd, &[], "modeld show digts_v2").await;
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("did you mean \"digits_v2\"?") && run.stderr.contains("modeld list"),
        "{run:?}"
    );
    // A wrong dataset path is named as typed, directory and all.
    let run = paste(cwd, &[], "modeld evaluate digits_v2 --dataset models/eval/digit_x.npy").await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("models/eval/digit_x.npy"), "{run:?}");
    // A Keras file: modeld serves ONNX, and how to convert.
    std::fs::write(cwd.join("models/model.keras"), b"PK\x03\x04\x14\x00\x00\x00config.json").unwrap();
    let run = paste(cwd, &[], "modeld register --name keras --path models/model.keras").await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr.contains("modeld serves ONNX") && run.stderr.contains("tf2onnx"),
        "{run:?}"
    );
    // A server started where there is no models/: refused before it listens, naming the flag.
    let empty = tempfile::tempdir().unwrap();
    let run = paste(
        empty.path(),
        &[],
        "timeout 60 modeld serve --listen 127.0.0.1:0 --http-listen 127.0.0.1:0",
    )
    .await;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr.contains("--model-root") && !run.stderr.contains("listening"),
        "{run:?}"
    );
    // The help says what serve runs.
    let run = paste(cwd, &[], "modeld serve --help").await;
    assert!(
        run.stdout.contains("HTTP (REST, OIP REST, metrics, the admin page)") && run.stdout.contains("(`/api/v1`)"),
        "{}",
        run.stdout
    );
}

/// `modeld list` shows the rollout; activating the active model changes nothing and says so;
/// an activation's `previous` is the model as it now is; a cleared shadow leaves the status.
#[tokio::test]
async fn answers_say_what_is_so() {
    let dir = checkout();
    let cwd = dir.path();
    let server = LoggedServer::start_in(cwd, &[], &[]).await;
    let address = format!("http://{}", server.grpc);
    let env = [("MODELD_SERVER", address.as_str())];
    let run = paste(cwd, &env, "modeld activate digits_v2").await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout.lines().next().unwrap(),
        "\"digits_v2\" (id 2, version \"2\") is already the active model: nothing changed"
    );
    assert!(run.stdout.contains("served by 1 of 1 server in "), "{run:?}");
    let run = paste(cwd, &env, "modeld activate digits_v2 --json").await;
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (&v["already_active"], &v["previous"]),
        (&json!(true), &Value::Null),
        "{v}"
    );
    // Over REST: `previous` as the activation left it.
    let http = reqwest::Client::new();
    let a: Value = http
        .post(server.http_url("/api/v1/models/1/activate"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["previous"]["model_name"], "digits_v2", "{a}");
    assert_eq!(
        (&a["previous"]["is_active"], &a["previous"]["status"]),
        (&json!(false), &json!("deprecated")),
        "{a}"
    );
    assert_eq!(a["already_active"], false, "{a}");

    // A shadow's figures are shown while it shadows, and not after it is cleared.
    let run = paste(cwd, &env, "modeld shadow set digits_v2 --percentage 100").await;
    assert_eq!(run.code, 0, "{run:?}");
    let mut reg = modeld::api::pb::model_registry_client::ModelRegistryClient::new(server.channel().await);
    let mut infer = modeld::api::pb::inference_client::InferenceClient::new(server.channel().await);
    let every = std::time::Duration::from_millis(20);
    eventually("the shadow mirrors", std::time::Duration::from_secs(30), every, || {
        let (mut reg, mut infer) = (reg.clone(), infer.clone());
        async move {
            infer.predict(digits_request("", &eval_rows(2))).await.unwrap();
            let s = reg
                .get_server_status(modeld::api::pb::GetServerStatusRequest {})
                .await
                .unwrap()
                .into_inner();
            let mirrored = s
                .rollout
                .as_ref()
                .is_some_and(|r| r.shadows.iter().any(|f| f.mirrored > 0));
            if mirrored { Ok(()) } else { Err(format!("{s:?}")) }
        }
    })
    .await;
    let run = paste(cwd, &env, "modeld list").await;
    let line = run.stdout.lines().find(|l| l.contains("digits_v2")).unwrap();
    assert!(line.contains("shadow 100%"), "{}", run.stdout);
    let run = paste(cwd, &env, "modeld shadow clear").await;
    assert_eq!(run.code, 0, "{run:?}");
    let every = std::time::Duration::from_millis(50);
    eventually(
        "the cleared shadow goes",
        std::time::Duration::from_secs(30),
        every,
        || async {
            let run = paste(cwd, &env, "modeld status").await;
            assert_eq!(run.code, 0, "{run:?}");
            if run.stdout.contains("shadow") {
                Err(run.stdout)
            } else {
                Ok(())
            }
        },
    )
    .await;
    // And it does not come back with the next change.
    let run = paste(cwd, &env, "modeld canary set digits_v2 --percentage 10").await;
    assert_eq!(run.code, 0, "{run:?}");
    for _ in 0..5 {
        infer.predict(digits_request("", &eval_rows(1))).await.unwrap();
    }
    let s = reg
        .get_server_status(modeld::api::pb::GetServerStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(s.rollout.is_none_or(|r| r.shadows.is_empty()), "no shadow figures");
}

/// Guide 003's registration over REST with its own paths (relative to the backend directory
/// that holds `models/`), and guide 000's routes and fields, pointed at modeld's.
#[tokio::test]
async fn the_guides_requests_as_written() {
    let dir = checkout();
    let cwd = dir.path();
    std::fs::copy(
        cwd.join("models/digits_v2.onnx"),
        cwd.join("models/yamnet_human_v2.onnx"),
    )
    .unwrap();
    let server = LoggedServer::start_in(cwd, &[], &[]).await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| http.post(server.http_url(path)).json(&body).send();
    let r = post(
        "/api/v1/models",
        json!({
            "model_name": "YAMNet Human v2",
            "version": "v2.0",
            "file_path": "models/yamnet_human_v2.onnx",
            "description": "Improved version",
            "model_type": "yamnet",
            "accuracy": 0.92
        }),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let m: Value = r.json().await.unwrap();
    assert_eq!(
        m["file_path"], "yamnet_human_v2.onnx",
        "stored relative to the root: {m}"
    );
    // A path that names no file: 404, with what would work, and no server path.
    let r = post(
        "/api/v1/models",
        json!({"model_name": "x", "file_path": "models/yamnet_v3.onnx"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("the root holds \"cnn.onnx\""), "{message}");
    assert!(!message.contains(&*cwd.to_string_lossy()), "{message}");

    // Guide 000's Edge Function route and its storage signing call: pointed at modeld's.
    let r = post("/functions/v1/assessment-model-config", json!({})).await.unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().contains("/api/v1/model-config"),
        "{e}"
    );
    let r = post(
        "/storage/v1/object/sign/assessment-models/models/plant_classifier_v1.0.0.ort",
        json!({"expiresIn": 3600}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("/api/v1/models/{id}/download-url")
            && message.contains("expires_in_secs")
            && message.contains("\"url\""),
        "{message}"
    );
    let r = post("/api/v1/models/1/download-url", json!({"expiresIn": 3600}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().contains("expires_in_secs"),
        "{e}"
    );
    // The bare port says what it serves, in the REST error shape.
    let e: Value = reqwest::get(server.http_url("/")).await.unwrap().json().await.unwrap();
    assert_eq!(e["error"]["code"], "NOT_FOUND", "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("/api/v1"), "{e}");

    // The guide's ETag recipe, pasted: the grep finds the ETag line alone, the value keeps the
    // line's \r, and the server answers why (and logs it); with the \r stripped, 304.
    let url = server.http_url("/api/v1/model-config");
    let recipe = format!(
        "ETAG=$(curl -sI -X POST {url} | grep -i etag | cut -d' ' -f2)\n\
         curl -s -X POST {url} -H \"If-None-Match: $ETAG\" -w '\\nHTTP Status: %{{http_code}}\\n'"
    );
    let run = paste(cwd, &[], &recipe).await;
    assert!(run.stdout.contains("HTTP Status: 400"), "{run:?}");
    assert!(run.stdout.contains("tr -d"), "the answer says why: {run:?}");
    // docs/http.md's version, pasted: 304.
    let script = doc_block("docs/http.md", "## Coming from the guides")
        .join("\n")
        .replace("localhost:8000", &server.http);
    let run = paste(cwd, &[], &script).await;
    assert_eq!(run.stdout.trim(), "HTTP Status: 304", "{run:?}");
    let log = server.stop().await;
    assert!(
        log.iter()
            .any(|l| l.contains("malformed_request") && l.contains("carriage return")),
        "the server logs it"
    );
}

/// docs/rollout.md, every block pasted in order against a server started as it says, with no
/// pause added: each step gives the documented outcome, §8's automatic rollback included
/// (the canary set returns once the server serves it, and the guard acts on the failure that
/// crosses the threshold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_rollout_runs_as_pasted_on_sqlite() {
    rollout_walkthrough(None).await;
}

/// The same on a PostgreSQL registry (server and CLI given `MODELD_DATABASE_URL`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docs_rollout_runs_as_pasted_on_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    rollout_walkthrough(Some(&db.url)).await;
}

async fn rollout_walkthrough(database: Option<&str>) {
    let dir = checkout();
    let cwd = dir.path();
    let on_db: Vec<(&str, &str)> = database.map(|url| ("MODELD_DATABASE_URL", url)).into_iter().collect();
    let server = LoggedServer::start_in(cwd, &[], &on_db).await;
    let address = format!("http://{}", server.grpc);
    // grpcurl from the client tools, and modeld first on the PATH.
    let bin = Path::new(MODELD_BIN).parent().unwrap().display().to_string();
    let mut env: Vec<(String, String)> = client_env()
        .iter()
        .map(|(k, v)| match k.as_str() {
            "PATH" => (k.clone(), format!("{bin}:{v}")),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    env.push(("MODELD_SERVER".into(), address.clone()));
    if let Some(url) = database {
        env.push(("MODELD_DATABASE_URL".into(), url.to_string()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut said: Vec<(String, CliRun)> = Vec::new();
    for block in doc_blocks("docs/rollout.md") {
        for line in block {
            // The server is the one started above.
            if line.starts_with("cargo run") || line.starts_with("alias ") {
                continue;
            }
            let line = line
                .replace("127.0.0.1:50051", &server.grpc)
                .replace("localhost:8000", &server.http);
            let run = paste(cwd, &env, &line).await;
            // The two refusals the document shows (exit 4), everything else succeeds.
            let refused = line.contains("--require-better") || line == "modeld activate cnn";
            if refused {
                assert_eq!(run.code, 4, "{line}: {run:?}");
            } else {
                assert_eq!(run.code, 0, "{line}: {run:?}");
            }
            said.push((line, run));
        }
    }
    let out = |prefix: &str, nth: usize| -> &CliRun {
        said.iter()
            .filter(|(l, _)| l.starts_with(prefix))
            .nth(nth)
            .map(|(_, r)| r)
            .unwrap_or_else(|| panic!("no {prefix:?} #{nth}"))
    };
    assert!(
        out("modeld evaluate digits_v2", 0).stdout.contains("accuracy 0.9722"),
        "§1"
    );
    assert!(out("grpcurl", 0).stdout.contains("\"accuracy\""), "§1 over gRPC");
    assert!(out("modeld compare", 0).stdout.contains("digits_v2"), "§2");
    assert!(
        out("modeld predict --model digits_v1", 0)
            .stdout
            .contains("\"role\": \"candidate\""),
        "§3"
    );
    assert!(
        out("modeld activate digits_v1 --require-better", 0)
            .stderr
            .contains("is worse than the active model"),
        "§4"
    );
    assert!(out("modeld activate cnn", 0).stderr.contains("would break"), "§5");
    assert!(
        out("modeld rollback --from digits_v1", 0)
            .stdout
            .contains("active: \"digits_v2\""),
        "§5"
    );
    // §6: the shadow is in the status the moment `shadow set` returned.
    let status = &out("modeld status", 0).stdout;
    assert!(
        status.contains("shadow    \"digits_v1\" (id 1, version \"1\") at 20%"),
        "§6:\n{status}"
    );
    assert!(out("modeld promote", 0).stdout.contains("active: \"digits_v1\""), "§7");
    // §8: the failing canary went to 0 % during the loop, as the document shows.
    let status = &out("modeld status", 1).stdout;
    assert!(
        status.contains("canary    \"digits_faulty\" (id 4, version \"1-faulty\") at 0%"),
        "§8:\n{status}"
    );
    let show = &out("modeld canary show", 0).stdout;
    assert!(
        show.contains("guard (automatic)") && show.contains("50% -> 0%: automatic rollback"),
        "§8:\n{show}"
    );
    drop(server);
}

/// README "Call it": the grpcurl block pasted in order (the address made this server's); a
/// switch answers once the server serves it, so the next call sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_call_it_runs_as_pasted() {
    let dir = checkout();
    let cwd = dir.path();
    let server = LoggedServer::start_in(cwd, &[], &[]).await;
    let env: Vec<(&str, &str)> = client_env().iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut said = Vec::new();
    for line in doc_block("README.md", "## Call it") {
        let run = paste(cwd, &env, &line.replace("127.0.0.1:50051", &server.grpc)).await;
        assert_eq!(run.code, 0, "{line}: {run:?}");
        said.push((line, run.stdout));
    }
    let answer = |method: &str| -> Value {
        let (_, out) = said.iter().find(|(l, _)| l.contains(method)).unwrap();
        serde_json::from_str(out).unwrap_or_else(|e| panic!("{method}: {e}: {out}"))
    };
    assert_eq!(answer("GetActiveModel")["model"]["modelName"], "digits_v2");
    assert_eq!(answer("Inference/Predict")["outputs"][1]["int64Data"], json!(["2"]));
    let switched = answer("ActivateModel");
    assert_eq!(switched["active"]["modelName"], "digits_v1", "{switched}");
    assert_eq!(switched["served"]["applied"], 1, "served by this server: {switched}");
    assert_eq!(switched["served"]["complete"], true, "{switched}");
    let back = answer("RollbackModel");
    assert_eq!(back["active"]["modelName"], "digits_v2", "{back}");
    assert_eq!(answer("Health/Check")["status"], "SERVING");
}
