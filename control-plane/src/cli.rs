//! The `opsgate` command: `serve` runs the control plane; the other commands are the admin
//! operations, run directly against the database.

use crate::accounts;
use crate::byok::{self, Owner, Which};
use crate::catalogue::Catalogue;
use crate::clock::{Clock, SystemClock};
use crate::crypto::{Keyring, MasterKey};
use crate::db::Db;
use crate::http::app;
use crate::keys;
use crate::state::{AppState, Metrics, Settings};
use opsgate_core::plan::Plan;
use std::collections::BTreeMap;
use std::sync::Arc;

const USAGE: &str = "usage: opsgate <command> [options]

  serve [--bind ADDR] [--port N] [--database-url URL] [--catalogue FILE] [--demo] [--data-dir DIR]
        run the control plane (internal API for the filter, public and admin APIs)
  org create ID --name NAME --plan PLAN [--credits N]
                                            create an organization (with N credits)
  org grant ID CREDITS                      add credits to its pool (negative removes)
  org list
  user create ID --org ORG --plan PLAN [--kind user|service] [--role member|admin]
              [--service-key sk-<service>-service-key-<year>]
  user allocate ID CREDITS                  set the user's allocation: a cap on what the user
                                            may spend of the organisation's pool (caps adding
                                            up to more than the pool are allowed, with a warning)
  user list [--org ORG]
  key issue USER [--name NAME]              issue a uc_ API key (shown once)
  key revoke KEY_ID
  key list [--user USER]
  service-key add KEY --user USER [--allow-revoked]
                                            bind a service key (stored as a digest; a
                                            guessable one is bound with a warning; a revoked
                                            one only with --allow-revoked)
  service-key mint SERVICE                  print a strong new service key for SERVICE
  service-key revoke KEY
  service-key list                          names and owners (never digests)
  user plan ID PLAN | org plan ID PLAN      change a plan
  analytics top-users|models|orgs [--days N] [--limit N]
                                            the guide's Appendix C reports
  provider-key set PROVIDER --key-file FILE [--description TEXT] [--catalogue FILE]
                                            store the platform's key for a provider, encrypted
                                            (FILE '-' reads standard input); needs the master key
  provider-key list                         stored platform keys, masked
  provider-key remove PROVIDER
  master-key generate --out FILE            write a new random master key (mode 0600)
  rotate-master-key --old-key-file FILE --new-key-file FILE [--limit N]
                                            rewrap every stored provider key under the new
                                            master key; safe to interrupt and run again

Environment: OPSGATE_DATABASE_URL (default sqlite://data/opsgate.db), OPSGATE_INTERNAL_TOKEN,
OPSGATE_ADMIN_TOKEN, and each provider's key variable named in the catalogue (a platform key
stored with `provider-key set` or the admin API wins over it).

Master key (encrypts stored provider keys; required by `serve` outside --demo, which makes
one in DATA_DIR/master.key): --master-key-file FILE, or OPSGATE_MASTER_KEY_FILE, or
OPSGATE_MASTER_KEY (32 bytes as 64 hex characters or base64). During a rotation, `serve` also
takes the previous key (--previous-master-key-file, OPSGATE_PREVIOUS_MASTER_KEY[_FILE]) to
open what is not yet rewrapped. rotate-master-key also reads OPSGATE_OLD_MASTER_KEY[_FILE] and
OPSGATE_NEW_MASTER_KEY[_FILE].";

/// Demo defaults: the keys the integration guide's examples use.
pub const DEMO_SERVICE_KEY: &str = "sk-loopnet-service-key-2025";
pub const DEMO_INTERNAL_TOKEN: &str = "demo-internal-token";
pub const DEMO_PROVIDER_KEY: &str = "demo-platform-key";

struct Args {
    positional: Vec<String>,
    flags: BTreeMap<String, String>,
    switches: Vec<String>,
}

fn parse_args(args: Vec<String>) -> Result<Args, String> {
    let mut out = Args {
        positional: Vec::new(),
        flags: BTreeMap::new(),
        switches: Vec::new(),
    };
    let mut it = args.into_iter().peekable();
    while let Some(a) = it.next() {
        if let Some(name) = a.strip_prefix("--") {
            if matches!(name, "demo" | "help" | "allow-revoked") {
                out.switches.push(name.to_string());
            } else if let Some((k, v)) = name.split_once('=') {
                out.flags.insert(k.to_string(), v.to_string());
            } else {
                let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                out.flags.insert(name.to_string(), v);
            }
        } else {
            out.positional.push(a);
        }
    }
    Ok(out)
}

