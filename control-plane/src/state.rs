//! The state every request handler shares: the database, the catalogue, the keyring, the
//! clock, the settings and the metrics `/metrics` reports.

use crate::catalogue::Catalogue;
use crate::clock::Clock;
use crate::crypto::Keyring;
use crate::db::Db;
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct Settings {
    /// Shared secret the filter presents on `/internal/*`.
    pub internal_token: String,
    /// Bearer token for `/admin/*`; admin routes are closed when unset.
    pub admin_token: Option<String>,
    /// Platform provider keys, by provider name.
    pub platform_keys: BTreeMap<String, String>,
    pub hold_ttl_secs: i64,
    /// How long a browser session lasts.
    pub session_ttl_secs: i64,
    /// How long an admin console session (`/console/`) lasts.
    pub console_session_ttl_secs: i64,
    /// Mark the session cookie `Secure` (off only for plain-HTTP development).
    pub cookie_secure: bool,
    /// The JWT role that grants the admin API.
    pub admin_role: String,
}

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub catalogue: Arc<Catalogue>,
    /// The master keys that seal and open stored provider keys.
    pub keyring: Arc<Keyring>,
    pub clock: Arc<dyn Clock>,
    pub settings: Arc<Settings>,
    pub metrics: Arc<crate::metrics::Metrics>,
}
