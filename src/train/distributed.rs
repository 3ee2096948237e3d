//! Data parallelism across processes: every rank reads its rows of each global batch,
//! computes their gradients, and one all-reduce per bucket sums them, so every rank
//! takes the same optimizer step and the weights stay equal without being sent again.
//! The trainer sees one small trait, [`Collective`]; its implementations are the single
//! process (no communication), MPI (`--features mpi`, launched by `mpirun`) and NCCL
//! (`--features nccl`, one process per GPU, summing in GPU memory).
//!
//! Why this shape: `--batch-size` stays the global batch, split over ranks as it is
//! split over the shards of one process, and batch n stays a pure function of
//! (seed, n): each rank builds the whole batch and keeps its rows, so a run is the same
//! model at any world size that divides the batch, and resumes at any of them. Rank 0
//! alone logs, evaluates, plots and writes; the others only train.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};

pub use crate::data::Part;
use crate::error::{Result, WickError};

/// What the trainer needs from the processes around it.
pub trait Collective {
    /// This process's rank, 0..world.
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Sums `buf` element-wise over every rank, in place, on every rank.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// Overwrites `buf` on every rank with rank `root`'s.
    fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()>;
    /// What carries the collectives (for the summary).
    fn name(&self) -> String;

    /// Sums `t` over every rank; the sum, on `t`'s device in `t`'s dtype. Through host
    /// memory ([`Collective::all_reduce_sum`]) unless the backend sums where `t` lives.
    fn all_reduce_tensor(&self, t: &Tensor) -> Result<Tensor> {
        let mut buf = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        self.all_reduce_sum(&mut buf)?;
        Ok(Tensor::from_vec(buf, t.shape(), t.device())?.to_dtype(t.dtype())?)
    }

    /// Rank `root`'s `t` on every rank, on `t`'s device in `t`'s dtype.
    fn broadcast_tensor(&self, t: &Tensor, root: usize) -> Result<Tensor> {
        let mut buf = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        self.broadcast(&mut buf, root)?;
        Ok(Tensor::from_vec(buf, t.shape(), t.device())?.to_dtype(t.dtype())?)
    }

    /// This process's rows of every batch.
    fn part(&self) -> Part {
        Part {
            rank: self.rank(),
            world: self.world(),
        }
    }

    /// Whether this process writes the run (logs, evaluations, checkpoints, plots).
    fn is_leader(&self) -> bool {
        self.rank() == 0
    }
}

/// One process: every collective is the identity.
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn broadcast(&self, _buf: &mut [f32], _root: usize) -> Result<()> {
        Ok(())
    }
    fn name(&self) -> String {
        "single process".into()
    }
}

/// The size of the world the launcher started this process in, from the variables
/// Open MPI, MPICH's Hydra and PMIx launchers set for each process they start (not a
/// batch job's task count, which a single process run inside the job also sees); 1 when
/// it was started alone.
pub fn launched_world() -> usize {
    env_number(&[
        "OMPI_COMM_WORLD_SIZE",
        "PMI_SIZE",
        "PMIX_SIZE",
        "WORLD_SIZE",
    ])
    .unwrap_or(1)
}

/// The first of `keys` set to a number.
fn env_number(keys: &[&str]) -> Option<usize> {
    keys.iter()
        .find_map(|k| std::env::var(k).ok()?.trim().parse().ok())
}

/// Ranks on one machine share its cores: unless `RAYON_NUM_THREADS` says otherwise,
/// each takes its share (mpirun binds each rank to a core only for small jobs, and
/// rayon would otherwise start a thread per core in every rank). Before any pool starts.
fn share_cores() {
    let local = ["OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse::<usize>().ok())
        .unwrap_or(1);
    if local > 1 && std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        std::env::set_var("RAYON_NUM_THREADS", (cores / local).max(1).to_string());
    }
}

