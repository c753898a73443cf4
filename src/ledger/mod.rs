//! The finance ledger: billing periods and their CSV.

pub mod csv;
