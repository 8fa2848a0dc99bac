"""Checkpoints and configs: bit-identical round trips, pickles refused, mismatches named."""

from __future__ import annotations

import dataclasses
import json
import pickle
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models import CheckpointError, ConfigError, ModelConfig, TwoViewNet
from models.checkpoint import check, describe, load, read_config, save
from tests.models.test_twoview import MIXED, make_batch


@pytest.fixture
def trained_like():
    torch.manual_seed(1)
    net = TwoViewNet(ModelConfig.tiny(thresholds={"nodule": 0.3}, provenance={"data": "phantoms"}))
    with torch.no_grad():  # move BN statistics off their defaults so they are checked too
        net.train()(*make_batch(MIXED))
    return net.eval()


def test_round_trip_gives_bit_identical_outputs(tmp_path, trained_like):
    path = save(trained_like, tmp_path / "model.safetensors")
    loaded = load(path)
    assert loaded.config == trained_like.config
    assert not loaded.training
    batch = make_batch(MIXED, seed=3)
    with torch.no_grad():
        a, b = trained_like(*batch), loaded(*batch)
    for head in ("frontal", "lateral", "joint", "final"):
        assert torch.equal(torch.nan_to_num(a.head(head), 7.0), torch.nan_to_num(b.head(head), 7.0))
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temporary file
    (tmp_path / ".model.safetensors.abc123.tmp").write_bytes(b"half")  # as a killed save leaves it
    save(trained_like, path)
    assert not list(tmp_path.glob(".*.tmp"))


def test_float16_checkpoint_is_smaller_and_close(tmp_path, trained_like):
    full = save(trained_like, tmp_path / "full.safetensors")
    half = save(trained_like, tmp_path / "half.safetensors", dtype=torch.float16)
    assert half.stat().st_size < 0.8 * full.stat().st_size  # tiny net: the header is a big share
    batch = make_batch(MIXED)
    with torch.no_grad():
        diff = (load(half)(*batch).sigmoid().final - trained_like(*batch).sigmoid().final).abs().max()
    assert diff < 0.01


def test_config_travels_in_the_metadata(tmp_path, trained_like):
    path = save(trained_like, tmp_path / "m.safetensors", extra={"note": "hello"})
    config = read_config(path)
    assert config.thresholds == {"nodule": 0.3} and config.provenance == {"data": "phantoms"}
    info = describe(path)
    assert info["note"] == "hello" and info["config"]["labels"] == list(config.labels)


@pytest.mark.parametrize("payload", ["pickle", "torch_zip"])
def test_pickles_are_refused_before_reading(tmp_path, payload):
    path = tmp_path / "model.pt"
    if payload == "pickle":
        path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}, protocol=4))
    else:
        torch.save(TwoViewNet(ModelConfig.tiny()).state_dict(), path)
    with pytest.raises(CheckpointError, match="pickle, which can run code"):
        load(path)


def test_label_mismatch_is_named(tmp_path, trained_like):
    path = save(trained_like, tmp_path / "m.safetensors")
    with pytest.raises(
        CheckpointError, match=r"predicts \['pleural_effusion'.*but \['edema'\] were expected"
    ):
        load(path, expect_labels=["edema"])


def test_shape_mismatch_is_named(tmp_path):
    path = save(TwoViewNet(ModelConfig.tiny()), tmp_path / "m.safetensors")
    # A forged config that claims a bigger network than the weights hold.
    forged = ModelConfig.tiny(growth_rate=8)
    _rewrite_metadata(path, {"config": forged.to_json()})
    with pytest.raises(CheckpointError, match="wrong shape"):
        load(path)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"format": "other"}, "not a twoview checkpoint"),
        ({"format": "twoview", "format_version": "99", "config": "{}"}, "format version '99'"),
        ({"format": "twoview", "format_version": "1"}, "no model config"),
        ({"format": "twoview", "format_version": "1", "config": "__import__('os')"}, "not valid JSON"),
        (
            {"format": "twoview", "format_version": "1", "config": '{"image_size": 10000000}'},
            "image_size must be",
        ),
        ({"format": "twoview", "format_version": "1", "config": '{"evil": 1}'}, "unknown fields"),
    ],
)
def test_forged_metadata_is_refused(tmp_path, metadata, message):
    path = tmp_path / "forged.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=message):
        load(path)


def test_absurd_header_and_garbage_are_refused(tmp_path):
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(CheckpointError, match="header claims"):
        load(huge)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="too short"):
        load(empty)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load(tmp_path / "missing.safetensors")


def test_config_json_round_trip_and_validation():
    config = ModelConfig.tiny(labels=("a", "b"), thresholds={"a": 0.4})
    assert ModelConfig.from_json(config.to_json()) == config
    assert ModelConfig().block_config == (6, 12, 24, 16)
    for bad, message in [
        (dict(labels=()), "non-empty"),
        (dict(labels=("a", "a")), "distinct"),
        (dict(fusion="sum"), "unknown fusion 'sum'; choose one of: concat"),
        (dict(block_config=(1, 2)), "4 dense blocks"),
        (dict(thresholds={"zzz": 0.5}), "unknown labels"),
        (dict(norm_std=0.0), "positive"),
    ]:
        with pytest.raises(ConfigError, match=message):
            ModelConfig(**bad)
    relabelled = config.with_labels(["b", "c"])
    assert relabelled.labels == ("b", "c") and relabelled.thresholds == {}


