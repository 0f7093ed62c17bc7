//! The warmpool service and command line: configuration, the reconciler driver, the executor, job workers, the
//! exec provisioner, the HTTP API and the client commands. The binary (`main.rs`) only parses the command line and
//! calls [`cli::run`]; everything else is here so integration tests can drive the parts directly.

pub mod api;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod executor;
pub mod metrics;
pub mod notify;
pub mod provisioner;
pub mod reconciler;
pub mod template_input;
pub mod worker;
