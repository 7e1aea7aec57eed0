//! The one place that prepares a DataFusion session: runtime (memory limit, spilling), settings,
//! the project's UDFs, object stores, the codecs of the merge plan's custom parts, and the input
//! tables.
//!
//! `run`, every other command and the tests go through here; a client of a Ballista cluster is an
//! ordinary session upgraded by [`client_state`], and the scheduler and the executors
//! (`crate::cluster`) take their functions, object stores and codecs from here too
//! ([`register_functions`], [`runtime_builder`], [`codecs`]), so no two processes can disagree on
//! what a name means or how a plan is encoded.

use std::sync::Arc;

use ballista_core::extension::{SessionConfigExt, SessionStateExt};
use datafusion::execution::FunctionRegistry;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::PhysicalExtensionCodec;

use crate::config::{ExecutionConfig, JobConfig};
use crate::error::Result;
use crate::io::storage;
use crate::pipeline::inputs::{self, Inputs};
use crate::pipeline::merge;
use crate::udf;

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
    let mut builder = runtime_builder(execution);
    if let Some(limit) = execution.memory_limit {
        builder = builder.with_memory_pool(Arc::new(FairSpillPool::new(limit.as_u64() as usize)));
    }
    Ok(builder.build_arc()?)
}

/// A runtime's object stores: each provider's, built from the process's environment on first use,
/// with the execution config's retries. Memory pool and spill folder are the caller's.
pub fn runtime_builder(execution: &ExecutionConfig) -> RuntimeEnvBuilder {
    RuntimeEnvBuilder::new().with_object_store_registry(Arc::new(storage::EnvStoreRegistry::new(
        execution.object_store_retries,
        std::time::Duration::from_secs(execution.object_store_retry_timeout_secs),
    )))
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
    let mut state = with_physical_rules(SessionStateBuilder::new().with_default_features())
        .with_config(session_config(execution))
        .with_runtime_env(runtime)
        .build();
    register_functions(&mut state)?;
    if let Some(url) = &execution.cluster {
        state = client_state(state, url)?;
    }
    Ok(SessionContext::new_with_state(state))
}

/// Makes empty sessions like `ctx`'s on its runtime: the job's slices, one per partition of the
/// engagement input ([`crate::pipeline::NewSession`]).
pub fn siblings<'a>(
    ctx: &'a SessionContext,
    execution: &'a ExecutionConfig,
) -> impl Fn() -> Result<SessionContext> + 'a {
    move || new_context_with_runtime(execution, ctx.runtime_env())
}

/// Registers the job's stage views on `ctx` ([`crate::pipeline::register_job_views`]), each
/// input partition's slice in a session of [`siblings`].
pub async fn register_job_views(
    ctx: &SessionContext,
    inputs: &Inputs,
    config: &JobConfig,
    materialize: &[&str],
) -> Result<crate::pipeline::StageTimings> {
    crate::pipeline::register_job_views(
        ctx,
        inputs,
        &config.execution,
        &config.features,
        materialize,
        &siblings(ctx, &config.execution),
    )
    .await
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

/// `builder` with the project's physical optimizer rules after DataFusion's: every session that
/// plans (a local run, a Ballista scheduler's) gets them from here.
pub fn with_physical_rules(builder: SessionStateBuilder) -> SessionStateBuilder {
    builder.with_physical_optimizer_rule(Arc::new(merge::share::ReadInputsInMergeStage))
}

/// A client session: `state` (settings, runtime, functions) with Ballista's query planner, so
/// that its queries run on the cluster at `url`.
pub fn client_state(state: SessionState, url: &str) -> Result<SessionState> {
    let scheduler = crate::config::scheduler_address(url)?;
    // the planner Ballista installs takes its codec from the config it upgrades
    let (logical, physical) = codecs();
    let config = state
        .config()
        .clone()
        .with_ballista_logical_extension_codec(logical)
        .with_ballista_physical_extension_codec(physical);
    let state = SessionStateBuilder::new_from_existing(state)
        .with_config(config)
        .build();
    // upgrading swaps in Ballista's function set: ours are registered again
    let state = state.upgrade_for_ballista(scheduler)?;
    // Ballista 55's adaptive planner stalls a job for good when an executor dies during it
    // (task updates of the rolled-back stages are rejected); the static planner reruns the lost
    // work (docs/DISTRIBUTED.md, "When an executor dies"; tests/cluster.rs kills one).
    let config = state
        .config()
        .clone()
        .with_ballista_adaptive_query_planner(false);
    let mut state = SessionStateBuilder::new_from_existing(state)
        .with_config(config)
        .build();
    register_functions(&mut state)?;
    Ok(state)
}

/// Ballista's codecs plus the merge plan's table and operator: the client encodes with them, the
/// scheduler and the executors decode.
pub fn codecs() -> (
    Arc<dyn LogicalExtensionCodec>,
    Arc<dyn PhysicalExtensionCodec>,
) {
    (
        Arc::new(merge::codec::LogicalCodec::default()),
        Arc::new(merge::codec::PhysicalCodec::default()),
    )
}
