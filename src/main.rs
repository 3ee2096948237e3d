/// mimalloc instead of glibc's allocator: see `wick::runtime`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    wick::runtime::init();
    if let Err(e) = wick::cli::run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
