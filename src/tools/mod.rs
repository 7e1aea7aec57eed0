//! The tools around the feature job, each a command of its own: checking the inputs
//! ([`validate`]), evaluating neighbour lists and feature tables ([`evaluate`]), exporting a
//! ranker's training files ([`export`]), mining the upstream model's training pairs ([`mine`]) and
//! generating a synthetic marketplace ([`synth`]). They read the job's inputs and outputs through
//! the engine's [`crate::io`] and [`crate::session`], never the other way round.

pub mod evaluate;
pub mod export;
pub mod feature_table;
pub mod labels;
pub mod mine;
pub mod synth;
pub mod validate;
