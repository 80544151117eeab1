//! SFAM Studio core library: everything except the user interfaces.
//!
//! Layers, lowest first (see `ARCHITECTURE.md`): [`data`] reads and writes
//! the files a user owns (score tables, dataset folders); [`metrics`] turns
//! scores into the figures researchers compare across domains (AUC, EER,
//! AP, threshold transfer, calibration, the Cross-AUC matrix); [`face`]
//! and [`model`] find, align and score faces; [`engine`] scores whole
//! datasets (batches, cache, progress, per-file errors). Nothing here
//! knows about the command line or the GUI.

pub mod data;
pub mod engine;
pub mod face;
pub mod metrics;
pub mod model;
pub mod train;
