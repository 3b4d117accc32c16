"""The model repository: which models to serve, and the registry of loaded ones.

A repository is one of:
- a single model: a built-in name (`identity`, `resnet18`, ...), an `.onnx` file
  or a TorchScript file;
- a config file (`.yaml`, `.yml` or `.json`) with a `models:` list, each entry
  as in `ModelEntry` (paths relative to the file);
- a directory with one sub-directory per model, Triton-style: `<name>/model.onnx`
  or `<name>/<version>/model.onnx` (or `model.pt`), plus an optional
  `<name>/modelsoak.yaml` holding the same keys as a config entry;
- a TorchServe model archive (`.mar`), or a TorchServe model store: a directory
  of `.mar` files (server/archive.py), side by side with model folders or alone.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from server.backends import ModelSource
from server.errors import ModelNotFound, ModelNotReady
from server.generation import GenerationEngine
from server.scheduler import Scheduler
from server.stats import ModelStats
from server.types import ModelInfo, TensorSpec

MODEL_FILES = ("model.onnx", "model.pt", "model.ts", "model.pth")


class RepositoryError(ValueError):
    """The repository (config file, directory, model spec) is malformed."""


@dataclass
class ModelEntry(ModelSource):
    """One model version to serve: what to load, and its scheduling settings."""

    version: str = "1"
    max_queue_delay_us: int = 500
    max_queue_size: int = 1024
    instances: int = 1


ENTRY_KEYS = {f.name for f in fields(ModelEntry)}


def parse_tensor_spec(text: str | dict[str, Any]) -> TensorSpec:
    """`NAME:DTYPE:d0xd1x...` (or a mapping with name/datatype/shape) to a TensorSpec."""
    from server import dtypes

    if isinstance(text, dict):
        name, dt, shape = text.get("name"), text.get("datatype"), text.get("shape")
        if not isinstance(name, str) or not isinstance(dt, str) or not isinstance(shape, list):
            raise RepositoryError(
                f"tensor spec {text!r}: expected keys name (str), datatype (str), shape (list)"
            )
        dims = [int(d) for d in shape]
    else:
        parts = text.split(":")
        if len(parts) != 3:
            raise RepositoryError(
                f"tensor spec {text!r}: expected NAME:DATATYPE:DIMS, e.g. INPUT0:FP32:-1x3x224x224"
            )
        name, dt = parts[0], parts[1].upper()
        try:
            dims = [int(d) for d in parts[2].lower().split("x")]
        except ValueError:
            raise RepositoryError(
                f"tensor spec {text!r}: dimensions must be integers joined by 'x', -1 for any size"
            ) from None
    if dt not in dtypes.DTYPES:
        raise RepositoryError(
            f"tensor spec {text!r}: unknown datatype {dt!r}; expected one of {dtypes.names()}"
        )
    return TensorSpec(name, dt, tuple(dims))


def entry_from_mapping(raw: dict[str, Any], base: Path, where: str) -> ModelEntry:
    unknown = set(raw) - ENTRY_KEYS
    if unknown:
        raise RepositoryError(
            f"{where}: unknown key(s) {sorted(unknown)}; expected some of {sorted(ENTRY_KEYS)}"
        )
    if "name" not in raw or "source" not in raw:
        raise RepositoryError(f"{where}: each model needs 'name' and 'source'")
    data = dict(raw)
    source = str(data.pop("source"))
    if any(source.endswith(ext) for ext in (".onnx", ".pt", ".ts", ".pth")):
        path = Path(source)
        source = str(path if path.is_absolute() else (base / path).resolve())
    for key in ("inputs", "outputs"):
        if data.get(key) is not None:
            data[key] = [parse_tensor_spec(t) for t in data[key]]
    data["version"] = str(data.get("version", "1"))
    try:
        return ModelEntry(source=source, **data)
    except TypeError as exc:
        raise RepositoryError(f"{where}: {exc}") from None


def _load_document(path: Path) -> Any:
    text = path.read_text()
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise RepositoryError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from None


def read_config_file(path: Path) -> list[ModelEntry]:
    doc = _load_document(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise RepositoryError(f"{path}: expected a mapping with a 'models' list")
    entries = []
    for i, raw in enumerate(doc["models"]):
        if not isinstance(raw, dict):
            raise RepositoryError(f"{path}: models[{i}] must be a mapping")
        entries.append(entry_from_mapping(raw, path.parent, f"{path}: models[{i}]"))
    return entries


def _model_file(folder: Path) -> Path | None:
    for name in MODEL_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def archive_entry(mar: Path, cache_dir: Path | None) -> ModelEntry:
    """The entry of a TorchServe model archive (server/archive.py)."""
    from server.archive import ArchiveError, open_archive

    try:
        arc = open_archive(mar, cache_dir)
        raw = {**arc.spec, "name": arc.model_name, "version": arc.version,
               "source": str(arc.serialized), "backend": arc.backend}  # fmt: skip
        return entry_from_mapping(raw, arc.serialized.parent, str(mar))
    except ArchiveError as exc:
        raise RepositoryError(str(exc)) from None


def read_directory(path: Path, cache_dir: Path | None = None) -> list[ModelEntry]:
    # A TorchServe model store: .mar files side by side with (or instead of) model folders.
    entries = [archive_entry(p, cache_dir) for p in sorted(path.glob("*.mar")) if p.is_file()]
    for model_dir in sorted(p for p in path.iterdir() if p.is_dir()):
        overrides: dict[str, Any] = {}
        cfg = model_dir / "modelsoak.yaml"
        if cfg.is_file():
            overrides = _load_document(cfg) or {}
            if not isinstance(overrides, dict):
                raise RepositoryError(f"{cfg}: expected a mapping")
        found: list[tuple[str, Path | str]] = []
        direct = _model_file(model_dir)
        if direct is not None:
            found.append(("1", direct))
        for vdir in sorted(p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()):
            vfile = _model_file(vdir)
            if vfile is not None:
                found.append((vdir.name, vfile))
        if not found and "source" in overrides:
            found.append((str(overrides.get("version", "1")), overrides["source"]))
        if not found:
            raise RepositoryError(
                f"{model_dir}: no model file; expected one of {MODEL_FILES} in it or in a "
                "numbered version folder, or a 'source' in modelsoak.yaml"
            )
        for version, file in found:
            raw = {**overrides, "name": model_dir.name, "version": version, "source": str(file)}
            entries.append(entry_from_mapping(raw, model_dir, str(model_dir)))
    if not entries:
        raise RepositoryError(f"{path}: the model repository holds no model folders or .mar archives")
    return entries


def resolve(model: str, defaults: dict[str, Any], cache_dir: Path | None = None) -> list[ModelEntry]:
    """Turn the server's --model value into the entries to load.

    `defaults` (backend, device, batching, params ...) apply to every entry that
    does not set the key itself.
    """
    path = Path(model)
    if path.is_dir():
        entries = read_directory(path, cache_dir)
    elif path.suffix == ".mar":
        entries = [archive_entry(path, cache_dir)]
    elif path.suffix in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise RepositoryError(f"model repository config {path} does not exist")
        entries = read_config_file(path)
    else:
        if path.suffix in (".onnx", ".pt", ".ts", ".pth"):
            if not path.is_file():
                raise RepositoryError(f"model file {path} does not exist")
            name, source = path.stem, str(path.resolve())
        else:
            name, source = model, model
        entries = [ModelEntry(name=name, source=source)]
    keys = [(e.name, e.version) for e in entries]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise RepositoryError(f"models listed twice (name, version): {dupes}")
    return [_apply_defaults(e, defaults) for e in entries]


def _apply_defaults(entry: ModelEntry, defaults: dict[str, Any]) -> ModelEntry:
    base = ModelEntry(name=entry.name, source=entry.source)
    for key, value in defaults.items():
        if value is None:
            continue
        if key == "params":
            entry.params = {**value, **entry.params}
        elif getattr(entry, key) == getattr(base, key):
            setattr(entry, key, value)
    return entry


@dataclass
class ServedModel:
    info: ModelInfo
    scheduler: Scheduler
    stats: ModelStats
    entry: ModelEntry
    # A streaming model's generations run here; its scheduler then serves no tensors.
    engine: GenerationEngine | None = None

    def start(self) -> None:
        """Start the workers on the running loop."""
        self.scheduler.start()
        if self.engine is not None:
            self.engine.start()

    def close(self) -> None:
        """Refuse new requests; queued and running ones complete."""
        self.scheduler.close()
        if self.engine is not None:
            self.engine.close()

    async def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or running; False on timeout."""
        end = time.monotonic() + timeout_s
        drained = await self.scheduler.drain(timeout_s)
        if self.engine is not None:
            drained = await self.engine.drain(max(0.0, end - time.monotonic())) and drained
        return drained

    def shutdown(self) -> None:
        """Stop the threads and release the instances (after drain)."""
        self.scheduler.shutdown_threads()
        for inst in self.scheduler.instances:
            inst.close()
        if self.engine is not None:
            self.engine.shutdown()


