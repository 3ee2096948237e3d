# Recipes for the heavier runs that stay out of `cargo test`. Python recipes need torch
# and transformers (see tests/fixtures/make_fixtures.py for the versions).

# The README's test command.
test:
    cargo test

# Everything CI runs.
ci:
    bash .ci/run

# The main job: train the bundled default (shakespeare-char).
train:
    cargo run --release -- train

# Forward-pass timings of the GPT-2 124M geometry on CPU, wick then transformers.
bench:
    cargo bench --bench forward
    python3 benches/peers/forward_transformers.py

# Decode speed (batch 1, 128 new tokens) of wick in f32, q8_0 and q4k, then transformers
# (f32) with 2 and 1 threads.
bench-generate:
    cargo bench --bench generate
    python3 benches/peers/generate_transformers.py
    OMP_NUM_THREADS=1 python3 benches/peers/generate_transformers.py

# Perplexity of the real gpt2-shakespeare-small on the held-out 10% of tiny shakespeare,
# f32 against its q8_0 and q4k quantizations (the speed side is `just bench-generate`).
bench-quantize:
    cargo build --release
    tail -c 111540 data/tinyshakespeare.txt > /tmp/shakespeare-val.txt
    for f in q8_0 q4k; do target/release/wick quantize --model ../shared/data/gpt2-shakespeare-small --out runs/gpt2-shakespeare-small-$f --format $f; done
    for m in ../shared/data/gpt2-shakespeare-small runs/gpt2-shakespeare-small-q8_0 runs/gpt2-shakespeare-small-q4k; do echo $m; target/release/wick score --model $m --file /tmp/shakespeare-val.txt --stride 128 | grep -E "tokens|perplexity"; done

# Where a training step of the default preset spends its time, then a 200-step run of
# `wick train` with its tokens/s and peak RSS.
bench-train:
    cargo bench --bench train_step
    cargo build --release
    rm -rf runs/bench-train
    /usr/bin/time -v target/release/wick train --max-iters 200 --out runs/bench-train --sample-tokens 0 2>&1 | grep -E "trained|val loss|Maximum resident|Elapsed"

# The default run side by side with nanoGPT (docs/benchmarks.md).
compare-nanogpt:
    cargo build --release
    rm -rf runs/bench-nanogpt-compare
    /usr/bin/time -v target/release/wick train --out runs/bench-nanogpt-compare 2>&1 | grep -E "step|trained|val loss|Maximum resident|Elapsed"
    python3 -c "import json; print('wick training loop (s):', [json.loads(l) for l in open('runs/bench-nanogpt-compare/metrics.jsonl')][-1]['elapsed_s'])"
    /usr/bin/time -v python3 benches/peers/nanogpt_shakespeare_char.py 2>&1 | grep -E "step|nanoGPT|Maximum resident|Elapsed"

# What wick trains opens in the Python tools: tokenizers, AutoTokenizer and
# pipeline("text-generation") on a short default run and a GPT-2 fine-tune.
check-interop:
    cargo build --release
    rm -rf /tmp/wick-interop && mkdir -p /tmp/wick-interop
    target/release/wick train --max-iters 50 --out /tmp/wick-interop/char --sample-tokens 0
    python3 tests/fixtures/check_run_in_transformers.py /tmp/wick-interop/char
    target/release/wick train --model ../shared/data/gpt2-shakespeare-small --data data/tinyshakespeare.txt --max-iters 5 --block-size 64 --batch-size 2 --sample-tokens 0 --out /tmp/wick-interop/ft
    python3 tests/fixtures/check_run_in_transformers.py /tmp/wick-interop/ft

# Regenerate the parity fixtures (needs torch + transformers + sentence-transformers).
fixtures:
    python3 tests/fixtures/make_fixtures.py

# Every objective with the fused kernels and without (WICK_NO_FUSED=1), alternating.
bench-objectives:
    cargo build --release
    bash benches/objectives.sh 2

