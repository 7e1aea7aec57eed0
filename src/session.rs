//! The one place that prepares a DataFusion session: runtime (memory limit, spilling), settings,
//! the project's UDFs, object stores and the input tables.
//!
//! `run` and the tests go through here, and [`register_functions`] takes any function registry (a
//! distributed executor's too), so sessions can never disagree on what a name means.

use std::sync::Arc;

use datafusion::execution::FunctionRegistry;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::config::{ExecutionConfig, JobConfig};
use crate::error::Result;
use crate::pipeline::inputs::{self, Inputs};
use crate::{storage, udf};

/// Registers every UDF of the project on a function registry (a session state, or the registry a
/// Ballista executor decodes plans with).
pub fn register_functions(registry: &mut dyn FunctionRegistry) -> Result<()> {
    for f in udf::all() {
        registry.register_udf(Arc::new(f))?;
    }
    Ok(())
}

/// Session settings derived from the execution config.
pub fn session_config(execution: &ExecutionConfig) -> SessionConfig {
    let mut config = SessionConfig::new().with_information_schema(true);
    if let Some(n) = execution.target_partitions {
        config = config.with_target_partitions(n);
    }
    config.options_mut().optimizer.prefer_hash_join =
        execution.join == crate::config::JoinAlgorithm::Hash;
    config
}

/// The runtime: a spill-capable memory pool when a limit is set, an OS temp folder for spills, and
/// object stores resolved from each provider's environment on first use.
pub fn runtime_env(execution: &ExecutionConfig) -> Result<Arc<RuntimeEnv>> {
    // The default disk manager spills to the OS temp folder.
    let mut builder = RuntimeEnvBuilder::new().with_object_store_registry(Arc::new(
        storage::EnvStoreRegistry::new(
            execution.object_store_retries,
            std::time::Duration::from_secs(execution.object_store_retry_timeout_secs),
        ),
    ));
    if let Some(limit) = execution.memory_limit {
        builder = builder.with_memory_pool(Arc::new(FairSpillPool::new(limit.as_u64() as usize)));
    }
    Ok(builder.build_arc()?)
}

/// A session with settings, runtime and UDFs, but no tables.
pub fn new_context(execution: &ExecutionConfig) -> Result<SessionContext> {
    new_context_with_runtime(execution, runtime_env(execution)?)
}

/// Like [`new_context`] but on an existing runtime, so several sessions (one per input partition)
/// share one memory pool, spill folder and set of object stores.
pub fn new_context_with_runtime(
    execution: &ExecutionConfig,
    runtime: Arc<RuntimeEnv>,
) -> Result<SessionContext> {
    let mut state = SessionStateBuilder::new()
        .with_default_features()
        .with_config(session_config(execution))
        .with_runtime_env(runtime)
        .build();
    register_functions(&mut state)?;
    if let Some(url) = &execution.cluster {
        state = crate::cluster::client_state(state, url)?;
    }
    Ok(SessionContext::new_with_state(state))
}

/// Everything a job session needs: [`new_context`] plus the registered inputs.
pub async fn open(config: &JobConfig) -> Result<(SessionContext, Inputs)> {
    open_with_runtime(config, runtime_env(&config.execution)?).await
}

/// [`open`] on an existing runtime (several jobs sharing one memory pool and object stores).
pub async fn open_with_runtime(
    config: &JobConfig,
    runtime: Arc<RuntimeEnv>,
) -> Result<(SessionContext, Inputs)> {
    let ctx = new_context_with_runtime(&config.execution, runtime)?;
    let inputs = inputs::register(&ctx, config).await?;
    Ok((ctx, inputs))
}
