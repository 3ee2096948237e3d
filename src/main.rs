fn main() {
    if let Err(e) = wick::cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