# GPT-2 124M fine-tune (batch 4 x 256) against a PyTorch loop: ms per step and peak RSS.
bench-finetune:
    cargo build --release
    test -d /tmp/gpt2-124m-random || python3 benches/peers/gpt2_finetune_torch.py --save /tmp/gpt2-124m-random
    rm -rf /tmp/gpt2-ft
    /usr/bin/time -v target/release/wick train --model /tmp/gpt2-124m-random --data data/tinyshakespeare.txt --out /tmp/gpt2-ft --batch-size 4 --block-size 256 --max-iters 8 --log-every 1 --eval-every 100000 --save-every 100000 --sample-tokens 0 --dropout 0 --learning-rate 3e-5 --warmup-iters 0 2>&1 | grep -E "Maximum resident|Elapsed"
    python3 -c "import json, statistics; e = [json.loads(l)['elapsed_s'] for l in open('/tmp/gpt2-ft/metrics.jsonl')]; d = [b - a for a, b in zip(e, e[1:])]; print('wick median ms/step (steps 3-7):', round(statistics.median(d[1:6]) * 1000))"
    /usr/bin/time -v python3 benches/peers/gpt2_finetune_torch.py --model /tmp/gpt2-124m-random 2>&1 | grep -E "median|Maximum resident|Elapsed"

# GPT-2 fine-tune memory and speed (batch 4 x 256): full, full + gradient checkpointing,
# LoRA r=8, LoRA + checkpointing, against transformers + peft; SIZES e.g. 124m,355m,774m.
bench-finetune-memory SIZES="124m,355m":
    cargo build --release
    bash benches/finetune_memory.sh {{SIZES}}

# MiniLM embeddings of 4000 SST-2 sentences, whole wick process against sentence-transformers.
bench-embed:
    cargo build --release
    cut -f1 ../shared/data/sst2/train.tsv | sed 1d | head -4000 > /tmp/sst2-4000.txt
    /usr/bin/time -v target/release/wick embed --model ../shared/data/all-minilm-l6-v2 --file /tmp/sst2-4000.txt --pooling mean --normalize --batch-size 32 --output /tmp/wick-emb.npy 2>&1 | grep -E "embeddings|Maximum resident|Elapsed"
    /usr/bin/time -v python3 benches/peers/embed_sentence_transformers.py --model ../shared/data/all-minilm-l6-v2 --file /tmp/sst2-4000.txt --compare /tmp/wick-emb.npy 2>&1 | grep -E "sentence|cosine|Maximum resident|Elapsed"

# Decode and prefill against llama.cpp on the same random GPT-2 124M, f32, Q8_0 and Q4_K_M,
# 2 threads. llama.cpp from LLAMA_CPP (a checkout), else the llama-cpp-python sdist's
# vendor/llama.cpp from PyPI. Needs cmake, and torch, transformers, sentencepiece, numpy.
bench-llama-cpp:
    #!/usr/bin/env bash
    set -euo pipefail
    src=${LLAMA_CPP:-}
    if [ -z "$src" ]; then
      python3 -m pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lcp
      tar -xzf /tmp/lcp/llama_cpp_python-0.3.36.tar.gz -C /tmp/lcp
      src=/tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp
    fi
    (cd "$src" && cmake -B build -DLLAMA_CURL=OFF -DGGML_NATIVE=ON && cmake --build build -j2 --target llama-bench llama-quantize)
    test -d /tmp/gpt2-124m-random || python3 benches/peers/gpt2_finetune_torch.py --save /tmp/gpt2-124m-random
    python3 -c "import json; p = '/tmp/gpt2-124m-random/config.json'; c = json.load(open(p)); c.setdefault('n_ctx', c['n_positions']); json.dump(c, open(p, 'w'))"
    PYTHONPATH="$src/gguf-py" python3 "$src/convert_hf_to_gguf.py" /tmp/gpt2-124m-random --outfile /tmp/gpt2-f32.gguf --outtype f32
    for q in Q8_0 Q4_K_M; do "$src/build/bin/llama-quantize" /tmp/gpt2-f32.gguf /tmp/gpt2-$q.gguf $q; done
    for m in f32 Q8_0 Q4_K_M; do "$src/build/bin/llama-bench" -m /tmp/gpt2-$m.gguf -t 2 -p 32 -n 128; done
    cargo bench --bench generate

