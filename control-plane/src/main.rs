fn main() {
    if let Err(e) = opsgate_control_plane::cli::run(std::env::args_os()) {
        eprintln!("opsgate: {e}");
        std::process::exit(1);
    }
}
