//! `wick serve` over HTTP on loopback: each test starts the binary on a free port with
//! tiny models and drives it as an OpenAI client would, with a bounded number of
//! requests. A slower random GPT-2 (same tokenizer, more layers and positions) stands in
//! where a generation has to last long enough to overlap, queue or be interrupted.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

struct Server {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        Self::start_env(args, &[])
    }

    fn start_env(args: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = wick_command();
        cmd.arg("serve")
            .args(["--port", "0"])
            .args(args)
            .env_remove("WICK_API_KEY")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start wick serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let pipe = child.stderr.take().unwrap();
        let log = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on http://") {
                    let rest = &line[at + "listening on http://".len()..];
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
                }
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("server did not start: {}", stderr.lock().unwrap()));
        Server {
            child,
            addr,
            stderr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// (status, body as JSON or as text in a JSON string).
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        key: Option<&str>,
    ) -> (u16, Value) {
        let agent = agent();
        let mut res = match (method, body) {
            ("GET", _) => {
                let mut r = agent.get(&self.url(path));
                if let Some(k) = key {
                    r = r.header("Authorization", &format!("Bearer {k}"));
                }
                r.call()
            }
            (_, b) => {
                let mut r = agent
                    .post(&self.url(path))
                    .header("Content-Type", "application/json");
                if let Some(k) = key {
                    r = r.header("Authorization", &format!("Bearer {k}"));
                }
                r.send(b.unwrap_or(""))
            }
        }
        .expect("HTTP exchange");
        let status = res.status().as_u16();
        let text = res
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .unwrap();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request("POST", path, Some(&body.to_string()), None)
    }

    #[track_caller]
    fn ok(&self, path: &str, body: Value) -> Value {
        let (status, v) = self.post(path, body.clone());
        assert_eq!(status, 200, "{path} {body}: {v}");
        v
    }

    /// A streamed request's `data:` payloads, `[DONE]` included.
    fn stream(&self, path: &str, body: Value) -> Vec<String> {
        let res = ureq::post(&self.url(path)).send_json(body).expect("stream");
        let reader = BufReader::new(res.into_body().into_reader());
        reader
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| l.strip_prefix("data: ").map(String::from))
            .collect()
    }

    /// Polls /metrics until `name` reaches 1 (20 s at most; `what` fails the test).
    #[track_caller]
    fn wait_for(&self, name: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.metric(name) < 1.0 {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, v) = self.request("GET", "/metrics", None, None);
        let text = v.as_str().unwrap().to_string();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    }
}

/// A client that returns 4xx and 5xx answers instead of failing on them.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tiny() -> String {
    fixture("tiny-gpt2").to_string_lossy().to_string()
}

/// A random GPT-2 on the tiny fixture's tokenizer, slow enough (6 layers of 384, 1024
/// positions) that a long generation lasts a few seconds in a debug build.
fn slow_gpt2() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        use candle_core::{DType, Device};
        use candle_nn::{VarBuilder, VarMap};
        let dir = tempfile::tempdir().unwrap();
        let src = fixture("tiny-gpt2");
        let mut cfg: Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap())
                .unwrap();
        cfg["n_embd"] = json!(384);
        cfg["n_layer"] = json!(6);
        cfg["n_head"] = json!(6);
        cfg["n_positions"] = json!(1024);
        let parsed =
            wick::models::Gpt2Config::from_json(cfg.as_object().unwrap(), Path::new("config.json"))
                .unwrap();
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        wick::models::Gpt2::load(&parsed, vb).unwrap();
        let tensors: Vec<(String, candle_core::Tensor)> = vm
            .data()
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        std::fs::write(
            dir.path().join("model.safetensors"),
            wick::checkpoint::save::safetensors_bytes(&tensors).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
        for f in ["tokenizer.json", "generation_config.json"] {
            std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
        }
        dir
    })
    .path()
}

fn slow() -> String {
    format!("slow={}", slow_gpt2().display())
}

/// The tiny GPT-2 with a chat template.
fn chat_model() -> tempfile::TempDir {
    let dir = copy_fixture("tiny-gpt2");
    let template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | trim }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}";
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        json!({"chat_template": template}).to_string(),
    )
    .unwrap();
    dir
}

