//! `modeld.v1.ModelRegistry`: register, list, get, update, activate, roll back, delete.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::convert;
use super::pb;
use crate::error::{Error, Result};
use crate::evaluation::Dataset;
use crate::ops::{EvaluateOptions, Registration, Services};
use crate::registry::{ActivationMeta, ModelChanges, Order, RolloutRole};
use crate::signing::DownloadConfig;

/// The ModelRegistry service.
#[derive(Debug, Clone)]
pub struct RegistryService {
    /// Every service: the registry API reads, changes, evaluates and reports the request path.
    services: Services,
    /// Signing keys and bounds of download URLs.
    downloads: DownloadConfig,
}

impl RegistryService {
    /// Works with `services`, signing download URLs with `downloads`.
    pub fn new(services: &Services, downloads: DownloadConfig) -> Self {
        Self {
            services: services.clone(),
            downloads,
        }
    }
}

fn options(output: String, notes: String, evaluated_by: String) -> EvaluateOptions {
    EvaluateOptions {
        output: Some(output).filter(|o| !o.is_empty()),
        notes,
        evaluated_by: who(evaluated_by),
    }
}

impl RegistryService {
    fn dataset(&self, d: Option<pb::Dataset>) -> Result<Arc<Dataset>> {
        let pb::Dataset {
            path,
            labels,
            label_column,
        } = d.ok_or_else(|| Error::InvalidArgument("name the dataset (dataset.path, under the model root)".into()))?;
        self.services.evaluation.dataset(&path, &labels, &label_column)
    }
}

/// The wait a change asked for: `wait_ms` (absent: the default), bounded by the call's
/// deadline (less a margin to answer in).
fn wait_of(wait_ms: Option<u32>, deadline: Option<std::time::Instant>) -> Option<Duration> {
    let asked = wait_ms.map_or(crate::ops::DEFAULT_WAIT, |ms| Duration::from_millis(u64::from(ms)));
    let asked = asked.min(crate::ops::MAX_WAIT);
    let bound = deadline.map(|d| {
        d.saturating_duration_since(std::time::Instant::now())
            .saturating_sub(Duration::from_millis(50))
    });
    let wait = bound.map_or(asked, |b| asked.min(b));
    (!wait.is_zero()).then_some(wait)
}

impl RegistryService {
    /// Waits for the fleet after a change (the change is committed whatever happens here).
    async fn served(&self, wait: Option<Duration>) -> Result<pb::Served, Status> {
        Ok(convert::served(&self.services.catalogue.await_served(wait).await?))
    }

    async fn set_rollout(
        &self,
        role: RolloutRole,
        request: pb::SetRolloutRequest,
        deadline: Option<std::time::Instant>,
    ) -> Reply<pb::Rollout> {
        let pb::SetRolloutRequest {
            model,
            percentage,
            allow_signature_change,
            changed_by,
            reason,
            wait_ms,
        } = request;
        let percentage = u8::try_from(percentage).ok().filter(|p| *p <= 100).ok_or_else(|| {
            Error::InvalidArgument(format!("the {} percentage is 0 to 100, got {percentage}", role.name()))
        })?;
        let change = self
            .services
            .rollout
            .set_rollout(
                role,
                &convert::model_ref(model)?,
                percentage,
                allow_signature_change,
                &who(changed_by),
                &reason,
            )
            .await?;
        let served = self.served(wait_of(wait_ms, deadline)).await?;
        let rollout = self.services.catalogue.rollout().await?;
        let mut answer = convert::rollout(&rollout, change.replaced.as_ref());
        answer.served = Some(served);
        Ok(Response::new(answer))
    }

    async fn clear_rollout(
        &self,
        role: RolloutRole,
        request: pb::ClearRolloutRequest,
        deadline: Option<std::time::Instant>,
    ) -> Reply<pb::Rollout> {
        let pb::ClearRolloutRequest {
            changed_by,
            reason,
            wait_ms,
        } = request;
        let change = self
            .services
            .rollout
            .clear_rollout(role, &who(changed_by), &reason)
            .await?;
        let served = self.served(wait_of(wait_ms, deadline)).await?;
        let rollout = self.services.catalogue.rollout().await?;
        let mut answer = convert::rollout(&rollout, change.replaced.as_ref());
        answer.served = Some(served);
        Ok(Response::new(answer))
    }
}

