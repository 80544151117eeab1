//! SFAM Studio core library: everything except the user interfaces.
//!
//! Layers, lowest first (see `ARCHITECTURE.md`): [`data`] reads and writes
//! the files a user owns (score tables, dataset folders); [`metrics`] turns
//! scores into the figures researchers compare across domains (AUC, EER,
//! AP, threshold transfer, calibration, the Cross-AUC matrix). Nothing here
//! knows about the command line or the GUI.

pub mod data;
pub mod face;
pub mod metrics;
pub mod model;
pub mod train;
