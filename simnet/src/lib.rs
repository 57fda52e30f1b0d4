//! peerdelta-simnet: a deterministic discrete-event simulator that runs the
//! protocol state machines over simulated subnets (work in progress).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