class ModelRegistry:
    """Loaded models by name and version; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], ServedModel] = {}
        self._catalog: dict[tuple[str, str], ModelEntry] = {}
        self._failed: dict[tuple[str, str], str] = {}
        # (name, version) and (name, "") -> loaded model, rebuilt on every change.
        self._fast: dict[tuple[str, str], ServedModel] = {}

    def _rebuild_fast(self) -> None:
        fast: dict[tuple[str, str], ServedModel] = {}
        for (name, version), model in self._models.items():
            fast[(name, version)] = model
            latest = max((v for (n, v) in self._catalog if n == name), key=lambda v: (len(v), v))
            if version == latest:
                fast[(name, "")] = model
        self._fast = fast

    def add_catalog(self, entries: list[ModelEntry]) -> None:
        with self._lock:
            for e in entries:
                self._catalog[(e.name, e.version)] = e

    def put(self, model: ServedModel) -> None:
        with self._lock:
            key = (model.info.name, model.info.version)
            self._models[key] = model
            self._failed.pop(key, None)
            self._rebuild_fast()

    def mark_failed(self, entry: ModelEntry, reason: str) -> None:
        with self._lock:
            self._failed[(entry.name, entry.version)] = reason

    def remove(self, name: str, version: str) -> ServedModel | None:
        with self._lock:
            model = self._models.pop((name, version), None)
            self._rebuild_fast()
            return model

    def get(self, name: str, version: str = "") -> ServedModel:
        """The loaded model; NOT_FOUND / UNAVAILABLE errors name what exists."""
        # Every request looks its model up: a plain dict read (atomic under the
        # GIL) serves the common case; the locked path below explains misses.
        model = self._fast.get((name, version))
        if model is not None:
            return model
        with self._lock:
            versions = sorted((v for (n, v) in self._catalog if n == name), key=lambda v: (len(v), v))
            if not versions:
                known = sorted({n for (n, _) in self._catalog})
                raise ModelNotFound(
                    f"unknown model '{name}'; this server serves: {', '.join(known) or 'nothing'}"
                )
            if version and version not in versions:
                raise ModelNotFound(
                    f"model '{name}' has no version '{version}'; available versions: {', '.join(versions)}"
                )
            key = (name, version or versions[-1])
            model = self._models.get(key)
            if model is None:
                why = self._failed.get(key, "it is not loaded")
                raise ModelNotReady(f"model '{name}' version '{key[1]}' is not ready: {why}")
            return model

    def entries(self, name: str) -> list[ModelEntry]:
        with self._lock:
            found = [e for (n, _), e in self._catalog.items() if n == name]
        if not found:
            raise ModelNotFound(f"model '{name}' is not in the repository")
        return found

    def loaded(self) -> list[ServedModel]:
        with self._lock:
            return list(self._models.values())

    def index(self) -> list[tuple[ModelEntry, str, str]]:
        """(entry, state, reason) for every model of the repository."""
        with self._lock:
            out = []
            for key, entry in sorted(self._catalog.items()):
                if key in self._models:
                    out.append((entry, "READY", ""))
                else:
                    out.append((entry, "UNAVAILABLE", self._failed.get(key, "unloaded")))
            return out
