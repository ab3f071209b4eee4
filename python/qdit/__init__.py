"""qdit: diffusion-transformer text-to-image inference with online W8A8 quantization.

    import qdit
    pipe = qdit.Pipeline()                      # the built-in tiny model; model="DIR" for a real one
    image = pipe.generate("a red fox in the snow", width=256, height=256, steps=4, seed=1)
    image.save("fox.png", pnginfo=qdit.png_info(image))
"""
import json
import warnings

from PIL import Image, PngImagePlugin

from . import _qdit

__all__ = ["Pipeline", "png_info"]


class Pipeline:
    """A Z-Image or Qwen-Image pipeline loaded once (text encoder, transformer, VAE).

    model: a diffusers ZImagePipeline or QwenImagePipeline folder (its
        model_index.json picks the pipeline), or None for the built-in tiny Z-Image
        random-weight model (written once into the cache, ~/.cache/qdit or
        $QDIT_CACHE_DIR).
    quantization: None / "none" or "int8": the transformer's Linear layers.
    quantization_config: a dict such as {"method": "int8", "ignored_layers":
        ["layers.0"], "activation_scheme": "dynamic"}; its method wins over
        `quantization`.
    device: "cpu", "cuda" or "cuda:N" (CUDA needs a build with the CUDA
        backend); None: "cuda" when the build has the CUDA backend and a GPU
        is visible, else "cpu".

    A bad argument raises ValueError naming it; a missing or unreadable model
    folder raises OSError.
    """

    def __init__(self, model=None, quantization=None, quantization_config=None, device=None):
        if quantization_config is not None and not isinstance(quantization_config, dict):
            raise TypeError("quantization_config must be a dict")
        config = json.dumps(quantization_config) if quantization_config is not None else ""
        self._pipe = _qdit.Pipeline(model or "", quantization or "", config, device or "")
        for w in self._pipe.warnings:
            warnings.warn(w, stacklevel=2)

    @property
    def model(self):
        """The model folder in use."""
        return self._pipe.model

    @property
    def quantization(self):
        """The transformer's quantization method: "none" or "int8"."""
        return self._pipe.quantization

    @property
    def transformer_int8_layers(self):
        """How many of the transformer's Linear layers run in int8."""
        return self._pipe.transformer_int8_layers

    @property
    def pipeline(self):
        """The pipeline model_index.json names: "ZImagePipeline" or "QwenImagePipeline"."""
        return self._pipe.pipeline

    @property
    def device(self):
        """The device the models run on: "cpu", "cuda" or "cuda:N"."""
        return self._pipe.device

    def generate(self, prompt, negative_prompt=None, width=1024, height=1024, steps=None, guidance=0.0,
                 true_cfg_scale=None, seed=0, max_sequence_length=512, progress=None):
        """Generates one image and returns it as an RGB PIL image.

        width, height: multiples of 16, at most 16384 (and within the transformer's
            RoPE table). steps: denoising steps, 1 to 1000 (at least 2 when the
            scheduler sets shift_terminal, as Qwen-Image's does); None: 9 for Z-Image
            (Turbo: 8-9), 50 for Qwen-Image.
        guidance: Z-Image's classifier-free guidance, run when > 0 (uses
            negative_prompt); a Qwen-Image pipeline takes only 0.
        true_cfg_scale: Qwen-Image's true CFG (None: 4.0), run when > 1 and a
            negative_prompt is given (even ""); Z-Image has none, so only None or 1.0.
        seed: the initial noise's seed (the same seed gives the same image as
            `qdit generate --seed`).
        max_sequence_length: prompt tokens kept after the chat template, 1 to 4096
            (as `qdit generate --max-sequence-length`); the prompt must also fit the
            transformer's RoPE table.
        progress: called as progress(step, total) after each denoising step; an
            exception it raises stops the generation and propagates.

        The GIL is released while the image is made. image.info holds the
        metadata `qdit generate` writes into its PNG (see png_info).
        """
        qwen = self.pipeline == "QwenImagePipeline"
        if qwen and guidance not in (None, 0):
            raise ValueError("guidance is Z-Image's classifier-free guidance; a Qwen-Image pipeline takes "
                             "true_cfg_scale (with negative_prompt)")
        if not qwen and true_cfg_scale is not None and true_cfg_scale != 1.0:
            raise ValueError("true_cfg_scale applies to Qwen-Image only; Z-Image's classifier-free guidance "
                             "is 'guidance'")
        if steps is None:
            steps = 50 if qwen else 9
        scale = (4.0 if true_cfg_scale is None else true_cfg_scale) if qwen else 1.0
        if progress is not None and not callable(progress):
            raise TypeError("progress must be callable")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer (got {seed!r})")
        rgb, w, h, meta = self._pipe.generate(prompt, negative_prompt, width, height, steps,
                                              float(guidance or 0), float(scale), seed, max_sequence_length,
                                              progress)
        image = Image.frombytes("RGB", (w, h), rgb)
        image.info.update(meta)
        return image


def png_info(image):
    """The PngInfo that saves image.info's qdit metadata as PNG text chunks."""
    info = PngImagePlugin.PngInfo()
    for k, v in image.info.items():
        if isinstance(v, str):
            info.add_itxt(k, v)
    return info
