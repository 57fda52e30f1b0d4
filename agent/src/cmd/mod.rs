//! One module per top-level command.

pub mod demo;
pub mod rdc;
