//! A deliberately bare Open Inference Protocol server: tonic + tract on a current_thread runtime,
//! the bundled MLP (`digits_v2`, symbolic batch) and nothing else (no registry, validation,
//! statistics, metrics, tracing, access, deadlines or queue). It is the baseline for modeld's
//! request path: both under the same perf_analyzer load, alternated in one run
//! (`benches/load/compare.sh` with `COMPARE_BARE=1`; docs/benchmarks.md, "modeld vs a bare
//! server").
//!
//! `cargo run --release --example bare_server -- --listen 127.0.0.1:50301` (it takes modeld's
//! `serve` command line and reads only `--listen` from it, so the harness starts both alike).

use std::pin::Pin;

use modeld::api::kserve_pb as kv;
use modeld::model::{Engine, EngineSettings, load_model};
use tonic::{Request, Response, Status};
use tract_onnx::prelude::{TValue, Tensor, tvec};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Bare {
    engine: Engine,
}

type R<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl kv::grpc_inference_service_server::GrpcInferenceService for Bare {
    async fn server_live(&self, _: Request<kv::ServerLiveRequest>) -> R<kv::ServerLiveResponse> {
        Ok(Response::new(kv::ServerLiveResponse { live: true }))
    }
    async fn server_ready(&self, _: Request<kv::ServerReadyRequest>) -> R<kv::ServerReadyResponse> {
        Ok(Response::new(kv::ServerReadyResponse { ready: true }))
    }
    async fn model_ready(&self, _: Request<kv::ModelReadyRequest>) -> R<kv::ModelReadyResponse> {
        Ok(Response::new(kv::ModelReadyResponse { ready: true }))
    }
    async fn server_metadata(&self, _: Request<kv::ServerMetadataRequest>) -> R<kv::ServerMetadataResponse> {
        Ok(Response::new(kv::ServerMetadataResponse {
            name: "bare_server".into(),
            version: "0".into(),
            extensions: vec![],
        }))
    }
    async fn model_metadata(&self, r: Request<kv::ModelMetadataRequest>) -> R<kv::ModelMetadataResponse> {
        use kv::model_metadata_response::TensorMetadata as T;
        Ok(Response::new(kv::ModelMetadataResponse {
            name: r.into_inner().name,
            versions: vec!["1".into()],
            platform: "tract_onnx".into(),
            inputs: vec![T {
                name: "input".into(),
                datatype: "FP32".into(),
                shape: vec![-1, 64],
            }],
            outputs: vec![
                T {
                    name: "probabilities".into(),
                    datatype: "FP32".into(),
                    shape: vec![-1, 10],
                },
                T {
                    name: "label".into(),
                    datatype: "INT64".into(),
                    shape: vec![-1],
                },
            ],
        }))
    }
    async fn model_infer(&self, r: Request<kv::ModelInferRequest>) -> R<kv::ModelInferResponse> {
        let req = r.into_inner();
        let raw = &req.raw_input_contents[0];
        let shape: Vec<usize> = req.inputs[0].shape.iter().map(|&d| d as usize).collect();
        let values: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let t = Tensor::from_shape(&shape, &values).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let out = self
            .engine
            .run(tvec![TValue::from(t)])
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut raw_out = Vec::new();
        let mut outputs = Vec::new();
        for (o, name) in out.iter().zip(["probabilities", "label"]) {
            let view = o.try_as_plain_ram().unwrap();
            let bytes = if name == "label" {
                view.as_slice::<i64>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect()
            } else {
                view.as_slice::<f32>()
                    .unwrap()
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect()
            };
            raw_out.push(bytes);
            outputs.push(kv::model_infer_response::InferOutputTensor {
                name: name.into(),
                datatype: if name == "label" { "INT64" } else { "FP32" }.into(),
                shape: o.shape().iter().map(|&d| d as i64).collect(),
                ..Default::default()
            });
        }
        Ok(Response::new(kv::ModelInferResponse {
            model_name: req.model_name,
            model_version: "1".into(),
            id: req.id,
            outputs,
            raw_output_contents: raw_out,
            ..Default::default()
        }))
    }
    type ModelStreamInferStream =
        Pin<Box<dyn tokio_stream::Stream<Item = Result<kv::ModelStreamInferResponse, Status>> + Send>>;
    async fn model_stream_infer(
        &self,
        _: Request<tonic::Streaming<kv::ModelInferRequest>>,
    ) -> R<Self::ModelStreamInferStream> {
        Err(Status::unimplemented("no"))
    }
    async fn model_config(&self, r: Request<kv::ModelConfigRequest>) -> R<kv::ModelConfigResponse> {
        Ok(Response::new(kv::ModelConfigResponse {
            config: Some(kv::ModelConfig {
                name: r.into_inner().name,
                platform: "tract_onnx".into(),
                max_batch_size: 64,
                input: vec![kv::ModelInput {
                    name: "input".into(),
                    data_type: kv::DataType::TypeFp32.into(),
                    dims: vec![64],
                    ..Default::default()
                }],
                output: vec![
                    kv::ModelOutput {
                        name: "probabilities".into(),
                        data_type: kv::DataType::TypeFp32.into(),
                        dims: vec![10],
                        ..Default::default()
                    },
                    kv::ModelOutput {
                        name: "label".into(),
                        data_type: kv::DataType::TypeInt64.into(),
                        dims: vec![],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
        }))
    }
    async fn model_statistics(&self, _: Request<kv::ModelStatisticsRequest>) -> R<kv::ModelStatisticsResponse> {
        Ok(Response::new(kv::ModelStatisticsResponse { model_stats: vec![] }))
    }
    async fn repository_index(&self, _: Request<kv::RepositoryIndexRequest>) -> R<kv::RepositoryIndexResponse> {
        Err(Status::unimplemented("no"))
    }
    async fn repository_model_load(
        &self,
        _: Request<kv::RepositoryModelLoadRequest>,
    ) -> R<kv::RepositoryModelLoadResponse> {
        Err(Status::unimplemented("no"))
    }
    async fn repository_model_unload(
        &self,
        _: Request<kv::RepositoryModelUnloadRequest>,
    ) -> R<kv::RepositoryModelUnloadResponse> {
        Err(Status::unimplemented("no"))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: std::net::SocketAddr = args
        .iter()
        .position(|a| a == "--listen")
        .and_then(|i| args.get(i + 1))
        .or_else(|| args.get(1))
        .expect("--listen ADDR")
        .parse()
        .expect("--listen takes HOST:PORT");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits_v2.onnx");
    let engine = load_model(&path, None, EngineSettings::default()).unwrap().engine;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(kv::grpc_inference_service_server::GrpcInferenceServiceServer::new(
                Bare { engine },
            ))
            .serve(addr)
            .await
            .unwrap();
    });
}
