//! Opening the tables every command reads: a local path or an object-store URL (file, folder,
//! glob, Hive-style `key=value/` partition folders), as Parquet, CSV or JSON Lines, detected from
//! names or given; then required columns with types checked, so a wrong input is refused with
//! the input, the column, an example row and what was expected ([`open_checked`]).
//!
//! Opening reads file listings and schemas only; the rows are read by whoever plans on them.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::datasource::file_format::json::JsonFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl, helpers,
};
use datafusion::logical_expr::{cast, col};
use datafusion::prelude::{DataFrame, SessionContext};
use futures::TryStreamExt;
use object_store::ObjectMeta;

use crate::config::{InputFormat, InputSpec};
use crate::error::{BadInput, Error, Result};
use crate::io::checks;
use crate::io::storage;

fn default_extension(format: InputFormat) -> &'static str {
    match format {
        InputFormat::Parquet => ".parquet",
        InputFormat::Csv => ".csv",
        InputFormat::Json => ".json",
    }
}

/// One opened input: its role, where it is, and its raw (untyped) rows.
#[derive(Clone)]
pub struct Input {
    pub role: &'static str,
    pub uri: String,
    pub format: InputFormat,
    pub raw: DataFrame,
    /// The typed view registered under the input's name (partition columns first).
    pub typed: DataFrame,
    pub checks: Vec<checks::Check>,
    pub partitions: Partitions,
    /// Query keys go through `normalize_query` (see [`crate::normalize`]).
    pub normalize: bool,
    /// The typed rows before `typed` adds up the counts of each key (`on_duplicate = "sum"`, or
    /// variants merged by normalization); `None` when nothing is summed.
    pub summed_from: Option<DataFrame>,
}

/// Runs `checks` over `rows` (the input's rows, or a selection of them) in one scan: refuses an
/// empty selection and the first FAIL check that found a row (the error names the input, the
/// column and an example row). Returns the row count and every check's result (WARN included).
pub async fn enforce(
    input: &Input,
    rows: &DataFrame,
    checks: &[checks::Check],
) -> Result<(u64, Vec<checks::CheckResult>)> {
    let (count, results) = checks::evaluate(rows, checks).await?;
    if count == 0 {
        return Err(no_rows(input).into());
    }
    if let Some(failed) = results
        .iter()
        .find(|r| r.violations > 0 && r.check.severity == checks::Severity::Fail)
    {
        return Err(failed.to_bad_input(input.role, &input.uri).into());
    }
    Ok((count, results))
}

impl Input {
    /// Registers the typed view on `ctx` under the input's role (`engagement`, `neighbours`,
    /// ...): the name SQL and later stages read it by.
    pub fn register_view(&self, ctx: &SessionContext) -> Result<()> {
        ctx.register_table(self.role, self.typed.clone().into_view())?;
        Ok(())
    }

    /// The (query, product_id) keys of a table of pairs: a string `query` and a string or integer
    /// `product_id`. Returns the row checks that keep both present and non-empty.
    pub fn require_keys(&self) -> Result<Vec<checks::Check>> {
        let query = self.require("query", checks::is_string, STRING)?;
        let product = self.require("product_id", |t| checks::is_string(t) || is_integer(t), KEY)?;
        Ok(vec![
            checks::key_check("query", &query),
            checks::key_check("product_id", &product),
        ])
    }

    /// The type of column `name` if the input has it; a [`BadInput`] when it has another type.
    pub fn column_type(
        &self,
        name: &str,
        accept: fn(&DataType) -> bool,
        expected: &str,
    ) -> Result<Option<DataType>> {
        column_type(self, name, accept, expected)
    }

    /// Like [`Input::column_type`], and a [`BadInput`] listing the columns when it is missing.
    pub fn require(
        &self,
        name: &str,
        accept: fn(&DataType) -> bool,
        expected: &str,
    ) -> Result<DataType> {
        column_type(self, name, accept, expected)?.ok_or_else(|| missing(self, name, expected))
    }
}

/// Hive-style partition folders (`market=US/dt=2026-01-01/…`) of an input: their column names, in
/// folder order, and every distinct combination of values found, read from the file listing alone.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Partitions {
    pub columns: Vec<String>,
    pub values: Vec<Vec<String>>,
}