/// The collective this process was launched into, and the device it trains on: NCCL
/// when training on a GPU (with the `nccl` feature; each rank on GPU `LOCAL_RANK`), MPI
/// under `mpirun` (with the `mpi` feature), else the single process. A launch that the
/// binary cannot join is refused, since N copies would each train the whole model alone.
pub fn from_env(device: &Device) -> Result<(Box<dyn Collective>, Device)> {
    let world = launched_world();
    if world == 1 {
        return Ok((Box::new(SingleProcess), device.clone()));
    }
    #[cfg(feature = "nccl")]
    if device.is_cuda() {
        let (comm, gpu) = nccl_backend::Nccl::from_env(world)?;
        return Ok((Box::new(comm), gpu));
    }
    share_cores();
    #[cfg(feature = "mpi")]
    {
        Ok((Box::new(mpi_backend::Mpi::init()?), device.clone()))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let (needs, build) = match device.is_cuda() {
            true => (
                "NCCL or MPI",
                "`cargo build --release --features nccl` (or `mpi`)",
            ),
            false => (
                "MPI",
                "`cargo build --release --features mpi` (needs Open MPI or MPICH and libclang)",
            ),
        };
        Err(WickError::Unsupported(format!(
            "this process is one of {world} started by a launcher, but wick was built without \
             {needs}: build with {build}"
        )))
    }
}

/// NCCL over `world` ranks on the GPU `device`, meeting through `id_file` (what
/// [`from_env`] builds from a launcher's variables; public for tests and embedders).
#[cfg(feature = "nccl")]
pub fn nccl(
    device: &Device,
    rank: usize,
    world: usize,
    id_file: &std::path::Path,
) -> Result<Box<dyn Collective>> {
    Ok(Box::new(nccl_backend::Nccl::init(
        device, rank, world, id_file,
    )?))
}

/// Refuses a global batch the ranks cannot share equally, naming the flag.
pub fn check_batch(comm: &dyn Collective, batch_size: usize) -> Result<()> {
    let world = comm.world();
    if !batch_size.is_multiple_of(world) {
        return Err(WickError::Unsupported(format!(
            "--batch-size {batch_size} (the global batch) does not split over {world} ranks: \
             give a multiple of {world}"
        )));
    }
    Ok(())
}

/// A folder of this rank's own for what building the data writes (token caches,
/// held-out pairs), for every rank but the leader, who writes the run folder.
pub fn scratch_dir(comm: &dyn Collective) -> Result<Option<tempfile::TempDir>> {
    if comm.is_leader() {
        return Ok(None);
    }
    let dir = tempfile::tempdir().map_err(|e| WickError::io(std::env::temp_dir(), e))?;
    Ok(Some(dir))
}

/// Gradients are summed in buckets of this many floats (25 MB, PyTorch DDP's default):
/// few calls, and no second copy of the whole gradient at once.
const BUCKET: usize = (25 << 20) / 4;

/// Sums every rank's gradients of `vars`, in place in `grads`, bucket by bucket in the
/// order of `vars` (the same on every rank). Returns the bytes each rank sent.
pub fn all_reduce_grads(
    comm: &dyn Collective,
    grads: &mut GradStore,
    vars: &[(String, Var)],
) -> Result<usize> {
    if comm.world() == 1 {
        return Ok(0);
    }
    let with_grad: Vec<&Var> = vars
        .iter()
        .map(|(_, v)| v)
        .filter(|v| grads.get(v).is_some())
        .collect();
    let mut sent = 0;
    let mut start = 0;
    while start < with_grad.len() {
        // Whole tensors per bucket, at least one.
        let mut end = start;
        let mut len = 0;
        while end < with_grad.len() && (end == start || len + with_grad[end].elem_count() <= BUCKET)
        {
            len += with_grad[end].elem_count();
            end += 1;
        }
        let bucket = &with_grad[start..end];
        let flat: Vec<Tensor> = bucket
            .iter()
            .map(|v| {
                grads
                    .get(v)
                    .expect("filtered above")
                    .flatten_all()?
                    .to_dtype(DType::F32)
            })
            .collect::<candle_core::Result<_>>()?;
        let summed = comm.all_reduce_tensor(&Tensor::cat(&flat, 0)?)?;
        sent += 4 * len;
        let mut at = 0;
        for v in bucket {
            let n = v.elem_count();
            let g = grads.get(v).expect("filtered above");
            let mine = summed
                .narrow(0, at, n)?
                .reshape(v.shape())?
                .to_dtype(g.dtype())?;
            grads.insert(v, mine);
            at += n;
        }
        start = end;
    }
    Ok(sent)
}

