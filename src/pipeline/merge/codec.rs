//! The merge plan on a Ballista cluster: codecs for its two custom parts.
//!
//! - [`LogicalCodec`] carries the `features` table ([`MergedFeatures`]) from the client to the
//!   scheduler: its parameters and the logical plans of `history` and `neighbours` (themselves
//!   encoded by DataFusion's protobuf serde with this codec, so their inputs travel as usual).
//! - [`PhysicalCodec`] carries [`PriorMergeExec`] from the scheduler to the executors: its
//!   parameters and output schema; its children are encoded by Ballista as any other plan.
//!
//! - The parts writer of a folder output or a Delta table ([`crate::io::sink::parts`]): its
//!   table from the client (the input's logical plan, where to write, what to write) and its
//!   operator to the executors, which write the files.
//!
//! Everything else goes to Ballista's own codecs, which both wrap. The client, the scheduler and
//! every executor get them from [`crate::cluster`], so all three decode what the others encode.

use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::{Result, TableReference, internal_err, plan_datafusion_err};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Extension;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::bytes::{
    logical_plan_from_bytes_with_extension_codec, logical_plan_to_bytes_with_extension_codec,
};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};

use super::{MergeParams, MergedFeatures, PriorMergeExec, Split};
use crate::io::sink::parts;

/// Prefixes that tell our payloads from Ballista's (whose protobuf messages never start so).
const TABLE_TAG: &[u8] = b"q2q-prior:MergedFeatures:3:";
const EXEC_TAG: &[u8] = b"q2q-prior:PriorMergeExec:3:";
const PARTS_TABLE_TAG: &[u8] = b"q2q-prior:PartsTable:2:";
const PARTS_EXEC_TAG: &[u8] = b"q2q-prior:PartsWriterExec:2:";

/// The table's payload after its tag: this header as one JSON line, then the two plans.
#[derive(Debug, Serialize, Deserialize)]
struct TableHeader {
    params: MergeParams,
    partitions: usize,
    split: Split,
    history_bytes: usize,
    neighbours_bytes: usize,
}

/// The operator's payload after its tag.
#[derive(Debug, Serialize, Deserialize)]
struct ExecPayload {
    params: MergeParams,
    partitions: usize,
    split: Split,
    /// (name, type, nullable) of the output columns.
    fields: Vec<(String, String, bool)>,
}

/// The output column types the operator can have (see `merge::TYPES`).
fn type_name(t: &DataType) -> Result<&'static str> {
    Ok(match t {
        DataType::Utf8 => "Utf8",
        DataType::Utf8View => "Utf8View",
        DataType::Float64 => "Float64",
        DataType::Int64 => "Int64",
        other => return internal_err!("PriorMergeExec has no output column of type {other}"),
    })
}

