//! The `assetsync` binary's crates under one name, for its tests and benchmarks: the server
//! ([`assetsync_server`]) and the native client ([`assetsync_client`]).

pub use assetsync_client::{Error, cache, pull, push, status};
pub use assetsync_server::{
    ServeConfig, SessionLimits, StoreConfig, bus, demo, encode, index, modules, offload, origin, roots, run,
    server, shared, store, upstream, watch,
};
