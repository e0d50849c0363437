//! Registry invariants on both backends: exactly one active model under concurrent activations
//! from several tasks and several processes, enforced by the database itself.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use modeld::config::RegistryArgs;
use modeld::ops::Registration;
use modeld::registry::{ActivationMeta, Conditions, ModelRef};

/// A fresh registry on `backend` with a model root of the bundled models, and the services
/// (no server) on them; the database and root live as long as the returned values.
async fn registry_services(backend: Backend) -> (TestDb, tempfile::TempDir, RegistryArgs, modeld::ops::Services) {
    let db = TestDb::new(backend).await;
    let root = model_root();
    let args = RegistryArgs {
        database_url: db.url.clone(),
        model_root: root.path().to_path_buf(),
        object_cache: None,
        object_cache_bytes: 4 << 30,
        object_hosts: Vec::new(),
    };
    let services = modeld::app::services(&args, Default::default()).await.unwrap();
    (db, root, args, services)
}

async fn active_count(url: &str) -> i64 {
    let sql = "SELECT COUNT(*) FROM ml_models WHERE is_active = $1";
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let n = sqlx::query_scalar(sql).bind(true).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let n = sqlx::query_scalar(sql).bind(true).fetch_one(&pool).await.unwrap();
        pool.close().await;
        n
    }
}

/// Runs `sql` directly, the way someone at a SQL console would.
async fn raw_sql(url: &str, sql: &'static str) -> Result<u64, sqlx::Error> {
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let r = sqlx::query(sql).execute(&pool).await.map(|r| r.rows_affected());
        pool.close().await;
        r
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let r = sqlx::query(sql).execute(&pool).await.map(|r| r.rows_affected());
        pool.close().await;
        r
    }
}

