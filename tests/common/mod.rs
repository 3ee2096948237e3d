//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn expected(name: &str) -> Value {
    let path = fixture("expected").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// The real checkpoints and corpora beside the checkout (`../shared/data`, or
/// `WICK_SHARED_DATA`). Absent on a user's clone: those tests then say so and pass,
/// except under CI (`CI` set), where the data is always provided and absence is a failure.
pub fn shared(name: &str) -> Option<PathBuf> {
    let root = std::env::var_os("WICK_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let path = root.join(name);
    if path.exists() {
        return Some(path);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{} is missing: CI must provide ../shared/data",
            path.display()
        );
    }
    eprintln!("skipping: {} not found", path.display());
    None
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn floats2(v: &Value) -> Vec<Vec<f32>> {
    v.as_array().expect("array").iter().map(floats).collect()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[track_caller]
pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let (i, d) = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold((0, 0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
    assert!(
        d <= tol,
        "{what}: max |diff| {d} at {i} (got {}, want {}) > {tol}",
        got[i],
        want[i]
    );
}

/// An empty folder the `wick` binary runs in, so that a test never reads or writes the
/// working tree (a default `--out` lands here, not in the checkout's `runs/`).
pub fn scratch_cwd() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("scratch folder"))
        .path()
}

/// The `wick` binary set to run in [`scratch_cwd`], offline, with an empty hub cache and
/// its own token cache, so that a test never touches the checkout or the user's caches.
pub fn wick_command() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_wick"));
    c.current_dir(scratch_cwd())
        .env("HF_HUB_OFFLINE", "1")
        .env(
            "HF_HOME",
            std::env::temp_dir().join("wick-test-empty-hf-home"),
        )
        .env("WICK_CACHE_DIR", scratch_cwd().join("cache"));
    c
}

/// `command` with the `defaults` (flag, value) pairs, then `extra`: a flag in `extra`
/// replaces its default.
pub fn with_defaults<'a>(
    command: &'a str,
    defaults: &[(&'a str, &'a str)],
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![command];
    for &(flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    args
}

/// Runs the `wick` binary ([`wick_command`]); returns (exit code, stdout, stderr).
pub fn wick(args: &[&str]) -> (i32, String, String) {
    let out = wick_command().args(args).output().expect("run wick");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `wick` expecting success and `--json` output: exactly one JSON object.
#[track_caller]
pub fn wick_json(args: &[&str]) -> Value {
    let (code, stdout, stderr) = wick(args);
    assert_eq!(code, 0, "wick {args:?} failed: {stderr}");
    let v: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}): {stdout}"));
    assert!(v.is_object());
    v
}

/// Runs `wick` expecting a clean failure: non-zero exit, no panic, stderr naming `needles`.
#[track_caller]
pub fn wick_fails(args: &[&str], needles: &[&str]) -> String {
    let (code, _, stderr) = wick(args);
    assert_ne!(code, 0, "wick {args:?} should fail");
    assert!(
        !stderr.contains("panicked"),
        "wick {args:?} panicked: {stderr}"
    );
    for n in needles {
        assert!(
            stderr.contains(n),
            "stderr of wick {args:?} should mention {n:?}: {stderr}"
        );
    }
    stderr
}

/// `wick eval --json` on label sets got every set exactly right.
#[track_caller]
pub fn assert_perfect_label_sets(v: &Value) {
    let got = (
        v["exact_match"].as_f64(),
        v["micro_f1"].as_f64(),
        v["macro_f1"].as_f64(),
    );
    assert_eq!(got, (Some(1.0), Some(1.0), Some(1.0)), "{v}");
}

/// A copy of a fixture folder to damage.
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// (step, train loss) of every line of a run's metrics.jsonl.
/// A batch split into shards side by side (one per thread) trains the model one whole
/// batch does: `run(threads)` trains with RAYON_NUM_THREADS=threads and gives its losses
/// and stdout; one thread runs whole batches, 2 and 3 run shards, and every step's loss
/// must agree to float summation order.
#[allow(dead_code)]
pub fn assert_shards_train_as_one(run: impl Fn(&str) -> (Vec<(u64, f64)>, String)) {
    let (whole, stdout) = run("1");
    assert!(!stdout.contains("shards side by side"), "{stdout}");
    for threads in ["2", "3"] {
        let (sharded, stdout) = run(threads);
        assert!(
            stdout.contains(&format!("{threads} shards side by side")),
            "{stdout}"
        );
        assert_eq!(whole.len(), sharded.len());
        for ((step, a), (_, b)) in whole.iter().zip(&sharded) {
            assert!(
                (a - b).abs() < 1e-5 * (1.0 + a.abs()),
                "step {step}: {a} whole, {b} in {threads} shards"
            );
        }
    }
    assert!(
        whole.last().unwrap().1 < whole[0].1,
        "the loss falls: {whole:?}"
    );
}

pub fn losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["step"].as_u64().unwrap(),
                v["train_loss"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// Fine-tunes the tiny BERT as a classifier on `data` (also held out) into `out`, with
/// [max-iters, learning-rate, eval-every, log-every] and `extra` flags; returns (code,
/// stdout, stderr).
pub fn train_tiny_classifier(
    data: &Path,
    out: &Path,
    [iters, lr, eval_every, log_every]: [&str; 4],
    extra: &[&str],
) -> (i32, String, String) {
    let (model, data, out) = (
        fixture("tiny-bert"),
        data.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    let mut args = vec![
        "train",
        "--model",
        model.to_str().unwrap(),
        "--objective",
        "classify",
        "--data",
        data,
        "--eval-data",
        data,
        "--out",
        out,
        "--max-iters",
        iters,
        "--batch-size",
        "6",
        "--block-size",
        "16",
        "--learning-rate",
        lr,
        "--warmup-iters",
        "2",
        "--eval-every",
        eval_every,
        "--log-every",
        log_every,
    ];
    args.extend_from_slice(extra);
    wick(&args)
}

/// The tensor names of a safetensors file, sorted.
pub fn safetensors_names(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    names
}

/// With WICK_KEEP_SAVED set, copies the files of a folder wick wrote to
/// `$WICK_KEEP_SAVED/name`, with what wick computed on it as `wick_outputs.json`, for
/// the Python-side checks (tests/fixtures/check_transformers_loads.py,
/// make_peft_fixtures.py --check).
pub fn keep_saved(out: &Path, name: &str, wick_outputs: Option<Value>) {
    let Some(keep) = std::env::var_os("WICK_KEEP_SAVED") else {
        return;
    };
    let keep = Path::new(&keep).join(name);
    std::fs::create_dir_all(&keep).unwrap();
    for e in std::fs::read_dir(out).unwrap().flatten() {
        if e.path().is_file() {
            std::fs::copy(e.path(), keep.join(e.file_name())).unwrap();
        }
    }
    if let Some(v) = wick_outputs {
        std::fs::write(keep.join("wick_outputs.json"), v.to_string()).unwrap();
    }
}
