"""Cold start of one image: qdit processes vs diffusers' ZImagePipeline (bench/cold_start/run.sh).

    python3 cold_start.py write DIR                 # the full-size pipeline folder (kept when complete)
    python3 cold_start.py run DIR QDIT_BIN OUT      # the processes, OUT/table.md and OUT/results.json
    python3 cold_start.py diffusers DIR W H STEPS   # one diffusers process (run starts it)
    python3 cold_start.py table OUT                 # OUT/table.md again from OUT/results.json

`write` builds diffusers' ZImageTransformer2DModel, transformers' Qwen3ForCausalLM and diffusers'
AutoencoderKL at the published Z-Image-Turbo configs (tests/data/zimage/published,
tests/data/qwen3/published, tests/data/vae/published) with seeded random weights on the GPU (the
transformer's Linear weights and biases ~ N(0, 0.02), norms ~ N(1, 0.02), as bench/peers does; the
others with their libraries' own initialization), saves them in bf16 with save_pretrained, and
copies the committed test pipeline's tokenizer, scheduler config and model_index.json. A file
DIR/.complete marks a finished folder, which later calls reuse.

Environment: SMOKE=1 shrinks the models (2 + 1 transformer layers, 2 text-encoder layers) and the
run (256x256, 2 steps); BUDGET (seconds, default 560) stops starting new processes once spent;
DEVICE (default cuda) is where `write` makes the weights and the diffusers process runs (cpu: a
check of the SMOKE folder and of the diffusers process on a machine without a GPU).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "tests", "data")
SMOKE = os.environ.get("SMOKE") == "1"
SEED = 1234
GIB = float(1 << 30)
PROMPT = "a lighthouse on a cliff at dusk, waves below, oil painting"
WIDTH, HEIGHT, STEPS = (256, 256, 2) if SMOKE else (1024, 1024, 9)
DEVICE = os.environ.get("DEVICE", "cuda")


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def published(*parts):
    with open(os.path.join(DATA, *parts)) as f:
        return {k: v for k, v in json.load(f).items() if not k.startswith("_")}


# ---------------------------------------------------------------------------------------- write

def write(d):
    if os.path.exists(os.path.join(d, ".complete")):
        log(f"reusing {d}")
        return
    import torch
    from diffusers import AutoencoderKL, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    t0 = time.time()
    torch.manual_seed(SEED)
    g = torch.Generator(DEVICE).manual_seed(SEED)

    cfg = published("zimage", "published", "config.json")
    if SMOKE:
        cfg.update(n_layers=2, n_refiner_layers=1)
    with torch.device(DEVICE):
        model = ZImageTransformer2DModel(**cfg).to(torch.bfloat16).eval()
    linear = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
              for p, _ in m.named_parameters(recurse=False)}
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            p.normal_(0.0 if name in linear or name.endswith("pad_token") else 1.0, 0.02, generator=g)
    model.save_pretrained(os.path.join(d, "transformer"), safe_serialization=True)
    del model
    log(f"transformer written ({time.time() - t0:.0f} s)")

    tcfg = published("qwen3", "published", "config.json")
    if SMOKE:
        tcfg.update(num_hidden_layers=2, layer_types=tcfg.get("layer_types", ["full_attention"] * 2)[:2])
    with torch.device(DEVICE):
        te = Qwen3ForCausalLM(Qwen3Config(**tcfg)).to(torch.bfloat16).eval()
    te.save_pretrained(os.path.join(d, "text_encoder"), safe_serialization=True)
    del te
    log(f"text encoder written ({time.time() - t0:.0f} s)")

    with torch.device(DEVICE):
        vae = AutoencoderKL(**published("vae", "published", "config.json")).to(torch.bfloat16).eval()
    vae.save_pretrained(os.path.join(d, "vae"), safe_serialization=True)
    del vae

    pipe = os.path.join(DATA, "pipeline")
    for sub in ("tokenizer", "scheduler"):
        shutil.copytree(os.path.join(pipe, sub), os.path.join(d, sub))
    shutil.copy(os.path.join(pipe, "model_index.json"), d)
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
    open(os.path.join(d, ".complete"), "w").write(f"{size}\n")
    log(f"pipeline folder {d}: {size / 1e9:.2f} GB in {time.time() - t0:.0f} s")


# ------------------------------------------------------------------------------------------ run

def drop_page_cache():
    """True when the page cache could be dropped (root on a kernel that allows it)."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError as e:
        log(f"page cache not dropped: {e}")
        return False


