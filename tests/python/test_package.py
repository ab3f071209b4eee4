"""The Python package (pip install .): qdit.Pipeline against `qdit generate`."""
import json
import subprocess
import threading

import pytest
from PIL import Image

import qdit
from conftest import QDIT, ROOT, cli_image


@pytest.fixture(scope="module")
def pipe():
    return qdit.Pipeline()


def test_image_equals_the_cli_for_the_same_seed(pipe, tmp_path):
    img = pipe.generate("a red fox", width=64, height=64, steps=2, seed=5)
    ref = cli_image(tmp_path, seed=5)
    assert img.size == (64, 64) and img.mode == "RGB"
    assert img.tobytes() == ref.tobytes()
    assert img.info["seed"] == "5" and img.info["prompt"] == "a red fox" and img.info["quantization"] == "none"
    other = pipe.generate("a red fox", width=64, height=64, steps=2, seed=6)
    assert other.tobytes() != img.tobytes()
    saved = tmp_path / "saved.png"
    img.save(saved, pnginfo=qdit.png_info(img))
    assert Image.open(saved).text["seed"] == "5"


def test_quantization_config_dict(tmp_path):
    config = {"method": "int8", "ignored_layers": ["layers.0"], "activation_scheme": "dynamic"}
    p = qdit.Pipeline(quantization_config=config)
    whole = qdit.Pipeline(quantization="int8")
    assert p.quantization == "int8" and 0 < p.transformer_int8_layers < whole.transformer_int8_layers
    img = p.generate("a red fox", width=64, height=64, steps=2, seed=5)
    ref = cli_image(tmp_path, seed=5, extra=["--quantization-config", json.dumps(config)])
    assert img.tobytes() == ref.tobytes()
    assert img.info["quantization"] == "int8"


@pytest.mark.parametrize("kwargs,field", [
    ({"quantization_config": {"method": "int8", "bogus": 1}}, "bogus"),
    ({"quantization_config": {"method": "int9"}}, "int9"),
    ({"quantization_config": {"method": "int8", "ignored_layers": "layers.0"}}, "ignored_layers"),
    ({"quantization_config": {"method": "int8", "activation_scheme": "static"}}, "activation_scheme"),
    ({"quantization": "int3"}, "quantization"),
    ({"device": "gpu"}, "device"),
])
def test_bad_config_raises_value_error_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field) as e:
        qdit.Pipeline(**kwargs)
    assert "--" not in str(e.value)  # Python's argument names, not the command line's


def test_cuda_in_the_cpu_only_wheel_is_value_error():
    with pytest.raises(ValueError, match="without the CUDA backend.*device cuda"):
        qdit.Pipeline(device="cuda")


def test_missing_model_folder_is_os_error(tmp_path):
    with pytest.raises(OSError, match="no-model"):
        qdit.Pipeline(model=str(tmp_path / "no-model"))


@pytest.mark.parametrize("kwargs,field", [
    ({"width": 65}, "width"),
    ({"steps": 0}, "steps"),
    ({"guidance": -1.0}, "guidance"),
    ({"true_cfg_scale": 4.0}, "true_cfg_scale"),
    ({"seed": -3}, "seed"),
    # The bounds and model checks qdit generate makes, named as Python's arguments.
    ({"steps": 1001}, "steps"),
    ({"width": 16400}, "width"),
    ({"height": 8208}, "height"),  # past the tiny transformer's RoPE table (axes_lens[1] = 512)
    ({"max_sequence_length": 0}, "max_sequence_length"),
    ({"max_sequence_length": 4097}, "max_sequence_length"),
])
def test_bad_generate_arguments_raise_value_error(pipe, kwargs, field):
    with pytest.raises(ValueError, match=field) as e:
        pipe.generate("x", **{"width": 64, "height": 64, "steps": 1, **kwargs})
    assert "--" not in str(e.value)


