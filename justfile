# Recipes for the heavier runs that stay out of `cargo test`.

# The README's test command.
test:
    cargo test

# Everything CI runs.
ci:
    bash .ci/run

# Forward-pass timings of the GPT-2 124M geometry on CPU, wick then transformers.
bench:
    cargo bench --bench forward
    python3 benches/peers/forward_transformers.py

# Regenerate the parity fixtures (needs torch + transformers + sentence-transformers).
fixtures:
    python3 tests/fixtures/make_fixtures.py
