"""End-to-end text-to-image table: qdit vs diffusers' pipeline, one model at a time (bench/e2e/run.sh).

    python3 e2e.py run MODEL ROOT QDIT_BIN OUT     # MODEL: qwen-image | zimage; OUT/table-MODEL.md, OUT/table.md
    python3 e2e.py write MODEL DIR                 # only the pipeline folder
    python3 e2e.py diffusers MODEL DIR NOISE PNG COMPILE   # one diffusers process (run starts it)
    python3 e2e.py table ROOT OUT                  # the tables again from ROOT/results-*.json

Pipeline folder (ROOT/MODEL, written once, marked by .complete): seeded random weights made on DEVICE
and saved in bf16 with save_pretrained, at the published configs (tests/data). Qwen-Image (here):
QwenImageTransformer2DModel (qwen_image/published, 60 blocks; Linear weights and biases ~ N(0, 0.02),
its other parameters ~ N(1, 0.02), as bench/peers), Qwen2_5_VLForConditionalGeneration
(qwen25vl/published, vision tower included: diffusers loads it, qdit skips it unread) and
AutoencoderKLQwenImage (qwen_image_vae/published) with their libraries' own initialization.
Z-Image-Turbo: bench/cold_start's writer (the same scheme). Tokenizer (the committed test tokenizer,
not the real one: prompt token counts differ), scheduler config and model_index.json come from the
committed tiny pipelines. The folder of the other model is deleted first (the disk holds one:
Qwen-Image's is ~58 GB), and free space is checked before writing.

Rows (each resumable: ROOT/results-MODEL.json keeps the finished ones, a rerun does the rest):
  qdit bf16, int8, int8 with img_mlp (Qwen-Image) / feed_forward (Z-Image) kept:
    1. `qdit generate --latents NOISE --verbose`: load time and weights / activations / peak GPU
       memory from its summary, the image (PSNR);
    2. `qdit serve`, two requests of the same size and steps: the second's time (the server's own
       "done ... in X s", which includes encoding the PNG) is the warm time per image.
  diffusers bf16 eager and regional compile (transformer.compile_repeated_blocks(fullgraph=True)), one
  process each: from_pretrained(bf16).to(DEVICE), one warm-up image then a timed one with the same
  injected latents; weights = memory allocated after loading, peak = max allocated during the timed
  image, activations = peak - weights.
PSNR: each image against qdit bf16's, all made from the same initial noise (NOISE: torch.randn at
SEED, rounded to bf16, given to qdit by --latents and to diffusers by latents=, packed for Qwen-Image).

Environment: SMOKE=1 builds reduced models (Qwen-Image: the committed tiny pipeline's configs, 2 blocks,
small widths; Z-Image: cold_start's 2 + 1 layers at the published widths) and runs 256x256, 2 steps; DEVICE (default cuda; cpu for the smoke check without a GPU); DEADLINE_EPOCH (unix
time) after which no row starts, and ROW_S (seconds, default 200 Qwen-Image / 60 Z-Image, 0 with
SMOKE) that a row needs at least: a row is started only when that much time is left, and its
processes are stopped at the deadline (such a row is not recorded, so a rerun does it). ROWS: a
semicolon-separated list of row names (as in the table) to run; the others are not started.
"""
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "tests", "data")
sys.path.insert(0, os.path.join(HERE, "..", "cold_start"))
from cold_start import log, num, published, write as write_zimage  # noqa: E402  (the Z-Image folder writer)
SMOKE = os.environ.get("SMOKE") == "1"
DEVICE = os.environ.get("DEVICE", "cuda")
SEED = 1234
NOISE_SEED = 42
GIB = float(1 << 30)
PROMPT = "a lighthouse on a cliff at dusk, waves below, oil painting"
NEGATIVE = " "  # Qwen-Image: true CFG runs only with a negative prompt (as in diffusers)
MODELS = {
    "qwen-image": dict(title="Qwen-Image", steps=50, true_cfg=4.0, kept="img_mlp", need_gb=58.5, row_s=200),
    "zimage": dict(title="Z-Image-Turbo", steps=9, true_cfg=None, kept="feed_forward", need_gb=21.5, row_s=60),
}
SIZE = 256 if SMOKE else 1024


def steps(model):
    return 2 if SMOKE else MODELS[model]["steps"]