def watch(cmd, env, log_path):
    """Runs cmd; returns (rc, output, wall s, peak RSS GiB from wait4, peak anonymous RSS GiB)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, anon = [], [0]
    done = threading.Event()

    def reader():
        for line in p.stdout:
            out.append(line)
            sys.stdout.write("    " + line)

    def sampler():
        while not done.is_set():
            try:
                with open(f"/proc/{p.pid}/status") as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            anon[0] = max(anon[0], int(line.split()[1]))
            except OSError:
                pass
            done.wait(0.02)

    threads = [threading.Thread(target=reader), threading.Thread(target=sampler)]
    for t in threads:
        t.start()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    done.set()
    for t in threads:
        t.join()
    text = "".join(out)
    with open(log_path, "w") as f:
        f.write(" ".join(cmd) + "\n" + text)
    return p.returncode, text, wall, ru.ru_maxrss / (1 << 20), anon[0] / (1 << 20)


def num(pattern, text, default=None):
    m = re.search(pattern, text)
    return float(m.group(1)) if m else default


def run_qdit(binary, d, out_dir, label, quant, cache_dir):
    cmd = [binary, "generate", "--model", d, "--device", "cuda", "--prompt", PROMPT, "--width", str(WIDTH),
           "--height", str(HEIGHT), "--steps", str(STEPS), "--seed", "0", "--verbose",
           "-o", os.path.join(out_dir, label + ".png")]
    if quant == "int8":
        cmd += ["--quantization", "int8"]
    env = dict(os.environ, QDIT_CACHE_DIR=cache_dir)
    rc, text, wall, rss, anon = watch(cmd, env, os.path.join(out_dir, label + ".log"))
    row = dict(run=label, engine="qdit", rc=rc, wall_s=wall, host_peak_gib=rss, host_anon_gib=anon)
    if rc != 0:
        return row
    row.update(load_s=num(r"time: load ([\d.]+) s", text), text_s=num(r"text encoder ([\d.]+) s", text),
               denoise_s=num(r"denoise ([\d.]+) s \(", text), vae_s=num(r"vae ([\d.]+) s", text),
               total_s=num(r"total ([\d.]+) s", text),
               gpu_peak_gib=num(r"GPU[^:]*: weights .*, peak ([\d.]+) GiB", text),
               read_gbs=num(r"\(([\d.]+) GB/s\)", text),
               plans_built=num(r"(\d+) cuDNN plans built", text, 0),
               plans_read=num(r"(\d+) read from the plan cache", text, 0))
    return row


def run_diffusers(d, out_dir, label):
    cmd = [sys.executable, os.path.abspath(__file__), "diffusers", d, str(WIDTH), str(HEIGHT), str(STEPS)]
    rc, text, wall, rss, anon = watch(cmd, dict(os.environ), os.path.join(out_dir, label + ".log"))
    row = dict(run=label, engine="diffusers", rc=rc, wall_s=wall, host_peak_gib=rss, host_anon_gib=anon)
    m = re.search(r"^RESULT (\{.*\})$", text, re.M)
    if rc == 0 and m:
        r = json.loads(m.group(1))
        row.update(load_s=r["load_s"], total_s=r["load_s"] + r["first_image_s"], first_image_s=r["first_image_s"],
                   import_s=r["import_s"], gpu_peak_gib=r["gpu_peak_gib"])
    return row


def diffusers_child(d, width, height, steps):
    t0 = time.perf_counter()
    import torch
    from diffusers import ZImagePipeline
    import_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    cuda = DEVICE == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    pipe = ZImagePipeline.from_pretrained(d, torch_dtype=torch.bfloat16).to(DEVICE)
    sync()
    load_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    pipe(PROMPT, height=height, width=width, num_inference_steps=steps, guidance_scale=0.0,
         generator=torch.Generator(DEVICE).manual_seed(0))
    sync()
    first_s = time.perf_counter() - t2
    print("RESULT " + json.dumps(dict(import_s=import_s, load_s=load_s, first_image_s=first_s,
                                      gpu_peak_gib=torch.cuda.max_memory_allocated() / GIB if cuda else None)),
          flush=True)


def run(d, binary, out_dir):
    budget = float(os.environ.get("BUDGET", "560"))
    start = time.time()
    cache = os.path.join(os.path.dirname(os.path.abspath(d)), "qdit-cold-cache")
    shutil.rmtree(cache, ignore_errors=True)  # the first process builds the cuDNN plans
    env = {}
    try:
        import torch
        env = dict(gpu=torch.cuda.get_device_name(0), torch=torch.__version__)
        import diffusers
        env["diffusers"] = diffusers.__version__
    except Exception as e:  # the qdit rows still run
        env["import_error"] = str(e)
    env.update(width=WIDTH, height=HEIGHT, steps=STEPS, smoke=SMOKE,
               folder_gb=float(open(os.path.join(d, ".complete")).read()) / 1e9)
    rows = []
    plan = [("qdit int8, fresh plan cache", lambda: run_qdit(binary, d, out_dir, "qdit_int8_fresh", "int8", cache)),
            ("qdit int8", lambda: run_qdit(binary, d, out_dir, "qdit_int8", "int8", cache)),
            ("qdit bf16", lambda: run_qdit(binary, d, out_dir, "qdit_bf16", "none", cache)),
            ("diffusers bf16", lambda: run_diffusers(d, out_dir, "diffusers")),
            ("qdit int8, page cache dropped", "drop", lambda: run_qdit(binary, d, out_dir, "qdit_int8_dropped",
                                                                      "int8", cache)),
            ("diffusers bf16, page cache dropped", "drop", lambda: run_diffusers(d, out_dir, "diffusers_dropped"))]
    for item in plan:
        name, fn = item[0], item[-1]
        if time.time() - start > budget:
            log(f"budget of {budget:.0f} s spent: {name} not run")
            continue
        if len(item) == 3 and not drop_page_cache():
            continue
        log(name)
        row = fn()
        row["name"] = name
        rows.append(row)
        if row["rc"] != 0:
            log(f"{name}: exit status {row['rc']} (see {out_dir})")
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(dict(env=env, rows=rows), f, indent=1)
    table(out_dir)
    return 0 if rows and all(r["rc"] == 0 for r in rows) else 1


def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def table(out_dir):
    with open(os.path.join(out_dir, "results.json")) as f:
        res = json.load(f)
    env, rows = res["env"], res["rows"]
    lines = [f"Cold start, one {env['width']}x{env['height']} image, {env['steps']} steps, "
             f"{env.get('gpu', '?')}, pipeline folder {env['folder_gb']:.1f} GB"
             f"{' (SMOKE: reduced models)' if env['smoke'] else ''}; torch {env.get('torch', '?')}, "
             f"diffusers {env.get('diffusers', '?')}. One process per row.", "",
             "| run | load s | text encoder s | denoise s | VAE s | total s | process s | GPU peak GiB "
             "| host peak RSS GiB | host anon GiB | plans built / read | load GB/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["rc"] != 0:
            lines.append(f"| {r['name']} | failed (exit {r['rc']}) |||||||||||")
            continue
        qdit = r["engine"] == "qdit"
        lines.append("| " + " | ".join([
            r["name"], fmt(r.get("load_s")),
            fmt(r.get("text_s")) if qdit else "-",
            fmt(r.get("denoise_s")) if qdit else "-",
            fmt(r.get("vae_s")) if qdit else f"first image {fmt(r.get('first_image_s'))}",
            fmt(r.get("total_s")), fmt(r.get("wall_s")), fmt(r.get("gpu_peak_gib")),
            fmt(r.get("host_peak_gib")), fmt(r.get("host_anon_gib")),
            f"{r.get('plans_built', 0):.0f} / {r.get('plans_read', 0):.0f}" if qdit else "-",
            fmt(r.get("read_gbs")) if qdit else "-"]) + " |")
    lines += ["", "load: qdit's pipeline constructor / diffusers' from_pretrained + .to('cuda') (after "
              "imports); total: qdit's own summary (process start to image written) / diffusers' load + first "
              "image; process s: the whole process as the parent saw it (CUDA start-up and, for diffusers, "
              "imports included); host peak RSS: ru_maxrss (page-cache pages mapped by the process count); "
              "host anon: peak RssAnon sampled every 20 ms; load GB/s: the GPU weight reads of qdit's "
              "--verbose report."]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "table.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "write" and len(sys.argv) == 3:
        write(sys.argv[2])
    elif cmd == "run" and len(sys.argv) == 5:
        os.makedirs(sys.argv[4], exist_ok=True)
        sys.exit(run(sys.argv[2], sys.argv[3], sys.argv[4]))
    elif cmd == "diffusers" and len(sys.argv) == 6:
        diffusers_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
    elif cmd == "table" and len(sys.argv) == 3:
        table(sys.argv[2])
    else:
        sys.exit(__doc__)
