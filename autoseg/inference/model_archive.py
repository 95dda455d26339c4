"""The zip container of model files (:mod:`autoseg.inference.model_file`): written atomically with a manifest
of SHA-256 checksums, read in memory with every entry checked.

Reading refuses entries that would escape a folder (absolute paths, ``..``, drive letters, links) and entries
the manifest does not list, bounds every entry's inflated size (a zip bomb is refused before inflation), and
verifies the checksum of every entry it reads. Which entries are read is the caller's choice, made from the
manifest: a one-fold prediction from a five-fold file inflates and hashes one fifth of the weights.
"""

from __future__ import annotations

import hashlib
import json
import stat
import zipfile
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from autoseg.errors import ModelError
from autoseg.inference.inputs import available_memory_bytes, format_bytes
from autoseg.io import atomic_target

MANIFEST = "autoseg_model.json"
"""The manifest entry: format version, what the file holds, and ``files``: entry name -> SHA-256."""
NETWORK_PREFIX = "folds/"
"""Entries under this folder are networks (weights or ONNX graphs), bounded by
:data:`MAX_WEIGHTS_ENTRY_BYTES`; every other entry is JSON, bounded by :data:`MAX_JSON_ENTRY_BYTES`."""

MAX_JSON_ENTRY_BYTES = 64 * 2**20
"""The most a JSON entry of a model file may inflate to (plans with a few hundred channels are ~100 KiB)."""
MAX_WEIGHTS_ENTRY_BYTES = 16 * 2**30
"""The most one fold's network may inflate to (nnU-Net's largest residual encoders are ~1 GiB)."""
MAX_COMPRESSION_RATIO = 100
"""Network weights deflate to ~0.9 of their size and JSON to ~0.2; an entry over 1 MiB inflating more than
this many times its stored size is not a model file's (a zip bomb)."""


def write_archive(out: Path, manifest: Mapping[str, Any], entries: Mapping[str, bytes]) -> Path:
    """Write ``manifest`` (with ``files``, the SHA-256 of every entry, added) and ``entries`` into the zip
    ``out`` atomically (a failed write leaves no file); returns ``out``."""
    listed = dict(manifest) | {
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in entries.items()}
    }
    with (
        atomic_target(out) as temporary,
        zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive,
    ):
        archive.writestr(MANIFEST, json_bytes(listed))
        for name, data in entries.items():
            archive.writestr(name, data)
    return out