/// Lists, detects the format of, and infers the schema of one input, mapping every failure to a
/// [`BadInput`] that names the input. Used for the job's inputs and for every other table a
/// command reads (feature tables, labels); `typed` starts as the raw rows.
pub async fn open_table(
    ctx: &SessionContext,
    role: &'static str,
    spec: &InputSpec,
) -> Result<Input> {
    let uri = spec.uri.as_str();
    let location = |e: Error| -> Error {
        let problem = match e {
            Error::Config(message) => message,
            other => other.to_string(),
        };
        BadInput::new(role, uri, problem)
            .expected("a local path, file://, s3://, gs:// or az:// URL")
            .into()
    };
    // `paths` (a backfill window) replaces `uri`, which then only names the input
    let targets: Vec<&str> = if spec.paths.is_empty() {
        vec![uri]
    } else {
        spec.paths.iter().map(String::as_str).collect()
    };
    let urls = targets
        .iter()
        .map(|t| storage::table_url(t))
        .collect::<Result<Vec<_>>>()
        .map_err(location)?;
    for url in &urls {
        storage::register_store(ctx.runtime_env().as_ref(), url.get_url()).map_err(location)?;
    }
    let url = urls[0].clone();
    let unreadable = |e: &dyn std::fmt::Display| {
        Error::from(
            BadInput::new(role, uri, format!("cannot read the input: {e}"))
                .expected("an existing, readable Parquet, CSV or NDJSON file, folder or glob"),
        )
    };
    let (format, compression, extension) = match spec.format {
        Some(format) => match name_suffix(uri).filter(|(f, _, _)| *f == format) {
            Some(found) => found,
            // a named file (`e.txt`): read it whatever its extension
            None if uri
                .rsplit('/')
                .next()
                .is_some_and(|name| name.contains('.')) =>
            {
                (format, FileCompressionType::UNCOMPRESSED, String::new())
            }
            // a folder: only files of that format, so `_SUCCESS`, manifests and staging files stay out
            None => (
                format,
                FileCompressionType::UNCOMPRESSED,
                default_extension(format).to_string(),
            ),
        },
        None => match name_suffix(uri) {
            Some(found) => found,
            None => detect_from_listing(ctx, role, uri, &url).await?,
        },
    };
    let file_format: Arc<dyn FileFormat> = match format {
        InputFormat::Parquet => Arc::new(ParquetFormat::default()),
        InputFormat::Csv => Arc::new(
            CsvFormat::default()
                .with_has_header(true)
                .with_file_compression_type(compression),
        ),
        InputFormat::Json => {
            Arc::new(JsonFormat::default().with_file_compression_type(compression))
        }
    };
    let state = ctx.state();
    let store = ctx.runtime_env().object_store(&url)?;
    let mut files: Vec<ObjectMeta> = Vec::new();
    for url in &urls {
        let found: Vec<ObjectMeta> = url
            .list_all_files(&state, store.as_ref(), &extension)
            .await
            .map_err(|e| unreadable(&e))?
            .try_collect()
            .await
            .map_err(|e| unreadable(&e))?;
        files.extend(found);
    }
    if files.is_empty() {
        return Err(BadInput::new(role, uri, "no files found")
            .expected(format!(
                "at least one file{}{}",
                if extension.is_empty() {
                    String::new()
                } else {
                    format!(" ending in {extension}")
                },
                if uri.contains(storage::GLOB_CHARS) {
                    GLOB_HINT
                } else {
                    ""
                }
            ))
            .into());
    }
    if format == InputFormat::Csv {
        duplicated_header(store.as_ref(), &files[0], compression)
            .await
            .map_err(|column| {
                BadInput::new(
                    role,
                    uri,
                    format!(
                        "the header line of {} names column '{column}' more than once",
                        files[0].location
                    ),
                )
                .column(column)
                .expected("distinct column names in the header line")
            })?;
    }
    let partitions = if !spec.partitioned || urls.len() > 1 {
        Partitions::default()
    } else {
        partitions_of(&url, &files).map_err(|problem| {
            BadInput::new(role, uri, problem)
                .expected("the same key=value folder levels above every file")
        })?
    };
    let options = ListingOptions::new(file_format)
        .with_file_extension(extension)
        .with_table_partition_cols(
            partitions
                .columns
                .iter()
                .map(|c| (c.clone(), DataType::Utf8))
                .collect(),
        );
    let inferred = options
        .infer_schema(&state, &url)
        .await
        .map_err(|e| unreadable(&e))?;
    if let Some(clash) = partitions
        .columns
        .iter()
        .find(|c| inferred.field_with_name(c).is_ok())
    {
        return Err(BadInput::new(
            role,
            uri,
            "a partition folder name is also a column of the files",
        )
        .column(clash.clone())
        .expected("partition folder names distinct from the files' columns")
        .into());
    }
    let schema = if format == InputFormat::Parquet {
        inferred
    } else {
        text_keys_as_strings(&inferred)
    };
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(schema);
    let table = ListingTable::try_new(config)?;
    let raw = ctx.read_table(Arc::new(table))?;
    Ok(Input {
        role,
        uri: uri.to_string(),
        format,
        typed: raw.clone(),
        raw,
        checks: Vec::new(),
        partitions,
        normalize: spec.normalize,
        summed_from: None,
    })
}

