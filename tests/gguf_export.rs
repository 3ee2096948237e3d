//! `wick export`: a GPT-2 written in llama.cpp's gpt2 GGUF layout, read back here with
//! candle's GGUF reader (names, shapes, metadata, tokenizer, the weights themselves),
//! and, with llama.cpp built (`LLAMA_CPP_BIN`, the folder of `llama-simple`), run by
//! llama.cpp to the same greedy text as `wick generate` (`--ignored`).

mod common;

use candle_core::quantized::gguf_file;
use candle_core::{Device, Tensor};
use common::*;

fn read(path: &std::path::Path) -> (gguf_file::Content, std::fs::File) {
    let mut f = std::fs::File::open(path).unwrap();
    (gguf_file::Content::read(&mut f).unwrap(), f)
}

fn tensor(c: &gguf_file::Content, f: &mut std::fs::File, name: &str) -> Tensor {
    c.tensor(f, name, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .dequantize(&Device::Cpu)
        .unwrap()
}

#[test]
fn a_gpt2_exports_in_llama_cpps_layout_with_its_weights_and_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.gguf");
    let m = fixture("tiny-gpt2");
    let v = wick_json(&[
        "export",
        "--model",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dtype",
        "f32",
        "--json",
    ]);
    // 2 embeddings, 12 tensors per block, final norm (2), output.
    assert_eq!(v["tensors"].as_array().unwrap().len(), 2 + 2 * 12 + 2 + 1);
    let (c, mut f) = read(&out);
    let meta = |k: &str| c.metadata.get(k).unwrap_or_else(|| panic!("no {k}"));
    assert_eq!(meta("general.architecture").to_string().unwrap(), "gpt2");
    assert_eq!(meta("gpt2.block_count").to_u32().unwrap(), 2);
    assert_eq!(meta("gpt2.embedding_length").to_u32().unwrap(), 32);
    assert_eq!(meta("gpt2.feed_forward_length").to_u32().unwrap(), 128);
    assert_eq!(meta("tokenizer.ggml.model").to_string().unwrap(), "gpt2");
    let tokens = meta("tokenizer.ggml.tokens").to_vec().unwrap();
    assert_eq!(tokens.len(), 320);
    assert!(!meta("tokenizer.ggml.merges").to_vec().unwrap().is_empty());
    assert_eq!(meta("tokenizer.ggml.eos_token_id").to_u32().unwrap(), 0);
    // The weights: c_attn (in, out) in the checkpoint is (out, in) here; output = wte.
    let st = candle_core::safetensors::load(m.join("model.safetensors"), &Device::Cpu).unwrap();
    let get = |n: &str| {
        st.get(n)
            .or_else(|| st.get(&format!("transformer.{n}")))
            .unwrap_or_else(|| panic!("{n}"))
            .clone()
    };
    let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let qkv = tensor(&c, &mut f, "blk.1.attn_qkv.weight");
    assert_eq!(qkv.dims(), [96, 32]);
    assert_eq!(
        flat(&qkv),
        flat(&get("h.1.attn.c_attn.weight").t().unwrap())
    );
    assert_eq!(
        flat(&tensor(&c, &mut f, "output.weight")),
        flat(&get("wte.weight"))
    );
    assert_eq!(
        flat(&tensor(&c, &mut f, "blk.0.ffn_down.bias")),
        flat(&get("h.0.mlp.c_proj.bias"))
    );
    // Quantized: the linear layers in blocks, norms in f32.
    let q = dir.path().join("q.gguf");
    let v = wick_json(&[
        "export",
        "--model",
        m.to_str().unwrap(),
        "--out",
        q.to_str().unwrap(),
        "--dtype",
        "q8_0",
        "--json",
    ]);
    let dtype = |n: &str| {
        v["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == n)
            .unwrap()["dtype"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(dtype("blk.0.attn_qkv.weight"), "q8_0");
    assert_eq!(dtype("blk.0.attn_norm.weight"), "f32");
    assert_eq!(dtype("token_embd.weight"), "f16");
}

#[test]
fn export_refuses_what_llama_cpp_cannot_run_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.gguf");
    let o = out.to_str().unwrap();
    let bert = fixture("tiny-bert");
    wick_fails(
        &["export", "--model", bert.to_str().unwrap(), "--out", o],
        &["GPT-2"],
    );
    assert!(!out.exists());
    std::fs::write(&out, "precious").unwrap();
    let m = fixture("tiny-gpt2");
    wick_fails(
        &["export", "--model", m.to_str().unwrap(), "--out", o],
        &["already exists", "nothing was overwritten"],
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "precious");
}

/// llama.cpp itself: the f32 export continues a prompt greedily as `wick generate`
/// does, and the quantized exports load and generate.
/// `LLAMA_CPP_BIN=/path/to/llama.cpp/build/bin cargo test --release --test gguf_export -- --ignored`
#[test]
#[ignore]
fn llama_cpp_runs_the_export_as_wick_does() {
    let bin = std::path::PathBuf::from(
        std::env::var("LLAMA_CPP_BIN").expect("LLAMA_CPP_BIN: the folder of llama-simple"),
    );
    let Some(m) = shared("gpt2-shakespeare-small") else {
        return;
    };
    let m = m.to_str().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let (prompt, n) = ("ROMEO:", "40");
    let wick_text = wick_json(&[
        "generate",
        "--model",
        &m,
        "--prompt",
        prompt,
        "--max-new-tokens",
        n,
        "--min-new-tokens",
        n,
        "--temperature",
        "0",
        "--json",
    ])["text"]
        .as_str()
        .unwrap()
        .to_string();
    for dtype in ["f32", "f16", "q8_0", "q4k"] {
        let out = dir.path().join(format!("{dtype}.gguf"));
        wick_json(&[
            "export",
            "--model",
            &m,
            "--out",
            out.to_str().unwrap(),
            "--dtype",
            dtype,
            "--json",
        ]);
        let run = std::process::Command::new(bin.join("llama-simple"))
            .args(["-m", out.to_str().unwrap(), "-n", n, prompt])
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let text = String::from_utf8_lossy(&run.stdout).into_owned();
        let continuation = text
            .trim_end()
            .strip_prefix(prompt)
            .unwrap_or(&text)
            .to_string();
        eprintln!("{dtype}: {continuation:?}");
        if dtype == "f32" {
            assert_eq!(
                continuation,
                wick_text.trim_end(),
                "llama.cpp f32 vs wick generate"
            );
        } else {
            assert!(continuation.len() > 20, "{dtype}: {text}");
        }
    }
}
