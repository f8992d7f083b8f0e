//! The `opsgate` command line, declared with clap's derive API: every command has its own
//! `--help`, flags that make sense from the environment read it (`env = …`), and errors name
//! the flag. Secrets read from the environment are never echoed by `--help`
//! (`hide_env_values`).

use clap::{Args, Parser, Subcommand, ValueEnum};
use opsgate_core::plan::Plan;

const AFTER_HELP: &str = "\
Master key (encrypts stored provider keys; required by `serve` outside --demo, which makes one
in DATA_DIR/master.key): --master-key-file FILE, or OPSGATE_MASTER_KEY_FILE, or
OPSGATE_MASTER_KEY (32 bytes as 64 hex characters or base64). During a rotation, `serve` also
takes the previous key (--previous-master-key-file, OPSGATE_PREVIOUS_MASTER_KEY[_FILE]).

Platform provider keys come from each provider's key variable named in the catalogue (a key
stored with `provider-key set` or the admin API wins over it).

Credits are decimal credits (\"500\", \"0.25\"); output prints credits, and milli-credits only
in fields whose name ends in _mc.";

#[derive(Debug, Parser)]
#[command(
    name = "opsgate",
    version,
    about = "opsgate control plane and admin CLI: organisations, users, keys, plans, the credit ledger",
    after_help = AFTER_HELP,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub db: DbArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct DbArgs {
    /// Database URL: sqlite://FILE or postgres://USER@HOST/DB [default: sqlite://DATA_DIR/opsgate.db]
    #[arg(
        long,
        env = "OPSGATE_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// Directory of the default SQLite database and of the demo's files
    #[arg(long, env = "OPSGATE_DATA_DIR", global = true, default_value = "data")]
    pub data_dir: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the control plane: the internal API for the filter, the public, BYOK, session and admin APIs
    Serve(ServeArgs),
    /// Organisations: the credit pool and the tier their users call under
    #[command(subcommand)]
    Org(OrgCommand),
    /// Users and service users
    #[command(subcommand)]
    User(UserCommand),
    /// Users' uc_ API keys
    #[command(subcommand)]
    Key(KeyCommand),
    /// Service keys (trusted internal services)
    #[command(subcommand, name = "service-key")]
    ServiceKey(ServiceKeyCommand),
    /// The integration guide's Appendix C reports
    Analytics(AnalyticsArgs),
    /// Usage over time (the console's charts)
    #[command(subcommand)]
    Usage(UsageCommand),
    /// The audit log, newest first
    Audit {
        /// Entries to show
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
    },
    /// The platform's own provider keys, stored encrypted
    #[command(subcommand, name = "provider-key")]
    ProviderKey(ProviderKeyCommand),
    /// Users' own (BYOK) provider keys: list them masked, remove one
    #[command(subcommand)]
    Byok(ByokCommand),
    /// The master key that encrypts stored provider keys
    #[command(subcommand, name = "master-key")]
    MasterKey(MasterKeyCommand),
    /// Rewrap every stored provider key under a new master key (safe to interrupt and run again)
    #[command(name = "rotate-master-key")]
    RotateMasterKey(RotateArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (for a log pipeline)
    Json,
    /// Readable lines (for a terminal)
    Text,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on
    #[arg(long, env = "OPSGATE_BIND", default_value = "127.0.0.1")]
    pub bind: String,
    /// Port to listen on (0 picks a free one, printed at start)
    #[arg(long, env = "OPSGATE_PORT", default_value_t = 8085)]
    pub port: u16,
    /// Model catalogue (TOML) [default: the built-in catalogue]
    #[arg(long, env = "OPSGATE_CATALOGUE")]
    pub catalogue: Option<String>,
    /// Demo mode: seed the guide's demo organisation and keys, route every provider to the fake provider
    #[arg(long, env = "OPSGATE_DEMO")]
    pub demo: bool,
    /// Shared secret the filter presents on /internal/* (at least 16 characters; required outside --demo)
    #[arg(long, env = "OPSGATE_INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: Option<String>,
    /// Bearer token of the admin API (admin routes are closed without it, except to admin JWTs)
    #[arg(long, env = "OPSGATE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The JWT role that grants the admin API
    #[arg(long, env = "OPSGATE_ADMIN_ROLE", default_value = "opsgate-admin")]
    pub admin_role: String,
    /// Seconds after which an unsettled hold is charged as held
    #[arg(long, env = "OPSGATE_HOLD_TTL_SECS", default_value_t = 900)]
    pub hold_ttl_secs: i64,
    /// How long a browser session lasts, in seconds
    #[arg(long, env = "OPSGATE_SESSION_TTL_SECS", default_value_t = 8 * 3600)]
    pub session_ttl_secs: i64,
    /// How long an admin console session (/console/) lasts, in seconds
    #[arg(long, env = "OPSGATE_CONSOLE_SESSION_TTL_SECS", default_value_t = 2 * 3600, value_parser = clap::value_parser!(i64).range(1..=7 * 86_400))]
    pub console_session_ttl_secs: i64,
    /// Threads running requests: 0 runs them all on one thread (the cheapest per call on a
    /// small machine; add replicas on PostgreSQL for more), N > 0 a pool of N
    #[arg(long, env = "OPSGATE_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
    /// Log format [default: text with --demo, json otherwise]
    #[arg(long, env = "OPSGATE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. info or opsgate=debug (RUST_LOG syntax) [default: RUST_LOG, else info]
    #[arg(long, env = "OPSGATE_LOG")]
    pub log: Option<String>,
    #[command(flatten)]
    pub master: MasterKeyArgs,
    /// The master key being rotated away from, to open what is not yet rewrapped
    #[arg(long, env = "OPSGATE_PREVIOUS_MASTER_KEY_FILE")]
    pub previous_master_key_file: Option<String>,
}

#[derive(Debug, Args)]
pub struct MasterKeyArgs {
    /// File holding the master key (32 bytes as hex or base64); or OPSGATE_MASTER_KEY
    #[arg(long, env = "OPSGATE_MASTER_KEY_FILE")]
    pub master_key_file: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organisation (with CREDITS in its pool)
    Create {
        id: String,
        /// Display name
        #[arg(long)]
        name: String,
        /// The organisation's tier: its users' plans may not exceed it
        #[arg(long, value_parser = plan)]
        plan: Plan,
        /// Credits to grant at once
        #[arg(long, value_parser = credits)]
        credits: Option<i64>,
    },
    /// Add credits to the pool (negative removes)
    Grant {
        id: String,
        #[arg(value_parser = credits, allow_negative_numbers = true)]
        credits: i64,
    },
    /// List organisations with their balances
    List,
    /// One organisation with its balance
    Show { id: String },
    /// The allocations of the organisation's users, and how much of each is used
    Allocations { id: String },
    /// Change the organisation's plan (its tier)
    Plan {
        id: String,
        #[arg(value_parser = plan)]
        plan: Plan,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum UserKind {
    User,
    Service,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Role {
    Member,
    Admin,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user (or a service user) in an organisation
    Create {
        id: String,
        /// The organisation
        #[arg(long, visible_alias = "org-id")]
        org: String,
        /// The user's plan (at most the organisation's)
        #[arg(long, value_parser = plan)]
        plan: Plan,
        #[arg(long, value_enum, default_value = "user")]
        kind: UserKind,
        #[arg(long, value_enum, default_value = "member")]
        role: Role,
        /// Bind this service key to the new user (sk-<service>-service-key-<year>)
        #[arg(long)]
        service_key: Option<String>,
    },
    /// Set the user's allocation: a cap on what the user may spend of the organisation's pool
    /// (caps adding up to more than the pool are allowed, with a warning)
    Allocate {
        id: String,
        #[arg(value_parser = credits)]
        credits: i64,
    },
    /// List users
    List {
        /// Only this organisation's
        #[arg(long, visible_alias = "org-id")]
        org: Option<String>,
    },
    /// Change the user's plan
    Plan {
        id: String,
        #[arg(value_parser = plan)]
        plan: Plan,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Issue a uc_ API key (shown once)
    Issue {
        user: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// Revoke a uc_ API key by its id
    Revoke { key_id: String },
    /// List API keys (never the keys themselves)
    List {
        /// Only this user's
        #[arg(long, visible_alias = "user-id")]
        user: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ServiceKeyCommand {
    /// Bind a service key to a service user (stored as a digest; a guessable one is bound
    /// with a warning; a revoked one only with --allow-revoked)
    Add {
        key: String,
        #[arg(long)]
        user: String,
        /// Re-bind a key that was revoked
        #[arg(long)]
        allow_revoked: bool,
    },
    /// Print a strong new service key for SERVICE
    Mint { service: String },
    /// Revoke a service key
    Revoke { key: String },
    /// Names and owners of the service keys (never digests)
    List,
}

#[derive(Debug, Args)]
pub struct AnalyticsArgs {
    /// The report
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(crate::analytics::REPORTS.map(|(n, _)| n)))]
    pub report: String,
    /// Days to look back [default: 30 for top-users and orgs, 7 for models]
    #[arg(long)]
    pub days: Option<i64>,
    /// Rows
    #[arg(long, default_value_t = 10)]
    pub limit: i64,
}

#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// Calls and credits per UTC day, by organisation, user, model or provider
    Daily {
        /// Days, ending with today
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(i64).range(1..=366))]
        days: i64,
        /// The breakdown
        #[arg(long, default_value = "org", value_parser = clap::builder::PossibleValuesParser::new(crate::analytics::DAILY_BY))]
        by: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum ProviderKeyCommand {
    /// Store the platform's key for a provider, encrypted (needs the master key)
    Set {
        provider: String,
        /// File holding the key ('-' reads standard input)
        #[arg(long)]
        key_file: String,
        #[arg(long)]
        description: Option<String>,
        /// Catalogue that names the provider [default: the built-in one]
        #[arg(long, env = "OPSGATE_CATALOGUE")]
        catalogue: Option<String>,
        #[command(flatten)]
        master: MasterKeyArgs,
    },
    /// Stored platform keys, masked
    List,
    /// A provider's stored platform key, masked
    Show { provider: String },
    /// Remove the stored key of a provider
    Remove { provider: String },
}

#[derive(Debug, Subcommand)]
pub enum ByokCommand {
    /// A user's own provider keys, masked
    List { user: String },
    /// Remove one of a user's own keys (adding or rotating them is the user's own act)
    Remove { user: String, key_id: String },
}

#[derive(Debug, Subcommand)]
pub enum MasterKeyCommand {
    /// Write a new random master key (mode 0600)
    Generate {
        #[arg(long)]
        out: String,
    },
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    /// The current master key's file; or OPSGATE_OLD_MASTER_KEY[_FILE]
    #[arg(long, env = "OPSGATE_OLD_MASTER_KEY_FILE")]
    pub old_key_file: Option<String>,
    /// The new master key's file; or OPSGATE_NEW_MASTER_KEY[_FILE]
    #[arg(long, env = "OPSGATE_NEW_MASTER_KEY_FILE")]
    pub new_key_file: Option<String>,
    /// Rewrap at most N keys in this run
    #[arg(long)]
    pub limit: Option<u64>,
}

fn plan(s: &str) -> Result<Plan, String> {
    Plan::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Plan::ALL.iter().map(|p| p.as_str()).collect();
        format!("unknown plan '{s}' (one of: {})", names.join(", "))
    })
}

fn credits(s: &str) -> Result<i64, String> {
    opsgate_core::money::MilliCredits::parse_credits(s).map(|m| m.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn each_command_has_its_own_help() {
        let err = Cli::try_parse_from(["opsgate", "org", "create", "--help"]).unwrap_err();
        let help = err.to_string();
        assert!(help.contains("Create an organisation"), "{help}");
        assert!(help.contains("--plan"), "{help}");
        assert!(!help.contains("rotate-master-key"), "{help}");
    }

    #[test]
    fn errors_name_the_flag() {
        let err = Cli::try_parse_from([
            "opsgate", "org", "create", "o1", "--name", "x", "--plan", "gold",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--plan") && err.contains("unknown plan 'gold'"),
            "{err}"
        );
        let err = Cli::try_parse_from(["opsgate", "user", "create", "u1", "--plan", "trial"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--org"), "{err}");
    }

    #[test]
    fn a_grant_may_be_negative_and_global_flags_go_anywhere() {
        let cli = Cli::try_parse_from([
            "opsgate",
            "org",
            "grant",
            "o1",
            "-2.5",
            "--database-url",
            "sqlite://x.db",
        ])
        .unwrap();
        assert_eq!(cli.db.database_url.as_deref(), Some("sqlite://x.db"));
        assert!(matches!(
            cli.command,
            Command::Org(OrgCommand::Grant { credits: -2500, .. })
        ));
    }

    /// Every CLI command that manages state has its admin API route, and every admin route its
    /// CLI command (the same names: see the README). Offline tools — the master key's
    /// generation and rotation, shell completions, `serve` — are the CLI's alone.
    #[test]
    fn the_cli_and_the_admin_api_offer_the_same_actions() {
        const PAIRS: &[(&str, &str)] = &[
            ("org create", "POST /admin/v1/orgs"),
            ("org list", "GET /admin/v1/orgs"),
            ("org show", "GET /admin/v1/orgs/{id}"),
            ("org allocations", "GET /admin/v1/orgs/{id}/allocations"),
            ("org grant", "POST /admin/v1/orgs/{id}/grants"),
            ("org plan", "PUT /admin/v1/orgs/{id}/plan"),
            ("user create", "POST /admin/v1/users"),
            ("user list", "GET /admin/v1/users"),
            ("user allocate", "PUT /admin/v1/users/{id}/allocation"),
            ("user plan", "PUT /admin/v1/users/{id}/plan"),
            ("key issue", "POST /admin/v1/users/{id}/api-keys"),
            ("key list", "GET /admin/v1/api-keys"),
            ("key revoke", "DELETE /admin/v1/api-keys/{id}"),
            ("service-key add", "POST /admin/v1/service-keys"),
            ("service-key list", "GET /admin/v1/service-keys"),
            ("service-key revoke", "DELETE /admin/v1/service-keys"),
            ("service-key mint", "POST /admin/v1/service-keys/mint"),
            ("audit", "GET /admin/v1/audit"),
            ("analytics", "GET /admin/v1/analytics/{report}"),
            ("usage daily", "GET /admin/v1/usage/daily"),
            ("provider-key list", "GET /admin/v1/provider-keys"),
            (
                "provider-key show",
                "GET /admin/v1/provider-keys/{provider}",
            ),
            ("provider-key set", "PUT /admin/v1/provider-keys/{provider}"),
            (
                "provider-key remove",
                "DELETE /admin/v1/provider-keys/{provider}",
            ),
            ("byok list", "GET /admin/v1/users/{id}/byok-keys"),
            (
                "byok remove",
                "DELETE /admin/v1/users/{id}/byok-keys/{key_id}",
            ),
        ];
        const CLI_ONLY: &[&str] = &[
            "serve",
            "master-key generate",
            "rotate-master-key",
            "completions",
        ];
        // Every leaf command of the CLI.
        let mut leaves = Vec::new();
        for c in Cli::command().get_subcommands() {
            let subs: Vec<_> = c.get_subcommands().collect();
            if subs.is_empty() {
                leaves.push(c.get_name().to_string());
            }
            for s in subs {
                leaves.push(format!("{} {}", c.get_name(), s.get_name()));
            }
        }
        for leaf in &leaves {
            assert!(
                CLI_ONLY.contains(&leaf.as_str()) || PAIRS.iter().any(|(c, _)| c == leaf),
                "CLI command '{leaf}' has no admin API route"
            );
        }
        // Every admin route and method, from the OpenAPI document (held to the router by
        // tests/openapi.rs).
        let doc = serde_json::to_value(crate::http::openapi::document()).unwrap();
        let mut routes = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            if path.starts_with("/admin/v1/") {
                for method in item.as_object().unwrap().keys() {
                    routes.push(format!("{} {path}", method.to_uppercase()));
                }
            }
        }
        // Signing in to the console is the browser's act.
        const API_ONLY: &[&str] = &[
            "GET /admin/v1/console/session",
            "POST /admin/v1/console/session",
            "DELETE /admin/v1/console/session",
        ];
        for route in &routes {
            assert!(
                API_ONLY.contains(&route.as_str()) || PAIRS.iter().any(|(_, r)| r == route),
                "admin route '{route}' has no CLI command"
            );
        }
        for (cli, route) in PAIRS {
            assert!(leaves.contains(&cli.to_string()), "no CLI command '{cli}'");
            assert!(
                routes.contains(&route.to_string()),
                "no admin route '{route}'"
            );
        }
    }

    #[test]
    fn org_id_is_an_alias_of_org() {
        let cli = Cli::try_parse_from(["opsgate", "user", "list", "--org-id", "o1"]).unwrap();
        assert!(
            matches!(cli.command, Command::User(UserCommand::List { org: Some(ref o) }) if o == "o1")
        );
    }
}