/// The name of the token the request came with (recorded as who did it, over what the
/// request itself says).
fn caller_of<T>(request: &Request<T>) -> Option<String> {
    request.extensions().get::<crate::auth::Caller>().map(|c| c.0.clone())
}

fn who(name: String) -> String {
    if name.is_empty() { "api".into() } else { name }
}

type Reply<T> = Result<Response<T>, Status>;

/// How long GetActiveModel waits for the registry before it answers from memory.
const REGISTRY_ANSWER_WITHIN: Duration = Duration::from_secs(2);

#[tonic::async_trait]
impl pb::model_registry_server::ModelRegistry for RegistryService {
    #[tracing::instrument(skip_all, fields(model = %request.get_ref().name))]
    async fn register_model(&self, request: Request<pb::RegisterModelRequest>) -> Reply<pb::RegisterModelResponse> {
        let caller = caller_of(&request);
        let deadline = super::deadline(request.metadata());
        let pb::RegisterModelRequest {
            name,
            file_path,
            version,
            description,
            model_type,
            accuracy,
            activate,
            created_by,
            allow_signature_change,
            wait_ms,
        } = request.into_inner();
        let created_by = caller.unwrap_or(created_by);
        let reg = Registration {
            name,
            file_path,
            version,
            description,
            model_type,
            accuracy,
            created_by: who(created_by),
            activate,
            allow_signature_change,
        };
        let done = self.services.activation.register(reg).await?;
        let activation = match &done.activation {
            Some(a) => {
                let mut answer = convert::activation(a);
                answer.served = Some(self.served(wait_of(wait_ms, deadline)).await?);
                Some(answer)
            }
            None => None,
        };
        Ok(Response::new(pb::RegisterModelResponse {
            model: Some(convert::model(&done.model)),
            activation,
        }))
    }

    async fn list_models(&self, request: Request<pb::ListModelsRequest>) -> Reply<pb::ListModelsResponse> {
        let pb::ListModelsRequest {
            page_size,
            page_token,
            order_by,
            descending,
        } = request.into_inner();
        let limit = match page_size {
            0 => 100,
            n @ 1..=1000 => i64::from(n),
            n => return Err(Error::InvalidArgument(format!("page_size must be 1..1000, got {n}")).into()),
        };
        let offset: i64 = if page_token.is_empty() {
            0
        } else {
            page_token.parse().ok().filter(|o| *o >= 0).ok_or_else(|| {
                Error::InvalidArgument(format!("page_token {page_token:?} is not one this server issued"))
            })?
        };
        let order = match pb::ModelOrder::try_from(order_by) {
            Ok(pb::ModelOrder::Unspecified | pb::ModelOrder::CreatedAt) => Order::CreatedAt,
            Ok(pb::ModelOrder::Name) => Order::Name,
            Ok(pb::ModelOrder::Accuracy) => Order::Accuracy,
            Ok(pb::ModelOrder::Id) => Order::Id,
            Err(_) => return Err(Error::InvalidArgument(format!("unknown order_by {order_by}")).into()),
        };
        let registry = &self.services.catalogue;
        let models = registry.list(order, descending, limit, offset).await?;
        let total = registry.count().await?;
        let ids: Vec<i64> = models.iter().map(|m| m.model_id).collect();
        let latest = registry.latest_evaluations(&ids).await?;
        let latest_of = |id| latest.iter().find(|e| e.model_id == Some(id));
        let next = offset + models.len() as i64;
        Ok(Response::new(pb::ListModelsResponse {
            next_page_token: if next < total && !models.is_empty() {
                next.to_string()
            } else {
                String::new()
            },
            models: models
                .iter()
                .map(|m| convert::model_with(m, latest_of(m.model_id)))
                .collect(),
            total,
        }))
    }

    async fn get_model(&self, request: Request<pb::GetModelRequest>) -> Reply<pb::Model> {
        let pb::GetModelRequest { model } = request.into_inner();
        let registry = &self.services.catalogue;
        let record = registry.get(&convert::model_ref(model)?).await?;
        let latest = registry.latest_evaluation(record.model_id, None).await?;
        Ok(Response::new(convert::model_with(&record, latest.as_ref())))
    }