def read_archive(
    path: Path, max_version: int, select: Callable[[dict[str, Any]], Collection[str]]
) -> dict[str, bytes]:
    """The entries of a model file that ``select`` chooses from its manifest (``MANIFEST`` included), after
    checking every entry's name, the manifest's format version (at most ``max_version``), that every entry is
    listed, the sizes, and the checksums of those read.

    Args:
        path: the zip file.
        max_version: the newest ``format_version`` this autoseg reads.
        select: manifest -> the listed entries to read (the others are neither inflated nor verified).
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as error:
        raise ModelError(f"{path}: not a readable model file ({error})") from None
    with archive:
        infos = {info.filename: info for info in archive.infolist()}
        for info in infos.values():
            _check_entry(info, path)
        if MANIFEST not in infos:
            raise ModelError(f"{path}: no {MANIFEST}; not an autoseg model file")
        entries = {MANIFEST: _read_entry(archive, infos[MANIFEST], path)}
        manifest = json_entry(entries, MANIFEST, path)
        version = manifest.get("format_version")
        if not isinstance(version, int) or version > max_version:
            raise ModelError(
                f"{path}: model format {version}; this autoseg reads up to {max_version}. Upgrade autoseg."
            )
        listed = as_dict(manifest.get("files", {}), f"{path}:{MANIFEST} files")
        unexpected = sorted(set(infos) - set(listed) - {MANIFEST})
        if unexpected:
            raise ModelError(f"{path}: entries not in the manifest: {', '.join(unexpected[:5])}")
        wanted = set(select(manifest))
        chosen = [name for name in listed if name in wanted]
        missing = [name for name in chosen if name not in infos]
        if missing:
            raise ModelError(f"{path}: {missing[0]} is listed in the manifest but missing")
        _check_total_size([infos[name] for name in chosen], path)
        for name in chosen:
            entries[name] = _read_entry(archive, infos[name], path, digest=str(listed[name]))
    return entries


def _read_entry(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, *, digest: str | None = None
) -> bytes:
    """One entry, inflated as a bounded stream: refused before any inflation when its declared size is over
    its limit or its compression ratio is implausible, and while inflating when it yields more than it
    declared; the SHA-256 ``digest`` (the manifest's) is checked. Zip errors (bad CRC, deflate errors) name
    the file and the entry."""
    name = info.filename
    limit = MAX_WEIGHTS_ENTRY_BYTES if name.startswith(NETWORK_PREFIX) else MAX_JSON_ENTRY_BYTES
    if info.file_size > limit:
        raise ModelError(
            f"{path}: entry {name} declares {info.file_size / 2**20:.1f} MiB; at most "
            f"{limit / 2**20:.0f} MiB allowed for it; refusing the file"
        )
    if info.file_size > 2**20 and info.file_size > MAX_COMPRESSION_RATIO * max(1, info.compress_size):
        raise ModelError(
            f"{path}: entry {name} would inflate {info.compress_size} bytes to "
            f"{info.file_size / 2**20:.1f} MiB (over {MAX_COMPRESSION_RATIO}x); refusing the file"
        )
    hasher = hashlib.sha256()
    chunks: list[bytes] = []
    total = 0
    try:
        with archive.open(info) as stream:
            while chunk := stream.read(min(2**20, info.file_size - total + 1)):
                total += len(chunk)
                if total > info.file_size:
                    raise ModelError(f"{path}: entry {name} inflates past its declared size; refusing it")
                hasher.update(chunk)
                chunks.append(chunk)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError, NotImplementedError) as error:
        raise ModelError(f"{path}: entry {name} is corrupt ({type(error).__name__}: {error})") from None
    if digest is not None and hasher.hexdigest() != digest:
        raise ModelError(f"{path}: checksum mismatch for {name}; the file is corrupt or was modified")
    return b"".join(chunks)


def _check_total_size(infos: Sequence[zipfile.ZipInfo], path: Path) -> None:
    """Refuse a model whose entries to read would not fit in the memory available now."""
    total = sum(info.file_size for info in infos)
    available = available_memory_bytes()
    if available is not None and 2 * total > available:  # the entries, then the tensors built from them
        raise ModelError(
            f"{path}: reading it needs about {format_bytes(2 * total)}; {format_bytes(available)} of memory "
            "is available"
        )


def _check_entry(info: zipfile.ZipInfo, path: Path) -> None:
    """Refuse entries that would land outside a folder they are extracted to, and links."""
    name = info.filename
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
        raise ModelError(f"{path}: entry '{name}' would escape the model folder; refusing the file")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ModelError(f"{path}: entry '{name}' is a symbolic link; refusing the file")


def json_entry(entries: Mapping[str, bytes], name: str, path: Path) -> dict[str, Any]:
    """A JSON object entry of the model file; malformed JSON names the file and the entry."""
    try:
        data = json.loads(entries[name])
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelError(f"{path}:{name}: not valid JSON ({error})") from None
    return as_dict(data, f"{path}:{name}")


def as_dict(value: object, where: str) -> dict[str, Any]:
    """``value`` if it is a JSON object, else a :class:`ModelError` naming ``where``."""
    if not isinstance(value, dict):
        raise ModelError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def as_list(value: object, where: str) -> list[Any]:
    """``value`` if it is a JSON list, else a :class:`ModelError` naming ``where``."""
    if not isinstance(value, list):
        raise ModelError(f"{where}: expected a JSON list, got {type(value).__name__}")
    return value


def json_bytes(data: object) -> bytes:
    """Indented JSON, as every JSON entry of a model file is written."""
    return (json.dumps(data, indent=2) + "\n").encode()
