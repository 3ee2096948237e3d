"""The peer of `cargo bench --bench matmul`: GFLOP/s of torch's linear products on
GPT-2 124M's shapes (512 rows, a training shard), forward and backward, in f32 and under
CPU autocast to bf16 (oneDNN's AMX kernels where the CPU has them).

    python3 benches/peers/matmul_torch.py
"""
import statistics
import time

import torch
import torch.nn.functional as F

ROWS = 512
SHAPES = [("c_attn", 768, 2304), ("c_fc", 768, 3072), ("mlp c_proj", 3072, 768), ("lm_head", 768, 50257)]


def run(autocast):
    name = "bf16 autocast" if autocast else "f32"
    print(f"{name} (torch {torch.__version__}, {torch.get_num_threads()} threads, cpu {torch.backends.cpu.get_cpu_capability()})")
    for label, inp, out in SHAPES:
        x = torch.randn(ROWS, inp, requires_grad=True)
        w = (torch.randn(out, inp) * 0.02).requires_grad_()
        flops = 2.0 * ROWS * inp * out
        fwd, bwd = [], []
        for _ in range(5):
            t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y = F.linear(x, w)
            fwd.append(time.perf_counter() - t)
            t = time.perf_counter()
            y.float().sum().backward()
            bwd.append(time.perf_counter() - t)
            x.grad = w.grad = None
        f, b = statistics.median(fwd), statistics.median(bwd)
        print(f"  {label:<11} ({ROWS}x{inp}) . ({inp}x{out}): forward {f * 1e3:6.1f} ms {flops / f / 1e9:5.0f} GFLOP/s, "
              f"backward {b * 1e3:6.1f} ms {2 * flops / b / 1e9:5.0f} GFLOP/s")


run(False)
run(True)
