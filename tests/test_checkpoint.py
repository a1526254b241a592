"""Checkpoint writes are atomic and loads are verified."""

import pytest
import torch

from skelcli.engine.checkpoint import SCHEMA_VERSION, load_checkpoint, load_encoder, save_checkpoint
from skelcli.errors import SkelError
from skelcli.models.encoder import EncoderConfig, SkeletonEncoder

TINY = EncoderConfig(num_frames=16, t_patch=4, dim=32, depth=1, heads=2)


def _payload(enc):
    return {"method": "mamp", "encoder": enc.state_dict(), "encoder_config": enc.config.model_dump(), "epoch": 3,
            "data": {"dataset": "ntu60", "num_classes": 6}}


def test_round_trip_restores_encoder(tmp_path):
    enc = SkeletonEncoder(TINY)
    path = save_checkpoint(tmp_path / "c.pt", _payload(enc))
    loaded, info, ckpt = load_encoder(path)
    assert ckpt["schema_version"] == SCHEMA_VERSION and info.method == "mamp" and info.num_classes == 6
    x = torch.randn(2, 16, 25, 3)
    torch.testing.assert_close(loaded(x), enc.eval()(x))
    assert not list(tmp_path.glob(".*tmp*"))


def test_truncated_and_foreign_files_are_reported(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", _payload(SkeletonEncoder(TINY)))
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(SkelError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "trunc.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(SkelError, match="not a skelcli checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(SkelError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_newer_schema_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"method": "mamp"})
    ckpt = torch.load(path, weights_only=True)
    ckpt["schema_version"] = SCHEMA_VERSION + 1
    torch.save(ckpt, path)
    with pytest.raises(SkelError, match="newer"):
        load_checkpoint(path)


def test_failed_write_keeps_previous_file(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "c.pt", {"method": "mamp", "epoch": 1})

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint(path, {"method": "mamp", "epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert not list(tmp_path.glob(".*tmp*"))


def test_checkpoint_without_encoder(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"method": "mamp"})
    with pytest.raises(SkelError, match="no encoder"):
        load_encoder(path)
