"""LEARNet against the authors' Keras definition, timm models offline, local pretrained weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.errors import MerError
from pipeline.train.models import PAPER_MODELS, build_model, count_parameters, default_input_size, resolve_input_size
from pipeline.train.models.learnet import LEARNet, SameConv2d, same_padding


@pytest.mark.parametrize(
    "size, kernel, expected",
    [
        (112, 3, (0, 1)),
        (56, 1, (0, 0)),
        (56, 3, (0, 1)),
        (28, 3, (0, 1)),
        (14, 5, (1, 2)),
        (7, 3, (1, 1)),
        (7, 5, (2, 2)),
    ],
)
def test_same_padding_matches_tensorflow(size, kernel, expected):
    assert same_padding(size, kernel, 2) == expected
    before, after = expected
    assert (size + before + after - kernel) // 2 + 1 == -(-size // 2)  # output = ceil(size / 2)


@pytest.mark.parametrize("size", [112, 7])
def test_same_conv_pads_like_tensorflow(size):
    """A kernel that picks its top-left tap reads x[2i - pad_top, 2j - pad_left] (TF: extra pad at the end)."""
    conv = SameConv2d(1, 1, 3)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0] = 1.0
    x = torch.rand(1, 1, size, size) + 0.1
    y = conv(x)
    top = same_padding(size, 3, 2)[0]
    padded = F.pad(x, (top, 0, top, 0))
    assert y.shape[-1] == -(-size // 2)
    assert torch.equal(y, padded[..., ::2, ::2][..., : y.shape[-2], : y.shape[-1]])


def test_learnet_layer_shapes_follow_the_paper():
    model = LEARNet(num_classes=5).eval()
    shapes: dict[str, tuple] = {}
    for name, module in model.named_modules():
        if name and name.count(".") <= 1:
            module.register_forward_hook(
                lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape[1:])) if torch.is_tensor(o) else None
            )
    out = model(torch.rand(2, 3, 112, 112))
    assert out.shape == (2, 5)
    expected = {
        "stem": (16, 56, 56),
        "bn": (256, 7, 7),
        "conv": (256, 4, 4),
        "fc1": (256,),
        "dropout": (256,),
        "fc2": (5,),
    }
    for pair in ("pair1", "pair2"):
        expected |= {
            f"{pair}.a1": (16, 28, 28),
            f"{pair}.b1": (16, 28, 28),
            f"{pair}.bn1": (16, 28, 28),
            f"{pair}.a2": (32, 14, 14),
            f"{pair}.b2": (32, 14, 14),
            f"{pair}.bn2": (32, 14, 14),
            f"{pair}.a3": (64, 7, 7),
            f"{pair}.b3": (64, 7, 7),
        }
    assert {k: shapes[k] for k in expected} == expected


def test_learnet_parameter_count():
    model = LEARNet(num_classes=5)
    # Keras summary of the authors' model: conv 448 + 2 x (2 x (272 + 4640 + 51264)) + conv 590,080
    # + dense 1,048,832 + 1,285, batch norm 2 x (16 + 32) x 2 + 256 x 2 trainable.
    assert count_parameters(model) == 1_866_053
    running = sum(b.numel() for n, b in model.named_buffers() if "running" in n)
    assert count_parameters(model) + running == 1_866_757  # Keras' total, which counts running statistics
    assert sum(p.numel() for p in model.conv.parameters()) == 590_080
    assert sum(p.numel() for p in model.fc1.parameters()) == 1_048_832
    assert count_parameters(LEARNet(num_classes=3)) == 1_866_053 - 2 * 257


def test_learnet_forward_backward():
    torch.manual_seed(0)
    model = build_model("learnet", 5)
    x, y = torch.randn(4, 3, 112, 112), torch.tensor([0, 1, 2, 4])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x[:1]), model(x)[:1], atol=1e-5)  # eval mode: per-sample, no dropout


def test_timm_model_offline_at_small_input():
    model = build_model("resnet18", 3, input_size=32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    vit = build_model("vit_tiny_patch16_224", 3, input_size=32)  # transformers get img_size
    assert vit(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_unknown_model_name():
    with pytest.raises(MerError, match="unknown model 'no_such_net'"):
        build_model("no_such_net", 3)


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """An empty Hugging Face cache and no network: any connection attempt fails at once."""
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path / "hf"


def test_pretrained_offline_says_how_to_supply_weights(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MerError, match=r"weights: /path/to/file\.safetensors") as info:
        build_model("resnet18", 3, pretrained=True)
    assert "not in the local Hugging Face cache" in str(info.value) and "HF_HUB_OFFLINE is set" in str(info.value)
    assert "models.resnet18.weights" in str(info.value)
    with pytest.raises(MerError, match="no published pretrained LEARNet weights"):
        build_model("learnet", 3, pretrained=True)


def test_pretrained_without_network_fails_at_once(no_network):
    import time

    started = time.monotonic()
    with pytest.raises(MerError) as info:
        build_model("resnet18", 3, pretrained=True)
    assert time.monotonic() - started < 5  # no retries
    message = str(info.value)
    assert "cannot be reached" in message and "HF_HUB_OFFLINE=1" in message and "pretrained: false" in message


def test_pretrained_download_failure_says_how_to_supply_weights(no_network, monkeypatch):
    import pipeline.train.models.timm_models as timm_models

    def failing_download(repo, revision, names):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm_models, "hub_reachable", lambda: True)
    monkeypatch.setattr(timm_models, "download_hub_file", failing_download)
    with pytest.raises(MerError) as info:
        build_model("resnet18", 3, pretrained=True)
    message = str(info.value)
    assert "could not download" in message and "couldn't connect" in message
    assert "weights: /path/to/file.safetensors" in message and "pretrained: false" in message


def fake_hub_cache(hf_home, repo: str, state: dict, revision: str = "0123456789abcdef0123456789abcdef01234567"):
    """`state` saved where huggingface_hub puts a downloaded model.safetensors of `repo`."""
    from safetensors.torch import save_file

    folder = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / revision).mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(revision)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "snapshots" / revision / "model.safetensors"))


def test_pretrained_weights_from_a_local_hugging_face_cache_offline(no_network, monkeypatch):
    import subprocess
    import sys

    import timm

    from pipeline.train.models import weights_report

    torch.manual_seed(3)
    source = timm.create_model("resnet18", pretrained=False)  # 1000 ImageNet classes
    fake_hub_cache(no_network, "timm/resnet18.a1_in1k", source.state_dict())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = build_model("resnet18", 5, pretrained=True)
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    report = weights_report(model)
    assert report.reset == ("fc.bias", "fc.weight") and report.loaded == report.total - 2 == 100
    assert report.line().endswith("loaded 100 of 102 tensors; reset: fc.bias, fc.weight")
    assert "timm/resnet18.a1_in1k" in report.source and len(report.sha256) == 64

    # the layout is the hub's own: timm itself loads it offline (in a fresh process, which reads HF_HOME)
    check = (
        "import timm, torch, sys; m = timm.create_model('resnet18', pretrained=True); "
        "sys.exit(0 if torch.equal(m.conv1.weight, torch.load(sys.argv[1])) else 1)"
    )
    torch.save(source.conv1.weight.detach().clone(), no_network / "conv1.pt")
    done = subprocess.run([sys.executable, "-c", check, str(no_network / "conv1.pt")], capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_weights_that_leave_more_than_the_head_uninitialized_are_refused(tmp_path):
    from safetensors.torch import save_file

    state = {k: v for k, v in build_model("resnet18", 10).state_dict().items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path))
    with pytest.raises(MerError, match=r"leaves 25 tensor\(s\) outside the classifier head") as info:
        build_model("resnet18", 3, weights=path, weights_key="models.resnet18.weights")
    assert "layer4.0.bn1.bias" in str(info.value) and "models.resnet18.weights" in str(info.value)


def test_weights_key_names_where_the_file_was_set(tmp_path):
    import yaml

    from pipeline.train.settings import weights_key

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"weights": "a.pth"}, "models": {"resnet18": {"weights": "r.pth"}}}))
    assert weights_key(params, "resnet18") == "models.resnet18.weights"
    assert weights_key(params, "learnet") == "train.weights"
    with pytest.raises(MerError, match=r"weights file not found: .*missing\.pth \(params models\.resnet18\.weights\)"):
        build_model("resnet18", 3, weights=tmp_path / "missing.pth", weights_key="models.resnet18.weights")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_load_backbone_and_drop_the_head(tmp_path, suffix):
    torch.manual_seed(1)
    source = build_model("resnet18", 10)  # "pretrained" with another number of classes
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(source.state_dict(), str(path))
    else:
        torch.save({"state_dict": source.state_dict()}, path)
    torch.manual_seed(2)
    model = build_model("resnet18", 3, pretrained=True, weights=path)  # weights win over the hub: offline is fine
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.weight.shape == (3, 512) and not torch.equal(model.fc.weight[:3], source.fc.weight[:3])


def test_bad_weights_files(tmp_path):
    with pytest.raises(MerError, match="weights file not found"):
        build_model("resnet18", 3, weights=tmp_path / "missing.pth")
    other = tmp_path / "other.pth"
    torch.save({"something.else": torch.zeros(3)}, other)
    with pytest.raises(MerError, match="none of its tensors match"):
        build_model("resnet18", 3, weights=other)


def test_input_size_per_model():
    assert [default_input_size(m) for m in ("learnet", "LEARNet", "resnet18", "vit_base_patch16_224")] == [
        112,
        112,
        224,
        224,
    ]
    sizes = {"learnet": 112, "vit_base_patch16_224": 384, "default": 224}
    assert resolve_input_size("learnet", sizes) == 112
    assert resolve_input_size("vit_base_patch16_224", sizes) == 384
    assert resolve_input_size("resnet50", sizes) == 224
    assert resolve_input_size("resnet50", {"learnet": 112}) == 224  # no default entry: the model's own
    assert resolve_input_size("resnet50", 160) == 160 and resolve_input_size("learnet", None) == 112
    with pytest.raises(ValueError, match="input_size"):
        resolve_input_size("learnet", "big")
    from pipeline.train.settings import TrainSettings

    assert (
        TrainSettings.from_params({"model": "vgg16_bn", "input_size": {"learnet": 112, "default": 224}}).input_size
        == 224
    )
    assert (
        TrainSettings.from_params({"model": "learnet", "input_size": {"learnet": 112, "default": 224}}).input_size
        == 112
    )


def test_every_model_of_the_paper_set_trains_one_fold_on_cpu():
    """resnet18, resnet50, vgg16_bn, mobilenetv3_large_100, ViT-B/16 (img_size 32) and LEARNet."""
    import numpy as np

    from pipeline.train.data import LosoData
    from pipeline.train.fold import train_fold
    from pipeline.train.settings import TrainSettings

    assert PAPER_MODELS == (
        "resnet18",
        "resnet50",
        "vgg16_bn",
        "mobilenetv3_large_100",
        "vit_base_patch16_224",
        "learnet",
    )
    rng = np.random.default_rng(0)
    n, size = 8, 32  # 2 subjects x 4 clips
    data = LosoData(
        images={"full": rng.normal(size=(n, 3, size, size)).astype(np.float32)},
        labels=np.array([0, 1, 2, 0, 1, 2, 0, 1]),
        groups=np.repeat(["s1", "s2"], 4),
        sample_ids=np.array([f"x/{i}" for i in range(n)]),
        datasets=np.array(["x"] * n),
        label_names=["a", "b", "c"],
    )
    for name in PAPER_MODELS:
        settings = TrainSettings.from_params(
            {
                "model": name,
                "mode": "baseline",
                "input_size": size,
                "epochs": 1,
                "batch_size": 4,
                "device": "cpu",
                "lr": 1e-4,
            }
        )
        result = train_fold(data, "s2", settings, threads=2)
        assert result.manifest["n_train_samples"] == 4 and len(result.predictions) == 4, name
        assert np.isfinite(result.manifest["final_train_loss"]), name
        for row in result.predictions:
            assert sum(row[f"prob_{c}"] for c in "abc") == pytest.approx(1, abs=1e-5), name


def test_local_vit_weights_at_another_input_size_resample_the_position_embedding(tmp_path):
    torch.manual_seed(0)
    source = build_model("vit_tiny_patch16_224", 10, input_size=64)  # 4x4 patches + class token
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict(), path)
    model = build_model("vit_tiny_patch16_224", 3, weights=path, input_size=32)  # 2x2 patches
    assert model.pos_embed.shape == (1, 5, 192)
    assert torch.equal(model.pos_embed[:, 0], source.pos_embed[:, 0])  # class token position kept
    from timm.layers import resample_abs_pos_embed

    expected = resample_abs_pos_embed(source.pos_embed, new_size=(2, 2), num_prefix_tokens=1)
    assert torch.allclose(model.pos_embed, expected, atol=1e-6)  # resampled from 4x4, not re-initialized
    assert torch.equal(model.patch_embed.proj.weight, source.patch_embed.proj.weight)
