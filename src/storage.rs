//! Where data lives: turning user URIs into DataFusion table URLs and object stores.
//!
//! Local paths (relative, absolute, with globs), `file://`, `s3://`, `gs://` and `az://`/`abfs://`
//! URLs are accepted. Cloud stores are built from the standard environment of each provider
//! (`AWS_*`, `GOOGLE_*`, `AZURE_*`), so credentials never pass through our config or logs.

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::datasource::listing::ListingTableUrl;
use datafusion::error::{DataFusionError, Result as DataFusionResult};
use datafusion::execution::object_store::{
    DefaultObjectStoreRegistry, ObjectStoreRegistry, ObjectStoreUrl,
};
use datafusion::execution::runtime_env::RuntimeEnv;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};
use url::Url;

use crate::error::{Error, Result};

const GLOB_CHARS: [char; 3] = ['*', '?', '['];

/// Parses a user URI into a listing URL. DataFusion only understands globs in local paths, so a
/// glob in an object-store URL is split here into its fixed prefix and the pattern below it.
pub fn table_url(uri: &str) -> Result<ListingTableUrl> {
    let parsed = if uri.contains("://") && !uri.starts_with("file://") {
        match uri.find(GLOB_CHARS) {
            Some(glob_at) => {
                let split = uri[..glob_at].rfind('/').map_or(0, |i| i + 1);
                ListingTableUrl::parse(&uri[..split])?.with_glob(&uri[split..])
            }
            None => ListingTableUrl::parse(uri),
        }
    } else {
        ListingTableUrl::parse(uri.strip_prefix("file://").unwrap_or(uri))
    };
    parsed.map_err(|e| Error::config(format!("'{uri}' is not a valid path or URL: {e}")))
}

/// The sessions' object-store registry: local files as DataFusion serves them, and an `s3://`,
/// `gs://` or `az://` bucket built from its provider's environment the first time a URL in it is
/// used, whoever uses it (input listing, the sink, `COPY ... TO` or a table URL in the SQL shell).
/// Failed requests to cloud stores are retried with exponential backoff (object_store's retry
/// logic: connection errors, timeouts, 5xx and 429 responses), up to `retry`'s limits; other
/// errors (missing object, access denied) fail at once.
#[derive(Debug, Default)]
pub struct EnvStoreRegistry {
    inner: DefaultObjectStoreRegistry,
    retry: RetryConfig,
}

impl EnvStoreRegistry {
    pub fn new(max_retries: usize, retry_timeout: std::time::Duration) -> Self {
        EnvStoreRegistry {
            inner: DefaultObjectStoreRegistry::default(),
            retry: RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries,
                retry_timeout,
            },
        }
    }
}

impl ObjectStoreRegistry for EnvStoreRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.inner.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> DataFusionResult<Arc<dyn ObjectStore>> {
        self.inner.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> DataFusionResult<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.inner.get_store(url) {
            return Ok(store);
        }
        match build_store(url, &self.retry) {
            Ok(Some(store)) => {
                // two threads may race here; both build an equivalent store and the last one stays
                self.inner.register_store(url, Arc::clone(&store));
                Ok(store)
            }
            Ok(None) => self.inner.get_store(url),
            Err(e) => Err(DataFusionError::Configuration(e.to_string())),
        }
    }
}

/// Makes the object store that serves `url` known to the runtime (a no-op for local files, which
/// DataFusion serves by default), so that a bad URL or missing credentials fail here with a clear
/// message rather than in the middle of a plan. Idempotent. Sessions made by
/// [`crate::session`] build the store through [`EnvStoreRegistry`] (with its retry settings);
/// other runtimes get one with object_store's default retries.
pub fn register_store(runtime: &RuntimeEnv, url: &Url) -> Result<()> {
    if url.scheme() == "file" {
        return Ok(());
    }
    match runtime.object_store_registry.get_store(url) {
        Ok(_) => Ok(()),
        Err(_) => {
            if let Some(store) = build_store(url, &RetryConfig::default())? {
                let base = ObjectStoreUrl::parse(&url[..url::Position::BeforePath])?;
                runtime.register_object_store(base.as_ref(), store);
            }
            Ok(())
        }
    }
}

fn build_store(url: &Url, retry: &RetryConfig) -> Result<Option<Arc<dyn ObjectStore>>> {
    let store: Arc<dyn ObjectStore> = match url.scheme() {
        "file" => return Ok(None),
        "s3" | "s3a" => Arc::new(
            AmazonS3Builder::from_env()
                .with_url(url.as_str())
                .with_retry(retry.clone())
                .build()?,
        ),
        "gs" | "gcs" => Arc::new(
            GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .with_retry(retry.clone())
                .build()?,
        ),
        "az" | "azure" | "abfs" | "abfss" | "adl" => Arc::new(
            MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .with_retry(retry.clone())
                .build()?,
        ),
        other => {
            return Err(Error::config(format!(
                "unsupported URL scheme '{other}://' in '{url}': use a local path, file://, s3://, gs:// or az://"
            )));
        }
    };
    Ok(Some(store))
}

