#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(e) = opsgate_control_plane::cli::run(args).await {
        eprintln!("opsgate: {e}");
        std::process::exit(2);
    }
}
