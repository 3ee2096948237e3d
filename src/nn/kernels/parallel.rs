//! Whether a kernel may split its work across threads.
//!
//! Why: at the default preset's sizes (768 tokens, n_embd 128) one op is too small to
//! split well over threads: the hand-offs cost more than they save, and a 2-core step
//! spent about 800 context switches on them. The trainer instead runs the shards of a
//! batch side by side, one per thread ([`serial`]), and every kernel inside a shard
//! runs on the thread that called it.

use std::cell::Cell;

thread_local! {
    static SERIAL: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with every kernel it calls on this thread kept on this thread.
pub fn serial<R>(f: impl FnOnce() -> R) -> R {
    let before = SERIAL.with(|s| s.replace(true));
    let _restore = Restore(before);
    f()
}

struct Restore(bool);

impl Drop for Restore {
    fn drop(&mut self) {
        SERIAL.with(|s| s.set(self.0));
    }
}

/// Whether a kernel called here may split its work across the thread pool.
pub(crate) fn may_split() -> bool {
    !SERIAL.with(Cell::get) && rayon::current_num_threads() > 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_holds_inside_and_restores_after_even_nested() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            assert!(may_split());
            serial(|| {
                assert!(!may_split());
                serial(|| assert!(!may_split()));
                assert!(!may_split());
            });
            assert!(may_split());
        });
    }
}
