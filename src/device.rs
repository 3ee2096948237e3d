//! `--device cpu|cuda[:N]|metal`. CUDA and Metal exist only in builds with the matching
//! cargo feature; asking for them otherwise is an error that says how to build.

use candle_core::Device;

use crate::error::{Result, WickError};

pub fn parse_device(s: &str) -> Result<Device> {
    let (kind, ordinal) = match s.split_once(':') {
        Some((k, n)) => {
            let n = n
                .parse::<usize>()
                .map_err(|_| WickError::Unsupported(format!("--device {s}: bad ordinal")))?;
            (k, n)
        }
        None => (s, 0),
    };
    match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" if candle_core::utils::cuda_is_available() => Ok(Device::new_cuda(ordinal)?),
        "cuda" => Err(WickError::Unsupported(
            "--device cuda: this wick was built without CUDA (cargo build --release --features cuda)".into(),
        )),
        "metal" if candle_core::utils::metal_is_available() => Ok(Device::new_metal(ordinal)?),
        "metal" => Err(WickError::Unsupported(
            "--device metal: this wick was built without Metal (cargo build --release --features metal)".into(),
        )),
        other => Err(WickError::Unsupported(format!("--device {other}: expected cpu, cuda[:N] or metal"))),
    }
}

pub fn describe(device: &Device) -> &'static str {
    match device {
        Device::Cpu => "cpu",
        Device::Cuda(_) => "cuda",
        Device::Metal(_) => "metal",
    }
}
