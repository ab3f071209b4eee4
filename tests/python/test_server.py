"""`qdit serve` with the built-in tiny model, through OpenAI's Python client and raw HTTP."""
import signal
import subprocess
import threading
import time

import openai
import pytest

from PIL import Image

from conftest import QDIT, ROOT, TINY, Server, cli_image, decode_png

# A job long enough to cancel, queue behind or interrupt (several seconds on the tiny model).
SLOW = {"prompt": "slow", "size": "512x512", "num_inference_steps": 200, "seed": 1}


def client(server, key="secret-key"):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key=key, max_retries=0, timeout=120)


def test_openai_client_generates_the_cli_images(server, tmp_path):
    r = client(server).images.generate(model=TINY, prompt="a red fox", n=2, size="64x64",
                                       response_format="b64_json",
                                       extra_body={"num_inference_steps": 2, "seed": 7})
    assert len(r.data) == 2
    for i, item in enumerate(r.data):
        img = decode_png(item.b64_json)
        assert img.size == (64, 64) and img.mode == "RGB"
        ref = cli_image(tmp_path, seed=7 + i)
        assert img.tobytes() == ref.tobytes(), f"image {i} differs from qdit generate --seed {7 + i}"
        text = dict(img.text)
        for key in ("prompt", "seed", "steps", "size", "guidance", "quantization", "device", "software"):
            assert text[key] == ref.text[key], key
        assert text["seed"] == str(7 + i) and text["steps"] == "2" and text["size"] == "64x64"
    assert r.size == "64x64" and r.output_format == "png"


def test_openai_client_defaults_and_seedless_requests(server):
    r = client(server).images.generate(prompt="a cat", size="64x64", extra_body={"num_inference_steps": 1})
    assert len(r.data) == 1
    seed = r.data[0].model_dump()["seed"]  # chosen by the server, reported per image
    assert isinstance(seed, int)
    assert decode_png(r.data[0].b64_json).text["seed"] == str(seed)


def test_models_health_and_openai_model_list(server):
    status, _, body = server.request("GET", "/v1/models")
    assert status == 200 and body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [TINY]
    assert [m.id for m in client(server).models.list()] == [TINY]
    status, _, body = server.request("GET", "/health")  # no key needed
    assert status == 200 and body["status"] == "ok" and body["model"] == TINY


@pytest.mark.parametrize("key,status", [(None, 401), ("wrong", 401), ("secret-key", 200)])
def test_api_key(server, key, status):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    code, _, body = server.request("POST", "/v1/images/generations",
                                   {"prompt": "x", "size": "64x64", "num_inference_steps": 1}, headers)
    assert code == status
    if status == 401:
        assert body["error"]["code"] == "invalid_api_key" and body["error"]["message"]
        assert server.request("GET", "/metrics", headers=headers)[0] == 401


def test_openai_client_wrong_key_is_an_authentication_error(server):
    with pytest.raises(openai.AuthenticationError):
        client(server, key="nope").images.generate(prompt="x", size="64x64")


GOOD = {"prompt": "a cat", "size": "64x64", "num_inference_steps": 1}


