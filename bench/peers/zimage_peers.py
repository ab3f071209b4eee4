"""Z-Image DiT step: diffusers / torchao peers on one GPU, and the comparison with qdit.

    python3 zimage_peers.py base    DIR  # checkpoint, inputs, reference in DIR; diffusers bf16 eager/compiled
    python3 zimage_peers.py torchao DIR  # torchao int8 / fp8 dynamic (eager, compiled) on that checkpoint
    python3 zimage_peers.py report  DIR  # add qdit (DIR/qdit_out.safetensors, DIR/qdit.log), print the table

`base` builds diffusers' ZImageTransformer2DModel at the real Z-Image-Turbo config
(tests/data/zimage/published/config.json), gives it seeded random weights (Linear weights and
biases ~ N(0, 0.02), norm weights ~ N(1, 0.02), pad tokens ~ N(0, 0.02)), saves it with
save_pretrained (bf16 safetensors) to DIR/transformer and the inputs to DIR/inputs.safetensors:
one 1024x1024 latent (16x1x128x128 -> 4096 image tokens), t = 0.5, 512 caption tokens.
qdit and `torchao` load exactly these files. torch.compile is regional (each transformer block,
fullgraph, default mode), as diffusers' compile_repeated_blocks does. Every configuration is timed
on the same inputs: CUDA events around one model call, median of STEPS after WARMUP calls.
Errors are against the diffusers bf16 eager output: SQNR = 10 log10(sum ref^2 / sum (out - ref)^2)
and max |out - ref| / max |ref|.

Environment: SMOKE=1 shrinks the model (2 layers, 1 + 1 refiners) and the step counts.
"""
import gc
import json
import os
import re
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file, save_file

from peer_timing import GIB, time_call

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIG = os.path.join(HERE, "..", "..", "tests", "data", "zimage", "published", "config.json")
SMOKE = os.environ.get("SMOKE") == "1"
WARMUP, STEPS = (2, 3) if SMOKE else (3, 10)
SEED = 1234

# The Linear layers qdit's default int8 plan quantizes: attention and FFN of every block.
# t_embedder, cap_embedder, all_x_embedder, all_final_layer and adaLN_modulation stay bf16.
QUANTIZED = re.compile(r"^(noise_refiner|context_refiner|layers)\.\d+\."
                       r"(attention\.(to_q|to_k|to_v|to_out\.0)|feed_forward\.(w1|w2|w3))$")


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def model_config():
    with open(CONFIG) as f:
        cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
    if SMOKE:
        cfg.update(n_layers=2, n_refiner_layers=1)
    return cfg


def build_and_save(dirname):
    from diffusers import ZImageTransformer2DModel

    with torch.device("cuda"):
        model = ZImageTransformer2DModel(**model_config()).to(torch.bfloat16).eval()
    g = torch.Generator("cuda").manual_seed(SEED)
    linear_params = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                     for p, _ in m.named_parameters(recurse=False)}
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            mean = 0.0 if name in linear_params or name.endswith("pad_token") else 1.0
            p.normal_(mean, 0.02, generator=g)
    model.save_pretrained(os.path.join(dirname, "transformer"), safe_serialization=True)

    x = torch.randn(16, 1, 128, 128, generator=g, device="cuda").to(torch.bfloat16)
    cap = torch.randn(512, 2560, generator=g, device="cuda").to(torch.bfloat16)
    t = torch.tensor([0.5], dtype=torch.float32, device="cuda")
    save_file({"x": x.cpu().contiguous(), "t": t.cpu(), "cap_feats": cap.cpu().contiguous()},
              os.path.join(dirname, "inputs.safetensors"))
    return model, (x, t, cap)


def load_model(dirname):
    from diffusers import ZImageTransformer2DModel

    return ZImageTransformer2DModel.from_pretrained(
        os.path.join(dirname, "transformer"), torch_dtype=torch.bfloat16).to("cuda").eval()


def free():
    gc.collect()
    torch.cuda.empty_cache()


def weight_gib():
    free()
    return torch.cuda.memory_allocated() / GIB


def time_step(model, inputs):
    """Median ms of one forward over STEPS (after WARMUP), peak memory during them, the output."""
    x, t, cap = inputs
    r, out = time_call(lambda: model([x], t, [cap], return_dict=False)[0][0], WARMUP, STEPS)
    return r, out.float().cpu()


def errors(out, ref):
    out, ref = out.double(), ref.double()
    noise = (out - ref).pow(2).sum().item()
    sqnr = float("inf") if noise == 0 else 10 * torch.log10(ref.pow(2).sum() / noise).item()
    return dict(sqnr_db=sqnr, max_rel=((out - ref).abs().max() / ref.abs().max()).item(),
                finite=bool(torch.isfinite(out).all()))


def save_results(dirname, results):
    with open(os.path.join(dirname, "peers.json"), "w") as f:
        json.dump(results, f, indent=1)


def recorder(dirname, results, ref):
    def record(name, model, inputs, w_gib, note=""):
        log(f"timing {name}")
        try:
            r, out = time_step(model, inputs)
        except Exception as e:  # keep the other configurations
            log(f"{name} FAILED: {type(e).__name__}: {e}")
            results["rows"].append(dict(name=name, failed=f"{type(e).__name__}: {e}"[:300]))
            save_results(dirname, results)
            return None
        r.update(name=name, weight_gib=w_gib, note=note, **errors(out, out if ref is None else ref))
        results["rows"].append(r)
        save_results(dirname, results)
        log(json.dumps(r))
        return out
    return record


def compile_blocks(model):
    """Regional compilation (diffusers' compile_repeated_blocks): each ZImageTransformerBlock."""
    torch._dynamo.reset()
    model.compile_repeated_blocks(fullgraph=True)


