//! placeholder
pub mod drift;
pub mod train;
