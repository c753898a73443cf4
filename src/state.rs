//! What every handler shares: settings, store, metrics, the integrations, the
//! ledger, the clock, and the signals between them. Built by `app`, used by
//! `api` and `ingest` without either importing `app`.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::api::throttle::LoginThrottle;
use crate::clock::Clock;
use crate::config::Settings;
use crate::dispatch::Registry;
use crate::ledger::Ledger;
use crate::metering::Metrics;
use crate::routing::Routes;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Arc<Store>,
    /// Every channel, parsed, for ingest and the dispatcher to route by.
    pub routes: Arc<Routes>,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    /// Poked when new messages are queued, so idle workers start at once.
    pub wake: Arc<Notify>,
    pub ledger: Arc<Ledger>,
    /// Poked when a channel changes, so the Alertmanager config is rendered again.
    pub render_trigger: Arc<Notify>,
    /// Wrong tokens on `/login`, per client address.
    pub login_throttle: Arc<LoginThrottle>,
    /// What the handlers read the time from (sessions, dedupe, channel saves).
    pub clock: Clock,
}

impl AppState {
    /// After a channel was saved or deleted here: routes by it at once (not
    /// only at the next refresh), and renders Alertmanager's config again.
    pub async fn channels_changed(&self) {
        self.render_trigger.notify_one();
        if let Err(e) = self.routes.refresh().await {
            tracing::warn!(error = %crate::error::Causes(&e),
                "the routing index did not take the change now; it will at its next refresh");
        }
    }
}
