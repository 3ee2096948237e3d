//! Whether a kernel may split its work across threads, and the shards of a batch that
//! run side by side instead.
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

/// How many shards a batch of `batch` rows runs as: one per thread of the pool, as many
/// as divide the batch evenly; one on a GPU, which parallelises inside each op.
pub fn shard_count(batch: usize, device: &candle_core::Device) -> usize {
    if !device.is_cpu() {
        return 1;
    }
    let threads = rayon::current_num_threads().clamp(1, batch.max(1));
    (1..=threads)
        .rev()
        .find(|s| batch.is_multiple_of(*s))
        .unwrap_or(1)
}

/// `f(shard, its rows of each of rows)` for every shard of the tensors in `rows` (the
/// same batch size, [`shard_count`]), side by side, each shard's kernels kept on its
/// thread ([`serial`]); results in shard order.
pub fn over_shards<R: Send>(
    rows: &[&candle_core::Tensor],
    f: impl Fn(usize, &[candle_core::Tensor]) -> crate::error::Result<R> + Sync,
) -> crate::error::Result<Vec<R>> {
    use rayon::prelude::*;
    let batch = rows[0].dim(0)?;
    let shards = shard_count(batch, rows[0].device());
    let of = |s: usize| -> crate::error::Result<Vec<candle_core::Tensor>> {
        let n = batch / shards;
        Ok(rows
            .iter()
            .map(|t| t.narrow(0, s * n, n))
            .collect::<candle_core::Result<_>>()?)
    };
    if shards == 1 {
        return Ok(vec![f(0, &of(0)?)?]);
    }
    (0..shards)
        .into_par_iter()
        .map(|s| serial(|| f(s, &of(s)?)))
        .collect()
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

    #[test]
    fn shards_divide_the_batch_and_follow_the_threads() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap();
        pool.install(|| {
            let cpu = candle_core::Device::Cpu;
            assert_eq!(shard_count(12, &cpu), 4);
            assert_eq!(shard_count(6, &cpu), 3);
            assert_eq!(shard_count(7, &cpu), 1);
            assert_eq!(shard_count(2, &cpu), 2);
            assert_eq!(shard_count(1, &cpu), 1);
        });
    }
}
