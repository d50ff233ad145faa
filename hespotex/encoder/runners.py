"""Running the frozen encoder on batches of uint8 patches: PyTorch or ONNX Runtime.

Both take (B, H, W, 3) uint8 arrays and return (B, D) float32 features, so the features stage
does not care which runs. The PyTorch runner ships uint8 to the device (4× less to copy than
float), from pinned memory without blocking, converts there, runs in bf16 autocast and
channels_last on CUDA, and halves a batch that runs out of GPU memory. The ONNX runner uses
onnxruntime-gpu: the CUDA provider when the GPU is there, else the CPU one.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from hespotex.config import FeaturesConfig, PipelineConfig
from hespotex.encoder.build import ImageEncoder, load_encoder
from hespotex.encoder.devices import pick_device
from hespotex.encoder.identity import EncoderIdentity, check_same_encoder, encoder_identity
from hespotex.errors import ConfigError, EncoderMemoryError, InputDataError
from hespotex.io.atomic import atomic_path

logger = logging.getLogger(__name__)

ONNX_IDENTITY_KEY = "hespotex_encoder"


def encode_batch(encoder: ImageEncoder, images: torch.Tensor, slide_path) -> torch.Tensor:
    """Encode a batch; on a GPU out-of-memory, encode it in halves instead (down to single
    patches) rather than failing the slide."""
    try:
        return encoder(images)
    except torch.cuda.OutOfMemoryError as error:
        if len(images) == 1:
            raise EncoderMemoryError(
                slide_path, f"the encoder runs out of GPU memory even on one patch: {error}"
            ) from None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        half = len(images) // 2
        logger.warning(
            "out of GPU memory on a batch of %d patches; encoding it as %d + %d",
            len(images),
            half,
            len(images) - half,
        )
        return torch.cat(
            [
                encode_batch(encoder, images[:half], slide_path),
                encode_batch(encoder, images[half:], slide_path),
            ]
        )


class TorchRunner:
    def __init__(self, encoder: ImageEncoder, device: torch.device):
        self.device = device
        self.on_cuda = device.type == "cuda"
        self.encoder = encoder.to(device)
        if self.on_cuda:
            self.encoder = self.encoder.to(memory_format=torch.channels_last)
        self.identity: EncoderIdentity = encoder.identity

    def describe(self) -> str:
        return f"PyTorch on {self.device}" + (" (bf16 autocast)" if self.on_cuda else "")

    def __call__(self, patches: np.ndarray, slide_path) -> np.ndarray:
        batch = torch.from_numpy(patches)
        if self.on_cuda:
            batch = batch.pin_memory()
        images = batch.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        if self.on_cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        with (
            torch.inference_mode(),
            torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.on_cuda),
        ):
            features = encode_batch(self.encoder, images, slide_path)
        return features.float().cpu().numpy()


def export_onnx(encoder: ImageEncoder, path: Path, patch_px: int) -> None:
    """The whole encoder (normalisation and L2 norm included) with a dynamic batch axis; the
    encoder's identity travels in the model's metadata."""
    import onnx

    example = torch.rand(2, 3, patch_px, patch_px)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        # Tracing warns about every Python-level shape check; the graph is checked against
        # PyTorch's output by the tests.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            encoder.eval(),
            (example,),
            str(tmp),
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
        model = onnx.load(str(tmp))
        entry = model.metadata_props.add()
        entry.key = ONNX_IDENTITY_KEY
        entry.value = encoder.identity.model_dump_json()
        onnx.save(model, str(tmp))


class OnnxRunner:
    def __init__(self, path: Path, expected: EncoderIdentity, device: str):
        """The ONNX model at ``path``, refused unless it was exported from ``expected``."""
        import onnxruntime

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"features.onnx_model: {path} does not exist")
        providers: list = ["CPUExecutionProvider"]
        if (
            device != "cpu"
            and torch.cuda.is_available()
            and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        ):
            gpu = pick_device(device, claim=True).index or 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": gpu}))
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise InputDataError(path, f"not a loadable ONNX model: {error}") from None
        stored = self.session.get_modelmeta().custom_metadata_map.get(ONNX_IDENTITY_KEY)
        if stored is None:
            raise InputDataError(
                path,
                "the ONNX model carries no encoder identity: export it with `hespotex export-onnx`",
            )
        self.identity = EncoderIdentity.from_record(json.loads(stored), path)
        check_same_encoder(
            path, self.identity, "the config", expected, "re-export it with `hespotex export-onnx`"
        )
        self.providers = self.session.get_providers()

    def describe(self) -> str:
        return f"ONNX Runtime ({', '.join(self.providers)})"

    def __call__(self, patches: np.ndarray, slide_path) -> np.ndarray:
        images = patches.transpose(0, 3, 1, 2).astype(np.float32) / 255
        return self.session.run(["features"], {"images": images})[0]


def build_runner(config: PipelineConfig) -> TorchRunner | OnnxRunner:
    features: FeaturesConfig = config.features
    if features.runtime == "onnx":
        return OnnxRunner(features.onnx_model, encoder_identity(config.encoder), features.device)
    return TorchRunner(load_encoder(config.encoder), pick_device(features.device, claim=True))
