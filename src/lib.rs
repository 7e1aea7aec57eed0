//! q2q-prior: turns query-to-query (Q2Q) similarity into ranking features for product search.
//!
//! docs/ARCHITECTURE.md is the map. In short, from the bottom up (a module uses only those above
//! it in this list, never one below):
//!
//! - Foundation: [`error`], [`redact`], [`process`], [`hash`], [`formula`] (the paper's formulas,
//!   once), [`config`], [`normalize`], [`udf`] (the formulas as SQL functions).
//! - [`io`]: object stores and paths, opening tables, writing results atomically.
//! - [`pipeline`]: the feature job's stages, in data-flow order: [`pipeline::inputs`] ->
//!   [`pipeline::history`] (H) -> [`pipeline::neighbour_sets`] (C_q) -> [`pipeline::prior`] ->
//!   [`pipeline::blend`] (alpha, F), and [`pipeline::merge`], the fast plan of the last three.
//! - [`session`]: the one place a session is prepared (functions, object stores, codecs, inputs),
//!   for local runs, Ballista clients, schedulers and executors alike.
//! - The engine's commands: [`job`] (`run`), [`backfill`], [`shell`] (`sql`), [`cluster`]
//!   (Ballista's scheduler and executor).
//! - [`tools`]: validate, evaluate, export, mine, synth.
//! - [`cli`]: flags and subcommands over all of the above.
//!
//! [`reference`] is a plain in-memory oracle used by the property tests.

pub mod error;
pub mod formula;
pub mod hash;
pub mod process;
pub mod redact;

pub mod config;
pub mod normalize;
pub mod udf;

pub mod io;
pub mod pipeline;
pub mod session;

pub mod backfill;
pub mod cluster;
pub mod job;
pub mod shell;

pub mod tools;

pub mod cli;
pub mod reference;

pub use error::{Error, Result};
