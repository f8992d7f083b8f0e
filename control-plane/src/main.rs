#[tokio::main]
async fn main() {
    if let Err(e) = opsgate_control_plane::cli::run(std::env::args_os()).await {
        eprintln!("opsgate: {e}");
        std::process::exit(1);
    }
}