# ---------------------------------------------------------------------------------------- write

def check_disk(d, model):
    need = 3 if SMOKE else MODELS[model]["need_gb"]
    parent = os.path.dirname(os.path.abspath(d))
    os.makedirs(parent, exist_ok=True)
    free = shutil.disk_usage(parent).free / 1e9
    if free < need:
        sys.exit(f"error: {parent} has {free:.1f} GB free; the {MODELS[model]['title']} pipeline folder needs "
                 f"about {need} GB (delete other folders there, or set ROOT to a larger disk)")


def save_model(make, out, redraw=False):
    """make() built in bf16 on DEVICE and saved with save_pretrained. redraw: its Linear weights and biases
    ~ N(0, 0.02), its other parameters ~ N(1, 0.02) (as bench/peers); else its library's initialization."""
    import torch
    torch.set_default_dtype(torch.bfloat16)  # 20.4 B parameters in f32 would not fit an 80 GB card
    with torch.device(DEVICE):
        model = make().eval()
    torch.set_default_dtype(torch.float32)
    if redraw:
        g = torch.Generator(DEVICE).manual_seed(SEED)
        linear = {f"{n}.{p}" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                  for p, _ in m.named_parameters(recurse=False)}
        with torch.no_grad():
            for name, p in sorted(model.named_parameters()):
                p.normal_(0.0 if name in linear else 1.0, 0.02, generator=g)
    model.save_pretrained(out, safe_serialization=True)


def write(model, d):
    if os.path.exists(os.path.join(d, ".complete")):
        log(f"reusing {d}")
        return
    check_disk(d, model)
    if model == "zimage":
        return write_zimage(d)  # bench/cold_start's writer (SMOKE: 2 + 1 layers at the published widths)
    import torch
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    t0 = time.time()
    torch.manual_seed(SEED)
    from diffusers import AutoencoderKLQwenImage, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    tiny = "qwen_image_pipeline"
    if SMOKE:
        tcfg, ecfg, vcfg = (published(tiny, sub, "config.json") for sub in ("transformer", "text_encoder", "vae"))
    else:
        tcfg, ecfg, vcfg = (published(sub, "published", "config.json")
                            for sub in ("qwen_image", "qwen25vl", "qwen_image_vae"))
    save_model(lambda: QwenImageTransformer2DModel(**tcfg), os.path.join(d, "transformer"), redraw=True)
    log(f"transformer written ({time.time() - t0:.0f} s)")
    save_model(lambda: Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**ecfg)), os.path.join(d, "text_encoder"))
    log(f"text encoder written ({time.time() - t0:.0f} s)")
    save_model(lambda: AutoencoderKLQwenImage(**vcfg), os.path.join(d, "vae"))
    pipe = os.path.join(DATA, tiny)
    for sub in ("tokenizer", "scheduler"):
        shutil.copytree(os.path.join(pipe, sub), os.path.join(d, sub))
    shutil.copy(os.path.join(pipe, "model_index.json"), d)
    size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
    with open(os.path.join(d, ".complete"), "w") as f:
        f.write(f"{size}\n")
    log(f"{MODELS[model]['title']} pipeline folder {d}: {size / 1e9:.2f} GB in {time.time() - t0:.0f} s")


