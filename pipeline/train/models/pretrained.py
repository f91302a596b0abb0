"""Pretrained weights: local files, the local Hugging Face cache, the hub, and what to tell a user
who has neither network nor file.

timm models name their weights on the Hugging Face hub (`pretrained_cfg.hf_hub_id`). They are taken
from the local hub cache when there (`HF_HOME`, `HF_HUB_CACHE`; no network needed, `HF_HUB_OFFLINE=1`
is fine), else downloaded when the hub answers within a few seconds, else refused at once with what to
do. Params `weights` (under `models.NAME` or `train`) names a local .safetensors or .pth/.pt state
dict instead (DESIGN.md section 7). Every load is reported (`WeightsReport`: tensors loaded, tensors
left at their initial values) and refused when more than the classifier head stays uninitialized.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from pipeline.errors import MerError

HUB_FILENAMES = ("model.safetensors", "pytorch_model.bin")  # what timm looks for in a hub repository
HUB_TIMEOUT = 3.0  # seconds to wait for the hub before calling it unreachable


def weights_hint(name: str, key: str | None = None) -> str:
    key = key or f"models.{name}.weights"
    return (
        f"to start {name!r} from pretrained weights without network access, download them once on a "
        f"connected machine (for timm models: timm.create_model({name!r}, pretrained=True) stores them in the "
        "Hugging Face cache; copy that cache (HF_HOME) over and set HF_HUB_OFFLINE=1; or fetch the model's "
        f"model.safetensors from huggingface.co/timm) and set `weights: /path/to/file.safetensors` (or a .pth/.pt "
        f"state dict) as params {key}; or set `pretrained: false` to train from scratch"
    )


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (not when huggingface_hub was imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_reachable(timeout: float = HUB_TIMEOUT) -> bool:
    """Whether the hub's host accepts a connection within `timeout` seconds (no retries)."""
    url = urlparse(hub_endpoint())
    try:
        socket.create_connection((url.hostname, url.port or (80 if url.scheme == "http" else 443)), timeout).close()
    except (OSError, TypeError):
        return False
    return True


def hub_weights(cfg: Any) -> tuple[str, str | None, tuple[str, ...]] | None:
    """(repository, revision, file names to try) of a timm pretrained config, None without a hub id."""
    hub_id = getattr(cfg, "hf_hub_id", None) or (cfg.get("hf_hub_id") if isinstance(cfg, dict) else None)
    if not hub_id:
        return None
    filename = getattr(cfg, "hf_hub_filename", None) or (cfg.get("hf_hub_filename") if isinstance(cfg, dict) else None)
    repo, _, revision = str(hub_id).partition("@")
    return repo, revision or None, (filename,) if filename else HUB_FILENAMES


def cached_hub_file(repo: str, revision: str | None, names: tuple[str, ...]) -> Path | None:
    """The weights file of `repo` in the local hub cache, without any network access; None if absent."""
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        found = try_to_load_from_cache(repo, name, cache_dir=str(hub_cache_dir()), revision=revision)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def download_hub_file(repo: str, revision: str | None, names: tuple[str, ...]) -> Path:
    """Download the weights file of `repo` into the local hub cache (the hub must be reachable)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError

    for name in names:
        try:
            return Path(hf_hub_download(repo, name, revision=revision, cache_dir=str(hub_cache_dir())))
        except EntryNotFoundError:
            continue
    raise MerError(f"the hub repository {repo} holds none of {list(names)}")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class WeightsReport:
    """What a pretrained load did: the file, its sha256, tensors loaded and those left at their init."""

    source: str
    sha256: str
    loaded: int
    total: int
    reset: tuple[str, ...]

    def line(self) -> str:
        reset = f"; reset: {', '.join(self.reset)}" if self.reset else ""
        return f"pretrained weights {self.source}: loaded {self.loaded} of {self.total} tensors{reset}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "sha256": self.sha256,
            "loaded": self.loaded,
            "total": self.total,
            "reset": list(self.reset),
        }


def weights_report(model: nn.Module) -> WeightsReport | None:
    """The report of the pretrained weights `model` was built with (None: none were loaded)."""
    return getattr(model, "mer_weights_report", None)


def classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier head: timm's `pretrained_cfg.classifier`, else the module
    `get_classifier()` returns, else the last linear layer."""
    names: list[str] = []
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if classifier:
        names = [classifier] if isinstance(classifier, str) else list(classifier)
    elif hasattr(model, "get_classifier"):
        head = model.get_classifier()
        names = [name for name, module in model.named_modules() if module is head]
    if not names:
        names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)][-1:]
    return {key for key in model.state_dict() if any(key.startswith(f"{name}.") for name in names)}


def load_state_dict_file(path: str | Path, key: str = "train.weights") -> dict[str, torch.Tensor]:
    """Read a state dict from .safetensors or a torch file (possibly wrapped in 'state_dict'/'model');
    `key` is the params key that named the file, for messages."""
    path = Path(path)
    if not path.is_file():
        raise MerError(f"weights file not found: {path} (params {key})")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MerError(f"cannot read weights file {path}: {exc}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MerError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _adapt_to_model(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Apply the timm architecture's own checkpoint filter when it has one: it resamples a ViT's
    position embedding to the model's input size (e.g. 224 weights into a 112 model) instead of
    dropping it as a shape mismatch. Left as is when there is no filter or it fails."""
    import importlib

    try:
        module = importlib.import_module(type(model).__module__)
    except ImportError:
        return state
    adapt = getattr(module, "checkpoint_filter_fn", None) if module.__name__.startswith("timm.") else None
    if adapt is None:
        return state
    try:
        return dict(adapt(dict(state), model))
    except Exception:
        return state


def load_pretrained(
    model: nn.Module, weights: str | Path, key: str = "train.weights", source: str | None = None
) -> WeightsReport:
    """Load matching tensors from `weights` into `model`; report what was loaded and what was not.

    Tensors whose shape differs from the model's (the classifier head when the number of classes
    differs) are dropped, so a backbone pretrained on ImageNet loads into a 5-class model. A file
    that leaves more than the classifier head at its initial values (another architecture or
    variant) is refused. BatchNorm's `num_batches_tracked` counters are not counted. `key`: the params
    key that named the file; `source`: how to name the file in the report (default: its path).
    """
    state = _adapt_to_model(load_state_dict_file(weights, key), model)
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise MerError(
            f"{weights} (params {key}): none of its tensors match the model's parameters "
            "(is it for another architecture?)"
        )
    reset = sorted(set(own) - set(usable))
    outside = [k for k in reset if k not in classifier_keys(model)]
    if outside:
        shown = ", ".join(outside[:6]) + (f" and {len(outside) - 6} more" if len(outside) > 6 else "")
        raise MerError(
            f"{weights} (params {key}) leaves {len(outside)} tensor(s) outside the classifier head at their initial "
            f"values ({shown}): it is not a checkpoint of this architecture and variant; use weights of the same "
            "model, or set `pretrained: false` and no weights to train from scratch"
        )
    model.load_state_dict(usable, strict=False)
    return WeightsReport(str(source or weights), file_sha256(weights), len(usable), len(own), tuple(reset))
