#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (tests/fuzz/corpus/<target>/) from the
test fixtures in tests/data, each seed a few KB at most. Run from the repository
root; the output is committed, so CI needs no Python."""
import json
import os
import shutil
import struct

DATA = "tests/data"
OUT = "tests/fuzz/corpus"


def write(target, name, data):
    os.makedirs(os.path.join(OUT, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(OUT, target, name), "wb") as f:
        f.write(data)


def safetensors(header, data):
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def safetensors_seeds():
    # The header of a real fixture checkpoint with its data region cut to the first tensors.
    path = f"{DATA}/qwen3/model_bias_bf16/text_encoder/model.safetensors"
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    tensors = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    kept, end = {}, 0
    for k in tensors:
        b, e = header[k]["data_offsets"]
        if e - b > 512 or len(kept) == 6:
            continue
        kept[k] = dict(header[k], data_offsets=[end, end + e - b])
        end += e - b
    blob = b"".join(data[header[k]["data_offsets"][0]:header[k]["data_offsets"][1]] for k in kept)
    kept["__metadata__"] = header.get("__metadata__", {"format": "pt"})
    write("fuzz_safetensors", "fixture_subset.safetensors", safetensors(kept, blob))
    # One tensor of every dtype the reader knows, and the empty cases.
    dtypes = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "F8_E4M3": 1}
    header, off = {}, 0
    for i, (dt, size) in enumerate(dtypes.items()):
        header[f"t{i}"] = {"dtype": dt, "shape": [2, 1], "data_offsets": [off, off + 2 * size]}
        off += 2 * size
    header["empty"] = {"dtype": "F32", "shape": [0, 3], "data_offsets": [off, off]}
    write("fuzz_safetensors", "all_dtypes.safetensors", safetensors(header, bytes(range(off))))
    write("fuzz_safetensors", "no_tensors.safetensors", safetensors({}, b""))


def index_seeds():
    weight_map = {"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"}
    write("fuzz_safetensors_index", "index.json",
          json.dumps({"metadata": {"total_size": 56}, "weight_map": weight_map}, indent=2))
    with open(f"{DATA}/zimage/h2_l3_sharded/transformer/diffusion_pytorch_model.safetensors.index.json") as f:
        real = json.load(f)
    first = dict(list(real["weight_map"].items())[:12])
    write("fuzz_safetensors_index", "fixture_subset.json",
          json.dumps({"metadata": real["metadata"], "weight_map": first}, indent=2))


def config_seeds():
    for src, name in [
        ("zimage/h3_b1/transformer/config.json", "zimage_h3_b1.json"),
        ("zimage/published/config.json", "zimage_published.json"),
        ("qwen3/causal_lm/text_encoder/config.json", "qwen3_causal_lm.json"),
        ("qwen3/published/config.json", "qwen3_published.json"),
        ("vae/vae/config.json", "vae.json"),
        ("vae/published/config.json", "vae_published.json"),
        ("pipeline/scheduler/scheduler_config.json", "scheduler.json"),
    ]:
        shutil.copyfile(f"{DATA}/{src}", os.path.join(OUT, "fuzz_model_config", name))
    write("fuzz_model_config", "quantization.json",
          json.dumps({"method": "int8", "ignored_layers": ["layers.0", "feed_forward"],
                      "activation_scheme": "dynamic"}))


def tokenizer_seeds():
    # The fixture tokenizer cut to its 256 byte tokens, the merges among them and a few
    # added tokens: the same pipeline (NFC, split regex, byte level) in a couple of KB.
    with open(f"{DATA}/text/tokenizer/tokenizer.json") as f:
        tok = json.load(f)
    vocab = tok["model"]["vocab"]
    kept = {t: i for t, i in vocab.items() if len(t) == 1}
    for a, b in tok["model"]["merges"]:
        if len(kept) >= 280:
            break
        if a in kept and b in kept and a + b in vocab:
            kept[a + b] = vocab[a + b]
    ids = {t: i for i, t in enumerate(sorted(kept, key=kept.get))}
    merges = [[a, b] for a, b in tok["model"]["merges"] if a in ids and b in ids and a + b in ids]
    tok["model"]["vocab"], tok["model"]["merges"] = ids, merges
    added = [t for t in tok["added_tokens"] if t["content"] in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")]
    for k, t in enumerate(added):
        t["id"] = len(ids) + k
    tok["added_tokens"] = added
    write("fuzz_tokenizer_json", "byte_level.json", json.dumps(tok, ensure_ascii=False, separators=(",", ":")))
    write("fuzz_tokenizer_json", "string_merges.json",
          json.dumps(dict(tok, model=dict(tok["model"], merges=[f"{a} {b}" for a, b in merges[:8]])),
                     ensure_ascii=False, separators=(",", ":")))

    with open(f"{DATA}/text/tokenizer_reference.json") as f:
        ref = json.load(f)
    for case in ref["prompts"]:
        write("fuzz_tokenizer_encode", case["name"] + ".txt", case["prompt"])
    write("fuzz_tokenizer_encode", "chat.txt", "<|im_start|>user\na red fox<|im_end|>\n<|im_start|>assistant\n")


def serve_request_seeds():
    # Bodies of POST /v1/images/generations: what the OpenAI client sends, every field of the
    # reference server, and one of each kind of refusal (the server tests' cases).
    good = {"prompt": "a cat", "size": "64x64", "num_inference_steps": 1}
    bodies = {
        "openai_client": {"prompt": "a red fox", "model": "tiny-zimage-v1", "n": 1, "size": "1024x1024",
                          "response_format": "b64_json"},
        "minimal": {"prompt": "x"},
        "good": good,
        "all_fields": {"prompt": "a lighthouse at dusk", "negative_prompt": "blurry", "model": "tiny-zimage-v1",
                       "n": 2, "size": "512x768", "response_format": "b64_json", "output_format": "png",
                       "user": "u-1", "num_inference_steps": 8, "guidance_scale": 4.5, "true_cfg_scale": 1.0,
                       "seed": 42, "max_sequence_length": 1024},
        "nulls": {"prompt": "a cat", "negative_prompt": None, "n": None, "size": None, "seed": None,
                  "guidance_scale": None},
        "size_auto": {"prompt": "a cat", "size": "auto"},
        "limit_work": dict(good, n=10, num_inference_steps=200, size="2048x2048"),
        "limit_seed": dict(good, seed=2 ** 63 - 1),
        "bad_seed": dict(good, seed=2 ** 64 - 1),
        "bad_steps": dict(good, num_inference_steps=10 ** 30),
        "bad_n": dict(good, n=1.5),
        "bad_size": dict(good, size="64x65"),
        "bad_guidance": dict(good, guidance_scale=-1),
        "bad_true_cfg": dict(good, true_cfg_scale=4.0),
        "bad_model": dict(good, model="gpt-image-1"),
        "bad_format": dict(good, response_format="url"),
        "unknown_field": dict(good, colour="red"),
        "unicode": {"prompt": "一只猫 🐈 über café", "negative_prompt": "\u0000"},
    }
    for name, body in bodies.items():
        write("fuzz_serve_request", name + ".json", json.dumps(body, ensure_ascii=False))
    write("fuzz_serve_request", "not_object.json", "[1, 2]")
    write("fuzz_serve_request", "malformed.json", '{"prompt": "x",}')


if __name__ == "__main__":
    # Seeds written here replace their earlier versions; the others (inputs the fuzzers found,
    # written by hand) stay.
    os.makedirs(os.path.join(OUT, "fuzz_model_config"), exist_ok=True)
    safetensors_seeds()
    index_seeds()
    config_seeds()
    tokenizer_seeds()
    serve_request_seeds()