/// `Err(name)` when the header line of a CSV file names a column twice (DataFusion keeps one
/// field of each name and then fails on every row: "incorrect number of fields for line 1").
/// Reads the first MiB only; a file it cannot read is left to the scan to report.
async fn duplicated_header(
    store: &dyn object_store::ObjectStore,
    file: &ObjectMeta,
    compression: FileCompressionType,
) -> std::result::Result<(), String> {
    use object_store::ObjectStoreExt;
    use std::io::BufRead;
    let Ok(head) = store
        .get_range(&file.location, 0..file.size.min(1 << 20))
        .await
    else {
        return Ok(());
    };
    let Ok(reader) = compression.convert_read(std::io::Cursor::new(head.to_vec())) else {
        return Ok(());
    };
    let mut line = Vec::new();
    if std::io::BufReader::new(reader)
        .read_until(b'\n', &mut line)
        .is_err()
    {
        return Ok(());
    }
    let Ok((schema, _)) = datafusion::arrow::csv::reader::Format::default()
        .with_header(true)
        .infer_schema(line.as_slice(), Some(0))
    else {
        return Ok(());
    };
    let mut seen = std::collections::HashSet::new();
    match schema
        .fields()
        .iter()
        .find(|f| !seen.insert(f.name().clone()))
    {
        Some(dup) => Err(dup.name().clone()),
        None => Ok(()),
    }
}

