//! `opsgate serve`: the control plane's process — logging, metrics, the demo seed, the
//! master key, the hold sweeper and the HTTP server with graceful shutdown.

use super::args::{DbArgs, LogFormat, ServeArgs};
use super::{
    load_catalogue, master_key, DEMO_INTERNAL_TOKEN, DEMO_PROVIDER_KEY, DEMO_SERVICE_KEY,
    NO_MASTER_KEY,
};
use crate::accounts;
use crate::byok;
use crate::clock::{Clock, SystemClock};
use crate::crypto::{Keyring, MasterKey};
use crate::db::Db;
use crate::http::app;
use crate::keys;
use crate::state::{AppState, Settings};
use opsgate_core::plan::Plan;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Creates the demo organisation, service user (with the guide's service key) and a
/// professional user with a fresh `uc_` key, once. Returns the uc_ key when it was created.
pub async fn seed_demo(db: &Db, now: i64) -> Result<Option<String>, String> {
    let e = |e: crate::error::AppError| e.0.message;
    if accounts::get_org(db, "org_demo")
        .await
        .map_err(e)?
        .is_some()
    {
        return Ok(None);
    }
    let actor = "demo-seed";
    accounts::create_org(
        db,
        actor,
        "org_demo",
        "Demo Organization",
        Plan::Enterprise,
        now,
    )
    .await
    .map_err(e)?;
    accounts::grant(db, actor, "org_demo", 10_000_000 * 1000, now)
        .await
        .map_err(e)?;
    for (id, plan, kind) in [
        ("loopnet-service", Plan::Enterprise, "service"),
        ("demo-user", Plan::Professional, "user"),
    ] {
        let user = accounts::NewUser {
            id,
            org_id: "org_demo",
            plan,
            kind,
            role: "member",
        };
        accounts::create_user(db, actor, &user, now)
            .await
            .map_err(e)?;
    }
    keys::add_service_key(db, actor, DEMO_SERVICE_KEY, "loopnet-service", now)
        .await
        .map_err(e)?;
    accounts::set_allocation(db, actor, "demo-user", 1_000 * 1000, now)
        .await
        .map_err(e)?;
    let (key, _) = keys::issue_api_key(db, actor, "demo-user", Some("demo"), now)
        .await
        .map_err(e)?;
    Ok(Some(key))
}

/// `--demo` without a master key: the one in DATA_DIR/master.key, made on first start.
fn demo_master_key(dir: &str) -> Result<MasterKey, String> {
    let path = std::path::Path::new(dir).join("master.key");
    if path.exists() {
        let key = MasterKey::from_file(&path)?;
        tracing::warn!(
            path = %path.display(),
            key_id = %key.id(),
            "--demo: stored provider keys are encrypted under the demo master key beside the database; never use it outside a demo"
        );
        return Ok(key);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {dir}: {e}"))?;
    let key = MasterKey::generate();
    key.write_new_file(&path)?;
    tracing::warn!(
        path = %path.display(),
        key_id = %key.id(),
        "--demo generated a master key and stored it beside the database: anyone who can read the data directory can decrypt the stored provider keys. Outside a demo, give a master key kept elsewhere (OPSGATE_MASTER_KEY or --master-key-file)"
    );
    Ok(key)
}

/// Logs go to standard error (standard output carries the "listening on" line a supervisor
/// may wait for): JSON lines in production, readable text in the demo.
fn init_logging(s: &ServeArgs) -> Result<(), String> {
    use tracing_subscriber::EnvFilter;
    let filter = match (&s.log, std::env::var("RUST_LOG").ok()) {
        (Some(f), _) => EnvFilter::try_new(f).map_err(|e| format!("--log '{f}': {e}"))?,
        (None, Some(f)) if !f.is_empty() => {
            EnvFilter::try_new(&f).map_err(|e| format!("RUST_LOG '{f}': {e}"))?
        }
        _ => EnvFilter::new("info"),
    };
    let format = s.log_format.unwrap_or(if s.demo {
        LogFormat::Text
    } else {
        LogFormat::Json
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    // Already set (a test, or a second serve in one process): keep the first.
    let _ = result;
    Ok(())
}

pub(super) async fn serve(dbargs: &DbArgs, s: ServeArgs) -> Result<(), String> {
    init_logging(&s)?;
    let demo = s.demo;
    let mut catalogue = load_catalogue(s.catalogue.as_deref())?;
    let master = match (s.master.key()?, demo) {
        (Some(k), _) => k,
        (None, true) => demo_master_key(&dbargs.data_dir)?,
        (None, false) => return Err(format!("{NO_MASTER_KEY} (--demo makes a throwaway one.)")),
    };
    let mut keyring = Keyring::new(master);
    if let Some(previous) = master_key(
        s.previous_master_key_file.as_deref(),
        "OPSGATE_PREVIOUS_MASTER_KEY",
    )? {
        keyring = keyring.with_previous(previous);
    }
    let mut platform_keys = BTreeMap::new();
    if demo {
        let key = std::env::var("OPSGATE_DEMO_PROVIDER_KEY")
            .unwrap_or_else(|_| DEMO_PROVIDER_KEY.to_string());
        for p in catalogue.providers.values_mut() {
            p.cluster = "fake_provider".into();
            p.authority = "fake-provider".into();
            p.base_path = "/v1".into();
            platform_keys.insert(p.name.clone(), key.clone());
        }
    } else {
        for p in catalogue.providers.values() {
            if let Some(k) = p
                .key_env
                .as_deref()
                .and_then(|v| std::env::var(v).ok())
                .filter(|k| !k.is_empty())
            {
                platform_keys.insert(p.name.clone(), k);
            }
        }
    }
    let internal_token = match (s.internal_token.clone(), demo) {
        (Some(t), _) if t.len() >= 16 => t,
        (Some(_), _) => {
            return Err(
                "--internal-token (OPSGATE_INTERNAL_TOKEN) must be at least 16 characters".into(),
            )
        }
        (None, true) => DEMO_INTERNAL_TOKEN.to_string(),
        (None, false) => {
            return Err(
                "OPSGATE_INTERNAL_TOKEN (or --internal-token) is required outside --demo".into(),
            )
        }
    };

    // The admin token opens the admin API and the console, where every key and every credit
    // is managed: short enough to guess online, it is refused like a short internal token.
    // An empty value is no token (the admin API stays off), never a token that is empty.
    let admin_token = s.admin_token.clone().filter(|t| !t.is_empty());
    if admin_token.as_ref().is_some_and(|t| t.chars().count() < 16) {
        return Err(
            "--admin-token (OPSGATE_ADMIN_TOKEN) must be at least 16 characters: it opens the admin API and the console".into(),
        );
    }
    let db = dbargs.open().await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    if demo {
        if let Some(key) = seed_demo(&db, clock.now()).await? {
            let dir = &dbargs.data_dir;
            let path = std::path::Path::new(dir).join("demo-user-key.txt");
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {dir}: {e}"))?;
            std::fs::write(&path, format!("{key}\n"))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
    }
    // Outside the demo (whose guide key is guessable by design), say so at every start.
    if !demo {
        match keys::guessable_service_keys(&db).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                count = n,
                "active service key(s) were bound while guessable (short random part, or bound before opsgate checked): anyone who guesses one calls on its organisation's credits. Mint strong ones with `opsgate service-key mint <service>`, bind them, and revoke the old ones"
            ),
            Err(e) => tracing::error!(error = %e, "cannot check the service keys' strength"),
        }
    }
    match byok::foreign_master_keys(&db, &keyring).await {
        Ok(foreign) => {
            for (id, n) in foreign {
                tracing::warn!(
                    count = n,
                    master_key = %id,
                    held = %keyring.ids().join(", "),
                    "stored provider key(s) are wrapped under a master key this process does not hold; they cannot be used. Start with that key, or finish rotate-master-key"
                );
            }
        }
        Err(e) => tracing::error!(error = %e, "cannot check the stored provider keys"),
    }
    let metrics = Arc::new(crate::metrics::Metrics::new(&db));
    let state = AppState {
        db: db.clone(),
        catalogue: Arc::new(catalogue),
        keyring: Arc::new(keyring),
        clock: clock.clone(),
        settings: Arc::new(Settings {
            internal_token,
            admin_token,
            platform_keys,
            hold_ttl_secs: s.hold_ttl_secs,
            session_ttl_secs: s.session_ttl_secs,
            console_session_ttl_secs: s.console_session_ttl_secs,
            // Plain-HTTP development (demo) cannot keep a Secure cookie.
            cookie_secure: !demo,
            admin_role: s.admin_role.clone(),
        }),
        metrics: metrics.clone(),
    };
    db.keep_statistics(crate::db::ANALYZE_EVERY).await;
    // Holds whose outcome never arrived are charged as held; sessions long expired go.
    let sweeper_db = db.clone();
    let sweeper_clock = clock.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            tick.tick().await;
            match crate::ledger::expire_holds(&sweeper_db, sweeper_clock.now()).await {
                Ok(0) => {}
                Ok(n) => {
                    metrics.holds_expired.inc_by(n);
                    tracing::warn!(count = n, "expired unsettled hold(s), charged as held")
                }
                Err(e) => tracing::error!(error = %e, "hold expiry failed"),
            }
            match crate::sessions::purge_expired(&sweeper_db, sweeper_clock.now()).await {
                Ok((0, 0)) => {}
                Ok((users, console)) => {
                    tracing::info!(users, console, "purged sessions a day past their expiry")
                }
                Err(e) => tracing::warn!(error = %e, "session purge failed"),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind((s.bind.as_str(), s.port))
        .await
        .map_err(|e| format!("cannot listen on {}:{}: {e}", s.bind, s.port))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("opsgate control plane listening on {addr}");
    tracing::info!(%addr, demo, "listening");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
            }
            tracing::info!("shutting down: finishing the requests in flight");
        })
        .await
        .map_err(|e| e.to_string())
}
