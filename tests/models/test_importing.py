"""`import_weights`: TorchXRayVision releases (pickled modules), torchvision and MONAI state dicts, URLs."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from models import ModelConfig, PretrainedError, TwoViewNet
from models.checkpoint import read_metadata
from models.errors import CheckpointError
from models.importing import densenet_shapes, import_weights
from models.pretrained import INPUT_NORMS, load_pretrained
from models.torchfile import XRV_CLASSES, read_torch_file
from tests.models.test_pretrained import as_torchvision, source_densenet
from tests.models.xrv_standin import TINY, run_without_xrv, save_release

TINY_CONFIG = ModelConfig.tiny()
XRV_NORM = (0.5, 1 / 2048)


def metadata_of(path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


@pytest.mark.parametrize("era", ["2019", "2024"])
def test_a_full_size_release_converts_without_torchxrayvision(tmp_path, era):
    """Every tensor of the pickled DenseNet121 arrives, read where torchxrayvision cannot be imported."""
    release = save_release(tmp_path / "nih-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt", era=era)
    out = tmp_path / "xrv.safetensors"
    done = run_without_xrv(
        "from models.importing import import_weights; "
        f"print(import_weights({str(release)!r}, {str(out)!r}).summary()); "
        "assert sys.modules.get('torchxrayvision') is None and sys.modules.get('torchvision') is None"
    )
    assert done.returncode == 0, done.stderr
    assert "TorchXRayVision weights: DenseNet121" in done.stdout
    reference = load_file(str(release) + ".reference.safetensors")
    converted = load_file(str(out))
    expected = set(reference) - {"op_threshs"}
    assert set(converted) == expected and len(expected) == 727  # DenseNet121 features + classifier
    for key in expected:
        assert converted[key].dtype == reference[key].dtype, key
        assert torch.equal(converted[key], reference[key]), key
    meta = metadata_of(out)
    assert meta["source_layout"] == "TorchXRayVision" and meta["architecture"] == "DenseNet121"
    assert meta["source_sha256"] == hashlib.sha256(release.read_bytes()).hexdigest()
    assert (float(meta["norm_mean"]), float(meta["norm_std"])) == XRV_NORM
    assert json.loads(meta["geometry"])["block_config"] == [6, 12, 24, 16]


def test_the_allowlist_is_exactly_what_a_release_pickle_names(tmp_path):
    release = save_release(tmp_path / "tiny.pt", sizes=TINY)
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(release)) == set(XRV_CLASSES)
    read = read_torch_file(release)
    assert read.module_class == "torchxrayvision.models.DenseNet"
    reference = load_file(str(release) + ".reference.safetensors")
    assert set(read.tensors) == set(reference) - {"op_threshs"}


@pytest.mark.parametrize("era", ["2019", "2024"])
@pytest.mark.parametrize("where", ["alone", "inside a release"])
def test_a_forged_pickle_is_refused_and_runs_nothing(tmp_path, era, where):
    marker = tmp_path / "MARKER"
    command = f"touch {marker}"
    if where == "alone":
        path = tmp_path / "forged.pt"
        code = (
            "import os, torch\n"
            "class Payload:\n"
            "    def __reduce__(self):\n"
            f"        return (os.system, ({command!r},))\n"
            f"torch.save({{'features.conv0.weight': torch.zeros(1), 'x': Payload()}}, {str(path)!r}, "
            f"_use_new_zipfile_serialization={era != '2019'})\n"
        )
        made = run_without_xrv(code)
        assert made.returncode == 0, made.stderr
    else:
        path = save_release(tmp_path / "forged.pt", sizes=TINY, era=era, payload=command)
    assert not marker.exists()
    with pytest.raises(PretrainedError, match=r"refused: the file asks for `posix\.system`") as err:
        import_weights(path, tmp_path / "out.safetensors", expect=TINY_CONFIG)
    assert "nothing from the file was run" in str(err.value)
    assert not marker.exists() and not (tmp_path / "out.safetensors").exists()


def test_a_pickle_that_calls_builtins_is_refused(tmp_path):
    path = tmp_path / "exec.pt"
    program = f"open({str(tmp_path / 'MARKER')!r}, 'w')"
    made = run_without_xrv(
        "import torch\n"
        "class Payload:\n"
        "    def __reduce__(self):\n"
        f"        return (exec, ({program!r},))\n"
        f"torch.save({{'w': Payload()}}, {str(path)!r})\n"
    )
    assert made.returncode == 0, made.stderr
    with pytest.raises(PretrainedError, match=r"asks for `(builtins\.)?exec`"):
        read_torch_file(path)
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("era", ["2019", "2024", "safetensors"])
def test_a_truncated_file_says_so(tmp_path, era):
    if era == "safetensors":
        path = tmp_path / "tiny.safetensors"
        save_file({k: v.contiguous() for k, v in source_densenet().items()}, str(path))
    else:
        path = save_release(tmp_path / "tiny.pt", sizes=TINY, era=era)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(PretrainedError, match="incomplete or damaged"):
        import_weights(path, tmp_path / "out.safetensors", expect=TINY_CONFIG)


@pytest.mark.parametrize("layout", ["torchvision", "torchvision_old", "MONAI"])
def test_torchvision_and_monai_state_dicts_convert(tmp_path, layout):
    state = source_densenet(in_channels=3)  # MONAI names, ModelConfig.tiny()'s sizes
    if layout == "MONAI":
        path = tmp_path / "monai.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "densenet.pth"
        torch.save({"state_dict": as_torchvision(state, old_style=layout == "torchvision_old")}, path)
    report = import_weights(path, tmp_path / "out.safetensors", expect=TINY_CONFIG)
    assert report.layout == layout.split("_")[0] and report.stem_channels == 3 and report.classes == 14
    converted = load_file(str(tmp_path / "out.safetensors"))
    for key, value in as_torchvision(state).items():
        assert torch.equal(converted[key], value), key
    assert set(converted) == set(as_torchvision(state))
    imagenet = INPUT_NORMS["torchvision"]
    meta = metadata_of(tmp_path / "out.safetensors")
    assert (float(meta["norm_mean"]), float(meta["norm_std"])) == (imagenet.mean, imagenet.std)
    assert "ImageNet" in report.summary() and "3-channel stem" in report.summary()


def test_shapes_match_monai_densenet121():
    """`densenet_shapes` agrees with MONAI's DenseNet121 (renamed), so the DenseNet121 check is right."""
    from monai.networks.nets import DenseNet121

    monai = {
        k: tuple(v.shape)
        for k, v in DenseNet121(spatial_dims=2, in_channels=1, out_channels=2).state_dict().items()
    }
    renamed = {k.replace(".layers.", "."): v for k, v in monai.items() if k.startswith("features.")}
    assert densenet_shapes(ModelConfig()) == renamed


