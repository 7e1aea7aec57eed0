//! Quoted paths and URLs as tables in the shell: `SELECT * FROM 'out/daily/'`.
//!
//! DataFusion's URL tables read a file whose extension names its format. A folder (the backfill's
//! output, a partition folder, with `_SUCCESS` and `_manifest.json` beside the data), a glob, or
//! a file DataFusion cannot place is opened instead the way the job opens its inputs
//! ([`tables::open_table`]): the format from the first visible file, only files of that format,
//! `key=value` folders as partition columns, object stores from the environment.
//!
//! A folder holding a Delta table (`_delta_log/`) is read as the table at its current version
//! (delta-rs's provider, [`DeltaView`]): its folder also holds the files of replaced builds, which
//! only the log leaves out. `CREATE EXTERNAL TABLE t STORED AS DELTA LOCATION '...'` names one.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    DynamicFileCatalog, ScanArgs, ScanResult, Session, TableProvider, TableProviderFactory,
    UrlTableFactory,
};
use datafusion::common::{DataFusionError, Result, Statistics};
use datafusion::datasource::TableType;
use datafusion::datasource::dynamic_file::DynamicListTableFactory;
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::{CreateExternalTable, Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use datafusion_session::SessionStore;

use crate::config::InputSpec;
use crate::io::storage::Root;
use crate::io::tables;

/// The shell's [`UrlTableFactory`]: DataFusion's for files it reads, the job's opener otherwise.
#[derive(Debug)]
struct UrlTables {
    files: DynamicListTableFactory,
    /// The shell's session, set once it exists.
    session: SessionStore,
}

/// A name that can only mean a path or URL. A bare name (`target`) is a table that does not
/// exist, even where a folder of that name does: `'target/'` opens the folder.
fn looks_like_path(name: &str) -> bool {
    name.contains(['/', '*', '?', '[']) || name.contains("://")
}

/// A name that may be a folder (no file extension): a Delta table is looked for there.
fn may_be_folder(name: &str) -> bool {
    let last = name.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    name.ends_with('/') || !last.contains('.')
}

#[async_trait]
impl UrlTableFactory for UrlTables {
    async fn try_new(&self, url: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let state = self
            .session
            .get_session()
            .upgrade()
            .and_then(|s| s.read().as_any().downcast_ref::<SessionState>().cloned())
            .ok_or_else(|| DataFusionError::Internal("the shell's session is gone".into()))?;
        // a Delta table's folder holds replaced builds' files too: only its log says which count
        if looks_like_path(url)
            && may_be_folder(url)
            && !url.contains(crate::io::storage::GLOB_CHARS)
            && let Some(table) = DeltaView::open(&state, url).await?
        {
            return Ok(Some(Arc::new(table)));
        }
        if let Ok(Some(table)) = self.files.try_new(url).await {
            return Ok(Some(table));
        }
        if !looks_like_path(url) {
            return Ok(None);
        }
        let ctx = SessionContext::new_with_state(state);
        let input = tables::open_table(&ctx, "table", &InputSpec::new(url))
            .await
            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        Ok(Some(input.raw.into_view()))
    }
}

/// `ctx` with quoted paths and URLs readable as tables (see the module documentation).
pub fn enable(ctx: SessionContext) -> SessionContext {
    let catalogs = Arc::clone(ctx.state().catalog_list());
    let factory = Arc::new(UrlTables {
        files: DynamicListTableFactory::new(SessionStore::new()),
        session: SessionStore::new(),
    });
    let catalog_list = Arc::new(DynamicFileCatalog::new(
        catalogs,
        Arc::clone(&factory) as Arc<dyn UrlTableFactory>,
    ));
    let session_id = ctx.session_id();
    let mut state = ctx
        .into_state_builder()
        .with_session_id(session_id)
        .with_catalog_list(catalog_list)
        .build();
    state
        .table_factories_mut()
        .insert("DELTA".into(), Arc::new(DeltaTables));
    let ctx: SessionContext = state.into();
    factory
        .files
        .session_store()
        .with_state(ctx.state_weak_ref());
    factory.session.with_state(ctx.state_weak_ref());
    ctx
}

/// A Delta table in the shell: delta-rs's provider over the version it read, which `\d` shows.
#[derive(Debug)]
pub struct DeltaView {
    inner: Arc<dyn TableProvider>,
    pub uri: String,
    pub version: u64,
}

impl DeltaView {
    /// The Delta table at `uri`, or `None` when there is none there.
    pub async fn open(state: &SessionState, uri: &str) -> Result<Option<DeltaView>> {
        let plan_error = |e: crate::Error| DataFusionError::Plan(e.to_string());
        let root = Root::open(state.runtime_env(), uri).map_err(plan_error)?;
        let table = crate::io::sink::delta::open(&root)
            .await
            .map_err(plan_error)?;
        let Some(version) = table.version() else {
            return Ok(None);
        };
        let inner = table
            .table_provider()
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Some(DeltaView {
            inner,
            uri: crate::redact::text(&root.uri).into_owned(),
            version,
        }))
    }
}

#[async_trait]
impl TableProvider for DeltaView {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn Session,
        args: ScanArgs<'a>,
    ) -> Result<ScanResult> {
        self.inner.scan_with_args(state, args).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }

    fn statistics(&self) -> Option<Statistics> {
        self.inner.statistics()
    }
}

/// `CREATE EXTERNAL TABLE name STORED AS DELTA LOCATION 'path/or/url/'`: the table at its
/// current version, through the session's object stores.
#[derive(Debug)]
struct DeltaTables;

#[async_trait]
impl TableProviderFactory for DeltaTables {
    async fn create(
        &self,
        state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> Result<Arc<dyn TableProvider>> {
        let state = state
            .as_any()
            .downcast_ref::<SessionState>()
            .ok_or_else(|| DataFusionError::Internal("not a session state".into()))?;
        let [location] = cmd.locations.as_slice() else {
            return Err(DataFusionError::Plan(format!(
                "a Delta table has one LOCATION, not {}",
                cmd.locations.len()
            )));
        };
        match DeltaView::open(state, location).await? {
            Some(table) => Ok(Arc::new(table)),
            None => Err(DataFusionError::Plan(format!(
                "'{}' is not a Delta table (no _delta_log/ there)",
                crate::redact::text(location)
            ))),
        }
    }
}
