/// mimalloc instead of glibc's allocator: see `wick::runtime`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    if let Err(e) = wick::runtime::init() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    if let Err(e) = wick::cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
