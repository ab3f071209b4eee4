"""Qwen-Image DiT step: diffusers / torchao peers on one GPU, beside qdit's bench_qwen_image_step.

    python3 qwen_image_peers.py run    DIR [QDIT_LOG]  # diffusers bf16 eager / compiled, torchao int8
    python3 qwen_image_peers.py report DIR QDIT_LOG    # the table (DIR/table.md) from DIR/peers.json + qdit's log

`run` builds diffusers' QwenImageTransformer2DModel at the published config
(tests/data/qwen_image/published/config.json: 60 blocks, width 3072) in bf16 on the GPU with seeded
random weights (Linear weights and biases ~ N(0, 0.02), norm weights ~ N(1, 0.02)), the same
statistics qdit's benchmark draws its own weights from (the two sides do not share weights: the
accuracy of qdit's kernels is tested on diffusers' fixtures, not here). One true-CFG step at
1024x1024 (4096 image tokens of the packed 2x2 latents): the prompt has 256 text tokens, the negative
prompt 40. diffusers' pipeline runs them as two calls of batch 1 without masks (its rule when a mask
is all ones); qdit runs them as one batch of 2 with a text mask. Rows:
  - diffusers bf16 eager, two calls (the pipeline's step); and one masked batch of 2 (what qdit runs);
  - diffusers bf16, regional torch.compile (compile_repeated_blocks, fullgraph), two calls;
  - torchao int8 dynamic (Int8DynamicActivationInt8WeightConfig) on every attention and MLP Linear of
    the blocks, Int8WeightOnlyConfig on img_mod / txt_mod (qdit's default plan), regional compile, two
    calls.
Timing: CUDA events around the step, median of STEPS after WARMUP steps. Memory: weights =
torch.cuda.memory_allocated() with the model alone; peak = max allocated during the timed steps.
SMOKE=1 shrinks the model to 2 blocks.
"""
import gc
import json
import os
import re
import sys
import time

import torch

from peer_timing import GIB, time_call

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "..", "..", "tests", "data", "qwen_image", "published", "config.json")
SMOKE = os.environ.get("SMOKE") == "1"
WARMUP, STEPS = (2, 3) if SMOKE else (3, 10)
SEED = 1234
TXT, NEG, GRID = 256, 40, (1, 64, 64)

# qdit's default int8 plan on the blocks: W8A8 for attention and MLP, weight-only for modulation.
W8A8 = re.compile(r"^transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|"
                  r"to_add_out)|img_mlp\.net\.(0\.proj|2)|txt_mlp\.net\.(0\.proj|2))$")
WEIGHT_ONLY = re.compile(r"^transformer_blocks\.\d+\.(img_mod|txt_mod)\.1$")


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def free():
    gc.collect()
    torch.cuda.empty_cache()


def build():
    from diffusers import QwenImageTransformer2DModel

    with open(CONFIG) as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    if SMOKE:
        cfg["num_layers"] = 2
    # bf16 from the start: 20.4 B parameters in f32 would not fit an 80 GB card.
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = QwenImageTransformer2DModel(**cfg).eval()
    torch.set_default_dtype(torch.float32)
    g = torch.Generator("cuda").manual_seed(SEED)
    linear = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
              for p, _ in m.named_parameters(recurse=False)}
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0 if name in linear else 1.0, 0.02, generator=g)
    n = sum(p.numel() for p in model.parameters())
    return model, n


def inputs():
    g = torch.Generator("cuda").manual_seed(SEED + 1)
    L = GRID[0] * GRID[1] * GRID[2]
    r = lambda *s: torch.randn(*s, generator=g, device="cuda").to(torch.bfloat16)
    x, pe, ne = r(1, L, 64), r(1, TXT, 3584), r(1, NEG, 3584)
    t = torch.full((1,), 0.5, device="cuda")
    # The masked batch of 2: the negative prompt padded to 256 tokens.
    pad = torch.zeros(1, TXT - NEG, 3584, device="cuda", dtype=torch.bfloat16)
    enc2 = torch.cat([pe, torch.cat([ne, pad], 1)], 0)
    mask2 = torch.zeros(2, TXT, dtype=torch.bool, device="cuda")
    mask2[0] = True
    mask2[1, :NEG] = True
    return dict(x=x, pe=pe, ne=ne, t=t, x2=x.expand(2, -1, -1).contiguous(), enc2=enc2, mask2=mask2,
                t2=t.expand(2).contiguous())


def cfg_step(model, d):
    def call():
        kw = dict(hidden_states=d["x"], timestep=d["t"], img_shapes=[[GRID]], return_dict=False)
        a = model(encoder_hidden_states=d["pe"], encoder_hidden_states_mask=None, **kw)[0]
        b = model(encoder_hidden_states=d["ne"], encoder_hidden_states_mask=None, **kw)[0]
        return a, b
    return call


def masked_batch(model, d):
    return lambda: model(hidden_states=d["x2"], encoder_hidden_states=d["enc2"], encoder_hidden_states_mask=d["mask2"],
                         timestep=d["t2"], img_shapes=[[GRID]] * 2, return_dict=False)[0]