# llama.cpp runs `wick export`'s GGUF: same greedy text as wick generate in f32, and the
# f16/q8_0/q4k exports load and generate (LLAMA_CPP=checkout, else the llama-cpp-python
# sdist's vendor/llama.cpp).
check-llama-cpp:
    #!/usr/bin/env bash
    set -euo pipefail
    src=${LLAMA_CPP:-}
    if [ -z "$src" ]; then
      python3 -m pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lcp
      tar -xzf /tmp/lcp/llama_cpp_python-0.3.36.tar.gz -C /tmp/lcp
      src=/tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp
    fi
    (cd "$src" && cmake -B build -DLLAMA_CURL=OFF -DGGML_NATIVE=ON && cmake --build build -j2 --target llama-simple)
    LLAMA_CPP_BIN="$src/build/bin" cargo test --release --test gguf_export -- --ignored --nocapture

# wick serve under N concurrent streaming clients (1, 2, 4, 8, 16; 2 requests each of 64
# tokens) against llama.cpp's server on the same random GPT-2 124M, f32 and Q8_0, 2
# threads, loopback only. Run `just bench-llama-cpp` first (the GGUFs and the build);
# needs `pip install openai`.
bench-serve:
    #!/usr/bin/env bash
    set -euo pipefail
    src=${LLAMA_CPP:-/tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp}
    (cd "$src" && cmake --build build -j2 --target llama-server)
    cargo build --release
    test -d /tmp/gpt2-124m-q8 || target/release/wick quantize --model /tmp/gpt2-124m-random --out /tmp/gpt2-124m-q8 --format q8_0
    lscpu | grep -E "Model name|^CPU\(s\)|Flags" | cut -c1-200
    load() { python3 benches/peers/serve_openai.py load http://127.0.0.1:$1 "$2" --server "$3" --clients 1,2,4,8,16 --requests 2 --max-tokens 64; }
    for m in /tmp/gpt2-124m-random /tmp/gpt2-124m-q8; do
      target/release/wick serve --model gpt2=$m --port 8093 & pid=$!; sleep 3
      echo "wick $m"; load 8093 gpt2 wick; kill -INT $pid; wait $pid
    done
    for m in f32 Q8_0; do
      "$src/build/bin/llama-server" -m /tmp/gpt2-$m.gguf -t 2 -tb 2 -np 16 -c 16384 --host 127.0.0.1 --port 8094 > /tmp/llama-server.log 2>&1 & pid=$!; sleep 8
      echo "llama.cpp $m"; load 8094 x llama; kill $pid; wait $pid || true
    done

# Data-parallel training over MPI: Open MPI and libclang from Debian (root, or prefix
# sudo), then the --ignored tests that start two ranks on this machine (loopback only).
test-mpi:
    apt-get install -y openmpi-bin libopenmpi-dev libclang-dev
    cargo test --release --features mpi --test distributed -- --ignored

# Step time of the default preset at 1 and 2 ranks on this machine (same cores: the
# all-reduce's overhead, not a speed-up); needs what test-mpi installs.
bench-mpi:
    cargo build --release --features mpi
    bash benches/distributed.sh

# The CUDA build's tests on a machine with an NVIDIA GPU and the CUDA toolkit (nvcc,
# cuBLAS, NCCL): every command and objective against the CPU, transformers' logits, and
# NCCL's collectives.
test-cuda:
    cargo test --release --features nccl --test cuda

# wick against nanoGPT, a PyTorch loop and transformers' generate on the same GPU
# (docs/benchmarks.md "GPU"); needs torch and transformers with CUDA.
bench-gpu:
    cargo build --release --features nccl
    cargo test --release --features nccl --test cuda --no-run
    bash benches/gpu.sh target/release/wick "$(ls -t target/release/deps/cuda-* | grep -v '\.d$' | head -1)"
