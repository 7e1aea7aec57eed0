//! Quoted paths and URLs as tables in the shell: `SELECT * FROM 'out/daily/'`.
//!
//! DataFusion's URL tables read a file whose extension names its format. A folder (the backfill's
//! output, a partition folder, with `_SUCCESS` and `_manifest.json` beside the data), a glob, or
//! a file DataFusion cannot place is opened instead the way the job opens its inputs
//! ([`inputs::open_table`]): the format from the first visible file, only files of that format,
//! `key=value` folders as partition columns, object stores from the environment.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{DynamicFileCatalog, TableProvider, UrlTableFactory};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::dynamic_file::DynamicListTableFactory;
use datafusion::execution::session_state::SessionState;
use datafusion::prelude::SessionContext;
use datafusion_session::SessionStore;

use crate::config::InputSpec;
use crate::pipeline::inputs;

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

#[async_trait]
impl UrlTableFactory for UrlTables {
    async fn try_new(&self, url: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Ok(Some(table)) = self.files.try_new(url).await {
            return Ok(Some(table));
        }
        if !looks_like_path(url) {
            return Ok(None);
        }
        let state = self
            .session
            .get_session()
            .upgrade()
            .and_then(|s| s.read().as_any().downcast_ref::<SessionState>().cloned())
            .ok_or_else(|| DataFusionError::Internal("the shell's session is gone".into()))?;
        let ctx = SessionContext::new_with_state(state);
        let input = inputs::open_table(&ctx, "table", &InputSpec::new(url))
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
    let ctx: SessionContext = ctx
        .into_state_builder()
        .with_session_id(session_id)
        .with_catalog_list(catalog_list)
        .build()
        .into();
    factory
        .files
        .session_store()
        .with_state(ctx.state_weak_ref());
    factory.session.with_state(ctx.state_weak_ref());
    ctx
}
