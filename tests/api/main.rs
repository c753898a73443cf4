//! Black-box tests: the real router on port 0, a real database, local servers
//! standing in for the internet. Each test runs on SQLite, and again on
//! PostgreSQL in an ignored variant (`cargo test -- --include-ignored` with
//! NOTIMETER_TEST_POSTGRES_URL set); tests that need a tool beyond Cargo are
//! ignored too, with the reason.

mod helpers;

mod alertmanager;
mod cancel;
mod channels;
mod cli;
mod connections;
mod consul;
mod delivery;
mod deploy;
mod errors;
mod group_commit;
mod guard;
mod ingest;
mod ingest_limit;
mod integrations;
mod ledger;
mod lifecycle;
mod limits;
mod log;
mod login;
mod metering;
mod openapi;
mod order;
mod outage;
mod page;
mod reconcile;
mod render;
mod routing;
mod templates;
mod units;
