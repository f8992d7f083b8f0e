//! `fake-provider`: serves the deterministic OpenAI-compatible fake.
//!
//! Prints exactly one line on stdout once bound,
//! `fake-provider listening on <addr>`, so a harness using `--port 0` can read
//! the real port; everything else goes to stderr.

use std::{env, io::Write, process::ExitCode, time::Duration};

use axum::http::HeaderValue;
use opsgate_fake_provider::{app, Config};

const USAGE: &str = "usage: fake-provider [--bind ADDR] [--port N] [--api-key KEY[,KEY…]] \
                     [--latency-ms N] [--name NAME]\n\
                     (the API key may also come from FAKE_PROVIDER_API_KEY)";

#[derive(Debug)]
struct Options {
    bind: String,
    port: u16,
    config: Config,
}

/// Parses `--flag value` / `--flag=value` arguments; `env_key` is
/// `FAKE_PROVIDER_API_KEY`, which `--api-key` overrides.
fn parse_args(
    args: impl IntoIterator<Item = String>,
    env_key: Option<String>,
) -> Result<Options, String> {
    let mut options = Options {
        bind: "127.0.0.1".to_owned(),
        port: 8090,
        config: Config {
            api_key: env_key,
            ..Config::default()
        },
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag.to_owned(), Some(value.to_owned())),
            None => (arg, None),
        };
        let value = || {
            inline
                .or_else(|| args.next())
                .ok_or(format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--bind" => options.bind = value()?,
            "--port" => {
                options.port = value()?
                    .parse()
                    .map_err(|_| "--port needs a number 0-65535")?
            }
            "--api-key" => options.config.api_key = Some(value()?),
            "--latency-ms" => {
                let ms = value()?
                    .parse()
                    .map_err(|_| "--latency-ms needs a number")?;
                options.config.latency = Duration::from_millis(ms);
            }
            "--name" => options.config.name = value()?,
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    options.config.api_key = options.config.api_key.filter(|key| !key.is_empty());
    if HeaderValue::try_from(options.config.name.as_str()).is_err() {
        return Err("--name must be usable as an HTTP header value".to_owned());
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "-h" || arg == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let options = match parse_args(args, env::var("FAKE_PROVIDER_API_KEY").ok()) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("fake-provider: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind((options.bind.as_str(), options.port)).await
    {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "fake-provider: cannot bind {}:{}: {e}",
                options.bind, options.port
            );
            return ExitCode::FAILURE;
        }
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("fake-provider: {e}");
            return ExitCode::FAILURE;
        }
    };
    let name = options.config.name.clone();
    eprintln!(
        "[{name}] api key {}, latency {} ms",
        if options.config.api_key.is_some() {
            "required"
        } else {
            "not required"
        },
        options.config.latency.as_millis()
    );
    println!("fake-provider listening on {addr}");
    // The harness blocks on this line; make sure it leaves now.
    let _ = std::io::stdout().flush();

    let served = axum::serve(listener, app(options.config))
        .with_graceful_shutdown(shutdown_signal())
        .await;
    if let Err(e) = served {
        eprintln!("[{name}] server error: {e}");
        return ExitCode::FAILURE;
    }
    eprintln!("[{name}] stopped");
    ExitCode::SUCCESS
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                sigterm.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str], env_key: Option<&str>) -> Result<Options, String> {
        parse_args(
            args.iter().map(|a| a.to_string()),
            env_key.map(str::to_owned),
        )
    }

    #[test]
    fn defaults() {
        let options = parse(&[], None).unwrap();
        assert_eq!((options.bind.as_str(), options.port), ("127.0.0.1", 8090));
        assert_eq!(options.config.name, "fake");
        assert_eq!(options.config.api_key, None);
        assert_eq!(options.config.latency, Duration::ZERO);
    }

    #[test]
    fn flags_both_forms_and_env_key() {
        let args = [
            "--bind",
            "0.0.0.0",
            "--port=0",
            "--latency-ms",
            "25",
            "--name=b",
        ];
        let options = parse(&args, Some("from-env")).unwrap();
        assert_eq!((options.bind.as_str(), options.port), ("0.0.0.0", 0));
        assert_eq!(options.config.latency, Duration::from_millis(25));
        assert_eq!(options.config.name, "b");
        assert_eq!(options.config.api_key.as_deref(), Some("from-env"));
        let options = parse(&["--api-key", "cli"], Some("from-env")).unwrap();
        assert_eq!(options.config.api_key.as_deref(), Some("cli"));
    }

    #[test]
    fn bad_arguments() {
        assert!(parse(&["--port"], None).is_err());
        assert!(parse(&["--port", "x"], None).is_err());
        assert!(parse(&["--verbose"], None).is_err());
    }
}
