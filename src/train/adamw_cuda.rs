//! AdamW's two in-place updates as CUDA kernels (compiled once by NVRTC at the first
//! step), the GPU side of `optim.rs`'s `MomentsUpdate` and `ApplyUpdate`: two launches
//! per parameter instead of a dozen composed ops and their temporaries, which made the
//! optimizer the bulk of a small model's step on a GPU. Same arithmetic as the CPU loop.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::{CudaStorage, Layout, Result};

const SRC: &str = r#"
extern "C" __global__ void wick_adamw_moments(
    float* mv, const float* g, unsigned int n, float beta1, float beta2, float scale) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float gi = g[i] * scale;
        mv[i] = beta1 * mv[i] + (1.0f - beta1) * gi;
        mv[n + i] = beta2 * mv[n + i] + (1.0f - beta2) * gi * gi;
    }
}

extern "C" __global__ void wick_adamw_apply(
    float* w, const float* mv, unsigned int n, float lr, float decay, float bc1, float bc2,
    float eps) {
    unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float update = (mv[i] / bc1) / (sqrtf(mv[n + i] / bc2) + eps);
        w[i] = w[i] * decay - lr * update;
    }
}
"#;

/// The kernels' PTX, compiled for the GPU on first use.
fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        candle_core::cuda::cudarc::nvrtc::compile_ptx(SRC)
            .map(|p| p.to_src())
            .map_err(|e| format!("compiling the AdamW kernels: {e:?}"))
    })
    .as_ref()
    .map(String::as_str)
    .map_err(|e| candle_core::Error::Msg(e.clone()))
}

fn offsets(l: &Layout) -> Result<(usize, usize)> {
    l.contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("an in-place update needs contiguous f32".into()))
}

/// m ← β1·m + (1−β1)·g·s, v ← β2·v + (1−β2)·(g·s)² on the packed (2, n) moments.
pub fn moments(
    mv: &mut CudaStorage,
    lmv: &Layout,
    g: &CudaStorage,
    lg: &Layout,
    [beta1, beta2, scale]: [f32; 3],
) -> Result<()> {
    let ((m0, m1), (g0, g1)) = (offsets(lmv)?, offsets(lg)?);
    let n = g1 - g0;
    if m1 - m0 != 2 * n {
        candle_core::bail!("AdamW moments hold {} values for {n} gradients", m1 - m0)
    }
    let dev = g.device().clone();
    let func = dev.get_or_load_custom_func("wick_adamw_moments", "wick_adamw", ptx()?)?;
    let g = g.as_cuda_slice::<f32>()?.slice(g0..g1);
    let mut mv = mv.as_cuda_slice_mut::<f32>()?.slice_mut(m0..m1);
    let n32 = n as u32;
    let mut b = func.builder();
    b.arg(&mut mv);
    b.arg(&g);
    b.arg(&n32);
    b.arg(&beta1);
    b.arg(&beta2);
    b.arg(&scale);
    // SAFETY: the kernel reads n gradients and writes 2n moments, both bounds checked above.
    unsafe { b.launch(LaunchConfig::for_num_elems(n32)) }
        .map_err(|e| candle_core::Error::Msg(format!("AdamW moments kernel: {e:?}")))?;
    Ok(())
}

/// w ← w·decay − lr · (m / bc1) / (√(v / bc2) + ε).
pub fn apply(
    w: &mut CudaStorage,
    lw: &Layout,
    mv: &CudaStorage,
    lmv: &Layout,
    [lr, decay, bc1, bc2, eps]: [f32; 5],
) -> Result<()> {
    let ((w0, w1), (m0, m1)) = (offsets(lw)?, offsets(lmv)?);
    let n = w1 - w0;
    if m1 - m0 != 2 * n {
        candle_core::bail!("AdamW moments hold {} values for {n} weights", m1 - m0)
    }
    let dev = mv.device().clone();
    let func = dev.get_or_load_custom_func("wick_adamw_apply", "wick_adamw", ptx()?)?;
    let mv = mv.as_cuda_slice::<f32>()?.slice(m0..m1);
    let mut w = w.as_cuda_slice_mut::<f32>()?.slice_mut(w0..w1);
    let n32 = n as u32;
    let mut b = func.builder();
    b.arg(&mut w);
    b.arg(&mv);
    b.arg(&n32);
    for x in [&lr, &decay, &bc1, &bc2, &eps] {
        b.arg(x);
    }
    // SAFETY: the kernel writes n weights and reads 2n moments, both bounds checked above.
    unsafe { b.launch(LaunchConfig::for_num_elems(n32)) }
        .map_err(|e| candle_core::Error::Msg(format!("AdamW update kernel: {e:?}")))?;
    Ok(())
}
