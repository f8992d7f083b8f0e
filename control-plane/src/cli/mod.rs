//! The `opsgate` command: `serve` runs the control plane; the other commands are the admin
//! operations, run directly against the database. The command line itself is declared in
//! [`args`] (clap); this module carries each command out.

mod args;
mod serve;

pub use args::Cli;
pub use serve::seed_demo;

use crate::accounts;
use crate::byok::{self, Owner, Which};
use crate::catalogue::Catalogue;
use crate::clock::{Clock, SystemClock};
use crate::crypto::{Keyring, MasterKey};
use crate::db::Db;
use crate::keys;
use args::{
    ByokCommand, Command, DbArgs, KeyCommand, MasterKeyArgs, MasterKeyCommand, OrgCommand,
    ProviderKeyCommand, Role, ServiceKeyCommand, UsageCommand, UserCommand, UserKind,
};
use clap::{CommandFactory, Parser};

/// Demo defaults: the keys the integration guide's examples use.
pub const DEMO_SERVICE_KEY: &str = "sk-loopnet-service-key-2025";
pub const DEMO_INTERNAL_TOKEN: &str = "demo-internal-token";
pub const DEMO_PROVIDER_KEY: &str = "demo-platform-key";

impl DbArgs {
    fn url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}/opsgate.db", self.data_dir))
    }

    async fn open(&self) -> Result<Db, String> {
        let url = self.url();
        if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or_default();
            if let Some(parent) = std::path::Path::new(path).parent() {
                if !parent.as_os_str().is_empty() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
                }
            }
        }
        Db::connect(&url).await
    }
}

/// A master key from `--<flag> FILE` (or its `<ENV>_FILE`, which clap reads), else `<ENV>`
/// (hex or base64; read here so that `--help` never shows it).
fn master_key(file: Option<&str>, env: &str) -> Result<Option<MasterKey>, String> {
    if let Some(path) = file.filter(|p| !p.is_empty()) {
        return MasterKey::from_file(std::path::Path::new(path)).map(Some);
    }
    match std::env::var(env).ok().filter(|s| !s.trim().is_empty()) {
        Some(text) => MasterKey::parse(&text)
            .map(Some)
            .map_err(|e| format!("{env}: {e}")),
        None => Ok(None),
    }
}

const NO_MASTER_KEY: &str = "no master key. opsgate encrypts stored provider keys (BYOK and platform) under a master key given at start: set OPSGATE_MASTER_KEY (32 bytes as 64 hex characters or base64) or OPSGATE_MASTER_KEY_FILE, or pass --master-key-file FILE. `opsgate master-key generate --out FILE` makes one; keep it safe: without it the stored keys cannot be decrypted.";

impl MasterKeyArgs {
    fn key(&self) -> Result<Option<MasterKey>, String> {
        master_key(self.master_key_file.as_deref(), "OPSGATE_MASTER_KEY")
    }
    fn require(&self) -> Result<MasterKey, String> {
        self.key()?.ok_or_else(|| NO_MASTER_KEY.to_string())
    }
}

fn read_secret_file(path: &str) -> Result<crate::crypto::Secret, String> {
    use std::io::Read;
    let mut raw = String::new();
    if path == "-" {
        std::io::stdin()
            .read_to_string(&mut raw)
            .map_err(|e| format!("cannot read the key from standard input: {e}"))?;
    } else {
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut raw))
            .map_err(|e| format!("cannot read the key file {path}: {e}"))?;
    }
    let key = raw.trim().to_string();
    drop(crate::crypto::Secret::new(raw));
    Ok(crate::crypto::Secret::new(key))
}

fn load_catalogue(path: Option<&str>) -> Result<Catalogue, String> {
    match path {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read catalogue {path}: {e}"))?;
            Catalogue::from_toml(path, &text)
        }
        None => Ok(Catalogue::builtin()),
    }
}

fn actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

/// Says so when a service key just bound is guessable.
fn warn_if_guessable(bound: keys::ServiceKeyBound) {
    if bound.guessable {
        eprintln!("opsgate: WARNING: {}.", keys::GUESSABLE_SERVICE_KEY);
    }
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// Parses the command line and runs the command. `--help`, `--version` and usage errors
/// exit here, as clap does (usage errors with status 2); a failed command returns its error.
pub fn run<I, T>(args: I) -> Result<(), String>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    // One thread runs the control plane unless told otherwise: on a small machine shared
    // with Envoy, tokio's thread per core spent a fifth of the control plane's CPU handing
    // requests between threads (futex wake-ups), measured with scripts/bench. More
    // throughput comes from more replicas on PostgreSQL, or from --worker-threads.
    let threads = match &cli.command {
        Command::Serve(s) => s.worker_threads,
        _ => 0,
    };
    let runtime = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(execute(cli))
}

