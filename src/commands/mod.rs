//! The verbs' bodies, one module per verb or group of verbs; `main.rs` parses
//! the command line (`crate::cli`), loads the settings, starts tracing and
//! calls one of these. Each returns an error for `main` to print; what a verb
//! prints on success it prints itself.

pub mod import;
pub mod ledger;
pub mod migrate;
pub mod receive;
pub mod render;
pub mod serve;
