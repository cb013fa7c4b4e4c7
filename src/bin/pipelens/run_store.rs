//! The service's run store: SQLite under the data directory unless
//! `PIPELENS_RUN_STORE` names another, opened before anything is served so
//! a store that cannot be used stops start-up with a message naming the
//! variable or file at fault (never a password).

use std::path::Path;

use anyhow::Context as _;
use opentelemetry::metrics::Meter;
use pipelens::store::{RunStore, StoreConfig, StoreError, RUN_STORE_VAR};

/// The SQLite file of the embedded default, in the data directory.
pub const DEFAULT_FILE: &str = "pipelens.db";

/// Opens the store the environment names, or `DATA_DIR/pipelens.db`.
pub async fn open(data_dir: &Path, meter: &Meter) -> anyhow::Result<RunStore> {
    let default = StoreConfig::sqlite(data_dir.join(DEFAULT_FILE));
    let config = StoreConfig::from_env(default).map_err(anyhow::Error::new)?;
    let named_by = if std::env::var_os(RUN_STORE_VAR).is_some_and(|v| !v.is_empty()) {
        RUN_STORE_VAR.to_owned()
    } else {
        format!("--data-dir / PIPELENS_DATA_DIR {}", data_dir.display())
    };
    RunStore::open(&config, Some(meter))
        .await
        .map_err(|e| match e {
            // Already names the variable.
            StoreError::Config { .. } => anyhow::Error::new(e),
            e => anyhow::Error::new(e).context(format!("the run store ({named_by})")),
        })
        .context("cannot start")
}
