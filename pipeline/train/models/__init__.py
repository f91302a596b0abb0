"""Models: LEARNet and any timm architecture, through one registry.

    registry.py     `register_model`, `create_model(name, **kwargs)`, `list_models`, input sizes
    learnet.py      LEARNet, registered as `learnet`
    timm_models.py  every other name: a timm model
    pretrained.py   local weights files, the local Hugging Face cache, load reports, and the message
                    when weights cannot be had
    build.py        `build_model` (the registry's model plus local weights), parameter count, normalization

A new MER network is one file here that registers its architectures, imported below.
"""

from pipeline.train.models import learnet  # noqa: F401  (registers `learnet`)
from pipeline.train.models.build import PAPER_MODELS, build_model, count_parameters, input_normalization
from pipeline.train.models.pretrained import WeightsReport, weights_report
from pipeline.train.models.registry import (
    create_model,
    default_input_size,
    list_models,
    register_model,
    resolve_input_size,
)

__all__ = [
    "PAPER_MODELS",
    "WeightsReport",
    "build_model",
    "count_parameters",
    "create_model",
    "default_input_size",
    "input_normalization",
    "list_models",
    "register_model",
    "resolve_input_size",
    "weights_report",
]
