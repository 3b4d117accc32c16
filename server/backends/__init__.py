"""Model loading: from a built-in name or a model file to a `PreparedModel`, whose
instances are `server.types.Backend`s (ONNX Runtime or torch).

Importing this package is cheap (no torch, no onnxruntime): the loader imports
the built-ins and the backend modules when a model is prepared.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.backends.base import DATATYPES, ONNX_BF16, ONNX_STRING, ModelLoadError, datatype_of_ort
from server.types import PLATFORMS, Backend, TensorSpec

__all__ = ["DATATYPES", "ONNX_BF16", "ONNX_STRING", "ModelLoadError", "ModelSource", "PreparedModel",
           "datatype_of_ort", "prepare_model"]  # fmt: skip


#: Parameters every model accepts that configure the backend, not the model.
BACKEND_OPTIONS = ("threads", "torch_mode")
TORCH_MODES = ("eager", "torchscript")
#: max_batch_size of a batchable model file when none is given.
DEFAULT_FILE_MAX_BATCH = 32
TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".pth")


@dataclass
class ModelSource:
    """What to serve: a built-in model or a file, on which backend and device."""

    name: str
    source: str
    backend: str = "onnx"
    device: str = "cpu"
    params: dict[str, Any] = field(default_factory=dict)
    inputs: list[TensorSpec] | None = None
    outputs: list[TensorSpec] | None = None
    max_batch_size: int | None = None


@dataclass
class PreparedModel:
    """A model ready to be instantiated: its metadata and an instance factory.

    `sha256` is that of the file served (ONNX or TorchScript file); for a
    built-in on the torch backend, of its definition (cache key and weights).
    """

    name: str
    platform: str
    backend: str
    device: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    max_batch_size: int
    sha256: str
    source: str
    description: str
    parameters: dict[str, Any]
    factory: Callable[[int], Backend] = field(repr=False)

    def create_instance(self, index: int) -> Backend:
        """One instance (its own ORT session, or its own module copy and CUDA stream)."""
        return self.factory(index)


@dataclass(frozen=True)
class BackendOptions:
    threads: int | None
    torch_mode: str


def prepare_model(src: ModelSource, cache_dir: Path | None = None) -> PreparedModel:
    """Check a model source and make what its instances are created from.

    Built-ins are built (and exported to ONNX / TorchScript into `cache_dir`,
    default `$MODELSOAK_CACHE_DIR` or ~/.cache/modelsoak/models) on first use.
    Raises ModelLoadError with a message naming the problem.
    """
    from server import builtin

    _check_backend_and_device(src.backend, src.device)
    options = _backend_options(src)
    model_params = {k: v for k, v in src.params.items() if k not in BACKEND_OPTIONS}
    if src.source in builtin.BUILTIN_MODELS:
        return _prepare_builtin(src, model_params, options, cache_dir)
    path = Path(src.source).expanduser()
    if not _looks_like_path(src.source):
        names = ", ".join(builtin.BUILTIN_MODELS)
        raise ModelLoadError(
            f"model {src.name!r}: {src.source!r} is neither a built-in model ({names}) "
            f"nor a model file path (.onnx, or TorchScript {', '.join(TORCHSCRIPT_SUFFIXES)})"
        )
    if not path.is_file():
        what = "is a directory, not a model file" if path.is_dir() else "does not exist"
        raise ModelLoadError(f"model {src.name!r}: model file {str(path)!r} {what}")
    if model_params:
        raise ModelLoadError(
            f"model {src.name!r}: parameter(s) {', '.join(sorted(model_params))} apply to "
            f"built-in models only; a model file accepts: threads"
        )
    return _prepare_file(src, path, options)


def _check_backend_and_device(backend: str, device: str) -> None:
    if backend not in ("onnx", "torch"):
        raise ModelLoadError(f"unknown backend {backend!r}; expected 'onnx' or 'torch'")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ModelLoadError(f"unknown device {device!r}; expected 'cpu', 'cuda' or 'cuda:N'")
    if device.startswith("cuda"):
        if backend == "torch":
            from server.backends.torch import check_cuda
        else:
            from server.backends.onnx import check_cuda
        check_cuda(device)


def _backend_options(src: ModelSource) -> BackendOptions:
    threads = src.params.get("threads")
    if threads is not None:
        try:
            threads = int(threads)
        except (TypeError, ValueError):
            threads = 0
        if threads < 1:
            raise ModelLoadError(
                f"model {src.name!r}: threads={src.params['threads']!r}; expected an integer >= 1"
            )
    mode = str(src.params.get("torch_mode", "eager"))
    if mode not in TORCH_MODES:
        raise ModelLoadError(
            f"model {src.name!r}: torch_mode={mode!r}; expected one of {', '.join(TORCH_MODES)}"
        )
    if "torch_mode" in src.params and src.backend != "torch":
        raise ModelLoadError(f"model {src.name!r}: torch_mode applies to the torch backend only")
    return BackendOptions(threads, mode)


def _looks_like_path(source: str) -> bool:
    return "/" in source or "\\" in source or bool(Path(source).suffix) or Path(source).exists()


def _prepare_builtin(
    src: ModelSource, params: dict[str, Any], options: BackendOptions, cache_dir: Path | None
) -> PreparedModel:
    from server import builtin

    definition = builtin.BUILTIN_MODELS[src.source]
    built = definition.build(params)
    inputs = _override(src.name, "input", built.inputs, src.inputs)
    outputs = _override(src.name, "output", built.outputs, src.outputs)
    max_batch = _max_batch(src, inputs, outputs, definition.max_batch_size)
    device = src.device
    factory: Callable[[int], Backend]
    if src.backend == "onnx":
        from server.backends.onnx import OnnxBackend

        path = built.onnx_path(cache_dir)
        sha = builtin.file_sha256(path)
        factory = lambda i: OnnxBackend(  # noqa: E731
            path, inputs, outputs, device, options.threads, built.make_effect(device)
        )
    else:
        from server.backends.torch import TorchBackend, load_torchscript

        _refuse_bytes(src, inputs + outputs)
        sha = _state_sha256(built)
        make_module: Callable[[], Any] = built.module
        if options.torch_mode == "torchscript":
            ts_path = built.torchscript_path(cache_dir)
            make_module = lambda: load_torchscript(ts_path, device)  # noqa: E731
        factory = lambda i: TorchBackend(  # noqa: E731
            make_module(), inputs, outputs, device, options.threads, built.make_effect(device)
        )
    return PreparedModel(
        name=src.name,
        platform=_platform(src.backend),
        backend=src.backend,
        device=device,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch,
        sha256=sha,
        source=src.source,
        description=definition.description,
        parameters={**built.params, **_given_options(src)},
        factory=factory,
    )


def _prepare_file(src: ModelSource, path: Path, options: BackendOptions) -> PreparedModel:
    from server import builtin

    suffix = path.suffix.lower()
    factory: Callable[[int], Backend]
    if suffix == ".onnx":
        from server.backends.onnx import OnnxBackend, inspect_onnx

        _require_backend(src, "onnx", "ONNX files")
        found_in, found_out = inspect_onnx(path)
        inputs = _override(src.name, "input", found_in, src.inputs)
        outputs = _override(src.name, "output", found_out, src.outputs)
        factory = lambda i: OnnxBackend(  # noqa: E731
            path, inputs, outputs, src.device, options.threads, None
        )
        kind = "ONNX"
    elif suffix in TORCHSCRIPT_SUFFIXES:
        from server.backends.torch import TorchBackend, infer_outputs, load_torchscript

        _require_backend(src, "torch", "TorchScript files")
        if not src.inputs:
            raise ModelLoadError(
                f"model {src.name!r}: a TorchScript file carries no input names or shapes; "
                "give the inputs, e.g. INPUT0:FP32:-1,3,224,224 (batch dimension -1)"
            )
        inputs = list(src.inputs)
        _refuse_bytes(src, inputs + list(src.outputs or []))
        outputs = list(src.outputs or infer_outputs(path, inputs, src.device))
        factory = lambda i: TorchBackend(  # noqa: E731
            load_torchscript(path, src.device), inputs, outputs, src.device, options.threads, None
        )
        kind = "TorchScript"
    else:
        raise ModelLoadError(
            f"model {src.name!r}: cannot tell the format of {str(path)!r} from its extension "
            f"{suffix or '(none)'}; expected .onnx or a TorchScript file "
            f"({', '.join(TORCHSCRIPT_SUFFIXES)})"
        )
    return PreparedModel(
        name=src.name,
        platform=_platform(src.backend),
        backend=src.backend,
        device=src.device,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=_max_batch(src, inputs, outputs, DEFAULT_FILE_MAX_BATCH),
        sha256=builtin.file_sha256(path),
        source=str(path),
        description=f"{kind} model from {path.name}",
        parameters=_given_options(src),
        factory=factory,
    )


def _platform(backend: str) -> str:
    return PLATFORMS[backend]


def _given_options(src: ModelSource) -> dict[str, Any]:
    return {k: v for k, v in src.params.items() if k in BACKEND_OPTIONS}


def _require_backend(src: ModelSource, backend: str, what: str) -> None:
    if src.backend != backend:
        raise ModelLoadError(
            f"model {src.name!r}: {what} are served by the {backend} backend, "
            f"not {src.backend!r}; use --backend {backend}"
        )


def _refuse_bytes(src: ModelSource, specs: Sequence[TensorSpec]) -> None:
    for spec in specs:
        if spec.datatype == "BYTES":
            raise ModelLoadError(
                f"model {src.name!r}: {spec.name} is BYTES, and the torch backend cannot "
                "serve BYTES tensors (torch has no string tensors); use --backend onnx"
            )


def _override(
    model: str, kind: str, actual: list[TensorSpec], given: list[TensorSpec] | None
) -> list[TensorSpec]:
    """`given` in place of `actual` if they agree: same names and datatypes, and
    each given dim equal to the model's or pinning one of its -1 dims."""
    if not given:
        return list(actual)
    want = [s.name for s in actual]
    if [s.name for s in given] != want:
        raise ModelLoadError(
            f"model {model!r}: {kind}s given as {[s.name for s in given]}, but the model's {kind}s are {want}"
        )
    for g, a in zip(given, actual, strict=True):
        fits = len(g.shape) == len(a.shape) and all(
            ad == -1 or gd == ad for gd, ad in zip(g.shape, a.shape, strict=True)
        )
        if g.datatype != a.datatype or not fits:
            raise ModelLoadError(
                f"model {model!r}: {kind} given as {g.describe()}, which does not fit "
                f"the model's {a.describe()}"
            )
    return list(given)


def _max_batch(src: ModelSource, inputs: list[TensorSpec], outputs: list[TensorSpec], default: int) -> int:
    """The model's default when batchable (every tensor's first dim is -1), else 0."""
    fixed = [s for s in inputs + outputs if not s.shape or s.shape[0] != -1]
    if src.max_batch_size is None:
        return 0 if fixed else default
    if src.max_batch_size < 0:
        raise ModelLoadError(f"model {src.name!r}: max_batch_size={src.max_batch_size}; expected >= 0")
    if src.max_batch_size > 0 and fixed:
        raise ModelLoadError(
            f"model {src.name!r} is not batchable: {fixed[0].describe()} has no dynamic first "
            f"(batch) dimension; max_batch_size must be 0, not {src.max_batch_size}"
        )
    return src.max_batch_size


def _state_sha256(built: Any) -> str:
    """sha256 of a built-in's definition: cache key (name, params, version) + weights."""
    import hashlib

    from server.builtin import iter_state_bytes

    h = hashlib.sha256(built.cache_key.encode())
    for chunk in iter_state_bytes(built.module()):
        h.update(chunk)
    return h.hexdigest()
