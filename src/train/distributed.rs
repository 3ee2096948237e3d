//! Data parallelism across processes: every rank reads its rows of each global batch,
//! computes their gradients, and one all-reduce per bucket sums them, so every rank
//! takes the same optimizer step and the weights stay equal without being sent again.
//! The trainer sees one small trait, [`Collective`]; its implementations are the single
//! process (no communication), and MPI (`--features mpi`, launched by `mpirun`). NCCL
//! for GPUs would be a third behind the same trait.
//!
//! Why this shape: `--batch-size` stays the global batch, split over ranks as it is
//! split over the shards of one process, and batch n stays a pure function of
//! (seed, n): each rank builds the whole batch and keeps its rows, so a run is the same
//! model at any world size that divides the batch, and resumes at any of them. Rank 0
//! alone logs, evaluates, plots and writes; the others only train.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

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
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
        .unwrap_or(1)
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

/// The collective this process was launched into: MPI under `mpirun` (with the `mpi`
/// feature), else the single process. A binary without MPI that `mpirun` starts N
/// times is refused, since N copies would each train the whole model alone.
pub fn from_env() -> Result<Box<dyn Collective>> {
    let world = launched_world();
    share_cores();
    #[cfg(feature = "mpi")]
    if world > 1 {
        return Ok(Box::new(mpi_backend::Mpi::init()?));
    }
    if world > 1 {
        return Err(WickError::Unsupported(format!(
            "this process is one of {world} started by an MPI launcher, but wick was built \
             without MPI: build with `cargo build --release --features mpi` (needs Open MPI \
             or MPICH and libclang)"
        )));
    }
    Ok(Box::new(SingleProcess))
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
        let mut buf = Vec::with_capacity(len);
        for v in &with_grad[start..end] {
            let g = grads.get(v).expect("filtered above");
            buf.extend(
                g.flatten_all()?
                    .to_dtype(candle_core::DType::F32)?
                    .to_vec1::<f32>()?,
            );
        }
        comm.all_reduce_sum(&mut buf)?;
        sent += 4 * buf.len();
        let mut at = 0;
        for v in &with_grad[start..end] {
            let n = v.elem_count();
            let g = grads.get(v).expect("filtered above");
            let summed =
                Tensor::from_slice(&buf[at..at + n], v.shape(), g.device())?.to_dtype(g.dtype())?;
            grads.insert(v, summed);
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
        let t = v.as_tensor();
        let mut buf = t
            .flatten_all()?
            .to_dtype(candle_core::DType::F32)?
            .to_vec1::<f32>()?;
        comm.broadcast(&mut buf, 0)?;
        let fresh = Tensor::from_vec(buf, t.shape(), t.device())?.to_dtype(t.dtype())?;
        v.set(&fresh)?;
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