/// Makes every rank's `vars` rank 0's (at the start of a run: seeded initialisation
/// should agree already; this makes sure, at the cost of one broadcast).
pub fn broadcast_vars(comm: &dyn Collective, vars: &[(String, Var)]) -> Result<()> {
    if comm.world() == 1 {
        return Ok(());
    }
    for (_, v) in vars {
        v.set(&comm.broadcast_tensor(v.as_tensor(), 0)?)?;
    }
    Ok(())
}

/// The sum over ranks of a few numbers (losses, flags).
pub fn sum_scalars<const N: usize>(comm: &dyn Collective, xs: [f64; N]) -> Result<[f64; N]> {
    if comm.world() == 1 {
        return Ok(xs);
    }
    let mut buf = xs.map(|x| x as f32);
    comm.all_reduce_sum(&mut buf)?;
    Ok(buf.map(f64::from))
}

#[cfg(feature = "mpi")]
mod mpi_backend {
    use mpi::collective::{CommunicatorCollectives, Root, SystemOperation};
    use mpi::topology::{Communicator, SimpleCommunicator};

    use super::Collective;
    use crate::error::{Result, WickError};

    /// MPI_COMM_WORLD. The universe finalises MPI when it is dropped.
    pub struct Mpi {
        _universe: mpi::environment::Universe,
        world: SimpleCommunicator,
        scratch: std::cell::RefCell<Vec<f32>>,
    }

    impl Mpi {
        pub fn init() -> Result<Self> {
            let universe = mpi::initialize().ok_or_else(|| {
                WickError::Unsupported("MPI could not be initialised (already initialised?)".into())
            })?;
            let world = universe.world();
            Ok(Self {
                _universe: universe,
                world,
                scratch: Default::default(),
            })
        }
    }

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn world(&self) -> usize {
            self.world.size() as usize
        }
        fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
            // MPI's errors abort the job (MPI_ERRORS_ARE_FATAL): a rank that died ends
            // every other one through the launcher, with its message.
            let mut send = self.scratch.borrow_mut();
            send.clear();
            send.extend_from_slice(buf);
            self.world
                .all_reduce_into(&send[..], buf, SystemOperation::sum());
            Ok(())
        }
        fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
            self.world.process_at_rank(root as i32).broadcast_into(buf);
            Ok(())
        }
        fn name(&self) -> String {
            let (major, minor) = mpi::environment::version();
            format!("MPI {major}.{minor}")
        }
    }
}

