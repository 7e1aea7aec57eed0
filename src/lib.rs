//! q2q-prior: turns query-to-query (Q2Q) similarity into ranking features for product search.
//!
//! Data flow, one module per step:
//! [`pipeline::inputs`] -> [`pipeline::history`] (H) -> [`pipeline::neighbour_sets`] (C_q) ->
//! [`pipeline::prior`] -> [`pipeline::blend`] (alpha, F) -> [`sink`].
//! [`session`] is the one place a DataFusion session is prepared; [`formula`] holds the paper's
//! formulas once; [`reference`] is a plain in-memory oracle used by the property tests.
//! [`validate`] reports the job's input checks; [`shell`] is the SQL shell over the job's views.
//! [`backfill`] runs the job once per day into a feature store's date partitions.

pub mod backfill;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod error;
pub mod evaluate;
pub mod export;
pub mod feature_table;
pub mod formula;
pub mod job;
pub mod labels;
pub mod mine;
pub mod normalize;
pub mod pipeline;
pub mod process;
pub mod redact;
pub mod reference;
pub mod session;
pub mod shell;
pub mod sink;
pub mod storage;
pub mod synth;
pub mod udf;
pub mod validate;

pub use error::{Error, Result};