impl Args {
    fn flag(&self, name: &str) -> Option<&str> {
        self.flags.get(name).map(String::as_str)
    }
    fn need(&self, name: &str) -> Result<&str, String> {
        self.flag(name)
            .ok_or_else(|| format!("--{name} is required\n\n{USAGE}"))
    }
}

fn plan_arg(s: &str) -> Result<Plan, String> {
    Plan::parse(s).ok_or_else(|| {
        format!("unknown plan '{s}' (trial, starter, professional, enterprise, vip_founder, byok)")
    })
}

fn credits_arg(s: &str) -> Result<i64, String> {
    opsgate_core::money::MilliCredits::parse_credits(s).map(|m| m.0)
}

fn database_url(a: &Args) -> String {
    a.flag("database-url")
        .map(str::to_string)
        .or_else(|| std::env::var("OPSGATE_DATABASE_URL").ok())
        .unwrap_or_else(|| {
            let dir = a.flag("data-dir").unwrap_or("data");
            format!("sqlite://{dir}/opsgate.db")
        })
}

async fn open_db(a: &Args) -> Result<Db, String> {
    let url = database_url(a);
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

/// A master key from `--<flag> FILE`, else `<ENV>_FILE`, else `<ENV>` (hex or base64).
fn master_key_arg(a: &Args, flag: &str, env: &str) -> Result<Option<MasterKey>, String> {
    if let Some(path) = a.flag(flag) {
        return MasterKey::from_file(std::path::Path::new(path)).map(Some);
    }
    if let Some(path) = std::env::var(format!("{env}_FILE"))
        .ok()
        .filter(|s| !s.is_empty())
    {
        return MasterKey::from_file(std::path::Path::new(&path)).map(Some);
    }
    match std::env::var(env).ok().filter(|s| !s.trim().is_empty()) {
        Some(text) => MasterKey::parse(&text)
            .map(Some)
            .map_err(|e| format!("{env}: {e}")),
        None => Ok(None),
    }
}

const NO_MASTER_KEY: &str = "no master key. opsgate encrypts stored provider keys (BYOK and platform) under a master key given at start: set OPSGATE_MASTER_KEY (32 bytes as 64 hex characters or base64) or OPSGATE_MASTER_KEY_FILE, or pass --master-key-file FILE. `opsgate master-key generate --out FILE` makes one; keep it safe: without it the stored keys cannot be decrypted.";

fn require_master_key(a: &Args) -> Result<MasterKey, String> {
    master_key_arg(a, "master-key-file", "OPSGATE_MASTER_KEY")?
        .ok_or_else(|| NO_MASTER_KEY.to_string())
}

/// `--demo` without a master key: the one in DATA_DIR/master.key, made on first start.
fn demo_master_key(dir: &str) -> Result<MasterKey, String> {
    let path = std::path::Path::new(dir).join("master.key");
    if path.exists() {
        let key = MasterKey::from_file(&path)?;
        eprintln!(
            "opsgate: WARNING: --demo: stored provider keys are encrypted under the demo master key in {} ({}); never use it outside a demo",
            path.display(),
            key.id()
        );
        return Ok(key);
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {dir}: {e}"))?;
    let key = MasterKey::generate();
    key.write_new_file(&path)?;
    eprintln!(
        "opsgate: ************************************************************************\n\
         opsgate: WARNING: --demo generated a master key and stored it beside the database,\n\
         opsgate: in {} ({}). Anyone who can read the data directory can decrypt\n\
         opsgate: the stored provider keys. Outside a demo, give a master key kept elsewhere\n\
         opsgate: (OPSGATE_MASTER_KEY or --master-key-file).\n\
         opsgate: ************************************************************************",
        path.display(),
        key.id()
    );
    Ok(key)
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

fn load_catalogue(a: &Args) -> Result<Catalogue, String> {
    match a.flag("catalogue") {
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

pub async fn run(args: Vec<String>) -> Result<(), String> {
    let a = parse_args(args)?;
    if a.switches.iter().any(|s| s == "help") || a.positional.is_empty() {
        println!("{USAGE}");
        return Ok(());
    }
    let now = SystemClock.now();
    let cmd: Vec<&str> = a.positional.iter().map(String::as_str).collect();
    let e = |e: crate::error::AppError| e.0.message;
    match cmd.as_slice() {
        ["serve"] => serve(&a).await,
        ["org", "create", id] => {
            let db = open_db(&a).await?;
            // Validate everything before writing anything.
            let plan = plan_arg(a.need("plan")?)?;
            let credits = a.flag("credits").map(credits_arg).transpose()?;
            let mut org = accounts::create_org(&db, &actor(), id, a.need("name")?, plan, now)
                .await
                .map_err(e)?;
            if let Some(mc) = credits.filter(|mc| *mc != 0) {
                org = accounts::grant(&db, &actor(), id, mc, now)
                    .await
                    .map_err(e)?;
            }
            print_json(&org);
            Ok(())
        }
        ["org", "grant", id, credits] => {
            let db = open_db(&a).await?;
            print_json(
                &accounts::grant(&db, &actor(), id, credits_arg(credits)?, now)
                    .await
                    .map_err(e)?,
            );
            Ok(())
        }
        ["org", "list"] => {
            print_json(&accounts::list_orgs(&open_db(&a).await?).await.map_err(e)?);
            Ok(())
        }
        ["user", "create", id] => {
            let db = open_db(&a).await?;
            let u = accounts::create_user(
                &db,
                &actor(),
                &accounts::NewUser {
                    id,
                    org_id: a.flag("org-id").map_or_else(|| a.need("org"), Ok)?,
                    plan: plan_arg(a.need("plan")?)?,
                    kind: a.flag("kind").unwrap_or("user"),
                    role: a.flag("role").unwrap_or("member"),
                },
                now,
            )
            .await
            .map_err(e)?;
            if let Some(key) = a.flag("service-key") {
                let bound = keys::add_service_key(&db, &actor(), key, id, now)
                    .await
                    .map_err(e)?;
                warn_if_guessable(bound);
            }
            print_json(&u);
            Ok(())
        }
        ["user", "allocate", id, credits] => {
            let db = open_db(&a).await?;
            let alloc = accounts::set_allocation(&db, &actor(), id, credits_arg(credits)?, now)
                .await
                .map_err(e)?;
            print_json(&alloc);
            if let Some(w) = accounts::overcommitment(&db, &alloc.org_id)
                .await
                .map_err(e)?
            {
                eprintln!("opsgate: WARNING: {w}.");
            }
            Ok(())
        }
        ["user", "list"] => {
            print_json(
                &accounts::list_users(&open_db(&a).await?, a.flag("org").or(a.flag("org-id")))
                    .await
                    .map_err(e)?,
            );
            Ok(())
        }
        ["key", "issue", user] => {
            let db = open_db(&a).await?;
            let (key, info) = keys::issue_api_key(&db, &actor(), user, a.flag("name"), now)
                .await
                .map_err(e)?;
            print_json(&serde_json::json!({"api_key": key, "key": info}));
            eprintln!("Store this key now: it is not shown again.");
            Ok(())
        }
        ["key", "revoke", id] => {
            keys::revoke_api_key(&open_db(&a).await?, &actor(), id, now)
                .await
                .map_err(e)?;
            println!("revoked {id}");
            Ok(())
        }
        ["key", "list"] => {
            print_json(
                &keys::list_api_keys(&open_db(&a).await?, a.flag("user"))
                    .await
                    .map_err(e)?,
            );
            Ok(())
        }
        ["service-key", "add", key] => {
            let allow_revoked = a.switches.iter().any(|s| s == "allow-revoked");
            let bound = keys::bind_service_key(
                &open_db(&a).await?,
                &actor(),
                key,
                a.need("user")?,
                now,
                allow_revoked,
            )
            .await
            .map_err(e)?;
            warn_if_guessable(bound);
            println!("service key bound to {}", a.need("user")?);
            Ok(())
        }
        ["service-key", "mint", service] => {
            let year = opsgate_core::time::date_string(now)
                .get(..4)
                .and_then(|y| y.parse::<i64>().ok())
                .unwrap_or(2026);
            println!("{}", keys::mint_service_key(service, year).map_err(e)?);
            Ok(())
        }
        ["service-key", "list"] => {
            print_json(
                &keys::list_service_keys(&open_db(&a).await?)
                    .await
                    .map_err(e)?,
            );
            Ok(())
        }
        ["user", "plan", id, plan] => {
            let db = open_db(&a).await?;
            print_json(
                &accounts::set_user_plan(&db, &actor(), id, plan_arg(plan)?, now)
                    .await
                    .map_err(e)?,
            );
            Ok(())
        }
        ["org", "plan", id, plan] => {
            let db = open_db(&a).await?;
            print_json(
                &accounts::set_org_plan(&db, &actor(), id, plan_arg(plan)?, now)
                    .await
                    .map_err(e)?,
            );
            Ok(())
        }
        ["analytics", which] => {
            let db = open_db(&a).await?;
            let default_days = crate::analytics::REPORTS
                .iter()
                .find(|(n, _)| n == which)
                .map(|(_, d)| *d)
                .ok_or_else(|| format!("unknown report '{which}' (top-users, models, orgs)"))?;
            let number = |flag: &str, default: i64| -> Result<i64, String> {
                a.flag(flag).map_or(Ok(default), |v| {
                    v.parse().map_err(|_| format!("--{flag} must be a number"))
                })
            };
            let (days, limit) = (number("days", default_days)?, number("limit", 10)?);
            let rows = crate::analytics::report(&db, which, now - days * 86_400, now + 1, limit)
                .await
                .map_err(e)?;
            print_json(&rows);
            Ok(())
        }
        ["service-key", "revoke", key] => {
            keys::revoke_service_key(&open_db(&a).await?, &actor(), key, now)
                .await
                .map_err(e)?;
            println!("revoked");
            Ok(())
        }
        ["provider-key", "set", provider] => {
            let catalogue = load_catalogue(&a)?;
            let key = read_secret_file(a.need("key-file")?)?;
            let keyring = Keyring::new(require_master_key(&a)?);
            let db = open_db(&a).await?;
            let (info, replaced) = byok::put(
                &db,
                &keyring,
                &catalogue,
                Owner::Platform,
                provider,
                key.expose(),
                a.flag("description"),
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
        ["provider-key", "list"] => {
            print_json(
                &byok::list(&open_db(&a).await?, Owner::Platform)
                    .await
                    .map_err(e)?,
            );
            Ok(())
        }
        ["provider-key", "remove", provider] => {
            let info = byok::remove(
                &open_db(&a).await?,
                Owner::Platform,
                Which::Provider(provider),
                &actor(),
                now,
            )
            .await
            .map_err(e)?;
            println!("removed the stored {provider} key {}", info.id);
            Ok(())
        }
        ["master-key", "generate"] => {
            let out = a.need("out")?;
            let key = MasterKey::generate();
            key.write_new_file(std::path::Path::new(out))?;
            println!("wrote a new master key to {out} (id {})", key.id());
            Ok(())
        }
        ["rotate-master-key"] => {
            let old = master_key_arg(&a, "old-key-file", "OPSGATE_OLD_MASTER_KEY")?.ok_or(
                "rotate-master-key needs the old key: --old-key-file FILE (or OPSGATE_OLD_MASTER_KEY[_FILE])",
            )?;
            let new = master_key_arg(&a, "new-key-file", "OPSGATE_NEW_MASTER_KEY")?.ok_or(
                "rotate-master-key needs the new key: --new-key-file FILE (or OPSGATE_NEW_MASTER_KEY[_FILE])",
            )?;
            let limit = a
                .flag("limit")
                .map(|s| s.parse::<u64>().map_err(|_| "--limit must be a number"))
                .transpose()?;
            let db = open_db(&a).await?;
            let report = byok::rotate_master_key(&db, &old, &new, limit, &actor(), now)
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
        _ => Err(format!(
            "unknown command '{}'\n\n{USAGE}",
            a.positional.join(" ")
        )),
    }
}

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
    accounts::create_user(
        db,
        actor,
        &accounts::NewUser {
            id: "loopnet-service",
            org_id: "org_demo",
            plan: Plan::Enterprise,
            kind: "service",
            role: "member",
        },
        now,
    )
    .await
    .map_err(e)?;
    keys::add_service_key(db, actor, DEMO_SERVICE_KEY, "loopnet-service", now)
        .await
        .map_err(e)?;
    accounts::create_user(
        db,
        actor,
        &accounts::NewUser {
            id: "demo-user",
            org_id: "org_demo",
            plan: Plan::Professional,
            kind: "user",
            role: "member",
        },
        now,
    )
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

async fn serve(a: &Args) -> Result<(), String> {
    let demo = a.switches.iter().any(|s| s == "demo");
    let mut catalogue = load_catalogue(a)?;
    let master = match (
        master_key_arg(a, "master-key-file", "OPSGATE_MASTER_KEY")?,
        demo,
    ) {
        (Some(k), _) => k,
        (None, true) => demo_master_key(a.flag("data-dir").unwrap_or("data"))?,
        (None, false) => return Err(format!("{NO_MASTER_KEY} (--demo makes a throwaway one.)")),
    };
    let mut keyring = Keyring::new(master);
    if let Some(previous) =
        master_key_arg(a, "previous-master-key-file", "OPSGATE_PREVIOUS_MASTER_KEY")?
    {
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
    let internal_token = match (
        a.flag("internal-token")
            .map(str::to_string)
            .or_else(|| std::env::var("OPSGATE_INTERNAL_TOKEN").ok()),
        demo,
    ) {
        (Some(t), _) if t.len() >= 16 => t,
        (Some(_), _) => return Err("the internal token must be at least 16 characters".into()),
        (None, true) => DEMO_INTERNAL_TOKEN.to_string(),
        (None, false) => {
            return Err(
                "OPSGATE_INTERNAL_TOKEN (or --internal-token) is required outside --demo".into(),
            )
        }
    };
    let admin_token = a
        .flag("admin-token")
        .map(str::to_string)
        .or_else(|| std::env::var("OPSGATE_ADMIN_TOKEN").ok());
    let hold_ttl_secs = a
        .flag("hold-ttl-secs")
        .map(|s| s.parse().map_err(|_| "--hold-ttl-secs must be a number"))
        .transpose()?
        .unwrap_or(900);

    let db = open_db(a).await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    if demo {
        if let Some(key) = seed_demo(&db, clock.now()).await? {
            let dir = a.flag("data-dir").unwrap_or("data");
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
            Ok(n) => eprintln!(
                "opsgate: WARNING: {n} active service key(s) were bound while guessable (short random part, or bound before opsgate checked): anyone who guesses one calls on its organisation's credits. Mint strong ones with `opsgate service-key mint <service>`, bind them, and revoke the old ones."
            ),
            Err(e) => eprintln!("opsgate: cannot check the service keys' strength: {e}"),
        }
    }
    match byok::foreign_master_keys(&db, &keyring).await {
        Ok(foreign) => {
            for (id, n) in foreign {
                eprintln!(
                    "opsgate: WARNING: {n} stored provider key(s) are wrapped under master key {id}, which this process does not hold (it holds {}); they cannot be used. Start with that key, or finish rotate-master-key.",
                    keyring.ids().join(", ")
                );
            }
        }
        Err(e) => eprintln!("opsgate: cannot check the stored provider keys: {e}"),
    }
    let state = AppState {
        db: db.clone(),
        catalogue: Arc::new(catalogue),
        keyring: Arc::new(keyring),
        clock: clock.clone(),
        settings: Arc::new(Settings {
            internal_token,
            admin_token,
            platform_keys,
            hold_ttl_secs,
            session_ttl_secs: a
                .flag("session-ttl-secs")
                .map(|s| s.parse().map_err(|_| "--session-ttl-secs must be a number"))
                .transpose()?
                .unwrap_or(8 * 3600),
            // Plain-HTTP development (demo) cannot keep a Secure cookie.
            cookie_secure: !demo,
            admin_role: a.flag("admin-role").unwrap_or("opsgate-admin").to_string(),
        }),
        metrics: Arc::new(Metrics::default()),
    };
    // Holds whose outcome never arrived are charged as held.
    let sweeper_db = db.clone();
    let sweeper_clock = clock.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            tick.tick().await;
            match crate::ledger::expire_holds(&sweeper_db, sweeper_clock.now()).await {
                Ok(0) => {}
                Ok(n) => eprintln!("opsgate: expired {n} unsettled hold(s), charged as held"),
                Err(e) => eprintln!("opsgate: hold expiry failed: {e}"),
            }
        }
    });
    let bind = a.flag("bind").unwrap_or("127.0.0.1");
    let port = a.flag("port").unwrap_or("8085");
    let listener = tokio::net::TcpListener::bind(format!("{bind}:{port}"))
        .await
        .map_err(|e| format!("cannot listen on {bind}:{port}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("opsgate control plane listening on {addr}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
            }
        })
        .await
        .map_err(|e| e.to_string())
}