    async fn get_active_model(
        &self,
        _request: Request<pb::GetActiveModelRequest>,
    ) -> Reply<pb::GetActiveModelResponse> {
        // What this server serves comes from memory; the registry's answer is asked for only
        // while the registry answers, and a slow or failing registry never holds it up.
        let serving = self.services.catalogue.served();
        let status = self.services.catalogue.status();
        let asked = if status.registry_reachable() {
            match tokio::time::timeout(REGISTRY_ANSWER_WITHIN, self.services.catalogue.active()).await {
                Ok(Ok(active)) => Some(active),
                Ok(Err(e)) if e.is_unreachable() => {
                    tracing::warn!(error = %e, "GetActiveModel: the registry is unreachable; answering from memory");
                    None
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    tracing::warn!("GetActiveModel: the registry did not answer in time; answering from memory");
                    None
                }
            }
        } else {
            None
        };
        let registry_reachable = asked.is_some();
        let active = asked.unwrap_or(status.registry_active);
        Ok(Response::new(pb::GetActiveModelResponse {
            model: active.as_ref().map(convert::model),
            serving: serving.as_ref().map(|s| convert::model(&s.record)),
            registry_reachable,
        }))
    }

    async fn update_model(&self, request: Request<pb::UpdateModelRequest>) -> Reply<pb::Model> {
        let deadline = super::deadline(request.metadata());
        let pb::UpdateModelRequest {
            model,
            version,
            description,
            model_type,
            accuracy,
            rollback,
            min_app_version,
            min_app_versions,
            set_min_app_versions,
            wait_ms,
        } = request.into_inner();
        let guards_follow = rollback.is_some();
        let changes = ModelChanges {
            min_app_version,
            min_app_versions: set_min_app_versions.then(|| min_app_versions.into_iter().collect()),
            version,
            description,
            model_type,
            accuracy,
            rollback: rollback.map(|r| crate::registry::RollbackPolicy {
                threshold: r.error_rate,
                min_samples: r.min_samples,
                window_secs: r.window_secs,
                p99_ms: r.p99_ms,
            }),
        };
        let record = self
            .services
            .activation
            .update(&convert::model_ref(model)?, &changes)
            .await?;
        let mut answer = Response::new(convert::model(&record));
        // A new rollback policy changes what the servers' guards do: wait for them, and say
        // how it went in a header (the answer is the model).
        if guards_follow {
            let served = self.served(wait_of(wait_ms, deadline)).await?;
            if let Ok(v) = served.summary.parse() {
                answer.metadata_mut().insert("x-modeld-served", v);
            }
        }
        Ok(answer)
    }

    #[tracing::instrument(skip_all)]
    async fn activate_model(&self, request: Request<pb::ActivateModelRequest>) -> Reply<pb::ActivateModelResponse> {
        let caller = caller_of(&request);
        let deadline = super::deadline(request.metadata());
        let pb::ActivateModelRequest {
            model,
            reason,
            activated_by,
            allow_signature_change,
            require_better,
            evaluate,
            wait_ms,
        } = request.into_inner();
        let activated_by = caller.unwrap_or(activated_by);
        let meta = ActivationMeta {
            activated_by: who(activated_by),
            reason,
            is_rollback: false,
        };
        if evaluate.is_some() && !require_better {
            return Err(Error::InvalidArgument(
                "evaluate is the dataset of require_better: set require_better too".into(),
            )
            .into());
        }
        let gates = crate::ops::Gates {
            allow_signature_change,
            require_better,
            evaluate_on: match evaluate {
                Some(d) => Some(self.dataset(Some(d))?),
                None => None,
            },
        };
        let done = self
            .services
            .activation
            .activate(&convert::model_ref(model)?, &meta, &gates)
            .await?;
        let mut answer = convert::activation(&done);
        answer.served = Some(self.served(wait_of(wait_ms, deadline)).await?);
        Ok(Response::new(answer))
    }

    #[tracing::instrument(skip_all)]
    async fn rollback_model(&self, request: Request<pb::RollbackModelRequest>) -> Reply<pb::ActivateModelResponse> {
        let caller = caller_of(&request);
        let deadline = super::deadline(request.metadata());
        let pb::RollbackModelRequest {
            reason,
            activated_by,
            from,
            wait_ms,
        } = request.into_inner();
        let activated_by = caller.unwrap_or(activated_by);
        let from = from.map(|f| convert::model_ref(Some(f))).transpose()?;
        let done = self
            .services
            .activation
            .rollback(&who(activated_by), &reason, from.as_ref())
            .await?;
        let mut answer = convert::activation(&done);
        answer.served = Some(self.served(wait_of(wait_ms, deadline)).await?);
        Ok(Response::new(answer))
    }

