//! Decoding against transformers' `generate()` and its logits processors (fixtures from
//! tests/fixtures/make_fixtures.py), plus the properties every strategy must keep:
//! seeded sampling repeats, top-k 1 is greedy, one beam is greedy, a batch is its rows.

mod common;

use candle_core::Device;
use common::*;
use serde_json::Value;
use wick::checkpoint::{load, LoadOptions, Model};
use wick::generation::{
    generate, processors, EarlyStopping, Flow, GenerateOptions, Generation, ProcessorConfig,
};
use wick::models::Gpt2;

fn gpt2_at(dir: &std::path::Path) -> Gpt2 {
    match load(dir.to_str().unwrap(), &LoadOptions::default())
        .unwrap()
        .model
    {
        Model::Gpt2(m) => m,
        _ => panic!("not a GPT-2"),
    }
}

fn run(model: &Gpt2, prompts: &[Vec<u32>], opts: &GenerateOptions) -> Vec<Vec<Generation>> {
    generate(model, prompts, opts, &Device::Cpu, |_, _| {
        Ok(Flow::Continue)
    })
    .unwrap()
}

fn ids_of(gens: &[Generation]) -> Vec<Vec<u32>> {
    gens.iter().map(|g| g.ids.clone()).collect()
}

/// transformers' generation settings of one fixture case, as wick options.
fn options(case: &Value, eos: u32) -> GenerateOptions {
    let f = |k: &str| case.get(k).and_then(Value::as_f64);
    let u = |k: &str| case.get(k).and_then(Value::as_u64).map(|v| v as usize);
    GenerateOptions {
        max_new_tokens: u("max_new_tokens").unwrap(),
        processors: ProcessorConfig {
            repetition_penalty: f("repetition_penalty").unwrap_or(1.0) as f32,
            no_repeat_ngram_size: u("no_repeat_ngram_size").unwrap_or(0),
            min_new_tokens: u("min_new_tokens").unwrap_or(0),
            eos_token_ids: vec![eos],
            ..Default::default()
        },
        num_beams: u("num_beams").unwrap_or(1),
        num_return_sequences: u("num_return_sequences").unwrap_or(1),
        length_penalty: f("length_penalty").unwrap_or(1.0),
        early_stopping: match case.get("early_stopping") {
            Some(Value::Bool(true)) => EarlyStopping::True,
            Some(Value::String(s)) if s == "never" => EarlyStopping::Never,
            _ => EarlyStopping::False,
        },
        pad_token_id: eos,
        ..Default::default()
    }
}

fn check_generation_fixture(model: &Gpt2, fixture: &Value) {
    let eos = fixture["eos_token_id"].as_u64().unwrap() as u32;
    for case in fixture["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let opts = options(case, eos);
        if name == "batched_greedy" {
            let prompts: Vec<Vec<u32>> = case["prompts"]
                .as_array()
                .unwrap()
                .iter()
                .map(ids)
                .collect();
            let got: Vec<Vec<u32>> = run(model, &prompts, &opts)
                .into_iter()
                .map(|g| g[0].ids.clone())
                .collect();
            let want: Vec<Vec<u32>> = case["sequences"]
                .as_array()
                .unwrap()
                .iter()
                .map(ids)
                .collect();
            assert_eq!(got, want, "{name}");
            continue;
        }
        let prompt = ids(&case["prompt_ids"]);
        let got = run(model, &[prompt], &opts).remove(0);
        let want: Vec<Vec<u32>> = case["sequences"]
            .as_array()
            .unwrap()
            .iter()
            .map(ids)
            .collect();
        // transformers pads finished sequences of a batch with pad_token_id; ours end.
        let want: Vec<Vec<u32>> = want
            .into_iter()
            .map(|mut s| {
                if let Some(end) = s.iter().position(|&t| t == eos) {
                    s.truncate(end + 1);
                }
                s
            })
            .collect();
        assert_eq!(ids_of(&got), want, "{name} on {:?}", case["prompt_ids"]);
        if let Some(scores) = case["scores"].as_array() {
            let got: Vec<f32> = got.iter().map(|g| g.score.unwrap() as f32).collect();
            assert_close(&got, &floats(&Value::Array(scores.clone())), 1e-3, name);
        }
    }
}

#[test]
fn penalties_beams_and_batches_match_transformers_on_tiny_gpt2() {
    let model = gpt2_at(&fixture("tiny-gpt2"));
    check_generation_fixture(&model, &expected("generation-tiny-gpt2.json"));
}

#[test]
fn penalties_beams_and_batches_match_transformers_on_shakespeare_gpt2() {
    let Some(dir) = shared("gpt2-shakespeare-small") else {
        return;
    };
    check_generation_fixture(
        &gpt2_at(&dir),
        &expected("generation-gpt2-shakespeare-small.json"),
    );
}

