//! Data-parallel `wick train` over MPI. The tests that launch ranks need the `mpi`
//! feature and `mpirun` (Open MPI from Debian), so they are `--ignored`:
//!
//!     cargo test --release --features mpi --test distributed -- --ignored
//!
//! (`just test-mpi` installs Open MPI and libclang first; `.ci/run` runs them after the
//! default suite, installing both when missing.) They start two ranks on this
//! machine, talking over shared memory and loopback only, for at most a few hundred
//! steps of the default preset's tiny sizes.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// The default preset's model on the bundled corpus, small and without dropout (the
/// masks are drawn per rank), so that one rank and two compute the same steps. Flags in
/// `extra` replace these.
fn train_args<'a>(out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let corpus = concat!(env!("CARGO_MANIFEST_DIR"), "/data/tinyshakespeare.txt");
    let defaults = [
        ("--data", corpus),
        ("--out", out),
        ("--batch-size", "12"),
        ("--block-size", "32"),
        ("--dropout", "0"),
        ("--log-every", "1"),
        ("--eval-every", "10"),
        ("--eval-iters", "2"),
        ("--save-every", "10"),
        ("--sample-tokens", "0"),
    ];
    with_defaults("train", &defaults, extra)
}

/// `mpirun -np 2 wick ARGS`, kept on this machine: Open MPI's out-of-band and TCP
/// transports on the loopback interface only, root allowed (CI runs as root).
fn mpirun(args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.current_dir(scratch_cwd())
        .args(["-np", "2", env!("CARGO_BIN_EXE_wick")])
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_tcp_if_include", "lo")
        .env("OMPI_MCA_oob_tcp_if_include", "lo")
        .env("HF_HUB_OFFLINE", "1");
    c
}

fn run_ok(mut c: Command) -> Output {
    let out = c.output().expect("start mpirun (is Open MPI installed?)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let v = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, v)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[track_caller]
fn assert_same_run(one: &Path, two: &Path, tol: f64) {
    let (a, b) = (losses(one), losses(two));
    assert_eq!(a.len(), b.len());
    for ((step, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() <= tol, "step {step}: {x} vs {y}");
    }
    for ((name, x), (_, y)) in weights(one).iter().zip(&weights(two)) {
        let d = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(f64::from(d) <= tol, "{name}: max |diff| {d}");
    }
}

/// Two ranks of 6 rows train the model one process trains on batches of 12: the same
/// losses and weights after 20 steps (float-sum order aside), and rank 0 alone wrote.
#[test]
#[ignore = "needs --features mpi and mpirun"]
fn two_ranks_train_what_one_process_trains() {
    let dir = tempfile::tempdir().unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let (one_s, two_s) = (one.to_str().unwrap(), two.to_str().unwrap());
    let (code, _, e) = wick(&train_args(one_s, &["--max-iters", "20"]));
    assert_eq!(code, 0, "{e}");
    let out = run_ok(mpirun(&train_args(two_s, &["--max-iters", "20"])));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("2 ranks: each takes 6 rows of every batch of 12"),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("trained ").count(),
        1,
        "rank 0 alone reports: {stdout}"
    );
    assert_same_run(&one, &two, 1e-5);
}

/// A two-rank run stopped at step 10 and resumed by two ranks ends where the
/// uninterrupted two-rank run ends.
#[test]
#[ignore = "needs --features mpi and mpirun"]
fn two_ranks_resume_where_they_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, split) = (dir.path().join("whole"), dir.path().join("split"));
    let (whole_s, split_s) = (whole.to_str().unwrap(), split.to_str().unwrap());
    run_ok(mpirun(&train_args(whole_s, &["--max-iters", "20"])));
    run_ok(mpirun(&train_args(split_s, &["--max-iters", "10"])));
    run_ok(mpirun(&train_args(
        split_s,
        &["--max-iters", "20", "--resume"],
    )));
    assert_same_run(&whole, &split, 1e-6);
}

/// A batch that does not split over the ranks is refused by flag, on every rank.
#[test]
#[ignore = "needs --features mpi and mpirun"]
fn a_batch_that_does_not_split_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = mpirun(&train_args(out.to_str().unwrap(), &["--batch-size", "5"]))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--batch-size 5") && e.contains("2 ranks"), "{e}");
}

/// A rank that dies ends the job: mpirun stops the other rank and fails, well within a
/// minute, and the last checkpoint rank 0 wrote still loads.
#[test]
#[ignore = "needs --features mpi and mpirun"]
fn a_dead_rank_ends_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut child = mpirun(&train_args(
        out.to_str().unwrap(),
        &["--max-iters", "100000"],
    ))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // Wait for a checkpoint, then kill one rank (a child of mpirun) outright.
    let start = std::time::Instant::now();
    while !out
        .join("checkpoint-000010")
        .join("model.safetensors")
        .exists()
    {
        assert!(
            start.elapsed().as_secs() < 120,
            "no checkpoint after 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let ranks = Command::new("pgrep")
        .args(["-P", &child.id().to_string()])
        .output()
        .unwrap();
    let pids = String::from_utf8_lossy(&ranks.stdout);
    let last = pids.lines().last().expect("mpirun has rank processes");
    assert!(Command::new("kill")
        .args(["-9", last])
        .status()
        .unwrap()
        .success());
    let killed = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if killed.elapsed().as_secs() > 60 {
            let _ = child.kill();
            panic!("the job still ran a minute after a rank died");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(!status.success());
    let v = wick_json(&[
        "info",
        "--model",
        out.join("checkpoint-000010").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(v["family"], "GPT-2");
}

/// A binary built without MPI that a launcher starts as one of several ranks refuses
/// to train (each copy would train the whole model alone), naming the feature.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_launcher_without_mpi_built_in_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = wick_command()
        .args(train_args(out.to_str().unwrap(), &["--max-iters", "1"]))
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(0));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("--features mpi") && !e.contains("panicked"),
        "{e}"
    );
    assert!(!out.exists(), "nothing written");
}