/// NCCL: one process per GPU, launched by `torchrun`-style launchers (`RANK`,
/// `WORLD_SIZE`, `LOCAL_RANK`) or by `mpirun` (its rank variables); gradients are summed
/// in GPU memory on the device's stream. The ranks meet through NCCL's unique id, which
/// rank 0 writes to `WICK_NCCL_ID_FILE` (a path every rank sees: a shared folder across
/// machines), as candle's multi-process example does.
#[cfg(feature = "nccl")]
mod nccl_backend {
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant, SystemTime};

    use candle_core::backend::BackendStorage;
    use candle_core::cuda::cudarc::nccl::safe::{Comm, Id, ReduceOp};
    use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

    use super::{env_number, Collective};
    use crate::error::{Result, WickError};

    /// How long ranks wait for rank 0's id file.
    const MEET_TIMEOUT: Duration = Duration::from_secs(120);

    pub struct Nccl {
        comm: Comm,
        device: Device,
        id_file: Option<PathBuf>,
    }

    fn unsupported(msg: String) -> WickError {
        WickError::Unsupported(msg)
    }

    impl Nccl {
        pub fn from_env(world: usize) -> Result<(Self, Device)> {
            let rank = env_number(&["RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"])
                .ok_or_else(|| {
                    unsupported(format!("NCCL: one of {world} ranks, but RANK is not set"))
                })?;
            let local = env_number(&[
                "LOCAL_RANK",
                "OMPI_COMM_WORLD_LOCAL_RANK",
                "MPI_LOCALRANKID",
            ])
            .unwrap_or(0);
            let id_file = std::env::var_os("WICK_NCCL_ID_FILE")
                .map(PathBuf::from)
                .ok_or_else(|| {
                    unsupported(
                        "NCCL: set WICK_NCCL_ID_FILE to a path every rank can read (rank 0 writes \
                     NCCL's id there)"
                            .into(),
                    )
                })?;
            let device = Device::new_cuda(local)?;
            let comm = Self::init(&device, rank, world, &id_file)?;
            Ok((comm, device))
        }

        /// Joins the `world` ranks on `device`: rank 0 makes the id and writes it to
        /// `id_file`, the others wait for it (a file older than this process is a stale
        /// one from an earlier run, and is waited past).
        pub fn init(device: &Device, rank: usize, world: usize, id_file: &Path) -> Result<Self> {
            let Device::Cuda(gpu) = device else {
                return Err(unsupported("NCCL needs --device cuda".into()));
            };
            let nccl = |e: candle_core::cuda::cudarc::nccl::result::NcclError| {
                unsupported(format!("NCCL: {e:?}"))
            };
            let id = if rank == 0 {
                let id = Id::new().map_err(nccl)?;
                let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
                crate::files::atomic_write(id_file, &bytes)?;
                id
            } else {
                Id::uninit(read_id(id_file)?)
            };
            let comm = Comm::from_rank(gpu.cuda_stream(), rank, world, id).map_err(nccl)?;
            Ok(Self {
                comm,
                device: device.clone(),
                id_file: (rank == 0).then(|| id_file.to_path_buf()),
            })
        }
    }

    /// Rank 0's id from `path`, once it is written after this process started.
    fn read_id(path: &Path) -> Result<[std::ffi::c_char; 128]> {
        let started = SystemTime::now() - Duration::from_secs(5);
        let deadline = Instant::now() + MEET_TIMEOUT;
        loop {
            let fresh = std::fs::metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= started);
            if fresh {
                let bytes = std::fs::read(path).map_err(|e| WickError::io(path, e))?;
                if bytes.len() == 128 {
                    return Ok(std::array::from_fn(|i| bytes[i] as std::ffi::c_char));
                }
            }
            if Instant::now() > deadline {
                return Err(unsupported(format!(
                    "NCCL: rank 0 wrote no id to WICK_NCCL_ID_FILE ({}) within {} s",
                    path.display(),
                    MEET_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    impl Drop for Nccl {
        fn drop(&mut self) {
            if let Some(f) = &self.id_file {
                let _ = std::fs::remove_file(f);
            }
        }
    }

    /// The all-reduce as a candle op: the sum lands in a new buffer on the same GPU.
    struct AllReduce<'a>(&'a Comm);

    impl CustomOp1 for AllReduce<'_> {
        fn name(&self) -> &'static str {
            "nccl-all-reduce"
        }

        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
            candle_core::bail!("NCCL sums GPU tensors only")
        }

        fn cuda_fwd(
            &self,
            s: &CudaStorage,
            l: &Layout,
        ) -> candle_core::Result<(CudaStorage, Shape)> {
            let Some((from, to)) = l.contiguous_offsets() else {
                candle_core::bail!("NCCL all-reduce: a non-contiguous tensor")
            };
            let src = s.as_cuda_slice::<f32>()?.slice(from..to);
            let dev = s.device().clone();
            let mut dst = dev.alloc_zeros::<f32>(to - from)?;
            self.0
                .all_reduce(&src, &mut dst, &ReduceOp::Sum)
                .map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
            Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
        }
    }

    impl Collective for Nccl {
        fn rank(&self) -> usize {
            self.comm.rank()
        }
        fn world(&self) -> usize {
            self.comm.world_size()
        }
        fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
            let t = Tensor::from_slice(buf, buf.len(), &self.device)?;
            buf.copy_from_slice(&self.all_reduce_tensor(&t)?.to_vec1::<f32>()?);
            Ok(())
        }
        fn broadcast(&self, buf: &mut [f32], root: usize) -> Result<()> {
            // Every rank but the root sends zeros: the sum is the root's values.
            if self.rank() != root {
                buf.fill(0.0);
            }
            self.all_reduce_sum(buf)
        }
        fn all_reduce_tensor(&self, t: &Tensor) -> Result<Tensor> {
            let flat = t
                .flatten_all()?
                .to_dtype(DType::F32)?
                .to_device(&self.device)?;
            let summed = flat.apply_op1_no_bwd(&AllReduce(&self.comm))?;
            Ok(summed
                .reshape(t.shape())?
                .to_dtype(t.dtype())?
                .to_device(t.device())?)
        }
        fn name(&self) -> String {
            let v = candle_core::cuda::cudarc::nccl::result::get_nccl_version().unwrap_or(0);
            format!("NCCL {}.{}.{}", v / 10000, v / 100 % 100, v % 100)
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    /// Two ranks that hold the same numbers: every sum is twice the input.
    struct Twins;

    impl Collective for Twins {
        fn rank(&self) -> usize {
            0
        }
        fn world(&self) -> usize {
            2
        }
        fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
            buf.iter_mut().for_each(|x| *x *= 2.0);
            Ok(())
        }
        fn broadcast(&self, _buf: &mut [f32], _root: usize) -> Result<()> {
            Ok(())
        }
        fn name(&self) -> String {
            "twins".into()
        }
    }

    /// Buckets split and reassemble every gradient in place (two sharing a bucket, one
    /// larger than a bucket, one missing), in its own shape and dtype.
    #[test]
    fn gradients_are_summed_bucket_by_bucket_into_their_own_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let shapes = [(3usize, 5usize), (7, 1), (2, 2), (BUCKET / 4 + 1, 5)];
        let vars: Vec<(String, Var)> = shapes
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let dtype = if i == 2 { DType::F64 } else { DType::F32 };
                Ok((format!("v{i}"), Var::zeros(s, dtype, &dev)?))
            })
            .collect::<Result<_>>()?;
        // d(sum v * c)/dv = c, for every variable but v1.
        let mut loss = Tensor::zeros((), DType::F32, &dev)?;
        let mut want = vec![];
        for (i, (_, v)) in vars.iter().enumerate().filter(|(i, _)| *i != 1) {
            let c = Tensor::randn(0f32, 1., v.shape(), &dev)?.to_dtype(v.dtype())?;
            loss = (loss + (v.as_tensor() * &c)?.sum_all()?.to_dtype(DType::F32)?)?;
            want.push((i, (c * 2.0)?));
        }
        let mut grads = loss.backward()?;
        let sent = all_reduce_grads(&Twins, &mut grads, &vars)?;
        assert_eq!(sent, 4 * (15 + (BUCKET / 4 + 1) * 5 + 4));
        for (i, w) in want {
            let g = grads.get(&vars[i].1).expect("kept");
            assert_eq!((g.dims(), g.dtype()), (w.dims(), w.dtype()), "v{i}");
            let d = (g - &w)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_dtype(DType::F64)?;
            assert!(d.to_scalar::<f64>()? < 1e-6, "v{i}");
        }
        assert!(grads.get(&vars[1].1).is_none());
        Ok(())
    }
}