def run(dirname, deadline):
    import diffusers

    os.makedirs(dirname, exist_ok=True)
    res = dict(env=dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
                        diffusers=diffusers.__version__, warmup=WARMUP, steps=STEPS, smoke=SMOKE), rows=[])
    path = os.path.join(dirname, "peers.json")

    def record(name, call, w, note=""):
        log(f"timing {name}")
        try:
            r, _ = time_call(call, WARMUP, STEPS)
        except Exception as e:  # keep the other rows
            log(f"{name} FAILED: {type(e).__name__}: {e}")
            r = dict(failed=f"{type(e).__name__}: {e}"[:300])
        r.update(name=name, weight_gib=w, note=note)
        res["rows"].append(r)
        with open(path, "w") as f:
            json.dump(res, f, indent=1)
        log(json.dumps(r))

    log("building the model")
    model, n = build()
    res["env"]["parameters"] = n
    free()
    w = torch.cuda.memory_allocated() / GIB
    d = inputs()
    record("diffusers bf16 eager", cfg_step(model, d), w, "two calls (prompt, negative)")
    record("diffusers bf16 eager, masked batch of 2", masked_batch(model, d), w, "one call")
    torch._dynamo.reset()
    model.compile_repeated_blocks(fullgraph=True)
    record("diffusers bf16 torch.compile", cfg_step(model, d), w, "two calls, regional compile")
    if deadline and time.time() > deadline - 150:
        log("no time left for torchao")
        return
    import torchao
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

    res["env"]["torchao"] = torchao.__version__
    # Quantized in place (the same weights; a second bf16 copy would not fit an 80 GB card).
    torch._dynamo.reset()
    free()
    names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    w8a8 = {n for n in names if W8A8.match(n)}
    wo = {n for n in names if WEIGHT_ONLY.match(n)}
    # torchao's recommended inductor settings add coordinate-descent autotuning (minutes of compile
    # per shape); keep inductor's defaults plus the int_mm * scale fusion, as for Z-Image.
    torch._inductor.config.force_fuse_int_mm_with_mul = True
    quantize_(model, Int8DynamicActivationInt8WeightConfig(set_inductor_config=False), filter_fn=lambda m, f: f in w8a8)
    quantize_(model, Int8WeightOnlyConfig(set_inductor_config=False), filter_fn=lambda m, f: f in wo)
    free()
    w = torch.cuda.memory_allocated() / GIB
    model.compile_repeated_blocks(fullgraph=True)
    record("torchao int8 dynamic, torch.compile", cfg_step(model, d), w,
           f"{len(w8a8)} W8A8 + {len(wo)} weight-only Linear, regional compile")


QDIT_LINE = re.compile(r"^(bf16|int8|int8-keep-img-mlp)\s+layers (\d+): ([\d.]+) ms/step median of \d+ \(min ([\d.]+), "
                       r"max ([\d.]+)\); int8 Linear (\d+); weights ([\d.]+) GiB .*activations peak ([\d.]+) GiB, "
                       r"peak in use ([\d.]+) GiB; graph (on|off)")


def report(dirname, qdit_log):
    with open(os.path.join(dirname, "peers.json")) as f:
        res = json.load(f)
    rows = [r for r in res["rows"]]
    with open(qdit_log) as f:
        for line in f:
            m = QDIT_LINE.match(line.strip())
            if m and m.group(10) == "on":
                label = {"bf16": "qdit bf16", "int8": "qdit int8 (default plan)",
                         "int8-keep-img-mlp": "qdit int8, img_mlp kept bf16"}[m.group(1)]
                rows.append(dict(name=label, ms=float(m.group(3)), ms_min=float(m.group(4)), ms_max=float(m.group(5)),
                                 weight_gib=float(m.group(7)), peak_gib=float(m.group(9)),
                                 act_gib=float(m.group(8)), note=f"{m.group(6)} int8 Linear, one masked batch of 2"))
    base = next((r["ms"] for r in rows if r["name"] == "diffusers bf16 torch.compile" and "ms" in r), None)
    out = ["| configuration | ms / CFG step (min–max) | vs diffusers bf16 compiled | weights GiB | peak GiB | note |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        if "ms" not in r:
            out.append(f"| {r['name']} | failed: {r.get('failed', '')} | | | | |")
            continue
        ratio = f"{r['ms'] / base:.3f}×" if base else "—"
        out.append(f"| {r['name']} | {r['ms']:.1f} ({r['ms_min']:.1f}–{r['ms_max']:.1f}) | {ratio} | "
                   f"{r['weight_gib']:.2f} | {r['peak_gib']:.2f} | {r.get('note', '')} |")
    text = "\n".join(out) + "\n\n" + json.dumps(res["env"]) + "\n"
    with open(os.path.join(dirname, "table.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("run", "report"):
        sys.exit(__doc__)
    if sys.argv[1] == "run":
        dl = os.environ.get("DEADLINE_EPOCH")
        run(sys.argv[2], float(dl) if dl else None)
    else:
        if len(sys.argv) < 4:
            sys.exit(__doc__)
        report(sys.argv[2], sys.argv[3])