async fn one_active_under_concurrency(backend: Backend) {
    let (db, root, args, services) = registry_services(backend).await;
    let names = ["m0", "m1", "m2", "m3"];
    for (i, name) in names.iter().enumerate() {
        let file = if i % 2 == 0 { "digits_v1.onnx" } else { "digits_v2.onnx" };
        services
            .activation
            .register(Registration {
                name: (*name).into(),
                file_path: file.into(),
                activate: i == 0,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    // A checker that never sees 0 or 2 active rows, while writers race.
    let done = Arc::new(AtomicBool::new(false));
    let checker = {
        let (url, done) = (db.url.clone(), Arc::clone(&done));
        tokio::spawn(async move {
            let mut checks = 0;
            while !done.load(Ordering::Relaxed) {
                let n = active_count(&url).await;
                assert_eq!(n, 1, "exactly one active model at every moment");
                checks += 1;
            }
            checks
        })
    };

    // Several tasks, each with its own pool (so the database, not a process lock, decides).
    let mut tasks = Vec::new();
    for t in 0..4 {
        let args = args.clone();
        tasks.push(tokio::spawn(async move {
            let services = modeld::app::services(&args, Default::default()).await.unwrap();
            for i in 0..12 {
                let name = format!("m{}", (t + i) % 4);
                let meta = ActivationMeta {
                    activated_by: format!("task{t}"),
                    reason: "race".into(),
                    is_rollback: false,
                };
                services
                    .activation
                    .activate(&ModelRef::Name(name), &meta, &Default::default())
                    .await
                    .unwrap();
            }
        }));
    }
    // And two other processes running the CLI at the same time.
    let mut procs = Vec::new();
    for p in 0..2 {
        let (url, root) = (db.url.clone(), root.path().to_path_buf());
        procs.push(tokio::spawn(async move {
            for i in 0..6 {
                let (ok, _, err) = modeld_cli(
                    &url,
                    &root,
                    &["activate", &format!("m{}", (p + i) % 4), "--reason", "cli race"],
                )
                .await;
                assert!(ok, "modeld activate failed: {err}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for p in procs {
        p.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    let checks = checker.await.unwrap();
    assert!(checks > 0);
    assert_eq!(active_count(&db.url).await, 1);

    // History: one row per real change, each naming the previous model.
    let history = services.catalogue.activations(1000).await.unwrap();
    assert!(history.len() >= 30, "{} activations recorded", history.len());
    for pair in history.windows(2) {
        // Newest first: each activation's "previous" is the model the one before it activated.
        assert_eq!(
            pair[0].previous_model_id, pair[1].model_id,
            "history is a chain: {pair:?}"
        );
    }

    // The database itself refuses a second active row, whoever writes it.
    let insert = "INSERT INTO ml_models (model_name, file_path, checksum_sha256, file_size_bytes, signature, is_active) \
                  VALUES ('sneaky', 'digits_v1.onnx', '0000000000000000000000000000000000000000000000000000000000000000', 1, '{}', TRUE)";
    let err = raw_sql(&db.url, insert).await.unwrap_err();
    assert!(
        matches!(err, sqlx::Error::Database(ref e) if e.is_unique_violation()),
        "{err:?}"
    );
    let err = raw_sql(&db.url, "UPDATE ml_models SET is_active = TRUE")
        .await
        .unwrap_err();
    assert!(
        matches!(err, sqlx::Error::Database(ref e) if e.is_unique_violation()),
        "{err:?}"
    );
    assert_eq!(active_count(&db.url).await, 1);
    // And accuracy outside 0..1.
    let err = raw_sql(&db.url, "UPDATE ml_models SET accuracy = 1.5")
        .await
        .unwrap_err();
    assert!(
        matches!(err, sqlx::Error::Database(ref e) if e.is_check_violation()),
        "{err:?}"
    );
}

on_both!(one_active_under_concurrency, multi_thread);

#[tokio::test]
async fn sqlite_file_is_created_in_wal_mode_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("new.db");
    let url = format!("sqlite://{}", file.display());
    let reg = modeld::registry::Registry::connect(&url).await.unwrap();
    assert!(file.exists(), "the SQLite file is created on first start");
    reg.migrate().await.unwrap();
    reg.close().await;
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let generation: i64 = sqlx::query_scalar("SELECT generation FROM registry_state")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(generation, 0);
}

async fn generation_bumps_on_every_change(backend: Backend) {
    let (_db, _root, _args, services) = registry_services(backend).await;
    let g0 = services.catalogue.generation().await.unwrap();
    services
        .activation
        .register(Registration {
            name: "a".into(),
            file_path: "digits_v1.onnx".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let g1 = services.catalogue.generation().await.unwrap();
    let meta = ActivationMeta {
        activated_by: "t".into(),
        reason: String::new(),
        is_rollback: false,
    };
    services
        .activation
        .activate(&ModelRef::Name("a".into()), &meta, &Default::default())
        .await
        .unwrap();
    let g2 = services.catalogue.generation().await.unwrap();
    assert!(g0 < g1 && g1 < g2, "{g0} {g1} {g2}");
    // A failed change does not bump it.
    assert!(services.activation.delete(&ModelRef::Name("a".into())).await.is_err());
    assert_eq!(services.catalogue.generation().await.unwrap(), g2);
}

on_both!(generation_bumps_on_every_change);

/// The signature guard is a condition of the activation's commit, checked against the model
/// active at the commit: an activation whose check passed against one active model, while
/// another writer activated a model whose clients it would break, is refused by the registry
/// itself. Models of one signature still activate over each other under the guard.
async fn the_signature_guard_holds_at_the_commit(backend: Backend) {
    let (db, _root, _args, services) = registry_services(backend).await;
    for (name, file) in [("v1", "digits_v1.onnx"), ("v2", "digits_v2.onnx"), ("cnn", "cnn.onnx")] {
        services
            .activation
            .register(Registration {
                name: name.into(),
                file_path: file.into(),
                activate: name == "v1",
                ..Default::default()
            })
            .await
            .unwrap();
    }
    // The registry's own commit, below the services' gates.
    let registry = modeld::registry::Registry::connect(&db.url).await.unwrap();
    let record = async |name: &str| registry.get(&ModelRef::Name(name.into())).await;
    let meta = ActivationMeta {
        activated_by: "t".into(),
        reason: "race".into(),
        is_rollback: false,
    };
    let guarded = Conditions {
        compatible: true,
        ..Default::default()
    };
    let history = registry.activations(100).await.unwrap().len();

    // The commit of "cnn" under the guard, as if its check had passed against another model.
    let cnn = record("cnn").await.unwrap();
    let refused = registry
        .activate(cnn.model_id, &cnn.checksum_sha256, &meta, guarded)
        .await
        .unwrap_err();
    let text = refused.to_string();
    assert!(
        matches!(refused, modeld::error::Error::FailedPrecondition(_)),
        "{refused:?}"
    );
    for part in [
        "would break the clients of the active model \"v1\"",
        "--allow-signature-change",
    ] {
        assert!(text.contains(part), "{part:?} in {text}");
    }
    assert_eq!(registry.active().await.unwrap().unwrap().model_name, "v1");
    assert_eq!(active_count(&db.url).await, 1);
    assert_eq!(
        registry.activations(100).await.unwrap().len(),
        history,
        "no history row"
    );

    // Same signature: the guard lets it through.
    let v2 = record("v2").await.unwrap();
    let done = registry
        .activate(v2.model_id, &v2.checksum_sha256, &meta, guarded)
        .await
        .unwrap();
    assert_eq!(done.active.model_name, "v2");
    // Without the guard, the signature change commits.
    let done = registry
        .activate(cnn.model_id, &cnn.checksum_sha256, &meta, Conditions::default())
        .await
        .unwrap();
    assert_eq!(
        (
            done.active.model_name.as_str(),
            done.previous.unwrap().model_name.as_str()
        ),
        ("cnn", "v2")
    );
    assert_eq!(active_count(&db.url).await, 1);
}

on_both!(the_signature_guard_holds_at_the_commit);

/// The lifecycle is the database's: `status` follows `is_active` whoever flips it (modeld or a
/// SQL console), the model an activation replaces becomes `deprecated` with a time, an evaluated
/// model is `testing`, and at most one model is the canary and one the shadow, never the active
/// one.
async fn the_lifecycle_is_kept_by_the_database(backend: Backend) {
    let (db, _root, _args, services) = registry_services(backend).await;
    for (name, file) in [
        ("a", "digits_v1.onnx"),
        ("b", "digits_v2.onnx"),
        ("c", "digits_v1.onnx"),
    ] {
        services
            .activation
            .register(Registration {
                name: name.into(),
                file_path: file.into(),
                activate: name == "a",
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let registry = &services.catalogue;
    let status = async |name: &str| {
        let r = registry.get(&ModelRef::Name(name.into())).await.unwrap();
        (r.status, r.is_active, r.deprecated_at.is_some())
    };
    assert_eq!(status("a").await, ("active".into(), true, false));
    assert_eq!(status("b").await, ("registered".into(), false, false));

    let meta = ActivationMeta {
        activated_by: "t".into(),
        reason: String::new(),
        is_rollback: false,
    };
    services
        .activation
        .activate(&ModelRef::Name("b".into()), &meta, &Default::default())
        .await
        .unwrap();
    assert_eq!(status("b").await, ("active".into(), true, false));
    assert_eq!(
        status("a").await,
        ("deprecated".into(), false, true),
        "replaced: deprecated, with a time"
    );

    // A SQL console flips is_active: the status follows.
    raw_sql(&db.url, "UPDATE ml_models SET is_active = FALSE WHERE model_name = 'b'")
        .await
        .unwrap();
    raw_sql(&db.url, "UPDATE ml_models SET is_active = TRUE WHERE model_name = 'a'")
        .await
        .unwrap();
    assert_eq!(status("a").await, ("active".into(), true, false));
    assert_eq!(status("b").await, ("deprecated".into(), false, true));
    // A status that contradicts is_active is refused.
    for bad in [
        "UPDATE ml_models SET status = 'canary' WHERE model_name = 'a'",
        "UPDATE ml_models SET status = 'active' WHERE model_name = 'c'",
    ] {
        assert!(raw_sql(&db.url, bad).await.is_err(), "{bad}");
    }
    // One canary, one shadow.
    raw_sql(&db.url, "UPDATE ml_models SET status = 'canary' WHERE model_name = 'b'")
        .await
        .unwrap();
    assert!(
        raw_sql(&db.url, "UPDATE ml_models SET status = 'canary' WHERE model_name = 'c'")
            .await
            .is_err()
    );
    raw_sql(&db.url, "UPDATE ml_models SET status = 'shadow' WHERE model_name = 'c'")
        .await
        .unwrap();
    assert!(
        raw_sql(&db.url, "UPDATE ml_models SET status = 'shadow' WHERE model_name = 'b'")
            .await
            .is_err()
    );
    assert!(
        raw_sql(
            &db.url,
            "UPDATE ml_models SET rollout_percentage = 101 WHERE model_name = 'b'"
        )
        .await
        .is_err()
    );

    // Evaluated: testing.
    raw_sql(
        &db.url,
        "UPDATE ml_models SET status = 'registered' WHERE model_name = 'c'",
    )
    .await
    .unwrap();
    let dataset = std::sync::Arc::new(
        modeld::evaluation::Dataset::load(&bundled_models().join("eval/digits_x.npy"), None, "label").unwrap(),
    );
    services
        .evaluation
        .evaluate(&ModelRef::Name("c".into()), dataset, &Default::default(), |_, _| {})
        .await
        .unwrap();
    assert_eq!(status("c").await, ("testing".into(), false, false));
}

on_both!(the_lifecycle_is_kept_by_the_database);

/// A registry made by an earlier modeld (migrations 0001 and 0002 only, names of up to 128
/// characters, an activation history) is upgraded in place: every row, id and history link
/// kept, the one-active index and the change triggers still there, and 255-character names
/// accepted afterwards.
async fn an_old_registry_is_upgraded_in_place(backend: Backend) {
    let db = TestDb::new(backend).await;
    let dialect = match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    };
    let old = tempfile::tempdir().unwrap();
    for f in ["0001_registry.sql", "0002_events_and_triggers.sql"] {
        std::fs::copy(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dialect)
                .join(f),
            old.path().join(f),
        )
        .unwrap();
    }
    let migrator = sqlx::migrate::Migrator::new(old.path()).await.unwrap();
    let long_old = "n".repeat(128);
    let rows = format!(
        "INSERT INTO ml_models (model_name, file_path, checksum_sha256, file_size_bytes, signature, is_active) VALUES \
         ('{long_old}', 'digits_v1.onnx', '{c}', 1, '{{}}', {f}), ('digits_v2', 'digits_v2.onnx', '{c}', 1, '{{}}', {t}), \
         ('deleted later', 'digits_v1.onnx', '{c}', 1, '{{}}', {f})",
        c = "0".repeat(64),
        f = if backend == Backend::Sqlite { "0" } else { "FALSE" },
        t = if backend == Backend::Sqlite { "1" } else { "TRUE" },
    );
    let history = "INSERT INTO model_activations (model_id, model_name, previous_model_id, previous_name) \
                   VALUES (2, 'digits_v2', 1, 'old')";
    // The highest id is deleted before the upgrade: it must not be given again.
    let gone = "DELETE FROM ml_models WHERE model_id = 3";
    match backend {
        Backend::Sqlite => {
            let opts = <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&db.url)
                .unwrap()
                .create_if_missing(true);
            let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
            migrator.run(&pool).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(rows)).execute(&pool).await.unwrap();
            sqlx::query(history).execute(&pool).await.unwrap();
            sqlx::query(gone).execute(&pool).await.unwrap();
            pool.close().await;
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            migrator.run(&pool).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(rows)).execute(&pool).await.unwrap();
            sqlx::query(history).execute(&pool).await.unwrap();
            sqlx::query(gone).execute(&pool).await.unwrap();
            pool.close().await;
        }
    }

    // Opening it as modeld does applies the new migration.
    let registry = modeld::registry::Registry::connect(&db.url).await.unwrap();
    let one = registry.get(&ModelRef::Id(1)).await.unwrap();
    assert_eq!(one.model_name, long_old);
    assert!(registry.get(&ModelRef::Id(2)).await.unwrap().is_active);
    let last = registry.last_activation().await.unwrap().unwrap();
    assert_eq!(
        (last.model_id, last.previous_model_id),
        (Some(2), Some(1)),
        "history links kept"
    );
    let before = registry.generation().await.unwrap();
    assert!(
        raw_sql(&db.url, "UPDATE ml_models SET is_active = TRUE WHERE model_id = 1")
            .await
            .is_err(),
        "still one active model"
    );
    raw_sql(&db.url, "UPDATE ml_models SET description = 'x' WHERE model_id = 1")
        .await
        .unwrap();
    assert!(
        registry.generation().await.unwrap() > before,
        "the change triggers are back"
    );
    assert!(
        raw_sql(
            &db.url,
            Box::leak(
                format!(
                    "UPDATE ml_models SET model_name = '{}' WHERE model_id = 1",
                    "x".repeat(256)
                )
                .into_boxed_str()
            )
        )
        .await
        .is_err(),
        "the database refuses 256 characters"
    );
    registry.close().await;

    // 255 characters, here of two bytes each, register.
    let root = model_root();
    let services = modeld::app::services(
        &RegistryArgs {
            database_url: db.url.clone(),
            model_root: root.path().to_path_buf(),
            object_cache: None,
            object_cache_bytes: 4 << 30,
            object_hosts: Vec::new(),
        },
        modeld::registry::Origin::default(),
    )
    .await
    .unwrap();
    let name = "é".repeat(255);
    let done = services
        .activation
        .register(Registration {
            name: name.clone(),
            file_path: "digits_v1.onnx".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(done.model.model_name, name);
    assert_eq!(done.model.model_id, 4, "a deleted model's id is not given again");
    let upgraded = services.catalogue.get(&ModelRef::Id(2)).await.unwrap();
    assert_eq!(
        upgraded.deployment_id,
        modeld::registry::DEFAULT_DEPLOYMENT_ID,
        "an upgraded registry's models are in the default deployment"
    );
}

#[tokio::test]
async fn an_old_sqlite_registry_is_upgraded_in_place() {
    an_old_registry_is_upgraded_in_place(Backend::Sqlite).await;
}

#[tokio::test]
async fn an_old_postgres_registry_is_upgraded_in_place() {
    an_old_registry_is_upgraded_in_place(Backend::Postgres).await;
}

/// Deployments (issue 29, its first step: the registry): every model of a registry is in
/// `default`; other deployments can be made; the database holds one active model, one canary
/// and one shadow per deployment, and one namespace for deployment and model names, whoever
/// writes (modeld, or someone at a SQL console).
async fn deployments_hold_one_active_model_each(backend: Backend) {
    use modeld::error::Error;
    let (db, _root, _args, services) = registry_services(backend).await;
    for (name, activate) in [("a", true), ("b", false), ("c", false)] {
        services
            .activation
            .register(Registration {
                name: name.into(),
                file_path: "digits_v1.onnx".into(),
                activate,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let a = services.catalogue.get(&ModelRef::Name("a".into())).await.unwrap();
    assert_eq!(a.deployment_id, modeld::registry::DEFAULT_DEPLOYMENT_ID);
    let registry = modeld::registry::Registry::connect(&db.url).await.unwrap();
    let listed = registry.deployments().await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].deployment.name, modeld::registry::DEFAULT_DEPLOYMENT);
    assert_eq!(
        (listed[0].models, listed[0].active.clone()),
        (3, Some((a.model_id, "a".into())))
    );

    // Names: the model-name rules, and one namespace with models.
    let made = registry.create_deployment("yamnet", "sounds", "t").await.unwrap();
    assert_eq!(
        (made.name.as_str(), made.description.as_str(), made.created_by.as_str()),
        ("yamnet", "sounds", "t")
    );
    let e = registry.create_deployment("yamnet", "", "t").await.unwrap_err();
    assert!(matches!(e, Error::AlreadyExists(_)), "{e:?}");
    let e = registry.create_deployment("a", "", "t").await.unwrap_err();
    assert!(matches!(&e, Error::AlreadyExists(m) if m.contains("model")), "{e:?}");
    for bad in ["", " lead", "Active", "tab\there"] {
        let e = registry.create_deployment(bad, "", "t").await.unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("deployment name")),
            "{bad:?}: {e:?}"
        );
    }
    let e = services
        .activation
        .register(Registration {
            name: "yamnet".into(),
            file_path: "digits_v1.onnx".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::AlreadyExists(m) if m.contains("deployment")),
        "{e:?}"
    );

    // The database: one active model per deployment, not per registry.
    let t = match backend {
        Backend::Sqlite => "1",
        Backend::Postgres => "TRUE",
    };
    let sql = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let into_yamnet = |m: &str| {
        sql(format!(
            "UPDATE ml_models SET deployment_id = (SELECT deployment_id FROM deployments WHERE name = 'yamnet') \
             WHERE model_name = '{m}'"
        ))
    };
    raw_sql(&db.url, into_yamnet("b")).await.unwrap();
    raw_sql(&db.url, into_yamnet("c")).await.unwrap();
    raw_sql(
        &db.url,
        sql(format!("UPDATE ml_models SET is_active = {t} WHERE model_name = 'b'")),
    )
    .await
    .expect("one active model in each of two deployments");
    assert_eq!(active_count(&db.url).await, 2);
    assert!(
        raw_sql(
            &db.url,
            sql(format!("UPDATE ml_models SET is_active = {t} WHERE model_name = 'c'"))
        )
        .await
        .is_err(),
        "a second active model in one deployment"
    );
    assert!(
        raw_sql(
            &db.url,
            "UPDATE ml_models SET status = 'canary' WHERE model_name IN ('b', 'c')"
        )
        .await
        .is_err()
    );
    // A canary in each of two deployments is fine ('c' in yamnet, a new one in default).
    raw_sql(&db.url, "UPDATE ml_models SET status = 'canary' WHERE model_name = 'c'")
        .await
        .unwrap();
    services
        .activation
        .register(Registration {
            name: "d".into(),
            file_path: "digits_v1.onnx".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    raw_sql(&db.url, "UPDATE ml_models SET status = 'canary' WHERE model_name = 'd'")
        .await
        .expect("one canary in each of two deployments");
    // Until serving takes a deployment, what this registry's servers serve is `default`'s:
    // another deployment's roles (made here from the console) do not reach it.
    let active = services.catalogue.active().await.unwrap().unwrap();
    assert_eq!(active.model_name, "a");
    let rollout = services.catalogue.rollout().await.unwrap();
    assert_eq!(rollout.canary.map(|m| m.model_name).as_deref(), Some("d"));
    let meta = ActivationMeta {
        activated_by: "t".into(),
        reason: String::new(),
        is_rollback: false,
    };
    let done = services
        .activation
        .activate(&ModelRef::Name("d".into()), &meta, &Default::default())
        .await
        .unwrap();
    assert_eq!(done.previous.map(|p| p.model_name).as_deref(), Some("a"));
    let b = services.catalogue.get(&ModelRef::Name("b".into())).await.unwrap();
    assert!(b.is_active, "activating in default leaves yamnet's active model alone");
    assert_eq!(active_count(&db.url).await, 2);

    // One namespace, whoever writes.
    assert!(
        raw_sql(&db.url, "INSERT INTO deployments (name) VALUES ('a')")
            .await
            .is_err()
    );
    assert!(
        raw_sql(
            &db.url,
            "UPDATE ml_models SET model_name = 'yamnet' WHERE model_name = 'd'"
        )
        .await
        .is_err()
    );
    assert!(
        raw_sql(
            &db.url,
            "UPDATE ml_models SET deployment_id = 999 WHERE model_name = 'd'"
        )
        .await
        .is_err()
    );

    // Deleting: refused while it holds models (naming its active one), never `default`.
    let e = registry.delete_deployment("yamnet").await.unwrap_err();
    assert!(
        matches!(&e, Error::FailedPrecondition(m) if m.contains("\"b\" is its active model")),
        "{e:?}"
    );
    assert!(
        raw_sql(&db.url, "DELETE FROM deployments WHERE name = 'yamnet'")
            .await
            .is_err()
    );
    let e = registry.delete_deployment("default").await.unwrap_err();
    assert!(matches!(e, Error::FailedPrecondition(_)), "{e:?}");
    for nul in ["yam\0net", "\0"] {
        let e = registry.deployment(nul).await.unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("NUL")), "{e:?}");
        let e = registry.delete_deployment(nul).await.unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("NUL")), "{e:?}");
        let e = registry.create_deployment(nul, "", "t").await.unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
    }
    let e = registry.delete_deployment("nope").await.unwrap_err();
    assert!(
        matches!(&e, Error::NotFound(m) if m.contains("modeld deployment list")),
        "{e:?}"
    );
    registry.create_deployment("empty", "", "t").await.unwrap();
    let before = registry.generation().await.unwrap();
    assert_eq!(registry.delete_deployment("empty").await.unwrap().name, "empty");
    assert!(
        registry.generation().await.unwrap() > before,
        "servers follow deployments"
    );
    let listed = registry.deployments().await.unwrap();
    let shown: Vec<_> = listed
        .iter()
        .map(|d| {
            (
                d.deployment.name.as_str(),
                d.models,
                d.active.as_ref().map(|a| a.1.as_str()),
            )
        })
        .collect();
    assert_eq!(shown, [("default", 2, Some("d")), ("yamnet", 2, Some("b"))]);
    assert_eq!(registry.deployment("yamnet").await.unwrap().description, "sounds");
    registry.close().await;
}

on_both!(deployments_hold_one_active_model_each);