def _rewrite_metadata(path, changes):
    (size,) = struct.unpack("<Q", path.read_bytes()[:8])
    raw = path.read_bytes()
    header = json.loads(raw[8 : 8 + size])
    header["__metadata__"].update(changes)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + size :])


def test_checkpoints_are_readable_by_other_users(tmp_path):
    """A service account (the Docker image's user) must be able to read what training wrote."""
    path = save(TwoViewNet(ModelConfig.tiny()), tmp_path / "m.safetensors")
    assert path.stat().st_mode & 0o444 == 0o444


BIG = {  # the validator accepts every field; the network has 173.5 G parameters (646 GiB as float32)
    "init_features": 1024,
    "growth_rate": 256,
    "block_config": [128, 128, 128, 128],
    "bn_size": 16,
    "fusion_layers": 64,
}


def _header_of(path):
    (size,) = struct.unpack("<Q", path.read_bytes()[:8])
    return json.loads(path.read_bytes()[8 : 8 + size]), path.read_bytes()[8 + size :]


def _write(path, header, data):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_a_1_kb_file_declaring_173_g_parameters_is_refused_from_its_header(tmp_path):
    path = tmp_path / "big.safetensors"
    config = ModelConfig(**BIG).to_json()
    save_file(
        {"x": torch.zeros(2)},
        str(path),
        metadata={"format": "twoview", "format_version": "1", "config": config},
    )
    assert path.stat().st_size < 2048
    for reader in (check, load):
        with pytest.raises(CheckpointError, match=r"173,471\.2 M parameters \(646\.2 GiB"):
            reader(path)


def _high_water_mark(pid: int) -> int:
    """Peak resident bytes of a running process (`VmHWM`), 0 once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:")), 0)


def test_the_cli_refuses_it_cleanly_without_allocating(tmp_path):
    """It reached 7.1 GB in 18 s and crashed with a traceback; now a one-line error, its peak RSS measured."""
    path = tmp_path / "big.safetensors"
    config = ModelConfig(**BIG).to_json()
    save_file(
        {"x": torch.zeros(2)},
        str(path),
        metadata={"format": "twoview", "format_version": "1", "config": config},
    )
    study = Path(__file__).resolve().parents[2] / "sample_data" / "studies" / "TV000000000"
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "predict",
        str(study),
        "--model",
        str(path),
        "-o",
        str(tmp_path / "o.csv"),
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    peak = 0  # the child's own high-water mark: its ru_maxrss would start at this (test) process's RSS
    while process.poll() is None:
        peak = max(peak, _high_water_mark(process.pid))
        time.sleep(0.01)
    stderr = process.stderr.read()
    print(
        f"\nCLI on a 173.5 G-parameter checkpoint: exit {process.returncode}, peak RSS {peak / 2**20:.0f} MiB"
    )
    assert peak > 0
    assert process.returncode == 2 and "Traceback" not in stderr
    assert "at most 200 M are loaded" in stderr
    assert peak < 1024 * 2**20


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("huge_tensor", "wrong shape"),
        ("header_past_end", "header claims"),
        ("no_weights", "missing weights"),
        ("offsets_past_end", "do not fill the file exactly"),
        ("integer_weights", "dtype twoview does not write"),
        ("overlapping", "do not fill the file exactly"),
    ],
)
def test_files_that_would_fail_at_predict_are_refused_by_check(tmp_path, change, message):
    path = save(TwoViewNet(ModelConfig.tiny()), tmp_path / "m.safetensors")
    header, data = _header_of(path)
    name = "frontal.head.out.weight"
    if change == "huge_tensor":
        header[name]["shape"] = [100000, 100000]
    elif change == "header_past_end":
        raw = path.read_bytes()
        path.write_bytes(struct.pack("<Q", len(raw) * 2) + raw[8:])
    elif change == "no_weights":
        header = {"__metadata__": header["__metadata__"]}
        data = b""
    elif change == "offsets_past_end":
        header[name]["data_offsets"][1] += 1 << 30
        header[name]["shape"] = [header[name]["shape"][0], header[name]["shape"][1]]
        header[name]["data_offsets"][1] -= 1 << 30
        data = data[:-4]
    elif change == "integer_weights":
        header[name]["dtype"] = "I32"
    elif change == "overlapping":
        other = "lateral.head.out.weight"
        header[name]["data_offsets"] = list(header[other]["data_offsets"])
    if change != "header_past_end":
        _write(path, header, data)
    with pytest.raises(CheckpointError, match=message):
        check(path)
    with pytest.raises(CheckpointError):
        load(path)


def test_a_network_too_big_for_one_image_is_refused(tmp_path):
    """A 4096 px model (the validator's maximum) with a 64-channel stem: 1 GiB for one image's first map."""
    path = save(TwoViewNet(ModelConfig.tiny(image_size=4096, init_features=64)), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="feature maps of 1,024 MiB per image"):
        check(path)


def test_a_checkpoint_save_wrote_passes_check_in_every_dtype(tmp_path):
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        path = save(TwoViewNet(ModelConfig.tiny()), tmp_path / f"{dtype}.safetensors", dtype=dtype)
        assert check(path) == ModelConfig.tiny()


CAPPED_LOAD = """
import resource, sys
from models.checkpoint import load
with open("/proc/self/status") as status:
    size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + 150 * 2**20, resource.RLIM_INFINITY))  # torch imports lazily: leave room
