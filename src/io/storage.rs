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
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectMeta, ObjectStore, RetryConfig};
use url::Url;

use crate::error::{Error, Result};

pub const GLOB_CHARS: [char; 3] = ['*', '?', '['];

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
}

/// Where a URI points, for telling whether an output overlaps an input: its store (`file` or
/// scheme + bucket) and its path as segments, local paths absolute with `.`, `..` and symlinks
/// resolved; and the glob below the path, if any.
#[derive(Debug, Clone, PartialEq)]
struct Place {
    store: String,
    segments: Vec<String>,
    glob: Option<String>,
}

impl Place {
    fn of(uri: &str) -> Result<Place> {
        let (fixed, glob) = match uri.find(GLOB_CHARS) {
            Some(at) => {
                let split = uri[..at].rfind('/').map_or(0, |i| i + 1);
                (&uri[..split], Some(uri[split..].to_string()))
            }
            None => (uri, None),
        };
        if uri.contains("://") && !uri.starts_with("file://") {
            let url = Url::parse(fixed)
                .map_err(|e| Error::config(format!("'{uri}' is not a valid URL: {e}")))?;
            let scheme = match url.scheme() {
                "s3a" => "s3",
                "gcs" => "gs",
                other => other,
            };
            // the bucket without userinfo; segments decoded (`my%20data` is `my data`), as the
            // object store names them
            let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
            return Ok(Place {
                store: format!("{scheme}://{}{port}", url.host_str().unwrap_or_default()),
                segments: url
                    .path_segments()
                    .into_iter()
                    .flatten()
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        percent_encoding::percent_decode_str(s)
                            .decode_utf8_lossy()
                            .into_owned()
                    })
                    .collect(),
                glob,
            });
        }
        let local = fixed.strip_prefix("file://").unwrap_or(fixed);
        let local = if local.is_empty() { "." } else { local };
        let absolute = std::path::absolute(local)
            .map_err(|e| Error::config(format!("'{uri}' is not a valid path: {e}")))?;
        Ok(Place {
            store: "file".into(),
            segments: resolved(&absolute),
            glob,
        })
    }

    fn starts_with(&self, other: &Place) -> bool {
        self.store == other.store && self.segments.starts_with(&other.segments)
    }

    /// Whether the file at `self` (no glob) is one that `input` reads.
    fn read_by(&self, input: &Place) -> bool {
        if !self.starts_with(input) {
            return false;
        }
        let Some(glob) = &input.glob else {
            return true;
        };
        // the glob decides, as DataFusion decides when it lists the input: the path below the
        // glob's folder, without its key=value folders, matched by the pattern
        let below: Vec<&str> = self.segments[input.segments.len()..]
            .iter()
            .map(String::as_str)
            .filter(|s| !s.contains('='))
            .collect();
        glob::Pattern::new(glob).map_or(true, |pattern| pattern.matches(&below.join("/")))
    }
}

/// `path`'s segments with symlinks resolved in its longest existing part and `.`/`..` folded
/// in the rest.
fn resolved(path: &std::path::Path) -> Vec<String> {
    let mut existing = path;
    let mut rest = Vec::new();
    let base = loop {
        match existing.canonicalize() {
            Ok(real) => break real,
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_owned());
                    existing = parent;
                }
                _ => break existing.to_path_buf(),
            },
        }
    };
    let mut segments: Vec<String> = Vec::new();
    let parts = base
        .components()
        .map(|c| c.as_os_str().to_owned())
        .chain(rest.into_iter().rev());
    for part in parts {
        match part.to_string_lossy().as_ref() {
            "/" | "." | "" => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other.to_string()),
        }
    }
    segments
}

