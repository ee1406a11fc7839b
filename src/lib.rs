//! The `dynkv` node's library: versions, the object codec and the cluster's
//! sans-IO state machines. The binary (`src/main.rs`) drives them with
//! glommio; `tests/simulation.rs` drives them with a seeded simulator.

pub mod cluster;
pub mod object;
pub mod version;
