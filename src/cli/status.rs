//! `modeld status`, `modeld fleet` and `modeld events`: what the servers and the registry say.

use super::args::EventsArgs;
use super::cli_origin;
use super::client::{connect, live_server};
use super::exit::{NoServer, ServerSaid};
use super::output::{column_width, describe_window, pad, window_json};
use crate::api::pb;
use crate::app;
use crate::name::quoted;
use serde_json::{Value, json};

/// `modeld fleet`: the servers on the registry, what each serves and how far behind it is.
pub(super) async fn fleet(a: super::args::FleetArgs) -> anyhow::Result<()> {
    let services = app::services(&a.registry, cli_origin()).await?;
    let registry = &services.catalogue;
    let generation = registry.generation().await?;
    let servers = registry.servers().await?;
    if a.json {
        let list: Vec<Value> = servers
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
                v["lag"] = json!(s.lag(generation));
                v
            })
            .collect();
        println!("{}", json!({"generation": generation, "servers": list}));
        return Ok(());
    }
    if servers.is_empty() {
        println!("no server has joined this registry (modeld serve on it joins)");
        return Ok(());
    }
    let live = servers.iter().filter(|s| !s.gone).count();
    println!(
        "registry generation {generation}; {live} live server{}",
        if live == 1 { "" } else { "s" }
    );
    let width = column_width(servers.iter().map(|s| s.server_name.as_str()), 6);
    println!(
        "{}  {:<8} {:<22} {:>10} {:>4}  {:<10} SERVES",
        pad("SERVER", width),
        "STATE",
        "GRPC",
        "GENERATION",
        "LAG",
        "HEARTBEAT"
    );
    for s in &servers {
        let state = if s.gone {
            "gone"
        } else if !s.problem.is_empty() || !s.degraded.is_empty() {
            "degraded"
        } else {
            "live"
        };
        let held = |h: &crate::registry::servers::Held| {
            format!(
                "{} (id {}, {})",
                quoted(&h.model_name),
                h.model_id,
                &h.sha256[..h.sha256.len().min(12)]
            )
        };
        let mut serves = s.serving.active.as_ref().map_or_else(|| "nothing".to_string(), held);
        if let Some(c) = &s.serving.canary {
            serves.push_str(&format!("; canary {} {}%", held(c), c.percentage.unwrap_or(0)));
        }
        if let Some(sh) = &s.serving.shadow {
            serves.push_str(&format!("; shadow {} {}%", held(sh), sh.percentage.unwrap_or(0)));
        }
        println!(
            "{}  {:<8} {:<22} {:>10} {:>4}  {:<10} {serves}",
            pad(&s.server_name, width),
            state,
            s.grpc_address,
            s.applied_generation,
            s.lag(generation),
            format!("{:.1} s ago", s.heartbeat_age_ms as f64 / 1000.0),
        );
        if !s.problem.is_empty() {
            println!(
                "{}  cannot apply generation {}: {}",
                pad("", width),
                s.problem_generation,
                s.problem
            );
        }
        if !s.degraded.is_empty() {
            println!("{}  degraded: {}", pad("", width), s.degraded);
        }
    }
    Ok(())
}

