"""torch.hub entry points: ``torch.hub.load("<this repo>", "dino_vits16")`` and the other official names.

Each entry point is ``(pretrained=True, **kwargs)`` and returns a dinofeat FeatureExtractor whose
``forward(x)`` gives the CLS feature; the list is generated from dinofeat's model registry.
"""

dependencies = ["torch", "torchvision", "timm", "huggingface_hub", "safetensors", "PIL", "numpy", "tqdm"]

from dinofeat.hub.entrypoints import ENTRYPOINTS as _ENTRYPOINTS  # noqa: E402

globals().update(_ENTRYPOINTS)
