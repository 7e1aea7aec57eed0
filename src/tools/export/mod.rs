//! Exports of the feature table for downstream trainers.

pub mod lightgbm;