async fn execute(cli: Cli) -> Result<(), String> {
    if !matches!(cli.command, Command::Serve(_)) {
        // Admin commands: warnings and errors, plainly, on standard error.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .try_init();
    }
    let now = SystemClock.now();
    let e = |e: crate::error::AppError| e.0.message;
    let db = &cli.db;
    match cli.command {
        Command::Serve(s) => serve::serve(db, s).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "opsgate",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Org(cmd) => {
            let db = db.open().await?;
            match cmd {
                OrgCommand::Create {
                    id,
                    name,
                    plan,
                    credits,
                } => {
                    let mut org = accounts::create_org(&db, &actor(), &id, &name, plan, now)
                        .await
                        .map_err(e)?;
                    if let Some(mc) = credits.filter(|mc| *mc != 0) {
                        org = accounts::grant(&db, &actor(), &id, mc, now)
                            .await
                            .map_err(e)?;
                    }
                    print_json(&org);
                }
                OrgCommand::Grant { id, credits } => print_json(
                    &accounts::grant(&db, &actor(), &id, credits, now)
                        .await
                        .map_err(e)?,
                ),
                OrgCommand::List => print_json(&accounts::list_orgs(&db).await.map_err(e)?),
                OrgCommand::Show { id } => print_json(
                    &accounts::get_org(&db, &id)
                        .await
                        .map_err(e)?
                        .ok_or_else(|| format!("organization '{id}' not found"))?,
                ),
                OrgCommand::Allocations { id } => {
                    accounts::get_org(&db, &id)
                        .await
                        .map_err(e)?
                        .ok_or_else(|| format!("organization '{id}' not found"))?;
                    print_json(&accounts::list_allocations(&db, &id).await.map_err(e)?)
                }
                OrgCommand::Plan { id, plan } => print_json(
                    &accounts::set_org_plan(&db, &actor(), &id, plan, now)
                        .await
                        .map_err(e)?,
                ),
            }
            Ok(())
        }
        Command::User(cmd) => {
            let db = db.open().await?;
            match cmd {
                UserCommand::Create {
                    id,
                    org,
                    plan,
                    kind,
                    role,
                    service_key,
                } => {
                    let u = accounts::create_user(
                        &db,
                        &actor(),
                        &accounts::NewUser {
                            id: &id,
                            org_id: &org,
                            plan,
                            kind: match kind {
                                UserKind::User => "user",
                                UserKind::Service => "service",
                            },
                            role: match role {
                                Role::Member => "member",
                                Role::Admin => "admin",
                            },
                        },
                        now,
                    )
                    .await
                    .map_err(e)?;
                    if let Some(key) = service_key {
                        let bound = keys::add_service_key(&db, &actor(), &key, &id, now)
                            .await
                            .map_err(e)?;
                        warn_if_guessable(bound);
                    }
                    print_json(&u);
                }
                UserCommand::Allocate { id, credits } => {
                    let alloc = accounts::set_allocation(&db, &actor(), &id, credits, now)
                        .await
                        .map_err(e)?;
                    print_json(&alloc);
                    if let Some(w) = accounts::overcommitment(&db, &alloc.org_id)
                        .await
                        .map_err(e)?
                    {
                        eprintln!("opsgate: WARNING: {w}.");
                    }
                }
                UserCommand::List { org } => {
                    print_json(&accounts::list_users(&db, org.as_deref()).await.map_err(e)?)
                }
                UserCommand::Plan { id, plan } => print_json(
                    &accounts::set_user_plan(&db, &actor(), &id, plan, now)
                        .await
                        .map_err(e)?,
                ),
            }
            Ok(())
        }
        Command::Key(cmd) => {
            let db = db.open().await?;
            match cmd {
                KeyCommand::Issue { user, name } => {
                    let (key, info) =
                        keys::issue_api_key(&db, &actor(), &user, name.as_deref(), now)
                            .await
                            .map_err(e)?;
                    print_json(&serde_json::json!({"api_key": key, "key": info}));
                    eprintln!("Store this key now: it is not shown again.");
                }
                KeyCommand::Revoke { key_id } => {
                    keys::revoke_api_key(&db, &actor(), &key_id, now)
                        .await
                        .map_err(e)?;
                    println!("revoked {key_id}");
                }
                KeyCommand::List { user } => {
                    print_json(&keys::list_api_keys(&db, user.as_deref()).await.map_err(e)?)
                }
            }
            Ok(())
        }
        Command::Audit { limit } => {
            print_json(
                &crate::analytics::audit_log(&db.open().await?, limit)
                    .await
                    .map_err(e)?,
            );
            Ok(())
        }
        Command::ServiceKey(cmd) => {
            match cmd {
                // Minting touches no database.
                ServiceKeyCommand::Mint { service } => {
                    let year = opsgate_core::time::year(now);
                    println!("{}", keys::mint_service_key(&service, year).map_err(e)?);
                }
                ServiceKeyCommand::Add {
                    key,
                    user,
                    allow_revoked,
                } => {
                    let db = db.open().await?;
                    let bound =
                        keys::bind_service_key(&db, &actor(), &key, &user, now, allow_revoked)
                            .await
                            .map_err(e)?;
                    warn_if_guessable(bound);
                    println!("service key bound to {user}");
                }
                ServiceKeyCommand::Revoke { key } => {
                    keys::revoke_service_key(&db.open().await?, &actor(), &key, now)
                        .await
                        .map_err(e)?;
                    println!("revoked");
                }
                ServiceKeyCommand::List => print_json(
                    &keys::list_service_keys(&db.open().await?)
                        .await
                        .map_err(e)?,
                ),
            }
            Ok(())
        }
        Command::Analytics(a) => {
            let db = db.open().await?;
            let default_days = crate::analytics::REPORTS
                .iter()
                .find(|(n, _)| *n == a.report)
                .map_or(30, |(_, d)| *d);
            let days = a.days.unwrap_or(default_days);
            let rows =
                crate::analytics::report(&db, &a.report, now - days * 86_400, now + 1, a.limit)
                    .await
                    .map_err(e)?;
            print_json(&rows);
            Ok(())
        }
        Command::Usage(UsageCommand::Daily { days, by }) => {
            let rows = crate::analytics::daily_usage(&db.open().await?, &by, days, now)
                .await
                .map_err(e)?
                .ok_or_else(|| format!("unknown breakdown '{by}'"))?;
            print_json(&rows);
            Ok(())
        }
        Command::ProviderKey(ProviderKeyCommand::Set {
            provider,
            key_file,
            description,
            catalogue,
            master,
        }) => {
            let catalogue = load_catalogue(catalogue.as_deref())?;
            let key = read_secret_file(&key_file)?;
            let keyring = Keyring::new(master.require()?);
            let db = db.open().await?;
            let (info, replaced) = byok::put(
                &db,
                &keyring,
                &catalogue,
                Owner::Platform,
                &provider,
                key.expose(),
                description.as_deref(),
                &actor(),
                now,
            )
            .await
            .map_err(e)?;
            print_json(&info);
            if let Some(r) = replaced {
                eprintln!("replaced the stored {provider} key {r}");
            }
            Ok(())
        }
        Command::ProviderKey(ProviderKeyCommand::Show { provider }) => {
            let stored = byok::list(&db.open().await?, Owner::Platform)
                .await
                .map_err(e)?
                .into_iter()
                .find(|k| k.provider == provider)
                .ok_or_else(|| {
                    format!("no stored {provider} key (a key from the environment is shown by GET /admin/v1/provider-keys/{provider} on the running control plane)")
                })?;
            print_json(&stored);
            Ok(())
        }
        Command::ProviderKey(ProviderKeyCommand::List) => {
            print_json(
                &byok::list(&db.open().await?, Owner::Platform)
                    .await
                    .map_err(e)?,
            );
            Ok(())
        }
        Command::ProviderKey(ProviderKeyCommand::Remove { provider }) => {
            let info = byok::remove(
                &db.open().await?,
                Owner::Platform,
                Which::Provider(&provider),
                &actor(),
                now,
            )
            .await
            .map_err(e)?;
            println!("removed the stored {provider} key {}", info.id);
            Ok(())
        }
        Command::Byok(ByokCommand::List { user }) => {
            let db = db.open().await?;
            if accounts::get_user(&db, &user).await.map_err(e)?.is_none() {
                return Err(format!("user '{user}' not found"));
            }
            print_json(&byok::list(&db, Owner::User(&user)).await.map_err(e)?);
            Ok(())
        }
        Command::Byok(ByokCommand::Remove { user, key_id }) => {
            let info = byok::remove(
                &db.open().await?,
                Owner::User(&user),
                Which::Id(&key_id),
                &actor(),
                now,
            )
            .await
            .map_err(e)?;
            println!("removed {user}'s {} key {}", info.provider, info.id);
            Ok(())
        }
        Command::MasterKey(MasterKeyCommand::Generate { out }) => {
            let key = MasterKey::generate();
            key.write_new_file(std::path::Path::new(&out))?;
            println!("wrote a new master key to {out} (id {})", key.id());
            Ok(())
        }
        Command::RotateMasterKey(r) => {
            let old = master_key(r.old_key_file.as_deref(), "OPSGATE_OLD_MASTER_KEY")?.ok_or(
                "rotate-master-key needs the old key: --old-key-file FILE (or OPSGATE_OLD_MASTER_KEY[_FILE])",
            )?;
            let new = master_key(r.new_key_file.as_deref(), "OPSGATE_NEW_MASTER_KEY")?.ok_or(
                "rotate-master-key needs the new key: --new-key-file FILE (or OPSGATE_NEW_MASTER_KEY[_FILE])",
            )?;
            let db = db.open().await?;
            let report = byok::rotate_master_key(&db, &old, &new, r.limit, &actor(), now)
                .await
                .map_err(e)?;
            print_json(&serde_json::json!({
                "old_master_key": old.id(),
                "new_master_key": new.id(),
                "report": report,
            }));
            if !report.failed.is_empty() {
                return Err(format!(
                    "{} stored key(s) failed their integrity check and were left as they were: {}",
                    report.failed.len(),
                    report.failed.join(", ")
                ));
            }
            if report.remaining > 0 {
                eprintln!(
                    "stopped at --limit: {} key(s) still under the old master key; run again to finish",
                    report.remaining
                );
            }
            Ok(())
        }
    }
}
