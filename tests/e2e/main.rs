//! End-to-end tests: a real server on 127.0.0.1:0, real native clients, real sockets.

mod bad_input;
mod bus;
mod cache;
mod cli;
mod edge;
mod faults;
mod folder;
mod modules;
mod newcomer;
mod nginx;
mod offload;
mod patch;
mod security;
mod services;
mod shared;
mod store;
mod sync;
mod upload;
mod util;
mod watch;