/// A tiny translator trained for a few steps (what it says does not matter here).
fn translator(dir: &Path) -> PathBuf {
    let data = dir.join("pairs.tsv");
    std::fs::write(
        &data,
        "Go.\tVa !\nI won!\tJ'ai gagné !\nThank you.\tMerci.\n".repeat(4),
    )
    .unwrap();
    let cfg = dir.join("s2s.json");
    std::fs::write(
        &cfg,
        r#"{"name": "s2s", "model": {"model_type": "wick-seq2seq", "vocab_size": 300, "d_model": 32,
            "encoder_layers": 1, "decoder_layers": 1, "num_heads": 2, "d_ff": 64,
            "dropout": 0.0, "max_position_embeddings": 32},
            "tokenizer": "bpe",
            "train": {"objective": "seq2seq", "batch_size": 6, "block_size": 24, "max_iters": 3,
            "learning_rate": 0.01, "warmup_iters": 1, "val_fraction": 0.0,
            "eval_every": 50, "log_every": 5, "save_every": 1000}}"#,
    )
    .unwrap();
    let out = dir.join("s2s");
    let (code, o, e) = wick(&[
        "train",
        "--model",
        cfg.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--sample-tokens",
        "0",
    ]);
    assert_eq!(code, 0, "{o}\n{e}");
    out
}

/// `wick CMD --model MODEL --text T ... --json` on the texts.
fn cli_on(cmd: &str, model: &Path, texts: &[&str]) -> Value {
    let mut args = vec![cmd, "--model", model.to_str().unwrap(), "--json"];
    texts.iter().for_each(|t| args.extend(["--text", t]));
    wick_json(&args)
}

fn text(v: &Value, i: usize) -> String {
    v["choices"][i]["text"].as_str().unwrap().to_string()
}

#[test]
fn completions_greedy_equals_the_cli_and_streaming_equals_whole() {
    let s = Server::start(&["--model", &tiny()]);
    for prompt in ["hello world", "The quick brown fox"] {
        let body =
            json!({"model": "tiny-gpt2", "prompt": prompt, "max_tokens": 12, "temperature": 0});
        let whole = s.ok("/v1/completions", body.clone());
        let cli = wick_json(&[
            "generate",
            "--model",
            &tiny(),
            "--prompt",
            prompt,
            "--max-new-tokens",
            "12",
            "--temperature",
            "0",
            "--json",
            "--quiet",
        ]);
        assert_eq!(text(&whole, 0), cli["text"].as_str().unwrap(), "{prompt}");
        assert_eq!(whole["object"], "text_completion");
        let u = &whole["usage"];
        assert_eq!(
            u["completion_tokens"],
            json!(cli["token_ids"].as_array().unwrap().len())
        );
        assert_eq!(
            u["prompt_tokens"],
            json!(cli["prompt_ids"].as_array().unwrap().len())
        );
        assert_eq!(
            u["total_tokens"],
            json!(u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap())
        );

        let mut body = body;
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let events = s.stream("/v1/completions", body);
        assert_eq!(events.last().unwrap(), "[DONE]");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let streamed: String = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0).and_then(|ch| ch["text"].as_str()))
            .collect();
        assert_eq!(streamed, text(&whole, 0));
        let finish: Vec<&Value> = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0).map(|ch| &ch["finish_reason"]))
            .filter(|f| !f.is_null())
            .collect();
        assert_eq!(finish, vec![&whole["choices"][0]["finish_reason"]]);
        assert_eq!(chunks.last().unwrap()["usage"], whole["usage"]);
        assert!(chunks.len() > 3, "text arrives in pieces: {chunks:?}");
    }
}

