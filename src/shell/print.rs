//! Printing query results: a bordered table for people, CSV/TSV/JSON/NDJSON for pipes.

use std::io::Write;

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::util::pretty::pretty_format_batches_with_schema;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;

use crate::error::Result;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DisplayFormat {
    /// Bordered table (the default when stdout is a terminal).
    Table,
    /// Comma-separated with a header row (the default otherwise).
    Csv,
    /// Tab-separated with a header row.
    Tsv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
}

impl DisplayFormat {
    pub fn parse(name: &str) -> Option<DisplayFormat> {
        <DisplayFormat as clap::ValueEnum>::from_str(name, true).ok()
    }
}

/// What was printed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Printed {
    /// Rows the query returned.
    pub rows: u64,
    /// Rows shown (fewer when `maxrows` cut the output).
    pub shown: u64,
}

/// Prints every batch of `stream` to `out` in `format`, at most `maxrows` rows (the rest is still
/// consumed and counted). Text formats stream; the table waits for its rows to size its columns.
pub async fn print_stream(
    mut stream: SendableRecordBatchStream,
    format: DisplayFormat,
    maxrows: Option<usize>,
    out: &mut dyn Write,
) -> Result<Printed> {
    let schema: SchemaRef = stream.schema();
    let mut printed = Printed::default();
    let mut kept: Vec<RecordBatch> = Vec::new();
    let mut writer = TextWriter::new(format, out);
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let room = maxrows.map_or(usize::MAX, |max| max.saturating_sub(printed.shown as usize));
        let show = batch.slice(0, batch.num_rows().min(room));
        printed.rows += batch.num_rows() as u64;
        printed.shown += show.num_rows() as u64;
        if show.num_rows() == 0 {
            continue;
        }
        match &mut writer {
            Some(writer) => writer.write(&show)?,
            None => kept.push(show),
        }
    }
    match writer {
        Some(writer) => writer.finish(&schema)?,
        None => {
            writeln!(out, "{}", pretty_format_batches_with_schema(schema, &kept)?)?;
        }
    }
    Ok(printed)
}

/// Streaming writers of the text formats (`None` for the table).
enum TextWriter<'a> {
    Csv {
        out: &'a mut dyn Write,
        delimiter: u8,
        header: bool,
    },
    Json(datafusion::arrow::json::ArrayWriter<&'a mut dyn Write>),
    Ndjson(
        datafusion::arrow::json::Writer<
            &'a mut dyn Write,
            datafusion::arrow::json::writer::LineDelimited,
        >,
    ),
}

impl<'a> TextWriter<'a> {
    fn new(format: DisplayFormat, out: &'a mut dyn Write) -> Option<TextWriter<'a>> {
        let json = datafusion::arrow::json::WriterBuilder::new().with_explicit_nulls(true);
        Some(match format {
            DisplayFormat::Table => return None,
            DisplayFormat::Csv | DisplayFormat::Tsv => TextWriter::Csv {
                out,
                delimiter: if format == DisplayFormat::Tsv {
                    b'\t'
                } else {
                    b','
                },
                header: true,
            },
            DisplayFormat::Json => TextWriter::Json(json.build(out)),
            DisplayFormat::Ndjson => TextWriter::Ndjson(json.build(out)),
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        match self {
            TextWriter::Csv {
                out,
                delimiter,
                header,
            } => {
                datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(*header)
                    .with_delimiter(*delimiter)
                    .build(&mut **out)
                    .write(&flat(batch)?)?;
                *header = false;
            }
            TextWriter::Json(w) => w.write(batch)?,
            TextWriter::Ndjson(w) => w.write(batch)?,
        }
        Ok(())
    }

    fn finish(self, schema: &SchemaRef) -> Result<()> {
        match self {
            TextWriter::Csv {
                out,
                delimiter,
                header,
            } => {
                if header {
                    // no rows: the header alone
                    datafusion::arrow::csv::WriterBuilder::new()
                        .with_header(true)
                        .with_delimiter(delimiter)
                        .build(&mut *out)
                        .write(&flat(&RecordBatch::new_empty(schema.clone()))?)?;
                }
                out.flush()?;
            }
            TextWriter::Json(mut w) => {
                w.finish()?;
                let out = w.into_inner();
                writeln!(out)?;
                out.flush()?;
            }
            TextWriter::Ndjson(mut w) => {
                w.finish()?;
                w.into_inner().flush()?;
            }
        }
        Ok(())
    }
}

/// CSV has no nested values: lists, structs and maps are written as their display text
/// (`[1, 2]`, `{a: 1}`), like the table shows them.
fn flat(batch: &RecordBatch) -> Result<RecordBatch> {
    use datafusion::arrow::array::{ArrayRef, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| f.data_type().is_nested())
    {
        return Ok(batch.clone());
    }
    let options = FormatOptions::default();
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if field.data_type().is_nested() {
            let formatter = ArrayFormatter::try_new(column.as_ref(), &options)?;
            let text: StringArray = (0..column.len())
                .map(|i| (!column.is_null(i)).then(|| formatter.value(i).to_string()))
                .collect();
            fields.push(Field::new(field.name(), text.data_type().clone(), true));
            columns.push(std::sync::Arc::new(text));
        } else {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
        }
    }
    Ok(RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(fields)),
        columns,
    )?)
}
