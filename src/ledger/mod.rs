//! The finance ledger: billing periods, per-user statements (settle), prices
//! frozen at close, immutable CSV reports, the close schedule and retention.

pub mod csv;
pub mod page;
pub mod scheduler;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

use crate::atomic::{self, AtomicFile};
use crate::clock::{now_ms, Millis};
use crate::config::Settings;
use crate::metering::Metrics;
use crate::store::{Freeze, Period, Store};

pub struct Ledger {
    pub store: Arc<Store>,
    pub settings: Arc<Settings>,
    integrations: Vec<&'static str>,
    metrics: Option<Arc<Metrics>>,
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The SHA-256 of a file, read in pieces.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

impl Ledger {
    pub fn new(
        store: Arc<Store>,
        settings: Arc<Settings>,
        integrations: Vec<&'static str>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self {
            store,
            settings,
            integrations,
            metrics,
        }
    }

    fn freeze(&self, user: Option<&str>) -> Freeze {
        let b = &self.settings.billing;
        Freeze {
            currency: b.currency.clone(),
            bill_failed: b.bill_failed,
            prices: self
                .integrations
                .iter()
                .map(|i| {
                    let price = match user {
                        Some(u) => b.unit_price_for(u, i),
                        None => b.unit_price(i),
                    };
                    (i.to_string(), price.to_string())
                })
                .collect(),
            user_prices: match user {
                Some(_) => Vec::new(),
                None => b
                    .user_prices
                    .iter()
                    .flat_map(|(u, m)| {
                        m.iter()
                            .map(move |(i, p)| (u.clone(), i.clone(), p.to_string()))
                    })
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
    /// hash), streaming from the store into the file.
    pub async fn write_report(&self, period: &Period) -> anyhow::Result<String> {
        let path = self.report_path(&period.id);
        let mut file =
            AtomicFile::create(&path).with_context(|| format!("creating {}", path.display()))?;
        // The writer borrows the file only within this block.
        let sha = {
            let out = Hashing {
                inner: std::io::BufWriter::new(file.file()),
                hasher: Sha256::new(),
            };
            let Hashing { inner, hasher } = self.write_csv(period, out).await?;
            inner.into_inner().map_err(|e| e.into_error())?;
            hex::encode(hasher.finalize())
        };
        file.commit()
            .with_context(|| format!("writing {}", path.display()))?;
        let line = format!("{sha}  {}.csv\n", period.id);
        atomic::write(&path.with_extension("csv.sha256"), line.as_bytes())?;
        self.store.set_report_sha256(&period.id, &sha).await?;
        Ok(sha)
    }

    /// The report file of a closed period, if it is there and matches its
    /// recorded SHA-256.
    pub fn intact_report(&self, period: &Period) -> Option<PathBuf> {
        let path = self.report_path(&period.id);
        let sha = sha256_file(&path).ok()?;
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
            match (sha256_file(&path), &p.report_sha256) {
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

    fn count_close(&self, ok: bool) {
        if let Some(m) = &self.metrics {
            m.ledger_closes
                .with_label_values(&[if ok { "success" } else { "error" }])
                .inc();
        }
    }

    /// Closes the open period at `boundary` and writes its report.
    pub async fn close_at(&self, boundary: Millis) -> anyhow::Result<Option<(Period, Period)>> {
        let result = self
            .store
            .close_period(boundary, now_ms(), &self.freeze(None))
            .await;
        let mut closed = match result {
            Ok(Some(pair)) => pair,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.count_close(false);
                return Err(e.into());
            }
        };
        let written = self.write_report(&closed.0).await;
        self.count_close(written.is_ok());
        closed.0.report_sha256 = Some(written?);
        info!(closed = %closed.0.id, opened = %closed.1.id, "billing period closed");
        Ok(Some(closed))
    }

    pub async fn close_now(&self) -> anyhow::Result<Option<(Period, Period)>> {
        self.close_at(now_ms()).await
    }

    /// Settles a user: closes their open statement now and writes its report.
    pub async fn settle(&self, user_id: &str) -> anyhow::Result<Period> {
        let statement = self
            .store
            .settle(user_id, now_ms(), &self.freeze(Some(user_id)))
            .await?;
        self.write_report(&statement).await?;
        info!(user_id, statement = %statement.id, "user settled");
        Ok(statement)
    }
}
