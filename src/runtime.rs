//! Process-wide settings for CPU tensor work, applied by the `wick` binary and the
//! benchmarks at start ([`init`]).
//!
//! Allocation: training allocates and frees
//! activation-sized buffers every step; with glibc's allocator each came back as fresh
//! pages from the kernel (~27,000 page faults and a third of a step zeroing pages on the
//! default preset). The `wick` binary and the benchmarks use mimalloc as the global
//! allocator and keep freed memory.
//!
//! Threads: candle's CPU worker spins 25,000 times before parking; on two cores that
//! spinning starves the matmul threads between the many small ops of a training step.
//! Sharded training keeps candle's ops on their caller altogether
//! ([`candle_ops_on_caller`]).

/// mimalloc's `mi_option_purge_delay` (mimalloc.h, v2): how long freed memory is kept
/// before being returned to the OS; -1 keeps it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Call first thing in `main`, before any tensor work: checks `WICK_SIMD`, tells
/// mimalloc never to return freed memory to the OS (a no-op when mimalloc is not the
/// global allocator), and shortens candle's worker spin unless
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT` is set.
pub fn init() -> Result<(), String> {
    crate::nn::kernels::simd::requested()?;
    // SAFETY: sets a process-wide option; mimalloc documents it as callable at any time.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // Read when candle's pool starts, on the first CPU op.
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "2000");
    }
    Ok(())
}

/// The CPU features the kernels use, for the summaries: wick's row kernels at
/// [`crate::nn::kernels::simd::level`], and the instruction set gemm picks for matrix
/// products (its own run-time choice, AVX-512 when the CPU has avx512f), and AMX when
/// `--matmul-precision bf16` put the products there.
pub fn cpu_features() -> String {
    use crate::nn::kernels::simd::{level, Simd};
    let gemm = if Simd::Avx512.supported() {
        "avx512f"
    } else if Simd::Avx2.supported() {
        "fma"
    } else {
        "scalar"
    };
    let bf16 = match crate::nn::kernels::matmul_precision() {
        crate::nn::kernels::MatmulPrecision::Bf16 => ", matmul bf16 on amx",
        crate::nn::kernels::MatmulPrecision::F32 => "",
    };
    format!("row kernels {}, gemm {gemm}{bf16}", level().name())
}

/// Runs candle's own CPU ops (adds, copies, the gradient sums of its backward) on the
/// thread that calls them, for training that runs the shards of a batch side by side:
/// candle's CPU pool serves one caller at a time, so shards would queue on it, and its
/// worker would make three busy threads on two cores. Respects `CANDLE_NUM_THREADS`
/// when set. Candle reads it when its pool starts, on its first CPU op, so this is
/// called before any tensor work, while the process has no other threads of its own.
pub fn candle_ops_on_caller() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