def write_noise(model, d, path):
    """The initial noise [1, 16, h, w] (f32 holding bf16 values) as qdit's --latents file."""
    import torch
    from safetensors.torch import save_file
    with open(os.path.join(d, "transformer", "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(d, "vae", "config.json")) as f:
        vae = json.load(f)
    if model == "qwen-image":
        c, scale = cfg["in_channels"] // 4, 2 ** len(vae["temperal_downsample"])
    else:
        c, scale = cfg["in_channels"], 2 ** (len(vae["block_out_channels"]) - 1)
    h = w = 2 * (SIZE // (scale * 2))  # as the pipelines' prepare_latents (2x2 patches)
    noise = torch.randn((1, c, h, w), generator=torch.Generator().manual_seed(NOISE_SEED))
    save_file({"latents": noise.to(torch.bfloat16).float().contiguous()}, path)


# ------------------------------------------------------------------------------------ processes

def watch(cmd, log_path, timeout):
    """Runs cmd until it exits or `timeout` s pass (then kills it); returns (rc, output)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []

    def reader():
        for line in p.stdout:
            out.append(line)
            sys.stdout.write("    " + line)

    t = threading.Thread(target=reader)
    t.start()
    try:
        rc = p.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        p.kill()
        rc = "timeout"
        p.wait()
    t.join()
    with open(log_path, "w") as f:
        f.write(" ".join(cmd) + "\n" + "".join(out))
    return rc, "".join(out)


def quant_flags(q, model):
    return {"bf16": [], "int8": ["--quantization", "int8"],
            "int8-kept": ["--quantization", "int8", "--ignored-layers", MODELS[model]["kept"]],
            "int8-fp8": ["--quantization", "int8", "--fp8-attention"],
            "int8-modgpu": ["--quantization", "int8", "--offload", "none"]}[q]


# Rows of generate only (a flag that `serve` does not take): one image, no warm time.
GENERATE_ONLY = {"int8-offload": ["--quantization", "int8", "--offload", "text-encoder"],
                 "int8-tiled": ["--quantization", "int8", "--vae-tiling"]}
# Rows of one model only, by name (as in the table).
ROW_MODEL = {"qdit int8, modulation on the GPU": "qwen-image", "qdit int8, VAE tiled": "qwen-image"}


def sampling_flags(model):
    if model == "qwen-image":
        return ["--true-cfg-scale", str(MODELS[model]["true_cfg"]), "--negative-prompt", NEGATIVE]
    return []


def qdit_generate(binary, model, d, noise, png, q, timeout):
    cmd = [binary, "generate", "--model", d, "--device", DEVICE, "--prompt", PROMPT, "--width", str(SIZE),
           "--height", str(SIZE), "--steps", str(steps(model)), "--latents", noise, "-o", png, "--verbose"]
    cmd += sampling_flags(model) + (GENERATE_ONLY[q] if q in GENERATE_ONLY else quant_flags(q, model))
    rc, text = watch(cmd, png[:-4] + ".generate.log", timeout)
    if rc != 0:
        return dict(rc=rc)
    return dict(rc=0, load_s=num(r"time: load ([\d.]+) s", text), first_image_s=sum(
                    num(p, text) or 0 for p in (r"text encoder ([\d.]+) s", r"denoise ([\d.]+) s \(",
                                                r"vae ([\d.]+) s")),
                weights_gib=num(r"GPU[^:]*: weights ([\d.]+) GiB", text),
                activations_gib=num(r"activations ([\d.]+) GiB \(peak\)", text),
                peak_gib=num(r"GPU[^:]*: weights .*, peak ([\d.]+) GiB", text),
                host_peak_gib=num(r"peak memory ([\d.]+) GiB", text))


def post(port, body, timeout):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/v1/images/generations", body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def qdit_serve(binary, model, d, log_path, q, timeout):
    """Two requests to one `qdit serve`: (the server's time for the second image s, its load s); None for the
    time when something failed."""
    import http.client
    end = time.time() + timeout
    cmd = [binary, "serve", "--model", d, "--device", DEVICE, "--host", "127.0.0.1", "--port", "0"]
    cmd += quant_flags(q, model)
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, ready = [], threading.Event()

    def reader():
        for line in p.stdout:
            out.append(line)
            sys.stdout.write("    " + line)
            if "; ready" in line:
                ready.set()
        ready.set()  # exited before it was ready

    t = threading.Thread(target=reader)
    t.start()
    error = None
    body = dict(prompt=PROMPT, size=f"{SIZE}x{SIZE}", num_inference_steps=steps(model), seed=0)
    if model == "qwen-image":
        body.update(negative_prompt=NEGATIVE, true_cfg_scale=MODELS[model]["true_cfg"])
    if not ready.wait(max(end - time.time(), 1)) or p.poll() is not None:
        error = "the server did not become ready"
    else:
        port = int(re.search(r"listening on http://127\.0\.0\.1:(\d+)", "".join(out)).group(1))
        # The "ready" line comes just before /health reports ok: wait for that too.
        while time.time() < end and p.poll() is None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        for i in range(2):
            try:
                status, reply = post(port, body, max(end - time.time(), 1))
            except (OSError, http.client.HTTPException) as e:
                error = f"request {i + 1}: {e}"
                break
            if status != 200:
                error = f"request {i + 1}: HTTP {status} {reply[:200]!r}"
                break
    if error:
        p.kill()  # a request may still run (stopped at the deadline)
    else:
        p.terminate()  # SIGTERM: nothing left to finish, the server exits
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    t.join()
    text = "".join(out)
    with open(log_path, "w") as f:
        f.write(" ".join(cmd) + "\n" + text)
    times = [float(x) for x in re.findall(r" done \(1 image\(s\).* in ([\d.]+) s", text)]
    if error or len(times) < 2:
        log(f"qdit serve: {error or 'no time for the second image'} (see {log_path})")
        return None, None
    return times[1], num(r"loaded in ([\d.]+) s", text)


def diffusers_child(model, d, noise_path, png, compile_):
    import torch
    from safetensors.torch import load_file
    cuda = DEVICE == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if model == "qwen-image":
        from diffusers import QwenImagePipeline as Pipe
    else:
        from diffusers import ZImagePipeline as Pipe
    t0 = time.perf_counter()  # the load, without the imports (as bench/cold_start)
    pipe = Pipe.from_pretrained(d, torch_dtype=torch.bfloat16).to(DEVICE)
    sync()
    load_s = time.perf_counter() - t0
    weights = torch.cuda.memory_allocated() / GIB if cuda else None
    pipe.set_progress_bar_config(disable=True)
    if compile_:
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
    noise = load_file(noise_path)["latents"].to(DEVICE, torch.bfloat16)
    if model == "qwen-image":
        c, h, w = noise.shape[1:]
        noise = Pipe._pack_latents(noise.reshape(1, 1, c, h, w), 1, c, h, w)
        kw = dict(negative_prompt=NEGATIVE, true_cfg_scale=MODELS[model]["true_cfg"])
    else:
        kw = dict(guidance_scale=0.0)

    def image():
        return pipe(PROMPT, height=SIZE, width=SIZE, num_inference_steps=steps(model), latents=noise.clone(),
                    **kw).images[0]

    t1 = time.perf_counter()
    image()
    sync()
    warmup_s = time.perf_counter() - t1
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t2 = time.perf_counter()
    img = image()
    sync()
    image_s = time.perf_counter() - t2
    peak = torch.cuda.max_memory_allocated() / GIB if cuda else None
    img.save(png)
    print("RESULT " + json.dumps(dict(load_s=load_s, warmup_s=warmup_s, image_s=image_s, weights_gib=weights,
                                      peak_gib=peak, activations_gib=None if peak is None else peak - weights)),
          flush=True)


# ------------------------------------------------------------------------------------------ run

def psnr(a_png, b_png):
    import numpy as np
    from PIL import Image
    a = np.asarray(Image.open(a_png).convert("RGB"), dtype=np.float64)
    b = np.asarray(Image.open(b_png).convert("RGB"), dtype=np.float64)
    if a.shape != b.shape:
        return None
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def environment():
    """Versions and the device's name, without starting CUDA in this process (its memory is the rows')."""
    env = dict(device=DEVICE, size=SIZE, smoke=SMOKE)
    try:
        import diffusers
        import torch
        env.update(torch=torch.__version__, diffusers=diffusers.__version__)
    except Exception as e:  # the qdit rows still run
        env["import_error"] = str(e)
    try:
        if DEVICE == "cuda":
            env["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", "0"],
                                        capture_output=True, text=True, check=True).stdout.strip()
        else:
            env["gpu"] = "CPU: " + re.search(r"model name\s*:\s*(.*)", open("/proc/cpuinfo").read()).group(1)
    except (OSError, AttributeError, subprocess.CalledProcessError):
        pass
    return env


def run(model, root, binary, out):
    d = os.path.join(root, model)
    os.makedirs(root, exist_ok=True)
    for other in MODELS:
        if other != model and os.path.exists(os.path.join(root, other)):
            log(f"deleting {os.path.join(root, other)} (the disk holds one pipeline folder)")
            shutil.rmtree(os.path.join(root, other))
    deadline = float(os.environ.get("DEADLINE_EPOCH", time.time() + 7 * 86400))
    row_s = float(os.environ.get("ROW_S", 0 if SMOKE else MODELS[model]["row_s"]))
    if not os.path.exists(os.path.join(d, ".complete")):
        # A child process, so that the GPU memory the writer used is returned before qdit runs.
        rc, _ = watch([sys.executable, os.path.abspath(__file__), "write", model, d], d + ".write.log",
                      deadline - time.time())
        if rc != 0:
            log(f"writing {d} failed ({rc}; see {d}.write.log)")
            return 1
    res_path = os.path.join(root, f"results-{model}.json")
    res = json.load(open(res_path)) if os.path.exists(res_path) else dict(rows={})
    res["env"] = environment()
    res["env"].update(model=model, steps=steps(model), folder_gb=float(open(os.path.join(d, ".complete")).read()) / 1e9)
    imgs = os.path.join(root, f"images-{model}")
    os.makedirs(imgs, exist_ok=True)
    noise = os.path.join(imgs, "noise.safetensors")
    if not os.path.exists(noise):
        write_noise(model, d, noise)
    kept = MODELS[model]["kept"]
    plan = [("qdit bf16", "qdit", "bf16"), ("qdit int8", "qdit", "int8"), (f"qdit int8, {kept} kept", "qdit", "int8-kept"),
            ("diffusers bf16 eager", "diffusers", False), ("diffusers bf16 compiled", "diffusers", True),
            ("qdit int8, FP8 attention", "qdit", "int8-fp8"), ("qdit int8, text encoder offloaded", "qdit", "int8-offload"),
            ("qdit int8, modulation on the GPU", "qdit", "int8-modgpu"), ("qdit int8, VAE tiled", "qdit", "int8-tiled")]
    names = {name for name, _, _ in plan}
    plan = [row for row in plan if ROW_MODEL.get(row[0], model) == model]
    failed = False
    only = set(r.strip() for r in os.environ["ROWS"].split(";")) if os.environ.get("ROWS") else None
    if only and only - names:
        log(f"ROWS names no row: {sorted(only - names)}")
        return 1
    for name, engine, arg in plan:
        if name in res["rows"]:
            log(f"{name}: done earlier")
            continue
        if only and name not in only:
            log(f"{name}: not in ROWS")
            continue
        left = deadline - time.time()
        if left < row_s:
            log(f"{name}: not started ({left:.0f} s left before the deadline, a row needs {row_s:.0f} s)")
            continue
        if arg == "int8-fp8" and DEVICE == "cpu":
            log(f"{name}: skipped (FP8 attention runs on a GPU)")
            continue
        log(name)
        tag = re.sub(r"[^a-z0-9]+", "_", name.lower())
        png = os.path.join(imgs, tag + ".png")
        if engine == "qdit":
            row = qdit_generate(binary, model, d, noise, png, arg, deadline - time.time())
            if row["rc"] == 0 and arg not in GENERATE_ONLY:
                row["image_s"], row["serve_load_s"] = qdit_serve(binary, model, d, os.path.join(imgs, tag + ".serve.log"),
                                                                 arg, deadline - time.time())
                if row["image_s"] is None:
                    row["rc"] = "serve"
        else:
            cmd = [sys.executable, os.path.abspath(__file__), "diffusers", model, d, noise, png, "1" if arg else "0"]
            rc, text = watch(cmd, os.path.join(imgs, tag + ".log"), deadline - time.time())
            m = re.search(r"^RESULT (\{.*\})$", text, re.M)
            row = dict(rc=rc, **(json.loads(m.group(1)) if rc == 0 and m else {}))
        if row["rc"] != 0:
            log(f"{name}: failed ({row['rc']}; logs in {imgs}); not recorded")
            failed = True
            continue
        row.update(engine=engine, png=png)
        res["rows"][name] = row
        with open(res_path, "w") as f:
            json.dump(res, f, indent=1)
    with open(res_path, "w") as f:
        json.dump(res, f, indent=1)
    table(root, out)
    for name, _, _ in plan:
        if name in res["rows"]:
            shutil.copy(res["rows"][name]["png"], os.path.join(out, f"{model}-{os.path.basename(res['rows'][name]['png'])}"))
    return 1 if failed else 0


def fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def model_table(res):
    env, rows = res["env"], res["rows"]
    title = MODELS[env["model"]]["title"]
    cfg = f", true CFG {MODELS[env['model']]['true_cfg']}" if MODELS[env["model"]]["true_cfg"] else ""
    ref = rows.get("qdit bf16")
    base_t = rows.get("diffusers bf16 compiled", {}).get("image_s")
    base_m = rows.get("diffusers bf16 eager", {}).get("peak_gib")
    lines = [f"### {title}, {env['size']}x{env['size']}, {env['steps']} steps{cfg}",
             "",
             f"{env.get('gpu', '?')}; torch {env.get('torch', '?')}, diffusers {env.get('diffusers', '?')}; pipeline "
             f"folder {env['folder_gb']:.1f} GB of random bf16 weights{' (SMOKE: reduced models)' if env['smoke'] else ''}.",
             "",
             "| run | time / image s (warm) | speedup vs diffusers compiled | load s | weights GiB | activations GiB "
             "| peak GPU GiB | peak vs diffusers bf16 | PSNR vs qdit bf16 dB |",
             "|---|---|---|---|---|---|---|---|---|"]
    order = ["qdit bf16", "qdit int8", f"qdit int8, {MODELS[env['model']]['kept']} kept", "qdit int8, FP8 attention",
             "qdit int8, text encoder offloaded", "qdit int8, modulation on the GPU", "qdit int8, VAE tiled",
             "diffusers bf16 eager", "diffusers bf16 compiled"]
    for name in order:
        if ROW_MODEL.get(name, env["model"]) != env["model"]:
            continue
        r = rows.get(name)
        if r is None:
            lines.append(f"| {name} | not measured |||||||| ")
            continue
        p = psnr(r["png"], ref["png"]) if ref and os.path.exists(r["png"]) and os.path.exists(ref["png"]) else None
        lines.append("| " + " | ".join([
            name, fmt(r.get("image_s")),
            fmt(base_t / r["image_s"]) + "x" if base_t and r.get("image_s") else "-",
            fmt(r.get("load_s")), fmt(r.get("weights_gib")), fmt(r.get("activations_gib")), fmt(r.get("peak_gib")),
            fmt(r["peak_gib"] / base_m) + "x" if base_m and r.get("peak_gib") else "-",
            "identical" if p == math.inf else fmt(p, ".1f")]) + " |")
    return lines


NOTES = ("Time per image: qdit = the second request to one `qdit serve` process (the server's time for the job, "
         "PNG encoding included); diffusers = the second pipe() call in its process (PIL image out), after one "
         "warm-up image (the compile happens there). Load: qdit's `generate` summary (pipeline construction, weights "
         "read, converted and quantized); diffusers' from_pretrained + .to(device). Memory: qdit's `generate` summary "
         "(weights held, activations' peak, peak); diffusers' torch.cuda.memory_allocated after loading and "
         "max_memory_allocated during the timed image. Peak vs diffusers bf16: the row's peak over diffusers' eager "
         "peak. PSNR: the image against qdit bf16's, every row made from the same injected initial noise (qdit "
         "--latents, diffusers latents=), same prompt and steps; random weights, so the images are noise and the "
         "PSNR measures how far each path's arithmetic drifts from qdit bf16's. FP8 attention: `--fp8-attention`. Text "
         "encoder offloaded: `--offload text-encoder`, measured with `generate` only, so that row has no warm time (its "
         "memory is the one-image run's). Qwen-Image keeps its modulation weights in host memory by default; "
         "modulation on the GPU: `--offload none`; VAE tiled: `--vae-tiling`, a `generate` flag only (no warm time).")


def table(root, out):
    parts = []
    for model in MODELS:
        path = os.path.join(root, f"results-{model}.json")
        if not os.path.exists(path):
            continue
        lines = model_table(json.load(open(path)))
        with open(os.path.join(out, f"table-{model}.md"), "w") as f:
            f.write("\n".join(lines + ["", NOTES]) + "\n")
        shutil.copy(path, out)
        parts += lines + [""]
    text = "\n".join(parts + [NOTES]) + "\n"
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) == 5 and a[0] == "run" and a[1] in MODELS:
        os.makedirs(a[4], exist_ok=True)
        sys.exit(run(a[1], a[2], a[3], a[4]))
    elif len(a) == 3 and a[0] == "write" and a[1] in MODELS:
        write(a[1], a[2])
    elif len(a) == 6 and a[0] == "diffusers" and a[1] in MODELS:
        diffusers_child(a[1], a[2], a[3], a[4], a[5] == "1")
    elif len(a) == 3 and a[0] == "table":
        os.makedirs(a[2], exist_ok=True)
        table(a[1], a[2])
    else:
        sys.exit(__doc__)
