//! understudy: clone a cluster's primary head node onto a standby and keep it ready.
//!
//! The library holds every component; `main.rs` only parses the command line and wires
//! them together.

pub mod agent;
pub mod archive;
pub mod boot;
pub mod capture;
pub mod cli;
pub mod config;
pub mod db;
pub mod deploy;
pub mod dhcp;
pub mod error;
pub mod failover;
pub mod fsx;
pub mod http;
pub mod inventory;
pub mod layout;
pub mod netcfg;
pub mod progress;
pub mod pull;
pub mod pxe;
pub mod ratelog;
pub mod remote;
pub mod store;
pub mod sync;
pub mod tftp;
pub mod update;
pub mod wire;
pub mod wizard;