def run_base(dirname):
    """Checkpoint + inputs + the diffusers bf16 reference; bf16 eager and compiled."""
    import diffusers

    os.makedirs(dirname, exist_ok=True)
    results = dict(env=dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda,
                            diffusers=diffusers.__version__, warmup=WARMUP, steps=STEPS, smoke=SMOKE), rows=[])
    log("building the model, saving the checkpoint and inputs")
    model, inputs = build_and_save(dirname)
    w = weight_gib()
    ref = recorder(dirname, results, None)("diffusers bf16 eager", model, inputs, w)
    save_file({"ref": ref.contiguous()}, os.path.join(dirname, "ref.safetensors"))
    compile_blocks(model)
    recorder(dirname, results, ref)("diffusers bf16 torch.compile", model, inputs, w)


def run_torchao(dirname):
    """torchao int8 dynamic and fp8 dynamic row-wise on the saved checkpoint, eager and compiled."""
    import torchao
    from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig,
                                      Int8DynamicActivationInt8WeightConfig, PerRow, quantize_)

    with open(os.path.join(dirname, "peers.json")) as f:
        results = json.load(f)
    results["env"]["torchao"] = torchao.__version__
    ref = load_file(os.path.join(dirname, "ref.safetensors"))["ref"]
    inp = load_file(os.path.join(dirname, "inputs.safetensors"), device="cuda")
    inputs = (inp["x"], inp["t"], inp["cap_feats"])
    record = recorder(dirname, results, ref)
    # torchao's recommended inductor settings add coordinate-descent autotuning, which made one
    # compile take minutes; keep inductor's defaults (as for bf16) plus the int_mm * scale fusion.
    torch._inductor.config.force_fuse_int_mm_with_mul = True
    for label, config in [
            ("torchao int8 dynamic", Int8DynamicActivationInt8WeightConfig(set_inductor_config=False)),
            ("torchao fp8 dynamic row-wise",
             Float8DynamicActivationFloat8WeightConfig(granularity=PerRow(), set_inductor_config=False))]:
        log(f"loading + quantizing for {label}")
        torch._dynamo.reset()
        model = load_model(dirname)
        targets = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and QUANTIZED.match(n)}
        quantize_(model, config, filter_fn=lambda m, fqn: fqn in targets)
        w = weight_gib()
        note = f"{len(targets)} Linear"
        record(f"{label} eager", model, inputs, w, note)
        compile_blocks(model)
        record(f"{label} torch.compile", model, inputs, w, note)
        del model
        free()


def report(dirname):
    with open(os.path.join(dirname, "peers.json")) as f:
        results = json.load(f)
    ref = load_file(os.path.join(dirname, "ref.safetensors"))["ref"]
    try:
        qdit_out = load_file(os.path.join(dirname, "qdit_out.safetensors"))
        with open(os.path.join(dirname, "qdit.log")) as f:
            qlines = [json.loads(l.split(" ", 1)[1]) for l in f if l.startswith("QDIT_RESULT ")]
    except OSError as e:
        results["rows"].append(dict(name="qdit", failed=str(e)))
        qlines = []
    for q in qlines:
        name = f"qdit {q['mode']} (CUDA forward)"
        note = f"{q['int8_layers']} of {q['linear_layers']} Linear int8" if q["mode"] == "int8" else ""
        results["rows"].append(dict(name=name, ms=q["ms_median"], ms_min=q["ms_min"], ms_max=q["ms_max"],
                                    weight_gib=q["weight_gib"], peak_gib=q["peak_gib"],
                                    reserved_gib=q["peak_reserved_gib"], note=note,
                                    **errors(qdit_out[q["mode"]].float().reshape(ref.shape), ref)))
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.strip()
    except OSError:
        smi = "?"
    env = results["env"]
    lines = [f"GPU {env['gpu']} ({smi}); PyTorch {env['torch']} (CUDA {env['cuda']}), diffusers "
             f"{env['diffusers']}, torchao {env.get('torchao', '-')}; median of {env['steps']} after {env['warmup']} "
             f"warm-up steps{' (SMOKE: reduced model)' if env['smoke'] else ''}", "",
             "| configuration | ms / step (min-max) | vs bf16 compiled | weights GiB | peak GiB (reserved) "
             "| SQNR dB vs bf16 eager | max rel. error | notes |",
             "|---|---|---|---|---|---|---|---|"]
    base = next((r["ms"] for r in results["rows"] if r["name"] == "diffusers bf16 torch.compile" and "ms" in r), None)
    for r in results["rows"]:
        if "failed" in r:
            lines.append(f"| {r['name']} | failed | | | | | | {r['failed']} |")
            continue
        first = r["name"] == "diffusers bf16 eager"
        sqnr = "reference" if first else f"{r['sqnr_db']:.1f}"
        maxrel = "-" if first else f"{r['max_rel']:.2e}"
        flag = "" if r.get("finite", True) else " NON-FINITE"
        ratio = f"{r['ms'] / base:.2f}x" if base else "-"
        lines.append(f"| {r['name']} | {r['ms']:.1f} ({r['ms_min']:.1f}-{r['ms_max']:.1f}) | "
                     f"{ratio} | {r['weight_gib']:.2f} | {r['peak_gib']:.2f} ({r['reserved_gib']:.2f}) | "
                     f"{sqnr} | {maxrel} | {r.get('note', '')}{flag} |")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(dirname, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(dirname, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    phases = dict(base=run_base, torchao=run_torchao, report=report)
    if len(sys.argv) != 3 or sys.argv[1] not in phases:
        sys.exit(__doc__)
    phases[sys.argv[1]](sys.argv[2])
