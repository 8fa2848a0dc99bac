"""Checkpoints and configs: bit-identical round trips, pickles refused, mismatches named."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import save_file

from models import CheckpointError, ConfigError, ModelConfig, TwoViewNet
from models.checkpoint import describe, load, read_config, save
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