/// Each processor on one row equals its transformers namesake.
#[test]
fn logits_processors_match_transformers() {
    let fx = expected("processors.json");
    let row = |v: &Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().map_or(f32::NEG_INFINITY, |f| f as f32))
            .collect()
    };
    let logits = row(&fx["logits"]);
    let history = ids(&fx["history"]);
    for (name, want) in fx["cases"].as_object().unwrap() {
        let mut got = logits.clone();
        match name.as_str() {
            "temperature_0.7" => processors::temperature(&mut got, 0.7),
            "top_k_5" => processors::top_k(&mut got, 5),
            "top_p_0.7" => processors::top_p(&mut got, 0.7),
            "min_p_0.1" => processors::min_p(&mut got, 0.1),
            "typical_p_0.6" => processors::typical_p(&mut got, 0.6),
            "repetition_penalty_1.3" => processors::repetition_penalty(&mut got, &history, 1.3),
            "no_repeat_ngram_2" => processors::no_repeat_ngram(&mut got, &history, 2),
            "no_repeat_ngram_3" => processors::no_repeat_ngram(&mut got, &history, 3),
            other => panic!("no wick processor for fixture case {other}"),
        }
        let want = row(want);
        let filtered = |v: &[f32]| -> Vec<bool> { v.iter().map(|x| x.is_infinite()).collect() };
        assert_eq!(
            filtered(&got),
            filtered(&want),
            "{name}: which tokens are removed"
        );
        let finite = |v: &[f32]| -> Vec<f32> {
            v.iter()
                .map(|x| if x.is_finite() { *x } else { 0.0 })
                .collect()
        };
        assert_close(&finite(&got), &finite(&want), 1e-5, name);
    }
}

fn tiny() -> (Gpt2, Vec<Vec<u32>>) {
    let p = load(
        fixture("tiny-gpt2").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let tok = p.tokenizer().unwrap();
    let prompts = [
        "To be, or not to be",
        "First Citizen:",
        "Héllo café 🙂 and more",
    ]
    .iter()
    .map(|t| tok.encode(t, false).unwrap())
    .collect();
    let Model::Gpt2(m) = p.model else { panic!() };
    (m, prompts)
}

fn sampling(seed: u64) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: 16,
        processors: ProcessorConfig {
            temperature: 1.3,
            top_p: Some(0.95),
            ..Default::default()
        },
        seed,
        ..Default::default()
    }
}

#[test]
fn seeded_sampling_repeats_and_seeds_differ() {
    let (model, prompts) = tiny();
    let a = run(&model, &prompts[..1], &sampling(7));
    let b = run(&model, &prompts[..1], &sampling(7));
    let c = run(&model, &prompts[..1], &sampling(8));
    assert_eq!(a, b);
    assert_ne!(a, c, "a different seed should give a different draw");
}

#[test]
fn top_k_one_and_a_single_beam_equal_greedy() {
    let (model, prompts) = tiny();
    let greedy = GenerateOptions {
        max_new_tokens: 12,
        ..Default::default()
    };
    let want = run(&model, &prompts, &greedy);
    let top1 = GenerateOptions {
        processors: ProcessorConfig {
            temperature: 1.0,
            top_k: Some(1),
            ..Default::default()
        },
        ..greedy.clone()
    };
    assert_eq!(run(&model, &prompts, &top1), want);
    let beam1 = GenerateOptions {
        num_beams: 1,
        ..greedy.clone()
    };
    assert_eq!(run(&model, &prompts, &beam1), want);
    // Beam search proper with one beam: no EOS here, so it is the argmax path.
    let beam_search_one = wick::generation::beam_search(
        &mut wick::generation::Gpt2Decoder::new(&model, 64),
        &prompts,
        &GenerateOptions {
            num_beams: 1,
            ..greedy
        },
        &Device::Cpu,
    )
    .unwrap();
    for (b, w) in beam_search_one.iter().zip(&want) {
        assert_eq!(b[0].ids, w[0].ids);
    }
}

#[test]
fn a_batch_gives_each_prompt_what_it_gets_alone() {
    let (model, prompts) = tiny();
    for opts in [
        GenerateOptions {
            max_new_tokens: 10,
            ..Default::default()
        },
        GenerateOptions {
            max_new_tokens: 6,
            num_beams: 3,
            num_return_sequences: 2,
            ..Default::default()
        },
    ] {
        let batched = run(&model, &prompts, &opts);
        for (i, p) in prompts.iter().enumerate() {
            let alone = run(&model, std::slice::from_ref(p), &opts).remove(0);
            assert_eq!(
                ids_of(&batched[i]),
                ids_of(&alone),
                "prompt {i}, beams {}",
                opts.num_beams
            );
        }
    }
}

#[test]
fn return_sequences_and_stops() {
    let (model, prompts) = tiny();
    let opts = GenerateOptions {
        num_return_sequences: 3,
        ..sampling(1)
    };
    let out = run(&model, &prompts[..2], &opts);
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|g| g.len() == 3));
    // A callback can end a row: stop after the third token of row 1 only.
    let mut seen = [0usize; 2];
    let out = generate(
        &model,
        &prompts[..2],
        &GenerateOptions {
            max_new_tokens: 8,
            ..Default::default()
        },
        &Device::Cpu,
        |row, _| {
            seen[row] += 1;
            Ok(if row == 1 && seen[row] == 3 {
                Flow::Stop
            } else {
                Flow::Continue
            })
        },
    )
    .unwrap();
    assert_eq!(out[0][0].ids.len(), 8);
    assert_eq!(out[1][0].ids.len(), 3);
}

#[test]
fn a_prompt_too_long_for_the_context_is_an_error_unless_sliding() {
    let (model, _) = tiny();
    let long = vec![5u32; 60]; // context 64
    let opts = GenerateOptions {
        max_new_tokens: 10,
        ..Default::default()
    };
    let err = generate(
        &model,
        std::slice::from_ref(&long),
        &opts,
        &Device::Cpu,
        |_, _| Ok(Flow::Continue),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("context of 64"), "{err}");
    let slid = run(
        &model,
        &[long],
        &GenerateOptions {
            slide: true,
            ..opts
        },
    );
    assert_eq!(slid[0][0].ids.len(), 10);
}