    #[tracing::instrument(skip_all)]
    async fn set_canary(&self, request: Request<pb::SetRolloutRequest>) -> Reply<pb::Rollout> {
        let caller = caller_of(&request);
        let deadline = super::deadline(request.metadata());
        let mut msg = request.into_inner();
        if let Some(c) = caller {
            msg.changed_by = c;
        }
        self.set_rollout(RolloutRole::Canary, msg, deadline).await
    }

    #[tracing::instrument(skip_all)]
    async fn clear_canary(&self, request: Request<pb::ClearRolloutRequest>) -> Reply<pb::Rollout> {
        let caller = caller_of(&request);
        let deadline = super::deadline(request.metadata());
        let mut msg = request.into_inner();
        if let Some(c) = caller {
            msg.changed_by = c;
        }
        self.clear_rollout(RolloutRole::Canary, msg, deadline).await
    }

    #[tracing::instrument(skip_all)]
    async fn set_shadow(&self, request: Request<pb::SetRolloutRequest>) -> Reply<pb::Rollout> {
        let caller = caller_of(&request);
        let deadline = super::deadline(request.metadata());
        let mut msg = request.into_inner();
        if let Some(c) = caller {
            msg.changed_by = c;
        }
        self.set_rollout(RolloutRole::Shadow, msg, deadline).await
    }

    #[tracing::instrument(skip_all)]
    async fn clear_shadow(&self, request: Request<pb::ClearRolloutRequest>) -> Reply<pb::Rollout> {
        let caller = caller_of(&request);
        let deadline = super::deadline(request.metadata());
        let mut msg = request.into_inner();
        if let Some(c) = caller {
            msg.changed_by = c;
        }
        self.clear_rollout(RolloutRole::Shadow, msg, deadline).await
    }

    #[tracing::instrument(skip_all)]
    async fn promote(&self, request: Request<pb::PromoteRequest>) -> Reply<pb::ActivateModelResponse> {
        let caller = caller_of(&request);
        let deadline = super::deadline(request.metadata());
        let pb::PromoteRequest {
            activated_by,
            reason,
            wait_ms,
        } = request.into_inner();
        let activated_by = caller.unwrap_or(activated_by);
        let done = self.services.rollout.promote(&who(activated_by), &reason).await?;
        let mut answer = convert::activation(&done);
        answer.served = Some(self.served(wait_of(wait_ms, deadline)).await?);
        Ok(Response::new(answer))
    }

    async fn get_rollout(&self, request: Request<pb::GetRolloutRequest>) -> Reply<pb::Rollout> {
        let limit = request.into_inner().history_limit;
        if limit > 1000 {
            return Err(Error::InvalidArgument(format!("history_limit is at most 1000, got {limit}")).into());
        }
        let registry = self.services.catalogue.reachable()?;
        let rollout = registry.rollout().await?;
        let mut reply = convert::rollout(&rollout, None);
        if limit > 0 {
            let changes = registry.rollout_changes(None, i64::from(limit)).await?;
            reply.history = changes.iter().map(convert::rollout_change).collect();
        }
        Ok(Response::new(reply))
    }

    async fn get_model_config(&self, request: Request<pb::GetModelConfigRequest>) -> Reply<pb::ClientModelConfig> {
        let pb::GetModelConfigRequest {
            platform,
            if_none_match,
        } = request.into_inner();
        let config = self
            .services
            .catalogue
            .client_config(&crate::ops::platform(Some(&platform)))
            .await?;
        if !if_none_match.is_empty() && config.matches(&if_none_match) {
            return Ok(Response::new(pb::ClientModelConfig {
                not_modified: true,
                etag: config.etag,
                ..Default::default()
            }));
        }
        Ok(Response::new(convert::client_config(config)))
    }

    async fn create_download_url(&self, request: Request<pb::CreateDownloadUrlRequest>) -> Reply<pb::DownloadUrl> {
        let pb::CreateDownloadUrlRequest { model, expires_in_secs } = request.into_inner();
        let url = super::download::signed_url(&self.services, &self.downloads, model, expires_in_secs).await?;
        Ok(Response::new(url))
    }

    type DownloadModelStream = super::download::Chunks;

    async fn download_model(&self, request: Request<pb::DownloadModelRequest>) -> Reply<Self::DownloadModelStream> {
        let pb::DownloadModelRequest { model } = request.into_inner();
        Ok(Response::new(super::download::chunks(&self.services, model).await?))
    }

