//! One module per top-level command.

pub mod agent;
pub mod cache;
pub mod demo;
pub mod dp;
pub mod get;
pub mod rdc;
