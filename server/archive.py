"""TorchServe model archives (`.mar`): read the manifest, serve the file inside.

A `.mar` is a zip with `MAR-INF/MANIFEST.json` naming the model, its version,
its serialized file and a handler. We serve ONNX and TorchScript serialized
files with our own backends. Handler code is never run: an archive whose
handler is a Python file or `module:function` in the archive (or that carries
an eager-mode model definition, `modelFile`) is refused, naming it.

Only the serialized file (and an optional `modelsoak.yaml` with input/output
specs, packed with `--extra-files`) is extracted, under the cache directory, to
a path we choose: member names never become paths, so a `../x` member cannot
write outside it; such an archive is refused anyway, naming the member.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

log = logging.getLogger("modelsoak.server")

MANIFEST = "MAR-INF/MANIFEST.json"
SERVED_SUFFIXES = {".onnx": "onnx", ".pt": "torch", ".ts": "torch", ".pth": "torch"}
#: TorchServe's handlers that ship with TorchServe (no code in the archive). We
#: serve the serialized file's tensors as they come: no pre- or post-processing.
BUILTIN_HANDLERS = (
    "base_handler",
    "image_classifier",
    "image_segmenter",
    "object_detector",
    "text_classifier",
)
SPEC_FILE = "modelsoak.yaml"


class ArchiveError(ValueError):
    """The archive cannot be served; the message names the archive and the problem."""


@dataclass(frozen=True)
class Archive:
    """What a .mar holds that we serve, with the serialized file extracted."""

    path: Path
    model_name: str
    version: str
    handler: str
    serialized: Path
    backend: str
    spec: dict[str, Any]


def _safe_member(name: str) -> bool:
    p = PurePosixPath(name.replace("\\", "/"))
    return not p.is_absolute() and ".." not in p.parts and not (p.parts and ":" in p.parts[0])


def _manifest(mar: Path, zf: zipfile.ZipFile) -> dict[str, Any]:
    unsafe = [n for n in zf.namelist() if not _safe_member(n)]
    if unsafe:
        raise ArchiveError(
            f"{mar}: member path(s) {unsafe} leave the archive (absolute or '..'); refusing it"
        )
    try:
        raw = zf.read(MANIFEST)
    except KeyError:
        raise ArchiveError(
            f"{mar}: no {MANIFEST}; expected a TorchServe model archive made by torch-model-archiver"
        ) from None
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"{mar}: {MANIFEST} is not valid JSON: {exc}") from None
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict):
        raise ArchiveError(f"{mar}: {MANIFEST} has no 'model' mapping")
    return model


def _check_handler(mar: Path, model: dict[str, Any]) -> str:
    handler = str(model.get("handler") or "")
    supported = f"supported: TorchServe's built-in handlers ({', '.join(BUILTIN_HANDLERS)})"
    # Anything but a built-in name is code: a .py in the archive, module:function, a module.
    if handler and handler not in BUILTIN_HANDLERS:
        raise ArchiveError(
            f"{mar}: handler {handler!r} is custom Python code, which modelsoak does not run; "
            f"{supported} with an ONNX or TorchScript serialized file"
        )
    if model.get("modelFile"):
        raise ArchiveError(
            f"{mar}: model file {model['modelFile']!r} is an eager-mode Python model definition, "
            "which modelsoak does not run; archive an ONNX or TorchScript serialized file instead"
        )
    return handler or "base_handler"


def _extract(zf: zipfile.ZipFile, member: str, folder: Path, name: str) -> Path:
    """Write one member to folder/name (a name we chose), atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if target.is_file():
        return target
    tmp = folder / f".{name}.{os.getpid()}.tmp"
    with zf.open(member) as src, open(tmp, "wb") as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    tmp.replace(target)
    return target


def _digest(mar: Path) -> str:
    h = hashlib.sha256()
    with open(mar, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()[:16]


def default_cache_dir() -> Path:
    # As server.builtin.default_cache_dir, without importing torch.
    env = os.environ.get("MODELSOAK_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "modelsoak" / "models"


def open_archive(mar: Path, cache_dir: Path | None = None) -> Archive:
    """Check `mar` and extract its serialized file under cache_dir/archives/."""
    cache_dir = cache_dir or default_cache_dir()
    if not mar.is_file():
        raise ArchiveError(f"model archive {mar} does not exist")
    try:
        zf = zipfile.ZipFile(mar)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"{mar}: not a zip file ({exc}); expected a .mar from torch-model-archiver") from None
    with zf:
        model = _manifest(mar, zf)
        names = set(zf.namelist())
        handler = _check_handler(mar, model)
        name = str(model.get("modelName") or mar.stem)
        version = str(model.get("modelVersion") or "1")
        serialized = str(model.get("serializedFile") or "")
        suffix = PurePosixPath(serialized).suffix.lower()
        if suffix not in SERVED_SUFFIXES:
            raise ArchiveError(
                f"{mar}: serialized file {serialized!r} is not ONNX or TorchScript; "
                f"expected one of {sorted(SERVED_SUFFIXES)}"
            )
        member = PurePosixPath(serialized).name if serialized not in names else serialized
        if member not in names:
            raise ArchiveError(
                f"{mar}: the manifest names serialized file {serialized!r}, which is not in the archive "
                f"(it holds: {sorted(names)})"
            )
        folder = cache_dir / "archives" / f"{name}-{version}-{_digest(mar)}"
        path = _extract(zf, member, folder, f"model{suffix}")
        spec = _read_spec(mar, zf, names)
    log.info("archive %s: model %s version %s, handler %s, %s", mar, name, version, handler, path.name)
    return Archive(mar, name, version, handler, path, SERVED_SUFFIXES[suffix], spec)


def _read_spec(mar: Path, zf: zipfile.ZipFile, names: set[str]) -> dict[str, Any]:
    if SPEC_FILE not in names:
        return {}
    import yaml

    try:
        doc = yaml.safe_load(zf.read(SPEC_FILE))
    except yaml.YAMLError as exc:
        raise ArchiveError(f"{mar}: {SPEC_FILE} is not valid YAML: {exc}") from None
    allowed = {"inputs", "outputs", "max_batch_size"}
    if not isinstance(doc, dict) or set(doc) - allowed:
        raise ArchiveError(f"{mar}: {SPEC_FILE} must be a mapping with some of {sorted(allowed)}")
    return doc