#[test]
fn sampling_with_a_seed_repeats_and_stop_strings_cut() {
    let s = Server::start(&["--model", &tiny()]);
    let body = json!({"prompt": "hello", "max_tokens": 20, "temperature": 1.0, "top_k": 20, "seed": 7, "n": 3});
    let a = s.ok("/v1/completions", body.clone());
    let b = s.ok("/v1/completions", body.clone());
    assert_eq!(a["choices"], b["choices"]);
    assert_eq!(a["choices"].as_array().unwrap().len(), 3);
    assert_ne!(text(&a, 0), text(&a, 1), "choices sample independently");
    // Choice 0 is what the CLI samples with the same seed.
    let cli = wick_json(&[
        "generate",
        "--model",
        &tiny(),
        "--prompt",
        "hello",
        "--max-new-tokens",
        "20",
        "--temperature",
        "1",
        "--top-k",
        "20",
        "--seed",
        "7",
        "--json",
        "--quiet",
    ]);
    assert_eq!(text(&a, 0), cli["text"].as_str().unwrap());

    let greedy = text(
        &s.ok(
            "/v1/completions",
            json!({"prompt": "hello", "max_tokens": 20, "temperature": 0}),
        ),
        0,
    );
    let words: Vec<&str> = greedy.split_whitespace().collect();
    assert!(words.len() > 2, "{greedy:?}");
    let stop = words[1];
    let cut = s.ok(
        "/v1/completions",
        json!({"prompt": "hello", "max_tokens": 20, "temperature": 0, "stop": [stop]}),
    );
    assert_eq!(text(&cut, 0), greedy[..greedy.find(stop).unwrap()]);
    assert_eq!(cut["choices"][0]["finish_reason"], "stop");
    let streamed: String = s
        .stream("/v1/completions", json!({"prompt": "hello", "max_tokens": 20, "temperature": 0, "stop": stop, "stream": true}))
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streamed, text(&cut, 0));
    // Several prompts in one request: choices in prompt order.
    let two = s.ok(
        "/v1/completions",
        json!({"prompt": ["hello", "hello"], "max_tokens": 20, "temperature": 0}),
    );
    assert_eq!((text(&two, 0), text(&two, 1)), (greedy.clone(), greedy));
}

#[test]
fn logprobs_echo_and_prompt_scoring_match_wick_score() {
    let s = Server::start(&["--model", &tiny()]);
    let v = s.ok(
        "/v1/completions",
        json!({"prompt": "hello world", "max_tokens": 0, "echo": true, "logprobs": 2}),
    );
    assert_eq!(text(&v, 0), "hello world");
    let lp = &v["choices"][0]["logprobs"];
    let scored = wick_json(&[
        "score",
        "--model",
        &tiny(),
        "--text",
        "hello world",
        "--json",
    ]);
    let got: Vec<f32> = lp["token_logprobs"].as_array().unwrap()[1..]
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    assert!(lp["token_logprobs"][0].is_null());
    assert_close(&got, &floats(&scored["logprobs"]), 1e-4, "prompt logprobs");
    assert_eq!(
        lp["top_logprobs"][1].as_object().unwrap().len().min(2),
        lp["top_logprobs"][1].as_object().unwrap().len()
    );
    // Generated tokens' logprobs: the greedy token is the top alternative.
    let g = s.ok(
        "/v1/completions",
        json!({"prompt": "hello", "max_tokens": 4, "temperature": 0, "logprobs": 1}),
    );
    let lp = &g["choices"][0]["logprobs"];
    for (i, top) in lp["top_logprobs"].as_array().unwrap().iter().enumerate() {
        let best = top
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap()
            .as_f64()
            .unwrap();
        assert!(
            (best - lp["token_logprobs"][i].as_f64().unwrap()).abs() < 1e-6,
            "{lp}"
        );
    }
}