/// Refuses an output that is, contains or lies inside one of `inputs` ((role, URI) pairs):
/// writing there would replace input files, or a backfill's cleanup would delete them. `folder`
/// says the output is a folder that files are written below (backfill), not a file (`run`).
pub fn refuse_overlap(output: &str, folder: bool, inputs: &[(&str, &str)]) -> Result<()> {
    let out = Place::of(output)?;
    for (role, uri) in inputs {
        let input = Place::of(uri)?;
        let relation = if out.segments == input.segments && out.store == input.store {
            Some("is the same place as")
        } else if input.starts_with(&out) {
            Some("contains")
        } else if (folder && out.starts_with(&input)) || (!folder && out.read_by(&input)) {
            Some("lies inside")
        } else {
            None
        };
        if let Some(relation) = relation {
            return Err(Error::config(format!(
                "the output '{output}' {relation} the {role} input '{uri}': writing there would \
                 replace or delete input files; choose an output outside the inputs"
            )));
        }
    }
    Ok(())
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
    fn outputs_overlapping_inputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("in/e")).unwrap();
        std::fs::write(d.join("in/e/part-0.csv"), "x").unwrap();
        std::os::unix::fs::symlink(d.join("in"), d.join("link")).unwrap();
        let p = |s: &str| d.join(s).to_string_lossy().into_owned();
        let e = p("in/e/");
        let refused = |out: &str, folder: bool, input: &str| {
            refuse_overlap(out, folder, &[("engagement", input)]).is_err()
        };
        assert!(refused(&p("in/e/part-0.csv"), false, &p("in/e/part-0.csv")));
        assert!(
            refused(&p("in/e/f.parquet"), false, &e),
            "inside a folder input"
        );
        assert!(refused(&p("in/x/../e/f.parquet"), false, &e), "after ..");
        assert!(
            refused(&p("link/e/f.parquet"), false, &e),
            "through a symlink"
        );
        assert!(refused(
            &format!("file://{}", p("in/e/f.parquet")),
            false,
            &e
        ));
        assert!(
            refused(&p("in/e"), true, &e),
            "a backfill output equal to an input"
        );
        assert!(
            refused(&p("in"), true, &e),
            "a backfill output containing an input"
        );
        assert!(
            refused(&p("in/e/sub"), true, &e),
            "a backfill output inside an input"
        );
        assert!(!refused(&p("out/f.parquet"), false, &e));
        assert!(!refused(&p("in/f.parquet"), false, &e), "beside it is fine");
        assert!(
            !refused(&p("in/e/f.parquet"), false, &p("in/e/*.csv")),
            "not matched by the glob"
        );
        assert!(
            refused(&p("in/e/f.csv"), false, &p("in/e/*.csv")),
            "matched by the glob"
        );
        assert!(refused("s3://b/e/", true, "s3://b/e/dt=1/"));
        assert!(
            refused("s3://k:p@b/e/x.parquet", false, "s3://b/e/"),
            "userinfo is no bucket"
        );
        assert!(
            refused(
                "s3://b/my%20data/p.parquet",
                false,
                "s3://b/my data/*.parquet"
            ),
            "decoded segments, matched by the glob"
        );
        std::fs::create_dir_all(d.join("in/odd~%dir")).unwrap();
        assert!(
            refused(&p("in/odd~%dir/f.csv"), false, &p("in/odd~%dir/*.csv")),
            "a local folder with characters object_store escapes"
        );
        assert!(refused("s3a://b/e/f.parquet", false, "s3://b/e/"));
        assert!(!refused("s3://b/out/", true, "s3://b/e/"));
        assert!(!refused("s3://other/e/", true, "s3://b/e/"));
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
        let staged = crate::io::sink::staging::sibling(&loc);
        assert!(staged.filename().unwrap().starts_with("_q2q_staging."));
        assert_eq!(staged.parts().count(), loc.path.parts().count());
    }
}

/// A folder (local path or object-store URL) and the store that serves it.
#[derive(Debug, Clone)]
pub struct Root {
    /// As the user wrote it, without a trailing slash.
    pub uri: String,
    pub store: Arc<dyn ObjectStore>,
    pub prefix: ObjectPath,
    /// The folder on disk, for a local root.
    pub local: Option<std::path::PathBuf>,
    /// The folder as a URL, with a trailing slash (`file:///abs/path/`, `s3://bucket/prefix/`).
    pub url: Url,
}

impl Root {
    pub fn open(runtime: &RuntimeEnv, uri: &str) -> Result<Root> {
        let uri = uri.trim_end_matches('/').to_string();
        let url = table_url(&format!("{uri}/"))?;
        register_store(runtime, url.get_url())?;
        let store = runtime.object_store(url.object_store())?;
        let local = match url.get_url().scheme() {
            "file" => url.get_url().to_file_path().ok(),
            _ => None,
        };
        Ok(Root {
            local,
            prefix: url.prefix().clone(),
            store,
            uri,
            url: url.get_url().clone(),
        })
    }

    /// The URI of `relative` below the root.
    pub fn uri_of(&self, relative: &str) -> String {
        format!("{}/{relative}", self.uri)
    }

    pub fn path_of(&self, relative: &str) -> ObjectPath {
        relative
            .split('/')
            .filter(|p| !p.is_empty())
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }

    /// Every object below the root (recursively), hidden ones included.
    pub async fn list(&self) -> Result<Vec<ObjectMeta>> {
        self.list_below(&self.prefix).await
    }

    pub async fn list_below(&self, prefix: &ObjectPath) -> Result<Vec<ObjectMeta>> {
        Ok(self.store.list(Some(prefix)).try_collect().await?)
    }

    /// The path of `meta` relative to the root, as its segments.
    pub fn relative(&self, meta: &ObjectMeta) -> Vec<String> {
        meta.location
            .prefix_match(&self.prefix)
            .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
            .unwrap_or_default()
    }
}