@pytest.mark.parametrize("change,param", [
    ({"prompt": None}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "p" * 9000}, "prompt"),
    ({"negative_prompt": ["x"]}, "negative_prompt"),
    ({"n": 0}, "n"),
    ({"n": 11}, "n"),
    ({"n": "2"}, "n"),
    ({"n": 1.5}, "n"),
    ({"n": True}, "n"),
    ({"size": "64"}, "size"),
    ({"size": "64x65"}, "size"),
    ({"size": "0x64"}, "size"),
    ({"size": "4096x4096"}, "size"),
    ({"size": 64}, "size"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"num_inference_steps": 10 ** 9}, "num_inference_steps"),
    ({"num_inference_steps": 10 ** 30}, "num_inference_steps"),
    ({"num_inference_steps": "2"}, "num_inference_steps"),
    ({"guidance_scale": "high"}, "guidance_scale"),
    ({"guidance_scale": -1}, "guidance_scale"),
    ({"true_cfg_scale": 4.0}, "true_cfg_scale"),
    ({"seed": -1}, "seed"),
    ({"seed": "1"}, "seed"),
    ({"response_format": "url"}, "response_format"),
    ({"output_format": "jpeg"}, "output_format"),
    ({"colour": "red"}, "colour"),
    ({"n": 10, "num_inference_steps": 200, "size": "2048x2048"}, "n"),
    ({"max_sequence_length": 0}, "max_sequence_length"),
    ({"max_sequence_length": 4097}, "max_sequence_length"),
    # past the tiny transformer's RoPE table (axes_lens[0] = 1536: 1504 caption tokens)
    ({"prompt": "cat " * 2000, "max_sequence_length": 4096}, "prompt"),
])
@pytest.mark.parametrize("path", ["/v1/images/generations", "/v1/jobs"])
def test_bad_fields_are_400_naming_the_field(server, change, param, path):
    body = {**GOOD, **change}
    body = {k: v for k, v in body.items() if not (k == "prompt" and v is None)}
    status, _, reply = server.request("POST", path, body)
    assert status == 400, reply
    err = reply["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error"
    assert f"'{param}'" in err["message"]


def test_true_cfg_scale_default_is_accepted(server):
    status, _, reply = server.request("POST", "/v1/images/generations", {**GOOD, "true_cfg_scale": 1.0})
    assert status == 200, reply


def test_unknown_model_is_404(server):
    status, _, reply = server.request("POST", "/v1/images/generations", {**GOOD, "model": "gpt-image-1"})
    assert status == 404 and reply["error"]["param"] == "model" and reply["error"]["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client(server).images.generate(model="dall-e-3", prompt="x")


@pytest.mark.parametrize("body", ["{", "not json", '{"prompt": "x",}', ""])
def test_malformed_json_is_400(server, body):
    status, _, reply = server.request("POST", "/v1/images/generations", body, {**server.auth, "Content-Type": "application/json"})
    assert status == 400 and "JSON" in reply["error"]["message"] and reply["error"]["param"] is None


@pytest.mark.parametrize("body", ["[1, 2]", '"prompt"', "42"])
def test_json_that_is_not_an_object_is_400(server, body):
    status, _, reply = server.request("POST", "/v1/jobs", body)
    assert status == 400 and "object" in reply["error"]["message"]


def test_oversize_body_is_413(server):
    body = '{"prompt": "' + "a" * (2 << 20) + '"}'
    status, _, reply = server.request("POST", "/v1/images/generations", body)
    assert status == 413 and "too large" in reply["error"]["message"]


def test_unknown_endpoint_is_404_json(server):
    status, _, reply = server.request("GET", "/v1/nothing")
    assert status == 404 and "/v1/nothing" in reply["error"]["message"]
    assert server.request("GET", "/v1/jobs/job-0000000000000000")[0] == 404
    assert server.request("DELETE", "/v1/jobs/job-0000000000000000")[0] == 404


def test_async_job_progress_events_and_result(server, tmp_path):
    status, headers, job = server.request("POST", "/v1/jobs", {**GOOD, "n": 2, "num_inference_steps": 3,
                                                                "seed": 11})
    assert status == 202 and job["status"] in ("queued", "running") and job["total_steps"] == 6
    assert headers["Location"] == f"/v1/jobs/{job['id']}"
    events = server.events(job["id"])
    names = [e for e, _ in events]
    assert names[0] == "queued" and names[1] == "running" and names[-1] == "done"
    steps = [d for e, d in events if e == "step"]
    assert [d["step"] for d in steps] == [1, 2, 3, 4, 5, 6]
    assert [d["image"] for d in steps] == [0, 0, 0, 1, 1, 1]
    assert all(d["total_steps"] == 6 and d["seconds"] >= 0 and d["id"] == job["id"] for d in steps)
    done = server.wait_job(job["id"])
    assert done["status"] == "done" and done["step"] == 6
    data = done["result"]["data"]
    assert [d["seed"] for d in data] == [11, 12]
    for i, d in enumerate(data):
        ref = cli_image(tmp_path, seed=11 + i, steps=3, prompt="a cat")
        assert decode_png(d["b64_json"]).tobytes() == ref.tobytes()
    # A finished job's events are replayed to a late subscriber.
    assert [e for e, _ in server.events(job["id"])] == names
    assert server.request("DELETE", f"/v1/jobs/{job['id']}")[0] == 409


def test_cancel_running_and_queued_jobs(server):
    _, _, running = server.request("POST", "/v1/jobs", SLOW)
    _, _, queued = server.request("POST", "/v1/jobs", SLOW)
    server.wait_job(running["id"], states=("running",))
    deadline = time.time() + 60
    while server.request("GET", f"/v1/jobs/{running['id']}")[2]["step"] < 1:
        assert time.time() < deadline
        time.sleep(0.01)
    status, _, reply = server.request("DELETE", f"/v1/jobs/{queued['id']}")
    assert status == 200 and reply["status"] == "cancelled" and reply["step"] == 0
    status, _, reply = server.request("DELETE", f"/v1/jobs/{running['id']}")
    assert status == 200 and reply["cancel_requested"]
    job = server.wait_job(running["id"], timeout=60)
    assert job["status"] == "cancelled" and 1 <= job["step"] < job["total_steps"] and "result" not in job
    events = server.events(running["id"])
    assert events[-1][0] == "cancelled"
    assert len([e for e, _ in events if e == "step"]) == job["step"]
    # Cancelling again is harmless; the worker is free for the next job.
    assert server.request("DELETE", f"/v1/jobs/{running['id']}")[0] == 200
    assert server.request("POST", "/v1/images/generations", GOOD)[0] == 200


def test_full_queue_is_429():
    s = Server("--max-queue", "1")
    try:
        _, _, a = s.request("POST", "/v1/jobs", SLOW)
        s.wait_job(a["id"], states=("running",))
        status, _, b = s.request("POST", "/v1/jobs", SLOW)
        assert status == 202
        status, headers, reply = s.request("POST", "/v1/jobs", SLOW)
        assert status == 429 and reply["error"]["code"] == "queue_full" and headers["Retry-After"] == "1"
        status, _, reply = s.request("POST", "/v1/images/generations", GOOD)
        assert status == 429
        with pytest.raises(openai.RateLimitError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key="x", max_retries=0).images.generate(
                prompt="x", size="64x64")
        for j in (a, b):
            assert s.request("DELETE", f"/v1/jobs/{j['id']}")[0] == 200
        assert s.wait_job(a["id"])["status"] == "cancelled"
        metrics = s.request("GET", "/metrics")[2].decode()
        assert 'qdit_requests_total{endpoint="/v1/jobs",code="429"} 1' in metrics
        assert 'qdit_jobs_total{status="cancelled"} 2' in metrics
    finally:
        assert s.stop() == 0


def test_metrics(server):
    assert server.request("POST", "/v1/images/generations", GOOD)[0] == 200
    status, headers, text = server.request("GET", "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    lines = dict(line.rsplit(" ", 1) for line in text.decode().splitlines() if not line.startswith("#"))
    assert int(lines['qdit_requests_total{endpoint="/v1/images/generations",code="200"}']) >= 1
    assert int(lines['qdit_requests_total{endpoint="/v1/images/generations",code="400"}']) >= 1
    assert lines["qdit_queue_depth"] == "0" and lines["qdit_model_loaded"] == "1"
    assert int(lines["qdit_images_total"]) >= 1
    assert int(lines["qdit_step_seconds_count"]) >= 1 and float(lines["qdit_step_seconds_sum"]) > 0
    assert lines['qdit_step_seconds_bucket{le="+Inf"}'] == lines["qdit_step_seconds_count"]
    assert not any(k.startswith("qdit_gpu") for k in lines)  # no GPU on the CPU device


def test_sigterm_finishes_accepted_jobs_and_exits_0(tmp_path):
    s = Server()
    slow = {**SLOW, "num_inference_steps": 40, "size": "256x256"}
    _, _, job = s.request("POST", "/v1/jobs", slow)
    sync = {}

    def call():
        sync["reply"] = s.request("POST", "/v1/images/generations", {**GOOD, "seed": 3, "num_inference_steps": 2})

    t = threading.Thread(target=call)
    t.start()
    s.wait_job(job["id"], states=("running",))
    deadline = time.time() + 30
    while s.request("GET", "/health")[2]["queued"] < 1:  # the synchronous request waits behind the job
        assert time.time() < deadline and t.is_alive()
        time.sleep(0.01)
    s.proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 30
    while s.request("GET", "/health")[0] != 503:
        assert time.time() < deadline
        time.sleep(0.01)
    status, _, reply = s.request("POST", "/v1/jobs", GOOD)
    assert status == 503 and reply["error"]["code"] == "shutting_down"
    assert s.request("GET", "/health")[2]["status"] == "draining"
    done = s.wait_job(job["id"], timeout=120)
    assert done["status"] == "done" and len(done["result"]["data"]) == 1
    t.join(120)
    status, _, body = sync["reply"]
    assert status == 200
    assert decode_png(body["data"][0]["b64_json"]).tobytes() == cli_image(tmp_path, seed=3, prompt="a cat").tobytes()
    assert s.proc.wait(60) == 0
    assert any("stopped" in line for line in s.lines)


@pytest.mark.parametrize("args,code,message", [
    (["--model", "/no/such/model"], 1, "/no/such/model"),
    (["--max-queue", "0"], 2, "--max-queue"),
    (["--port", "70000"], 2, "--port"),
    (["--device", "tpu"], 2, "--device"),
    (["--quantization", "int4"], 2, "--quantization"),
])
def test_bad_serve_arguments_exit_with_one_error_line(args, code, message):
    r = subprocess.run([QDIT, "serve", "--port", "0", *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == code
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], r.stderr


def test_a_taken_port_is_an_error(server):
    r = subprocess.run([QDIT, "serve", "--port", str(server.port)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and f"cannot listen on 127.0.0.1:{server.port}" in r.stderr


def test_second_signal_cancels_the_accepted_jobs():
    s = Server()
    _, _, running = s.request("POST", "/v1/jobs", SLOW)
    _, _, queued = s.request("POST", "/v1/jobs", SLOW)
    s.wait_job(running["id"], states=("running",))
    s.proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 30
    while not any("shutting down" in line for line in s.lines):
        assert time.time() < deadline
        time.sleep(0.01)
    s.proc.send_signal(signal.SIGINT)
    assert s.wait_job(running["id"], timeout=60)["status"] == "cancelled"
    assert s.wait_job(queued["id"], timeout=60)["status"] == "cancelled"
    assert s.proc.wait(60) == 0
    assert any("second signal" in line for line in s.lines)


# A Qwen-Image folder (the committed tiny fixture): model_index.json makes the server a Qwen-Image one.
QWEN = str(ROOT / "tests" / "data" / "qwen_image_pipeline")


@pytest.fixture(scope="module")
def qwen_server():
    s = Server("--model", QWEN, "--device", "cpu", "--dtype", "f32")
    yield s
    assert s.stop() == 0, "".join(s.lines)


def test_qwen_image_server_gives_the_cli_images(qwen_server, tmp_path):
    """true_cfg_scale and negative_prompt reach the Qwen-Image pipeline: the server's image is the CLI's."""
    assert qwen_server.wait_for_line("(Qwen-Image) loaded"), "".join(qwen_server.lines)
    status, _, body = qwen_server.request("GET", "/v1/models")
    assert status == 200 and [m["id"] for m in body["data"]] == ["qwen_image_pipeline"]
    for extra, cli in [({"negative_prompt": " ", "true_cfg_scale": 3.0}, ["--negative-prompt", " ", "--true-cfg-scale", "3"]),
                       ({}, [])]:
        r = client(qwen_server).images.generate(prompt="a red fox", size="64x64", response_format="b64_json",
                                                extra_body={"num_inference_steps": 2, "seed": 5, **extra})
        img = decode_png(r.data[0].b64_json)
        out = tmp_path / "cli.png"
        subprocess.run([QDIT, "generate", "--model", QWEN, "--device", "cpu", "--dtype", "f32", "--prompt",
                        "a red fox", "--width", "64", "--height", "64", "--steps", "2", "--seed", "5", "-o",
                        str(out), *cli], check=True, capture_output=True, timeout=300)
        ref = Image.open(out)
        assert img.tobytes() == ref.tobytes(), extra
        assert img.text["true_cfg_scale"] == ref.text["true_cfg_scale"]
        assert img.text.get("negative_prompt") == ref.text.get("negative_prompt")
        assert "guidance" not in img.text
    assert img.text["true_cfg_scale"] == "4 (off)"  # the default scale, no negative prompt: no true CFG


@pytest.mark.parametrize("change,param", [
    ({"guidance_scale": 2.0}, "guidance_scale"),
    ({"true_cfg_scale": -1}, "true_cfg_scale"),
    ({"true_cfg_scale": "high"}, "true_cfg_scale"),
    ({"max_sequence_length": 1025}, "max_sequence_length"),
    ({"size": "72x64"}, "size"),
    ({"num_inference_steps": 1}, "num_inference_steps"),  # the scheduler's shift_terminal needs 2
])
def test_qwen_image_bad_fields_are_400_naming_the_field(qwen_server, change, param):
    status, _, reply = qwen_server.request("POST", "/v1/images/generations",
                                           {"prompt": "x", "size": "64x64", "num_inference_steps": 2, **change})
    assert status == 400, reply
    assert reply["error"]["param"] == param and param in reply["error"]["message"], reply