#[test]
fn chat_uses_the_template_and_refuses_a_model_without_one() {
    let dir = chat_model();
    let spec = format!("chat={}", dir.path().display());
    let s = Server::start(&["--model", &spec, "--model", &tiny()]);
    let messages = json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": [{"type": "text", "text": "hi there"}]}]);
    let v = s.ok(
        "/v1/chat/completions",
        json!({"model": "chat", "messages": messages, "max_tokens": 8, "temperature": 0}),
    );
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let plain = s.ok("/v1/completions", json!({"model": "chat", "prompt": "system: be brief\nuser: hi there\nassistant:", "max_tokens": 8, "temperature": 0}));
    assert_eq!(
        v["choices"][0]["message"]["content"].as_str().unwrap(),
        text(&plain, 0)
    );
    let events = s.stream("/v1/chat/completions", json!({"model": "chat", "messages": messages, "max_tokens": 8, "temperature": 0, "stream": true}));
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, text(&plain, 0));
    let (status, e) = s.post(
        "/v1/chat/completions",
        json!({"model": "tiny-gpt2", "messages": messages}),
    );
    assert_eq!(status, 400);
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no chat template"),
        "{e}"
    );
}

#[test]
fn encoder_and_translator_endpoints() {
    let work = tempfile::tempdir().unwrap();
    let s2s = translator(work.path());
    let minilm = shared("all-minilm-l6-v2");
    let mut args = vec![
        "--model".to_string(),
        format!("bert={}", fixture("tiny-bert").display()),
        "--model".to_string(),
        format!("cls={}", fixture("tiny-bert-cls").display()),
        "--model".to_string(),
        format!("mt={}", s2s.display()),
    ];
    if let Some(m) = &minilm {
        args.extend(["--model".to_string(), format!("minilm={}", m.display())]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let s = Server::start(&args);

    let texts = ["the cat sat", "a dog"];
    let v = s.ok("/v1/embeddings", json!({"model": "bert", "input": texts}));
    let cli = cli_on("embed", &fixture("tiny-bert"), &texts);
    for i in 0..2 {
        assert_close(
            &floats(&v["data"][i]["embedding"]),
            &floats(&cli["embeddings"][i]),
            1e-5,
            "embedding",
        );
        assert_eq!(v["data"][i]["index"], json!(i));
    }
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() >= 5);
    // base64: little-endian f32, as the openai client decodes it.
    let b = s.ok(
        "/v1/embeddings",
        json!({"model": "bert", "input": texts[0], "encoding_format": "base64"}),
    );
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let single = s.ok(
        "/v1/embeddings",
        json!({"model": "bert", "input": texts[0]}),
    );
    assert_eq!(decoded, floats(&single["data"][0]["embedding"]));
    if minilm.is_some() {
        // A sentence-transformers folder's own pooling: mean, normalised.
        let e = floats(
            &s.ok(
                "/v1/embeddings",
                json!({"model": "minilm", "input": "hello"}),
            )["data"][0]["embedding"],
        );
        let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }

    let c = s.ok("/v1/classify", json!({"model": "cls", "input": texts}));
    let cli = cli_on("classify", &fixture("tiny-bert-cls"), &texts);
    for i in 0..2 {
        assert_eq!(c["data"][i]["label"], cli["predictions"][i]["label"]);
        let (a, b) = (
            c["data"][i]["score"].as_f64().unwrap(),
            cli["predictions"][i]["score"].as_f64().unwrap(),
        );
        assert!((a - b).abs() < 1e-5);
    }
    let (status, e) = s.post("/v1/classify", json!({"model": "bert", "input": "x"}));
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (400, Some("model_not_supported"))
    );

    let t = s.ok(
        "/v1/translate",
        json!({"model": "mt", "input": ["Go.", "Thank you."]}),
    );
    let cli = cli_on("translate", &s2s, &["Go.", "Thank you."]);
    let got: Vec<&Value> = t["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["text"])
        .collect();
    let want: Vec<&Value> = cli["translations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["text"])
        .collect();
    assert_eq!(got, want);

    for (path, model) in [
        ("/v1/completions", "bert"),
        ("/v1/embeddings", "mt"),
        ("/v1/translate", "cls"),
    ] {
        let (status, e) = s.post(path, json!({"model": model, "prompt": "x", "input": "x"}));
        assert_eq!(status, 400, "{path} {model}: {e}");
        assert_eq!(e["error"]["code"], "model_not_supported");
    }
}

#[test]
fn every_error_has_openai_shape_and_status() {
    let s = Server::start_env(
        &["--model", &tiny(), "--max-body-bytes", "2000"],
        &[("WICK_API_KEY", "sekret")],
    );
    let key = Some("sekret");
    let send = |path: &str, body: &str, key: Option<&str>| s.request("POST", path, Some(body), key);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/v1/completions",
            "{\"prompt\": ".into(),
            400,
            "invalid_json",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "max_tokens": "many"}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/v1/completions",
            r#"{"prompt": 5}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "temperature": 3}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "top_p": 1.5}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "n": 0}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "max_tokens": 1e400}"#.into(),
            400,
            "invalid_json",
        ),
        (
            "/v1/completions",
            r#"{"prompt": [99999]}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "/v1/completions",
            r#"{"prompt": "x", "max_tokens": 100}"#.into(),
            400,
            "context_length_exceeded",
        ),
        (
            "/v1/completions",
            json!({"prompt": "word ".repeat(80)}).to_string(),
            400,
            "context_length_exceeded",
        ),
        (
            "/v1/embeddings",
            r#"{"input": "x"}"#.into(),
            400,
            "model_not_supported",
        ),
        (
            "/v1/completions",
            r#"{"model": "nope", "prompt": "x"}"#.into(),
            404,
            "model_not_found",
        ),
        ("/v1/nothing", "{}".into(), 404, "unknown_route"),
        (
            "/v1/completions",
            json!({"prompt": "x".repeat(3000)}).to_string(),
            413,
            "request_too_large",
        ),
    ];
    for (path, body, status, code) in &cases {
        let (got, v) = send(path, body, key);
        assert_eq!(got, *status, "{path} {body}: {v}");
        assert_eq!(v["error"]["code"], *code, "{path} {body}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert!(v["error"]["type"].is_string(), "{v}");
    }
    let (status, v) = send("/v1/completions", r#"{"prompt": "x"}"#, None);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let (status, _) = send("/v1/completions", r#"{"prompt": "x"}"#, Some("wrong"));
    assert_eq!(status, 401);
    assert_eq!(s.request("GET", "/v1/models", None, None).0, 401);
    assert_eq!(
        s.request("GET", "/health", None, None).0,
        200,
        "health needs no key"
    );
    let (status, v) = s.request("GET", "/v1/models", None, key);
    assert_eq!(
        (status, v["data"][0]["id"].as_str()),
        (200, Some("tiny-gpt2"))
    );
    assert_eq!(
        send(
            "/v1/completions",
            r#"{"prompt": "x", "max_tokens": 2}"#,
            key
        )
        .0,
        200
    );
    // Still serving after all of that, and counting it.
    let (_, m) = s.request("GET", "/metrics", None, key);
    let m = m.as_str().unwrap();
    assert!(
        m.contains("wick_requests_total{route=\"/v1/completions\",status=\"400\"}"),
        "{m}"
    );
    assert!(
        m.contains("wick_requests_total{route=\"/v1/completions\",status=\"200\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("wick_time_to_first_token_seconds_count 1"),
        "{m}"
    );
    assert!(!s.stderr.lock().unwrap().contains("panicked"));
}

/// Requests sent at once decode in one batch and each gets what it gets alone.
#[test]
fn concurrent_requests_get_the_tokens_they_get_alone() {
    let s = Server::start(&["--model", &slow()]);
    let prompts = [
        "hello world",
        "The cat",
        "a b c d e f g",
        "Once upon a time there",
    ];
    let body = |p: &str| json!({"prompt": p, "max_tokens": 40, "temperature": 0});
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| text(&s.ok("/v1/completions", body(p)), 0))
        .collect();
    let s = Arc::new(s);
    let handles: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let (s, b) = (s.clone(), body(p));
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30 * i as u64));
                text(&s.ok("/v1/completions", b), 0)
            })
        })
        .collect();
    let together: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(together, alone);
    let (_, m) = s.request("GET", "/metrics", None, None);
    // Some step decoded more than one sequence.
    let m = m.as_str().unwrap();
    let one = m
        .lines()
        .find_map(|l| l.strip_prefix("wick_batch_size_bucket{le=\"1\"} "))
        .unwrap();
    let all = m
        .lines()
        .find_map(|l| l.strip_prefix("wick_batch_size_count "))
        .unwrap();
    assert!(
        one.parse::<u64>().unwrap() < all.parse::<u64>().unwrap(),
        "{m}"
    );
}