try:
    load(sys.argv[1])
    print("loaded")
except BaseException as err:  # report what came out, whatever it is
    print(f"{type(err).__name__}: {err}")
"""


def test_running_out_of_memory_while_loading_is_a_clean_error(tmp_path):
    """A model that passes `check` but does not fit the memory left is refused with a message (a capped process)."""
    config = dataclasses.replace(ModelConfig(), growth_rate=64)  # 67 M parameters, 268 MB: over the cap
    path = save(TwoViewNet(config), tmp_path / "wide.safetensors")
    done = subprocess.run(
        [sys.executable, "-c", CAPPED_LOAD, str(path)], capture_output=True, text=True, timeout=300
    )
    answer = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-2000:]
    assert answer.startswith("CheckpointError") and "not enough memory to load this model" in answer, answer


@pytest.mark.parametrize("config", [ModelConfig.tiny(), ModelConfig()], ids=["tiny", "densenet121"])
def test_the_meta_shortcuts_give_torchs_own_shapes(config: ModelConfig):
    """The header check answers shapes itself for the ops whose meta kernels would import torch._dynamo."""
    from models.checkpoint import _meta_outputs, _MetaShortcuts

    with torch.device("meta"), _MetaShortcuts():
        net = TwoViewNet(config)
    assert all(p.is_meta for p in net.parameters())
    for size in (config.image_size, 97):
        ours, torchs = _meta_outputs(net, size), _meta_outputs(net, size, shortcuts=False)
        assert len(ours) > len(list(net.frontal.modules())) and ours == torchs


@pytest.mark.parametrize(
    "func, options",
    [
        (torch.conv2d, {"stride": 2, "padding": 3}),
        (torch.conv2d, {"stride": (1, 2), "padding": (0, 1), "dilation": (2, 1), "groups": 2}),
        (torch.nn.functional.max_pool2d, {"kernel_size": 3, "stride": 2, "padding": 1}),
        (torch.nn.functional.max_pool2d, {"kernel_size": 3, "stride": 2, "ceil_mode": True}),
        (torch.nn.functional.max_pool2d, {"kernel_size": (2, 3), "dilation": 2, "ceil_mode": True}),
        (torch.nn.functional.avg_pool2d, {"kernel_size": 2, "stride": 2}),
        (torch.nn.functional.avg_pool2d, {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    ],
)
def test_the_window_shortcuts_match_torch_on_odd_sizes(func, options):
    """Convolution and pooling shapes, answered without PyTorch's meta kernels, equal them (7..33 px)."""
    from models.checkpoint import _MetaShortcuts

    weight = torch.empty(6, 2 if options.get("groups") else 4, 3, 3, device="meta")
    for height, width in ((7, 7), (8, 9), (13, 10), (33, 32)):
        image = torch.empty(2, 4, height, width, device="meta")
        args = (image, weight) if func is torch.conv2d else (image,)
        with _MetaShortcuts():
            ours = func(*args, **options).shape
        assert ours == func(*args, **options).shape, (height, width)


def test_a_wrong_channel_count_is_still_refused_on_meta():
    from models.checkpoint import _MetaShortcuts

    image, weight = torch.empty(1, 3, 16, 16, device="meta"), torch.empty(8, 4, 3, 3, device="meta")
    with pytest.raises(RuntimeError, match="channels"), _MetaShortcuts():
        torch.conv2d(image, weight)


def test_loading_a_checkpoint_imports_neither_torch_dynamo_nor_sympy(tmp_path):
    """Each was a second or so of every command's start (meta kernels' Python references and `torch._check`)."""
    path = save(TwoViewNet(ModelConfig.tiny()), tmp_path / "m.safetensors")
    script = (
        f"import sys; from models import checkpoint; checkpoint.load({str(path)!r}); "
        "print([m for m in ('torch._dynamo', 'sympy') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_a_loaded_model_has_no_meta_tensors_and_trains(tmp_path):
    """`load` fills the checked meta network with the file's tensors: every one is real and trainable."""
    path = save(TwoViewNet(ModelConfig.tiny()), tmp_path / "m.safetensors", dtype=torch.float16)
    model = load(path)
    tensors = list(model.state_dict(keep_vars=True).values())
    assert not any(t.is_meta for t in tensors) and all(t.dtype != torch.float16 for t in tensors)
    assert all(p.requires_grad for p in model.parameters())