def test_what_is_not_the_expected_densenet_is_refused(tmp_path):
    resnet = tmp_path / "resnet.safetensors"
    save_file({"layer1.0.conv1.weight": torch.zeros(4, 4, 3, 3)}, str(resnet))
    with pytest.raises(
        PretrainedError, match="not a DenseNet121: none of its tensors .* it has layer1.0.conv1.weight"
    ):
        import_weights(resnet, tmp_path / "out.safetensors")
    tiny = save_release(tmp_path / "tiny.pt", sizes=TINY)
    with pytest.raises(PretrainedError, match=r"not a DenseNet121: \d+ missing weights .*wrong shape"):
        import_weights(tiny, tmp_path / "out.safetensors")
    with pytest.raises(PretrainedError, match="must be a .safetensors"):
        import_weights(tiny, tmp_path / "out.pt", expect=TINY_CONFIG)
    assert not list(tmp_path.glob("out*"))


def test_urls_are_downloaded_once_and_checked(tmp_path, server):
    root, base, hits = server
    release = save_release(root / "tiny-xrv.pt", sizes=TINY)
    digest = hashlib.sha256(release.read_bytes()).hexdigest()
    url = f"{base}/{release.name}"
    cache = tmp_path / "cache"
    report = import_weights(url, tmp_path / "a.safetensors", digest, expect=TINY_CONFIG, cache_dir=cache)
    import_weights(url, tmp_path / "b.safetensors", digest, expect=TINY_CONFIG, cache_dir=cache)
    assert hits == [f"/{release.name}"] and report.sha256 == digest and report.source == url
    assert metadata_of(tmp_path / "a.safetensors")["source"] == url
    with pytest.raises(PretrainedError, match="SHA-256 is"):
        import_weights(
            url, tmp_path / "c.safetensors", "0" * 64, expect=TINY_CONFIG, cache_dir=tmp_path / "c"
        )
    with pytest.raises(PretrainedError, match="a SHA-256"):
        import_weights(url, tmp_path / "c.safetensors", expect=TINY_CONFIG, cache_dir=tmp_path / "c")
    assert not (tmp_path / "c.safetensors").exists()
    with pytest.raises(PretrainedError, match="SHA-256 does not match"):
        import_weights(release, tmp_path / "c.safetensors", "0" * 64, expect=TINY_CONFIG)


def test_a_model_started_from_imported_weights_takes_their_normalisation(tmp_path):
    release = save_release(tmp_path / "tiny.pt", sizes=TINY, era="2019")
    out = tmp_path / "xrv.safetensors"
    import_weights(release, out, expect=TINY_CONFIG)
    net = TwoViewNet(TINY_CONFIG)
    report = load_pretrained(net, out)
    assert (net.config.norm_mean, net.config.norm_std) == XRV_NORM
    assert report.layout == "TorchXRayVision" and "[-1024, 1024]" in report.summary()
    reference = load_file(str(release) + ".reference.safetensors")
    torch.testing.assert_close(
        net.state_dict()["lateral.trunk.denseblock1.denselayer1.layers.conv2.weight"],
        reference["features.denseblock1.denselayer1.conv2.weight"],
    )
    # The release itself starts a model the same way, normalisation included.
    direct = TwoViewNet(TINY_CONFIG)
    assert load_pretrained(direct, release).loaded == report.loaded
    assert (direct.config.norm_mean, direct.config.norm_std) == XRV_NORM
    for key in report.loaded:
        assert torch.equal(direct.state_dict()[key], net.state_dict()[key]), key
    # Weights of another size are refused by name, and the file is not mistaken for a checkpoint.
    with pytest.raises(PretrainedError, match="this model needs stem 64"):
        load_pretrained(TwoViewNet(ModelConfig()), out)
    with pytest.raises(CheckpointError, match="twoview train --start"):
        read_metadata(out)


def test_norm_can_be_given(tmp_path):
    from models.pretrained import InputNorm

    release = save_release(tmp_path / "tiny.pt", sizes=TINY)
    report = import_weights(
        release, tmp_path / "o.safetensors", expect=TINY_CONFIG, norm=InputNorm(0.4, 0.2, "mine")
    )
    meta = metadata_of(tmp_path / "o.safetensors")
    assert (float(meta["norm_mean"]), float(meta["norm_std"]), meta["input_scale"]) == (0.4, 0.2, "mine")
    assert report.norm.scale == "mine"