#[test]
fn a_full_queue_is_429_and_a_dropped_stream_is_cancelled() {
    let s = Server::start(&["--model", &slow(), "--max-batch", "1", "--max-queue", "1"]);
    let long = json!({"prompt": "hello", "max_tokens": 1000, "min_tokens": 1000, "temperature": 0, "stream": true}).to_string();
    // A raw connection, to hang up mid-stream.
    let mut conn = std::net::TcpStream::connect(&s.addr).unwrap();
    write!(conn, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{long}", long.len()).unwrap();
    s.wait_for(
        "wick_active_sequences{model=\"slow\"}",
        "the long request never started",
    );
    // The batch (one row) is busy: one request may wait, the next is refused.
    let waiting = {
        let s_addr = s.url("/v1/completions");
        std::thread::spawn(move || {
            let agent = agent();
            agent
                .post(&s_addr)
                .send_json(json!({"prompt": "x", "max_tokens": 2}))
                .unwrap()
                .status()
                .as_u16()
        })
    };
    s.wait_for(
        "wick_queue_depth{model=\"slow\"}",
        "the second request never queued",
    );
    let agent = agent();
    let mut refused = agent
        .post(&s.url("/v1/completions"))
        .send_json(json!({"prompt": "x", "max_tokens": 2}))
        .unwrap();
    assert_eq!(refused.status().as_u16(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    let body: Value = refused.body_mut().read_json().unwrap();
    assert_eq!(body["error"]["code"], "queue_full");
    // Hanging up cancels the long generation, so the waiting one runs.
    drop(conn);
    assert_eq!(waiting.join().unwrap(), 200);
    let tokens = s.metric("wick_generated_tokens_total");
    assert!(
        tokens < 1000.0,
        "the dropped stream ran to the end: {tokens} tokens"
    );
}

#[test]
fn sigterm_lets_a_stream_finish_then_exits_zero() {
    let mut s = Server::start(&["--model", &slow(), "--grace-period", "30"]);
    let url = s.url("/v1/completions");
    let stream = std::thread::spawn(move || {
        let res = ureq::post(&url)
            .send_json(json!({"prompt": "hello", "max_tokens": 60, "min_tokens": 60, "temperature": 0, "stream": true}))
            .unwrap();
        BufReader::new(res.into_body().into_reader())
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.starts_with("data: "))
            .collect::<Vec<_>>()
    });
    s.wait_for(
        "wick_active_sequences{model=\"slow\"}",
        "the stream never started",
    );
    unsafe { libc::kill(s.child.id() as i32, libc::SIGTERM) };
    let events = stream.join().unwrap();
    assert_eq!(
        events.last().map(String::as_str),
        Some("data: [DONE]"),
        "{events:?}"
    );
    let status = s.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", s.stderr.lock().unwrap());
    assert!(
        std::net::TcpStream::connect(&s.addr).is_err(),
        "still accepting"
    );
}

#[test]
fn past_the_grace_period_generations_are_cancelled_and_the_server_exits() {
    let mut s = Server::start(&["--model", &slow(), "--grace-period", "0.3"]);
    let url = s.url("/v1/completions");
    let client = std::thread::spawn(move || {
        let agent = agent();
        agent.post(&url).send_json(json!({"prompt": "hello", "max_tokens": 1000, "min_tokens": 1000, "temperature": 0})).map(|r| r.status().as_u16())
    });
    s.wait_for(
        "wick_active_sequences{model=\"slow\"}",
        "the request never started",
    );
    let signalled = Instant::now();
    unsafe { libc::kill(s.child.id() as i32, libc::SIGINT) };
    let status = s.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", s.stderr.lock().unwrap());
    assert!(
        signalled.elapsed() < Duration::from_secs(8),
        "{:?}",
        signalled.elapsed()
    );
    // The cut request got an error, not a truncated success.
    assert!(!matches!(client.join().unwrap(), Ok(200)));
}
