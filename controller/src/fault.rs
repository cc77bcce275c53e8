//! Fault points for the fault matrix: [`drover_protocol::fault`] (feature
//! `sim` turns them on), so `drover serve` can be killed at an exact phase.

pub(crate) use drover_protocol::fault::hit;
