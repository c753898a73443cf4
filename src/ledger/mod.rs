//! The finance ledger: billing periods, per-user statements (settle), prices
//! frozen at close, immutable CSV reports, the close schedule and retention,
//! the bills (per-customer sums) and the finance page.

pub mod bill;
pub mod csv;
pub mod money;
pub mod page;
pub mod scheduler;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tracing::{error, info, instrument, warn};

use crate::atomic::{self, AtomicFile};
use crate::clock::{Clock, Millis};
use crate::config::Settings;
use crate::domain::IntegrationKind;
use crate::metering::Metrics;
use crate::store::{Freeze, Period, Store};

pub struct Ledger {
    pub store: Arc<Store>,
    pub settings: Arc<Settings>,
    metrics: Option<Arc<Metrics>>,
    /// When "now" is, for closes, settles, the schedule and retention.
    pub clock: Clock,
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The SHA-256 of a file, read in pieces. Blocking: from async code, use
/// [`sha256_file_off_runtime`].
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// [`sha256_file`] on the blocking pool, so that reading and hashing a
/// report does not hold up one of the runtime's worker threads.
pub async fn sha256_file_off_runtime(path: PathBuf) -> std::io::Result<String> {
    tokio::task::spawn_blocking(move || sha256_file(&path))
        .await
        .map_err(std::io::Error::other)?
}

impl Ledger {
    pub fn new(
        store: Arc<Store>,
        settings: Arc<Settings>,
        metrics: Option<Arc<Metrics>>,
        clock: Clock,
    ) -> Self {
        Self {
            store,
            settings,
            metrics,
            clock,
        }
    }

    fn freeze(&self, user: Option<&str>) -> Freeze {
        let b = &self.settings.billing;
        Freeze {
            currency: b.currency.clone(),
            bill_failed: b.bill_failed,
            sms_unit: b.sms_unit,
            prices: IntegrationKind::ALL
                .into_iter()
                .map(|i| {
                    let price = match user {
                        Some(u) => b.unit_price_for(u, i),
                        None => b.unit_price(i),
                    };
                    (i, price)
                })
                .collect(),
            user_prices: match user {
                Some(_) => Vec::new(),
                None => b
                    .user_prices
                    .iter()
                    .flat_map(|(u, m)| m.iter().map(move |(i, p)| (u.clone(), *i, *p)))
                    .collect(),
            },
        }
    }

    pub fn report_path(&self, period_id: &str) -> PathBuf {
        self.settings.reports_dir.join(format!("{period_id}.csv"))
    }

    /// Streams a period's CSV from the store into `out`: frozen prices for a
    /// closed period, current ones for the open period.
    pub async fn write_csv<W: Write + Send>(&self, period: &Period, out: W) -> anyhow::Result<W> {
        use futures::StreamExt;
        let mut w = csv::LedgerWriter::new(
            out,
            period,
            csv::Pricing::of(period, &self.settings.billing),
        )?;
        let mut rows = std::pin::pin!(self.store.usage_rows(&period.id));
        while let Some(row) = rows.next().await {
            w.row(&row?)?;
        }
        Ok(w.finish()?)
    }

    /// A period's CSV in memory (small periods, tests, the CLI into a pipe).
    pub async fn csv(&self, period: &Period) -> anyhow::Result<Vec<u8>> {
        self.write_csv(period, Vec::new()).await
    }

    /// Writes a closed period's report and its `.sha256` (and records the
    /// hash), streaming from the store into the file. The hash is of the
    /// committed file, read back and hashed off the runtime's threads.
    pub async fn write_report(&self, period: &Period) -> anyhow::Result<String> {
        let path = self.report_path(&period.id);
        let mut file =
            AtomicFile::create(&path).with_context(|| format!("creating {}", path.display()))?;
        // The writer borrows the file only within this block.
        {
            let out = std::io::BufWriter::new(file.file());
            let out = self.write_csv(period, out).await?;
            out.into_inner().map_err(|e| e.into_error())?;
        }
        file.commit()
            .with_context(|| format!("writing {}", path.display()))?;
        let sha = sha256_file_off_runtime(path.clone())
            .await
            .with_context(|| format!("hashing {}", path.display()))?;
        let line = format!("{sha}  {}.csv\n", period.id);
        atomic::write(&path.with_extension("csv.sha256"), line.as_bytes())?;
        self.store.set_report_sha256(&period.id, &sha).await?;
        Ok(sha)
    }

    /// The report file of a closed period, if it is there and matches its
    /// recorded SHA-256.
    pub async fn intact_report(&self, period: &Period) -> Option<PathBuf> {
        let path = self.report_path(&period.id);
        let sha = sha256_file_off_runtime(path.clone()).await.ok()?;
        (period.report_sha256.as_deref() == Some(sha.as_str())).then_some(path)
    }

    /// Writes the reports of closed periods that have none (a crash between the
    /// close and the write), and warns about reports that no longer match.
    pub async fn ensure_reports(&self) -> anyhow::Result<()> {
        for p in self.store.list_periods().await? {
            if p.end_at.is_none() {
                continue;
            }
            let path = self.report_path(&p.id);
            match (
                sha256_file_off_runtime(path.clone()).await,
                &p.report_sha256,
            ) {
                (Ok(actual), Some(sha)) if &actual == sha => {}
                (Ok(_), Some(_)) => {
                    error!(period_id = %p.id, path = %path.display(), "report does not match its recorded SHA-256; left as it is")
                }
                _ => {
                    self.write_report(&p).await?;
                    warn!(period_id = %p.id, "report was missing; written");
                }
            }
        }
        Ok(())
    }

    /// Where the ledger's events are counted: the server's metrics, or (the
    /// CLI) none, and then they are only logged.
    fn metrics(&self) -> &Metrics {
        self.metrics
            .as_deref()
            .unwrap_or_else(|| Metrics::detached())
    }

    /// Closes the open period at `boundary` and writes its report.
    #[instrument(skip_all, fields(period_id))]
    pub async fn close_at(&self, boundary: Millis) -> anyhow::Result<Option<(Period, Period)>> {
        let result = self
            .store
            .close_period(boundary, self.clock.now_ms(), &self.freeze(None))
            .await;
        let mut closed = match result {
            Ok(Some(pair)) => pair,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.metrics().ledger_close_failed();
                return Err(e.into());
            }
        };
        tracing::Span::current().record("period_id", closed.0.id.as_str());
        let written = self.write_report(&closed.0).await;
        if written.is_err() {
            self.metrics().ledger_close_failed();
        }
        closed.0.report_sha256 = Some(written?);
        self.metrics().ledger_closed(&closed.1.id);
        Ok(Some(closed))
    }

    pub async fn close_now(&self) -> anyhow::Result<Option<(Period, Period)>> {
        self.close_at(self.clock.now_ms()).await
    }

    /// Settles a user: closes their open statement now and writes its report.
    #[instrument(skip_all, fields(user_id = %user_id, period_id))]
    pub async fn settle(&self, user_id: &str) -> anyhow::Result<Period> {
        let statement = self
            .store
            .settle(user_id, self.clock.now_ms(), &self.freeze(Some(user_id)))
            .await?;
        tracing::Span::current().record("period_id", statement.id.as_str());
        self.write_report(&statement).await?;
        info!("user settled");
        Ok(statement)
    }
}
