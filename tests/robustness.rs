//! The bad-input sweep's findings, each pinned through the binary: inputs that were
//! accepted but wrong, and writes that could lose a user's files.

mod common;

use common::*;

fn fx(name: &str) -> String {
    fixture(name).to_str().unwrap().to_string()
}

#[test]
fn a_huge_max_new_tokens_does_not_wrap_around() {
    let m = fx("tiny-gpt2");
    let max = u64::MAX.to_string();
    wick_fails(
        &[
            "generate",
            "--model",
            &m,
            "--prompt",
            "To be",
            "--max-new-tokens",
            &max,
        ],
        &["exceeds the model's context"],
    );
    wick_fails(
        &[
            "generate",
            "--model",
            &m,
            "--prompt",
            "To be",
            "--num-beams",
            "2",
            "--max-new-tokens",
            &max,
        ],
        &["exceeds the model's context"],
    );
}

#[test]
fn float_flags_refuse_nan_and_infinity() {
    let m = fx("tiny-gpt2");
    for (flag, value) in [
        ("--length-penalty", "NaN"),
        ("--temperature", "nan"),
        ("--top-p", "inf"),
        ("--repetition-penalty", "1e39"),
        ("--presence-penalty", "-inf"),
    ] {
        let arg = format!("{flag}={value}");
        wick_fails(
            &["generate", "--model", &m, "--prompt", "To be", &arg],
            &[flag],
        );
    }
    for (flag, value) in [("--learning-rate", "NaN"), ("--dropout", "inf")] {
        wick_fails(
            &["train", "--max-iters", "1", flag, value],
            &[flag, "finite"],
        );
    }
}

#[test]
fn generate_errors_name_its_own_flags() {
    let m = fx("tiny-gpt2");
    let err = wick_fails(
        &[
            "generate",
            "--model",
            &m,
            "--prompts-file",
            "/nonexistent/prompts.txt",
        ],
        &["--prompts-file", "/nonexistent/prompts.txt"],
    );
    assert!(!err.contains("--file"), "{err}");
    let empty = tempfile::NamedTempFile::new().unwrap();
    let err = wick_fails(
        &[
            "generate",
            "--model",
            &m,
            "--prompts-file",
            empty.path().to_str().unwrap(),
        ],
        &["--prompt", "--prompts-file"],
    );
    assert!(!err.contains("--text"), "{err}");
}