/// A single output object: the store that holds it and its path in that store.
#[derive(Debug, Clone)]
pub struct OutputLocation {
    pub uri: String,
    pub store: Arc<dyn ObjectStore>,
    pub path: ObjectPath,
    /// The destination's folder on the local filesystem, created only when writing starts.
    pub local_dir: Option<PathBuf>,
}

impl OutputLocation {
    /// Resolves `uri` (which must name a file, not a folder) against the runtime's stores.
    pub fn resolve(runtime: &RuntimeEnv, uri: &str) -> Result<OutputLocation> {
        if uri.ends_with('/') || uri.contains(GLOB_CHARS) {
            return Err(Error::config(format!(
                "output '{uri}' must name a file (e.g. out/features.parquet), not a folder or glob"
            )));
        }
        let url = table_url(uri)?;
        register_store(runtime, url.get_url())?;
        let store = runtime.object_store(url.object_store())?;
        let local_dir = match url.scheme() {
            "file" => url
                .get_url()
                .to_file_path()
                .ok()
                .and_then(|p| p.parent().map(PathBuf::from)),
            _ => None,
        };
        Ok(OutputLocation {
            uri: uri.to_string(),
            store,
            path: url.prefix().clone(),
            local_dir,
        })
    }

    /// A sibling path for staging. It starts with `_` (skipped by pyarrow, Spark, Hive) and ends in
    /// `.partial` (skipped by DataFusion, which selects files by extension), so readers of the
    /// destination's folder never see it; the process id and a timestamp keep concurrent runs apart.
    pub fn staging_sibling(&self) -> ObjectPath {
        let name = self.path.filename().unwrap_or("output");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let staged = format!("_q2q_staging.{}.{nanos}.{name}.partial", std::process::id());
        let parts: Vec<_> = self.path.parts().collect();
        match parts.split_last() {
            Some((_, parents)) => parents
                .iter()
                .cloned()
                .chain([staged.as_str().into()])
                .collect(),
            None => ObjectPath::from(staged),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_in_object_store_urls_are_split() {
        let url = table_url("s3://bucket/data/part-*.parquet").unwrap();
        assert_eq!(url.prefix().as_ref(), "data");
        assert!(url.contains(&ObjectPath::from("data/part-0.parquet"), false));
        assert!(!url.contains(&ObjectPath::from("data/other.csv"), false));
        // DataFusion matches globs against the path without its key=value folder levels
        assert!(url.contains(&ObjectPath::from("data/dt=1/part-0.parquet"), false));
    }

    #[test]
    fn local_paths_and_file_urls() {
        let url = table_url("/tmp/x/engagement.csv").unwrap();
        assert_eq!(url.scheme(), "file");
        assert_eq!(url.prefix().as_ref(), "tmp/x/engagement.csv");
        let url = table_url("file:///tmp/x/").unwrap();
        assert!(url.is_collection());
    }

    #[test]
    fn unknown_schemes_are_config_errors() {
        let url = Url::parse("ftp://host/x").unwrap();
        let runtime = RuntimeEnv::default();
        let err = register_store(&runtime, &url).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn the_registry_builds_cloud_stores_on_first_use() {
        let registry = EnvStoreRegistry::default();
        let local = Url::parse("file:///tmp/x").unwrap();
        assert!(registry.get_store(&local).is_ok());
        let s3 = Url::parse("s3://some-bucket/a/b.parquet").unwrap();
        let first = registry.get_store(&s3).unwrap();
        let again = registry.get_store(&s3).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "one store per bucket");
        let ftp = Url::parse("ftp://host/x").unwrap();
        let err = registry.get_store(&ftp).unwrap_err().to_string();
        assert!(err.contains("unsupported URL scheme"), "{err}");
    }

    #[test]
    fn staging_is_a_hidden_sibling() {
        let runtime = RuntimeEnv::default();
        let dir = tempfile::tempdir().unwrap();
        let uri = dir.path().join("out/features.parquet");
        let loc = OutputLocation::resolve(&runtime, uri.to_str().unwrap()).unwrap();
        let staged = loc.staging_sibling();
        assert!(staged.filename().unwrap().starts_with("_q2q_staging."));
        assert_eq!(staged.parts().count(), loc.path.parts().count());
    }
}