pub(super) async fn events(a: EventsArgs) -> anyhow::Result<()> {
    let services = app::services(&a.registry, cli_origin()).await?;
    let registry = &services.catalogue;
    let last = registry.last_event_id().await?;
    let mut after = (last - a.limit.max(0)).max(0);
    loop {
        let batch = registry.events_after(after, 1000).await?;
        for e in &batch {
            after = e.event_id;
            if a.json {
                println!(
                    "{}",
                    json!({"event_id": e.event_id, "kind": e.kind, "model_id": e.model_id, "model_name": e.model_name,
                           "source": e.source, "server": e.server, "detail": e.detail, "created_at": e.created_at})
                );
            } else {
                println!(
                    "{:>6}  {}  {:<13} {:<20} source={} server={}{}",
                    e.event_id,
                    e.created_at.format("%Y-%m-%d %H:%M:%S%.3f"),
                    e.kind,
                    e.model_name,
                    e.source,
                    e.server,
                    if e.detail.is_empty() {
                        String::new()
                    } else {
                        format!("  {}", e.detail)
                    }
                );
            }
        }
        if !a.follow {
            return Ok(());
        }
        if batch.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
}

/// `modeld status`: GetServerStatus, for people (or as JSON).
pub(super) async fn status(a: super::args::StatusArgs) -> anyhow::Result<()> {
    let named = a.client.server != super::args::DEFAULT_SERVER || std::env::var_os("MODELD_SERVER").is_some();
    let channel = match connect(&a.client).await {
        Ok(c) => c,
        // No server at the default address and none named: ask one the registry knows.
        Err(e) if !named && e.downcast_ref::<NoServer>().is_some() => match live_server(&a.database_url).await {
            Some((address, name)) => {
                eprintln!(
                    "no server at {}; asking {} at {address}, a live server of the registry (modeld fleet lists them)",
                    a.client.server,
                    quoted(&name)
                );
                let mut client = a.client.clone();
                client.server = address;
                connect(&client).await?
            }
            None => return Err(e),
        },
        Err(e) => return Err(e),
    };
    let s = pb::model_registry_client::ModelRegistryClient::new(channel)
        .get_server_status(pb::GetServerStatusRequest {})
        .await
        .map_err(ServerSaid)?
        .into_inner();
    let name = |m: &Option<pb::Model>| {
        m.as_ref().map_or_else(
            || "none".to_string(),
            |m| {
                format!(
                    "{} (id {}, version {})",
                    quoted(&m.model_name),
                    m.model_id,
                    quoted(&m.version)
                )
            },
        )
    };
    let rollout = s.rollout.clone().unwrap_or_default();
    let shadows: Vec<Value> = rollout
        .shadows
        .iter()
        .map(|f| {
            json!({"model_id": f.model_id, "model_name": f.model_name, "mirrored": f.mirrored, "dropped": f.dropped,
                   "errors": f.errors, "rows_compared": f.rows_compared, "rows_agreed": f.rows_agreed,
                   "agreement": f.agreement, "max_abs_diff": f.max_abs_diff, "mean_abs_diff": f.mean_abs_diff,
                   "latency_mean_us": f.latency_mean_us, "latency_max_us": f.latency_max_us, "calls": f.calls})
        })
        .collect();
    if a.json {
        let model = |m: &Option<pb::Model>| {
            m.as_ref()
                .map(|m| json!({"model_id": m.model_id, "model_name": m.model_name, "version": m.version}))
        };
        println!(
            "{}",
            json!({
                "server": s.server,
                "serving": model(&s.serving),
                "registry_active": model(&s.registry_active),
                "degraded": s.degraded,
                "degradations": s.degradations.iter().map(|d| d.message.clone()).collect::<Vec<_>>(),
                "canary": model(&rollout.canary),
                "canary_percentage": rollout.canary_percentage,
                "shadow": model(&rollout.shadow),
                "shadow_percentage": rollout.shadow_percentage,
                "shadows": shadows,
                "candidates": s.candidates.as_ref().map(|c| c.cached.iter().map(|m| m.model_name.clone()).collect::<Vec<_>>()),
                "resident_bytes": s.resident_bytes,
                "in_flight_requests": s.in_flight_requests,
                "rollback_windows": s.rollback_windows.iter().map(window_json).collect::<Vec<_>>(),
            })
        );
        return Ok(());
    }
    println!("server    {}", s.server);
    println!("serving   {}", name(&s.serving));
    if rollout.canary.is_some() {
        println!("canary    {} at {}%", name(&rollout.canary), rollout.canary_percentage);
    }
    if rollout.shadow.is_some() {
        println!("shadow    {} at {}%", name(&rollout.shadow), rollout.shadow_percentage);
    }
    for f in &rollout.shadows {
        println!(
            "  shadow {}: mirrored {}, dropped {}, errors {}, top-1 agreement {:.1}% of {} rows, output difference max {:.3e} mean {:.3e}, {} calls, latency mean {:.0} µs a call",
            quoted(&f.model_name),
            f.mirrored,
            f.dropped,
            f.errors,
            f.agreement * 100.0,
            f.rows_compared,
            f.max_abs_diff,
            f.mean_abs_diff,
            f.calls,
            f.latency_mean_us
        );
    }
    if let Some(c) = &s.candidates
        && !c.cached.is_empty()
    {
        let names: Vec<String> = c.cached.iter().map(|m| quoted(&m.model_name)).collect();
        println!("candidates {}", names.join(", "));
    }
    for w in &s.rollback_windows {
        println!("guard     {}", describe_window(w));
    }
    println!("memory    {:.1} MB resident", s.resident_bytes as f64 / 1e6);
    if s.degraded {
        for d in &s.degradations {
            println!("degraded  {}", d.message);
        }
    }
    Ok(())
}