    async fn list_servers(&self, _request: Request<pb::ListServersRequest>) -> Reply<pb::ListServersResponse> {
        let registry = self.services.catalogue.reachable()?;
        let generation = registry.generation().await?;
        let servers = registry.servers().await?;
        Ok(Response::new(pb::ListServersResponse {
            generation,
            servers: servers.iter().map(|s| convert::fleet_server(s, generation)).collect(),
        }))
    }

    async fn get_server_status(&self, _request: Request<pb::GetServerStatusRequest>) -> Reply<pb::ServerStatus> {
        let Services {
            catalogue,
            inference,
            rollout,
            ..
        } = &self.services;
        let mut status = convert::server_status(
            catalogue.server_name(),
            catalogue.served().as_deref(),
            &catalogue.status(),
            inference.in_flight(),
            inference.executor(),
        );
        status.candidates = Some(convert::candidate_cache(inference.candidates()));
        status.resident_bytes = crate::model::memory::resident_bytes().unwrap_or(0);
        status.rollback_windows = rollout.guard_windows().iter().map(convert::rollback_window).collect();
        status.rollout = catalogue.serving_set().map(|set| {
            let mut rollout = convert::serving_rollout(&set);
            if let Some(shadows) = inference.shadows() {
                // Only the shadow serving now (a job queued before a clear may still count
                // for the one cleared).
                let now = set.shadow.as_ref().map(|w| w.model.record.model_id);
                rollout.shadows = shadows
                    .figures()
                    .iter()
                    .filter(|f| Some(f.model_id) == now)
                    .map(convert::shadow_figures)
                    .collect();
            }
            rollout
        });
        Ok(Response::new(status))
    }

    type WatchEventsStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send + 'static>>;

    async fn watch_events(&self, request: Request<pb::WatchEventsRequest>) -> Reply<Self::WatchEventsStream> {
        let pb::WatchEventsRequest { after_event_id } = request.into_inner();
        let events = self
            .services
            .catalogue
            .follow_events(Some(after_event_id).filter(|a| *a > 0))
            .await?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(events)
            .map(|e| e.map(|e| convert::event(&e)).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(skip_all)]
    async fn evaluate_model(&self, request: Request<pb::EvaluateModelRequest>) -> Reply<pb::Evaluation> {
        let caller = caller_of(&request);
        let pb::EvaluateModelRequest {
            model,
            dataset,
            output,
            notes,
            evaluated_by,
        } = request.into_inner();
        let evaluated_by = caller.unwrap_or(evaluated_by);
        let model = convert::model_ref(model)?;
        let dataset = self.dataset(dataset)?;
        let options = options(output, notes, evaluated_by);
        let done = self
            .services
            .evaluation
            .evaluate(&model, dataset, &options, |_, _| {})
            .await?;
        Ok(Response::new(convert::evaluation(&done.record)))
    }

    #[tracing::instrument(skip_all)]
    async fn compare_models(&self, request: Request<pb::CompareModelsRequest>) -> Reply<pb::Comparison> {
        let caller = caller_of(&request);
        let pb::CompareModelsRequest {
            a,
            b,
            dataset,
            output,
            notes,
            evaluated_by,
        } = request.into_inner();
        let evaluated_by = caller.unwrap_or(evaluated_by);
        let (a, b) = (convert::model_ref(a)?, convert::model_ref(b)?);
        let dataset = self.dataset(dataset)?;
        let options = options(output, notes, evaluated_by);
        let c = self
            .services
            .evaluation
            .compare(&a, &b, dataset, &options, |_, _, _| {})
            .await?;
        let (fa, fb) = (&c.a.outcome.figures, &c.b.outcome.figures);
        Ok(Response::new(pb::Comparison {
            a: Some(convert::evaluation(&c.a.record)),
            b: Some(convert::evaluation(&c.b.record)),
            disagreements: c.disagreements,
            better: match c.a_is_better {
                Some(true) => c.a.model.model_name.clone(),
                Some(false) => c.b.model.model_name.clone(),
                None => String::new(),
            },
            decided_by: crate::evaluation::decided_by(fa, fb).into(),
        }))
    }

    async fn delete_model(&self, request: Request<pb::DeleteModelRequest>) -> Reply<pb::DeleteModelResponse> {
        let pb::DeleteModelRequest { model } = request.into_inner();
        let deleted = self.services.activation.delete(&convert::model_ref(model)?).await?;
        Ok(Response::new(pb::DeleteModelResponse {
            deleted: Some(convert::model(&deleted)),
        }))
    }
}
