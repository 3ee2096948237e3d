/// mimalloc instead of glibc's allocator: see `wick::runtime`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // An error is one line naming the file or flag. Library backtraces (candle captures
    // one inside every error when RUST_BACKTRACE is set, as it is in many Rust users'
    // shells) are off unless asked for by RUST_LIB_BACKTRACE=1; panics keep theirs.
    // Set before any thread starts.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    if let Err(e) = wick::runtime::init() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    if let Err(e) = wick::cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