/// Reads Hive partitions from file paths: every file must sit under the same `key=` levels.
fn partitions_of(
    url: &ListingTableUrl,
    files: &[ObjectMeta],
) -> std::result::Result<Partitions, String> {
    let mut columns: Option<Vec<String>> = None;
    let mut values = std::collections::BTreeSet::new();
    for file in files {
        let Some(segments) = url.strip_prefix(&file.location) else {
            continue;
        };
        let segments: Vec<&str> = segments.collect();
        let folders = &segments[..segments.len().saturating_sub(1)];
        let (keys, raw): (Vec<String>, Vec<String>) = folders
            .iter()
            .filter_map(|s| s.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .unzip();
        // the values as DataFusion gives them in the partition columns: percent-decoded (Spark
        // writes `a:b` as `a%3Ab`), so that filtering a slice by its value finds its rows
        let vals: Vec<String> = helpers::parse_partitions_for_path(
            url,
            &file.location,
            keys.iter().map(String::as_str),
        )
        .map(|decoded| decoded.into_iter().map(|v| v.into_owned()).collect())
        .unwrap_or(raw);
        match &columns {
            None => columns = Some(keys),
            Some(known) if *known != keys => {
                return Err(format!(
                    "files are in differently partitioned folders: [{}] and [{}] (e.g. {})",
                    known.join(", "),
                    keys.join(", "),
                    file.location
                ));
            }
            Some(_) => {}
        }
        values.insert(vals);
    }
    let columns = columns.unwrap_or_default();
    let values = if columns.is_empty() {
        Vec::new()
    } else {
        values.into_iter().collect()
    };
    Ok(Partitions { columns, values })
}

/// CSV and JSON types are inferred from the first rows' values, so a query such as "1080" or a
/// product id such as "00123" would become a number (and "00123" collide with "123"). Keys are
/// always read as strings, counts as integers and scores as floats (a score column of "1"s early on
/// must not be read as integers); a column whose every value is empty (inferred Null) gets the
/// type the job expects so the row checks can report the empty values. A column inferred as text
/// where a number is expected is left as it is, to be reported as the wrong type.
fn text_keys_as_strings(schema: &Schema) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match (f.name().as_str(), f.data_type()) {
            ("query" | "neighbour" | "product_id", _) => Field::new(f.name(), DataType::Utf8, true),
            ("impressions" | "clicks" | "adds" | "purchases", DataType::Null | DataType::Int64) => {
                Field::new(f.name(), DataType::Int64, true)
            }
            ("score" | "h", DataType::Null | DataType::Int64 | DataType::Float64) => {
                Field::new(f.name(), DataType::Float64, true)
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// Format, compression and listing extension from a file name such as `x.csv.gz` or `*.parquet`.
fn name_suffix(uri: &str) -> Option<(InputFormat, FileCompressionType, String)> {
    let name = uri.rsplit('/').next()?.to_ascii_lowercase();
    let (stem, compression, compressed_ext) = [
        (".gz", FileCompressionType::GZIP),
        (".zst", FileCompressionType::ZSTD),
        (".bz2", FileCompressionType::BZIP2),
        (".xz", FileCompressionType::XZ),
    ]
    .into_iter()
    .find_map(|(ext, c)| {
        name.strip_suffix(ext)
            .map(|stem| (stem.to_string(), c, ext))
    })
    .unwrap_or((name.clone(), FileCompressionType::UNCOMPRESSED, ""));
    let (format, ext) = if stem.ends_with(".parquet") || stem.ends_with(".parq") {
        (InputFormat::Parquet, &stem[stem.rfind('.')?..])
    } else if stem.ends_with(".csv") {
        (InputFormat::Csv, ".csv")
    } else if stem.ends_with(".json") || stem.ends_with(".ndjson") || stem.ends_with(".jsonl") {
        (InputFormat::Json, &stem[stem.rfind('.')?..])
    } else {
        return None;
    };
    if format == InputFormat::Parquet && !compressed_ext.is_empty() {
        return None;
    }
    Some((format, compression, format!("{ext}{compressed_ext}")))
}

/// A folder without a format: the first visible file's name decides.
async fn detect_from_listing(
    ctx: &SessionContext,
    role: &'static str,
    uri: &str,
    url: &ListingTableUrl,
) -> Result<(InputFormat, FileCompressionType, String)> {
    let state = ctx.state();
    let store = ctx.runtime_env().object_store(url)?;
    let files: Vec<_> = url
        .list_all_files(&state, store.as_ref(), "")
        .await
        .map_err(|e| BadInput::new(role, uri, format!("cannot list the input: {e}")))?
        .try_collect()
        .await
        .map_err(|e| BadInput::new(role, uri, format!("cannot list the input: {e}")))?;
    let visible = files.iter().find_map(|meta| {
        let name = meta.location.filename()?;
        (!name.starts_with('_') && !name.starts_with('.')).then(|| name.to_string())
    });
    let Some(name) = visible else {
        return Err(BadInput::new(role, uri, "no files found")
            .expected(format!(
                "a Parquet, CSV or NDJSON file, or a folder/glob containing some{}",
                if uri.contains(storage::GLOB_CHARS) {
                    GLOB_HINT
                } else {
                    ""
                }
            ))
            .into());
    };
    name_suffix(&name).ok_or_else(|| {
        BadInput::new(role, uri, format!("cannot tell the format of '{name}'"))
            .expected("files ending in .parquet, .csv or .json/.ndjson (optionally .gz/.zst/.bz2/.xz), or set `format`")
            .into()
    })
}

/// DataFusion matches a glob against a file's path with its `key=value` folder levels left out, so
/// a glob that names those levels matches nothing.
const GLOB_HINT: &str = "; a glob is matched against each path without its key=value folders \
    (DataFusion): for out/dt=2026-01-01/part-0.parquet write out/*.parquet, not out/*/*.parquet";

/// A column a command requires: its name, the types it accepts, and what an error says is expected.
pub type Required = (&'static str, fn(&DataType) -> bool, &'static str);

/// Opens an input of a command other than the feature job (`mine ance`, `evaluate neighbours`):
/// requires `columns`, refuses an empty input, runs the FAIL `row_checks` (the error names the
/// input, the column and an example row) and sets `typed` to the required columns cast to Utf8,
/// Int64, Boolean or Float64. Returns the input and its row count.
pub async fn open_checked(
    ctx: &SessionContext,
    role: &'static str,
    spec: &InputSpec,
    columns: &[Required],
    row_checks: Vec<checks::Check>,
) -> Result<(Input, u64)> {
    let mut input = open_table(ctx, role, spec).await?;
    let mut typed = Vec::new();
    for (name, accept, expected) in columns {
        let data_type = input.require(name, *accept, expected)?;
        let target = if checks::is_string(&data_type) {
            DataType::Utf8
        } else if is_integer(&data_type) {
            DataType::Int64
        } else if is_boolean(&data_type) {
            DataType::Boolean
        } else {
            DataType::Float64
        };
        typed.push(cast(col(*name), target).alias(*name));
    }
    input.checks = row_checks;
    let (rows, _) = enforce(&input, &input.raw, &input.checks).await?;
    input.typed = input.raw.clone().select(typed)?;
    Ok((input, rows))
}

/// The error for an input without rows.
pub fn no_rows(input: &Input) -> BadInput {
    BadInput::new(input.role, &input.uri, "the input has no rows").expected("at least one row")
}

/// `name` as a SQL identifier: always in double quotes, quotes inside doubled (DataFusion's
/// `quote_identifier` leaves lower-case names bare, reserved words such as `order` among them),
/// for column names of the input spliced into a query that cannot take them as parameters.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub fn is_boolean(t: &DataType) -> bool {
    matches!(t, DataType::Boolean)
}

pub fn is_integer(t: &DataType) -> bool {
    t.is_integer()
}

pub fn is_number(t: &DataType) -> bool {
    t.is_integer() || t.is_floating()
}

/// Looks up a required column, checking its type with `accept`.
fn column_type(
    input: &Input,
    name: &str,
    accept: fn(&DataType) -> bool,
    expected: &str,
) -> Result<Option<DataType>> {
    let schema = input.raw.schema();
    let Some((_, field)) = schema.qualified_field_with_unqualified_name(name).ok() else {
        return Ok(None);
    };
    if !accept(field.data_type()) {
        let found = field.data_type();
        return Err(
            BadInput::new(input.role, &input.uri, format!("column has type {found}"))
                .column(name)
                .expected(expected.to_string())
                .into(),
        );
    }
    Ok(Some(field.data_type().clone()))
}

/// A [`BadInput`] for a missing column `name`, listing the columns `input` has.
pub fn missing(input: &Input, name: &str, expected: &str) -> Error {
    let have: Vec<String> = input
        .raw
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    BadInput::new(
        input.role,
        &input.uri,
        format!("missing column; the input has [{}]", have.join(", ")),
    )
    .column(name)
    .expected(expected.to_string())
    .into()
}

pub const STRING: &str = "a string column (Utf8)";

pub const KEY: &str = "a string or integer column";

pub const COUNT: &str = "an integer count column";

pub const FLOAT: &str = "a numeric (float) column";

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::AsArray;

    #[tokio::test]
    async fn partition_values_are_decoded_as_datafusion_decodes_them() {
        let dir = tempfile::tempdir().unwrap();
        for m in ["US", "a%3Ab", "x y"] {
            let folder = dir.path().join(format!("market={m}"));
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(folder.join("p.csv"), "query\nq\n").unwrap();
        }
        let ctx = SessionContext::new();
        let url = ListingTableUrl::parse(format!("{}/", dir.path().display())).unwrap();
        let store = ctx.runtime_env().object_store(&url).unwrap();
        let files: Vec<ObjectMeta> = url
            .list_all_files(&ctx.state(), store.as_ref(), ".csv")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        eprintln!(
            "{:?}",
            files
                .iter()
                .map(|f| f.location.to_string())
                .collect::<Vec<_>>()
        );
        let partitions = partitions_of(&url, &files).unwrap();
        assert_eq!(partitions.columns, ["market"]);
        let listed = ctx
            .read_csv(
                format!("{}/", dir.path().display()),
                datafusion::prelude::CsvReadOptions::new()
                    .table_partition_cols(vec![("market".into(), DataType::Utf8)]),
            )
            .await
            .unwrap()
            .select_columns(&["market"])
            .unwrap()
            .sort(vec![col("market").sort(true, true)])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let from_datafusion: Vec<String> = listed
            .iter()
            .flat_map(|b| {
                let c = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
                let c = c.as_string::<i32>();
                c.iter().map(|v| v.unwrap().to_string()).collect::<Vec<_>>()
            })
            .collect();
        let ours: Vec<String> = partitions.values.into_iter().flatten().collect();
        assert_eq!(ours, from_datafusion);
    }

    #[test]
    fn suffixes_name_format_and_compression() {
        let (f, c, e) = name_suffix("s3://b/x/part-0.csv.gz").unwrap();
        assert_eq!((f, e.as_str()), (InputFormat::Csv, ".csv.gz"));
        assert_eq!(c, FileCompressionType::GZIP);
        assert_eq!(name_suffix("/d/*.parquet").unwrap().2, ".parquet");
        assert_eq!(name_suffix("e.ndjson").unwrap().0, InputFormat::Json);
        assert!(name_suffix("/data/engagement/").is_none());
        assert!(name_suffix("x.parquet.gz").is_none());
    }
}
