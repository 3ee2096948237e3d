"""Drives an OpenAI-compatible server with the official `openai` client (PyPI).

    check URL MODEL [--embed-model M] [--chat]
        completions (greedy), streaming == non-streaming, embeddings (float and the
        client's default base64), chat; exits 1 on any mismatch.
    load URL MODEL --server wick|llama [--clients 1,2,4,8,16] [--requests 2] [--max-tokens 64]
        N concurrent streaming clients, each sending a fixed number of requests of
        exactly --max-tokens new tokens (wick: min_tokens; llama.cpp: ignore_eos):
        aggregate tokens/s, p50/p99 time to first token and time per output token.

Loopback only, bounded request counts. Used by `just bench-serve` (docs/benchmarks.md).
"""

import argparse
import statistics
import sys
import threading
import time

import openai


def client(url):
    return openai.OpenAI(base_url=url.rstrip("/") + "/v1", api_key="none", timeout=600, max_retries=0)


def check(args):
    c = client(args.url)
    ok = True

    def expect(cond, what):
        nonlocal ok
        print(("ok   " if cond else "FAIL ") + what)
        ok &= bool(cond)

    models = [m.id for m in c.models.list().data]
    expect(args.model in models, f"models.list has {args.model}: {models}")
    whole = c.completions.create(model=args.model, prompt="ROMEO:", max_tokens=24, temperature=0)
    expect(whole.choices[0].finish_reason in ("stop", "length"), "completion finishes")
    expect(whole.usage.completion_tokens > 0, f"usage {whole.usage}")
    pieces = []
    for chunk in c.completions.create(model=args.model, prompt="ROMEO:", max_tokens=24, temperature=0, stream=True):
        if chunk.choices:
            pieces.append(chunk.choices[0].text)
    expect("".join(pieces) == whole.choices[0].text, f"stream == whole: {whole.choices[0].text!r}")
    seeded = [c.completions.create(model=args.model, prompt="ROMEO:", max_tokens=16, temperature=1.0, seed=5).choices[0].text for _ in range(2)]
    expect(seeded[0] == seeded[1], "a seed repeats")
    try:
        c.completions.create(model=args.model, prompt="x", max_tokens=16, temperature=9)
        expect(False, "temperature 9 is refused")
    except openai.BadRequestError as e:
        expect(e.status_code == 400, f"400 BadRequestError: {e.message[:80]}")
    try:
        c.completions.create(model="no-such-model", prompt="x")
        expect(False, "an unknown model is refused")
    except openai.NotFoundError:
        expect(True, "404 NotFoundError for an unknown model")
    if args.chat:
        r = c.chat.completions.create(model=args.model, messages=[{"role": "user", "content": "hi"}], max_tokens=16, temperature=0)
        expect(r.choices[0].message.role == "assistant", f"chat: {r.choices[0].message.content!r}")
    if args.embed_model:
        floats = c.embeddings.create(model=args.embed_model, input=["a cat", "a dog"], encoding_format="float")
        default = c.embeddings.create(model=args.embed_model, input=["a cat", "a dog"])  # base64 on the wire
        a, b = floats.data[0].embedding, default.data[0].embedding
        expect(len(floats.data) == 2 and max(abs(x - y) for x, y in zip(a, b)) < 1e-6, f"embeddings, {len(a)} dims, float == base64")
    sys.exit(0 if ok else 1)


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def one_request(c, args, out):
    extra = {"min_tokens": args.max_tokens} if args.server == "wick" else {"ignore_eos": True}
    start = time.perf_counter()
    first = last = None
    tokens = 0
    stream = c.completions.create(
        model=args.model, prompt="ROMEO:", max_tokens=args.max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body=extra,
    )
    chunks = 0
    for chunk in stream:
        now = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].text:
            chunks += 1
            first = first or now
            last = now
    tokens = tokens or chunks
    out.append({"ttft": first - start, "tpot": (last - first) / max(tokens - 1, 1), "tokens": tokens})


def load(args):
    c = client(args.url)
    one_request(c, args, [])  # warm up
    print(f"| clients | requests | new tokens | wall s | aggregate tokens/s | TTFT p50 / p99 ms | per-token p50 / p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for n in [int(x) for x in args.clients.split(",")]:
        results = []

        def worker():
            cc = client(args.url)
            for _ in range(args.requests):
                one_request(cc, args, results)

        threads = [threading.Thread(target=worker) for _ in range(n)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        total = sum(r["tokens"] for r in results)
        ttft = [r["ttft"] * 1e3 for r in results]
        tpot = [r["tpot"] * 1e3 for r in results]
        print(f"| {n} | {len(results)} | {total} | {wall:.1f} | {total / wall:.1f} | "
              f"{percentile(ttft, 50):.0f} / {percentile(ttft, 99):.0f} | {percentile(tpot, 50):.1f} / {percentile(tpot, 99):.1f} |",
              flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("check")
    a.add_argument("url")
    a.add_argument("model")
    a.add_argument("--embed-model")
    a.add_argument("--chat", action="store_true")
    b = sub.add_parser("load")
    b.add_argument("url")
    b.add_argument("model")
    b.add_argument("--server", choices=["wick", "llama"], required=True)
    b.add_argument("--clients", default="1,2,4,8,16")
    b.add_argument("--requests", type=int, default=2)
    b.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args()
    {"check": check, "load": load}[args.cmd](args)


if __name__ == "__main__":
    main()