fn type_of(name: &str) -> Result<DataType> {
    Ok(match name {
        "Utf8" => DataType::Utf8,
        "Utf8View" => DataType::Utf8View,
        "Float64" => DataType::Float64,
        "Int64" => DataType::Int64,
        other => return internal_err!("PriorMergeExec: unknown column type '{other}'"),
    })
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> datafusion::error::DataFusionError {
    plan_datafusion_err!("cannot decode the merge plan's {what}: {e}")
}

/// Ballista's logical codec, plus the merge plan's `features` table.
#[derive(Debug, Default)]
pub struct LogicalCodec {
    inner: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[datafusion::logical_expr::LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        self.inner.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        if let Some(payload) = buf.strip_prefix(PARTS_TABLE_TAG) {
            let end = payload
                .iter()
                .position(|b| *b == b'\n')
                .ok_or_else(|| corrupt("parts table", "no header"))?;
            let header: parts::TablePayload = serde_json::from_slice(&payload[..end])
                .map_err(|e| corrupt("parts table header", e))?;
            let input =
                logical_plan_from_bytes_with_extension_codec(&payload[end + 1..], ctx, self)?;
            return Ok(Arc::new(parts::PartsTable {
                input,
                staging: header.staging,
                writer: header.writer,
            }));
        }
        let Some(payload) = buf.strip_prefix(TABLE_TAG) else {
            return self
                .inner
                .try_decode_table_provider(buf, table_ref, schema, ctx);
        };
        let end = payload
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(|| corrupt("table", "no header"))?;
        let header: TableHeader =
            serde_json::from_slice(&payload[..end]).map_err(|e| corrupt("table header", e))?;
        let plans = &payload[end + 1..];
        if plans.len() != header.history_bytes + header.neighbours_bytes {
            return Err(corrupt("table", "truncated plans"));
        }
        let (history, neighbours) = plans.split_at(header.history_bytes);
        let history = logical_plan_from_bytes_with_extension_codec(history, ctx, self)?;
        let neighbours = logical_plan_from_bytes_with_extension_codec(neighbours, ctx, self)?;
        Ok(Arc::new(MergedFeatures::from_parts(
            schema,
            history,
            neighbours,
            header.params,
            header.partitions,
            header.split,
        )?))
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        if let Some(table) = node.downcast_ref::<parts::PartsTable>() {
            let input = logical_plan_to_bytes_with_extension_codec(&table.input, self)?;
            let header = parts::TablePayload {
                staging: table.staging.clone(),
                writer: table.writer.clone(),
            };
            buf.extend_from_slice(PARTS_TABLE_TAG);
            serde_json::to_writer(&mut *buf, &header)
                .map_err(|e| corrupt("parts table header", e))?;
            buf.push(b'\n');
            buf.extend_from_slice(&input);
            return Ok(());
        }
        let Some(table) = node.downcast_ref::<MergedFeatures>() else {
            return self.inner.try_encode_table_provider(table_ref, node, buf);
        };
        let history = logical_plan_to_bytes_with_extension_codec(&table.history, self)?;
        let neighbours = logical_plan_to_bytes_with_extension_codec(&table.neighbours, self)?;
        let header = TableHeader {
            params: table.params,
            partitions: table.partitions(),
            split: table.split(),
            history_bytes: history.len(),
            neighbours_bytes: neighbours.len(),
        };
        buf.extend_from_slice(TABLE_TAG);
        serde_json::to_writer(&mut *buf, &header).map_err(|e| corrupt("table header", e))?;
        buf.push(b'\n');
        buf.extend_from_slice(&history);
        buf.extend_from_slice(&neighbours);
        Ok(())
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        self.inner.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        self.inner.try_encode_file_format(buf, node)
    }
}

/// Ballista's physical codec, plus [`PriorMergeExec`].
#[derive(Debug, Default)]
pub struct PhysicalCodec {
    inner: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if let Some(payload) = buf.strip_prefix(PARTS_EXEC_TAG) {
            let payload: parts::WriterPayload =
                serde_json::from_slice(payload).map_err(|e| corrupt("parts writer", e))?;
            let [input] = inputs else {
                return internal_err!("PartsWriterExec has one child, not {}", inputs.len());
            };
            return Ok(Arc::new(parts::PartsWriterExec::new(
                Arc::clone(input),
                payload.staging,
                payload.writer,
            )));
        }
        let Some(payload) = buf.strip_prefix(EXEC_TAG) else {
            return self.inner.try_decode(buf, inputs, ctx, proto_converter);
        };
        let payload: ExecPayload =
            serde_json::from_slice(payload).map_err(|e| corrupt("operator", e))?;
        let fields = payload
            .fields
            .iter()
            .map(|(name, t, nullable)| Ok(Field::new(name, type_of(t)?, *nullable)))
            .collect::<Result<Vec<_>>>()?;
        let (history, neighbours, shares) = match inputs {
            [history, neighbours] => (history, neighbours, None),
            [history, neighbours, shares] => (history, neighbours, Some(Arc::clone(shares))),
            _ => {
                return internal_err!(
                    "PriorMergeExec has two or three children, not {}",
                    inputs.len()
                );
            }
        };
        Ok(Arc::new(PriorMergeExec::with_children(
            Arc::clone(history),
            Arc::clone(neighbours),
            shares,
            payload.params,
            payload.partitions,
            payload.split,
            Arc::new(Schema::new(fields)),
        )?))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        if let Some(writer) = node.downcast_ref::<parts::PartsWriterExec>() {
            let payload = parts::WriterPayload {
                staging: writer.staging().to_string(),
                writer: writer.writer().clone(),
            };
            buf.extend_from_slice(PARTS_EXEC_TAG);
            serde_json::to_writer(&mut *buf, &payload).map_err(|e| corrupt("parts writer", e))?;
            return Ok(());
        }
        let Some(exec) = node.downcast_ref::<PriorMergeExec>() else {
            return self.inner.try_encode(node, buf, proto_converter);
        };
        let fields = exec
            .schema()
            .fields()
            .iter()
            .map(|f| {
                Ok((
                    f.name().clone(),
                    type_name(f.data_type())?.to_string(),
                    f.is_nullable(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let payload = ExecPayload {
            params: *exec.params(),
            partitions: exec.partitions(),
            split: exec.split(),
            fields,
        };
        buf.extend_from_slice(EXEC_TAG);
        serde_json::to_writer(&mut *buf, &payload).map_err(|e| corrupt("operator", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PriorWeighting;
    use crate::pipeline::blend::OUTPUT_COLUMNS;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion_proto::physical_plan::DefaultPhysicalProtoConverter;

    #[test]
    fn the_operator_survives_the_trip_to_an_executor() {
        let fields: Vec<Field> = OUTPUT_COLUMNS
            .iter()
            .zip(super::super::TYPES.iter())
            .enumerate()
            .map(|(i, (name, t))| {
                // keys as string views, as Parquet inputs give them
                let t = if i < 2 { DataType::Utf8View } else { t.clone() };
                Field::new(*name, t, i >= 2)
            })
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let params = MergeParams {
            top_k: 7,
            min_score: 0.25,
            prior_weighting: PriorWeighting::Score,
            gamma: 123.0,
            beta: 0.5,
            blend: crate::config::Blend::Bayes,
            smoothing: 3.0,
            pseudo_impressions: 42.0,
        };
        let child = |n: usize| -> Arc<dyn ExecutionPlan> {
            Arc::new(EmptyExec::new(Arc::new(Schema::new(vec![Field::new(
                format!("c{n}"),
                DataType::Utf8,
                true,
            )]))))
        };
        let exec: Arc<dyn ExecutionPlan> = Arc::new(
            PriorMergeExec::try_new(
                child(0),
                child(1),
                params,
                5,
                Split::Shares,
                Arc::clone(&schema),
            )
            .unwrap(),
        );
        let codec = PhysicalCodec::default();
        let converter = DefaultPhysicalProtoConverter {};
        let mut buf = Vec::new();
        codec
            .try_encode(Arc::clone(&exec), &mut buf, &converter)
            .unwrap();
        let ctx = TaskContext::default();
        // the shares leaf travels as any other child, through Ballista's codec
        let inputs = [
            child(0),
            child(1),
            super::super::share::numbering(5).unwrap(),
        ];
        let back = codec.try_decode(&buf, &inputs, &ctx, &converter).unwrap();
        let back = back.downcast_ref::<PriorMergeExec>().unwrap();
        assert_eq!(*back.params(), params);
        assert_eq!(back.partitions(), 5);
        assert_eq!(back.split(), Split::Shares);
        assert_eq!(back.schema(), schema);
        // another node goes to Ballista's codec, which refuses what it does not know
        assert!(
            codec
                .try_encode(child(2), &mut Vec::new(), &converter)
                .is_err()
        );
        // a damaged payload is an error, not a panic
        let damaged = &buf[..buf.len() - 3];
        assert!(
            codec
                .try_decode(damaged, &inputs, &ctx, &converter)
                .is_err()
        );
    }
}
