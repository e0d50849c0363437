//! The Open Inference Protocol's protobuf messages to the protocol's plain types
//! ([`crate::oip`]) and back.

use std::collections::BTreeMap;

use super::pb;
use crate::error::{Error, Result};
use crate::model::{DataType, TensorSpec};
use crate::oip::{self, Param};
use crate::serving::Payload;
use crate::serving::stats::{ModelStats, Tally};

/// A request parameter in the protocol's plain form.
pub(super) fn param<'a>(parameters: &'a BTreeMap<String, pb::InferParameter>, name: &str) -> Option<Param<'a>> {
    use pb::infer_parameter::ParameterChoice as P;
    Some(match parameters.get(name)?.parameter_choice.as_ref()? {
        P::BoolParam(b) => Param::Bool(*b),
        P::Int64Param(i) => Param::Int(*i),
        P::Uint64Param(u) => Param::Uint(*u),
        P::DoubleParam(d) => Param::Double(*d),
        P::StringParam(s) => Param::Str(s),
    })
}

/// The typed contents of an input, matched to the payload kinds the request path accepts.
pub(super) fn contents<'a>(name: &str, c: Option<&'a pb::InferTensorContents>) -> Result<Payload<'a>> {
    let Some(c) = c else { return Ok(Payload::Raw(&[])) };
    let pb::InferTensorContents {
        bool_contents,
        int_contents,
        int64_contents,
        uint_contents,
        uint64_contents,
        fp32_contents,
        fp64_contents,
        bytes_contents,
    } = c;
    if !bytes_contents.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "input {name:?}: BYTES tensors are not supported"
        )));
    }
    Payload::only_one(
        name,
        [
            Payload::Bool(bool_contents),
            Payload::Int32(int_contents),
            Payload::Int64(int64_contents),
            Payload::Uint32(uint_contents),
            Payload::Uint64(uint64_contents),
            Payload::Fp32(fp32_contents),
            Payload::Fp64(fp64_contents),
        ],
    )
}

fn config_type(d: DataType) -> pb::DataType {
    match d {
        DataType::Fp32 => pb::DataType::TypeFp32,
        DataType::Fp64 => pb::DataType::TypeFp64,
        DataType::Int8 => pb::DataType::TypeInt8,
        DataType::Int16 => pb::DataType::TypeInt16,
        DataType::Int32 => pb::DataType::TypeInt32,
        DataType::Int64 => pb::DataType::TypeInt64,
        DataType::Uint8 => pb::DataType::TypeUint8,
        DataType::Uint16 => pb::DataType::TypeUint16,
        DataType::Uint32 => pb::DataType::TypeUint32,
        DataType::Uint64 => pb::DataType::TypeUint64,
        DataType::Bool => pb::DataType::TypeBool,
    }
}

pub(super) fn model_config(c: oip::ModelConfig) -> pb::ModelConfig {
    pb::ModelConfig {
        name: c.name,
        platform: c.platform.into(),
        backend: c.backend.into(),
        max_batch_size: c.max_batch_size,
        input: c
            .inputs
            .into_iter()
            .map(|t| pb::ModelInput {
                data_type: config_type(t.datatype).into(),
                name: t.name,
                dims: t.shape,
                ..Default::default()
            })
            .collect(),
        output: c
            .outputs
            .into_iter()
            .map(|t| pb::ModelOutput {
                data_type: config_type(t.datatype).into(),
                name: t.name,
                dims: t.shape,
                ..Default::default()
            })
            .collect(),
        instance_group: vec![pb::ModelInstanceGroup {
            name: c.instance_group,
            count: c.instances,
            kind: pb::model_instance_group::Kind::Cpu.into(),
        }],
        default_model_filename: c.default_model_filename,
        scheduling_choice: c.max_queue_delay.map(|d| {
            pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
                preferred_batch_size: Vec::new(),
                max_queue_delay_microseconds: d.as_micros() as u64,
                preserve_ordering: false,
            })
        }),
        ..Default::default()
    }
}

pub(super) fn statistics(s: ModelStats) -> pb::ModelStatistics {
    let d = |t: Tally| {
        Some(pb::StatisticDuration {
            count: t.count,
            ns: t.ns,
        })
    };
    pb::ModelStatistics {
        inference_stats: Some(pb::InferStatistics {
            success: d(s.success),
            fail: d(s.fail),
            queue: d(s.queue),
            compute_input: d(s.compute_input),
            compute_infer: d(s.compute_infer),
            compute_output: d(s.compute_output),
            cache_hit: d(Tally::default()),
            cache_miss: d(Tally::default()),
            server_overhead: d(Tally {
                count: s.success.count,
                ns: s.overhead_ns(),
            }),
        }),
        batch_stats: s
            .batches
            .iter()
            .map(|(&batch_size, b)| pb::InferBatchStatistics {
                batch_size,
                compute_input: d(b.compute_input),
                compute_infer: d(b.compute_infer),
                compute_output: d(b.compute_output),
            })
            .collect(),
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        engine: s.engine.into(),
        name: s.name,
        version: s.version,
    }
}

/// A tensor's metadata.
pub(super) fn tensor_metadata(t: TensorSpec) -> pb::model_metadata_response::TensorMetadata {
    pb::model_metadata_response::TensorMetadata {
        name: t.name,
        datatype: t.datatype.name().into(),
        shape: t.shape,
    }
}

/// An index entry.
pub(super) fn index_entry(m: oip::IndexEntry) -> pb::repository_index_response::ModelIndex {
    pb::repository_index_response::ModelIndex {
        name: m.name,
        version: m.version,
        state: m.state.into(),
        reason: m.reason,
    }
}