def test_prompt_past_the_rope_table_raises_value_error(pipe):
    # The tiny transformer's axes_lens[0] = 1536 holds 1504 caption tokens.
    with pytest.raises(ValueError, match="the prompt is .* tokens.*max_sequence_length") as e:
        pipe.generate("cat " * 2000, width=64, height=64, steps=1, max_sequence_length=4096)
    assert "--" not in str(e.value)


def test_progress_is_called_after_every_step_and_can_stop(pipe):
    calls = []
    pipe.generate("x", width=64, height=64, steps=3, progress=lambda k, n: calls.append((k, n)))
    assert calls == [(1, 3), (2, 3), (3, 3)]

    def stop(k, n):
        if k == 2:
            raise KeyboardInterrupt("stopped by the caller")

    with pytest.raises(KeyboardInterrupt, match="stopped by the caller"):
        pipe.generate("x", width=64, height=64, steps=5, progress=stop)
    assert pipe.generate("x", width=64, height=64, steps=1).size == (64, 64)  # still usable


def test_gil_is_released_while_generating(pipe):
    done = threading.Event()
    result = []

    def run():
        try:
            result.append(pipe.generate("x", width=256, height=256, steps=4))
        finally:
            done.set()

    t = threading.Thread(target=run)
    t.start()
    spins = 0
    while not done.wait(0) and spins < 10**9:
        spins += 1
    t.join()
    assert result and result[0].size == (256, 256)
    # Holding the GIL, the generation would let this loop run only between its own bytecodes.
    assert spins > 10000


QWEN = str(ROOT / "tests" / "data" / "qwen_image_pipeline")


@pytest.fixture(scope="module")
def qwen_pipe():
    return qdit.Pipeline(model=QWEN, device="cpu")


def test_device_defaults_to_the_cpu_without_a_gpu(pipe):
    assert pipe.device == "cpu"  # the wheel is built without the CUDA backend
    assert pipe.pipeline == "ZImagePipeline"


def test_qwen_image_folder_gives_the_cli_images(qwen_pipe, tmp_path):
    """model_index.json picks the Qwen-Image pipeline; true_cfg_scale and negative_prompt reach it."""
    assert qwen_pipe.pipeline == "QwenImagePipeline"
    for kwargs, cli in [({"negative_prompt": " ", "true_cfg_scale": 3.0}, ["--negative-prompt", " ", "--true-cfg-scale", "3"]),
                        ({"negative_prompt": ""}, ["--negative-prompt", ""]),
                        ({}, [])]:
        img = qwen_pipe.generate("a red fox", width=64, height=64, steps=2, seed=5, **kwargs)
        out = tmp_path / "cli.png"
        subprocess.run([QDIT, "generate", "--model", QWEN, "--device", "cpu", "--prompt", "a red fox", "--width",
                        "64", "--height", "64", "--steps", "2", "--seed", "5", "-o", str(out), *cli],
                       check=True, capture_output=True, timeout=300)
        ref = Image.open(out)
        assert img.tobytes() == ref.tobytes(), kwargs
        assert img.info["true_cfg_scale"] == ref.text["true_cfg_scale"]
        assert img.info.get("negative_prompt") == ref.text.get("negative_prompt")
        assert "guidance" not in img.info
    assert img.info["true_cfg_scale"] == "4 (off)"


@pytest.mark.parametrize("kwargs,field", [
    ({"guidance": 2.0}, "guidance"),
    ({"true_cfg_scale": -1.0}, "true_cfg_scale"),
    ({"max_sequence_length": 1025}, "max_sequence_length"),
    ({"width": 72}, "width"),
])
def test_bad_qwen_image_arguments_raise_value_error(qwen_pipe, kwargs, field):
    with pytest.raises(ValueError, match=field) as e:
        qwen_pipe.generate("x", **{"width": 64, "height": 64, "steps": 1, **kwargs})
    assert "--" not in str(e.value)
