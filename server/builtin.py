"""Built-in models: defined in code, made from fixed seeds on first use, no downloads.

Each built-in is a torch module (served eagerly or as TorchScript by the torch
backend) and an ONNX file exported from it into a cache directory (served by
ONNX Runtime). Pass-through models (identity, sleep, leaky) get their ONNX graph
written directly with `onnx.helper` (one Identity node): that works for every
datatype, strings included, which the torch exporter cannot do.

`sleep` and `leaky` add a host-side effect that the backends run inside the
compute phase of every execution (see `server.types.SideEffect`). The modules
and effects themselves are in `server.builtin_nets`.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import tempfile
import textwrap
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import helper
from torch import nn

from server.backends.base import DATATYPES, ModelLoadError
from server.builtin_nets import Echo, LeakEffect, ResNet18, SleepEffect, make_mlp, release_leaked
from server.types import SideEffect, TensorSpec

__all__ = [
    "BUILTIN_MODELS",
    "BuiltModel",
    "BuiltinModel",
    "LeakEffect",
    "SleepEffect",
    "default_cache_dir",
    "describe_builtin_models",
    "file_sha256",
    "list_builtin_models",
    "release_leaked",
    "resolve_params",
    "with_seed",
]

#: Bump when any built-in's definition changes: it is part of every cache key.
MODEL_DEFINITION_VERSION = 1
ONNX_OPSET = 17
# IR 8 is what opset 17 needs, and what ONNX Runtime releases back to 1.14 read.
ONNX_IR_VERSION = 8


_SEED_LOCK = threading.Lock()


def with_seed(seed: int, make: Callable[[], nn.Module]) -> nn.Module:
    """`make()` with the global generator seeded: the same weights every time."""
    # Module constructors draw from the global generator: fork it (callers'
    # random state stays as it was) and hold a lock (two threads building
    # at once would interleave their draws and get different weights).
    with _SEED_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def default_cache_dir() -> Path:
    env = os.environ.get("MODELSOAK_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "modelsoak" / "models"


# --------------------------------------------------------------------------- definitions


@dataclass(frozen=True)
class Param:
    default: Any
    help: str


@dataclass
class BuiltModel:
    """One built-in with its parameters resolved: specs, module, ONNX graph, effect."""

    name: str
    params: dict[str, Any]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    make_module: Callable[[], nn.Module]
    make_effect: Callable[[str], SideEffect | None] = field(default=lambda device: None)
    # ONNX graph: "export" (torch.onnx.export of make_module) or "identity" (onnx.helper).
    onnx_graph: str = "export"
    seed: int = 0

    @property
    def cache_key(self) -> str:
        blob = json.dumps(
            {
                "name": self.name,
                "params": self.params,
                "version": MODEL_DEFINITION_VERSION,
                # Default initialisers may change between torch releases: a file
                # exported under another torch would not match the eager module.
                "torch": torch.__version__.split("+")[0] if self.onnx_graph == "export" else "",
            },
            sort_keys=True,
        )
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def module(self) -> nn.Module:
        """A fresh module, weights from this model's seed, in eval mode."""
        return with_seed(self.seed, self.make_module).eval()

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """Zeros of the input shapes, -1 dims replaced (batch, then 2)."""
        out = []
        for spec in self.inputs:
            shape = [batch] + [2 if d < 0 else d for d in spec.shape[1:]]
            out.append(torch.zeros(shape, dtype=torch.float32))
        return tuple(out)

    def write_onnx(self, path: Path) -> None:
        if self.onnx_graph == "identity":
            path.write_bytes(_identity_onnx(self.inputs[0], self.outputs[0]))
        else:
            _export_onnx(self, path)

    def onnx_path(self, cache_dir: Path | None = None) -> Path:
        """The cached ONNX file, written (atomically) on first use."""
        path = (cache_dir or default_cache_dir()) / f"{self.cache_key}.onnx"
        if not path.exists():
            _write_atomically(path, self.write_onnx)
        return path

    def torchscript_path(self, cache_dir: Path | None = None) -> Path:
        """The cached TorchScript file (torch.jit.script of the module)."""
        path = (cache_dir or default_cache_dir()) / f"{self.cache_key}.torchscript.pt"
        if not path.exists():
            _write_atomically(path, lambda tmp: torch.jit.save(torch.jit.script(self.module()), str(tmp)))
        return path


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    description: str
    max_batch_size: int
    params: dict[str, Param]
    build_fn: Callable[[dict[str, Any]], BuiltModel]

    def resolve(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults overlaid with `given`, each value checked and converted."""
        return resolve_params(self.name, self.params, given)

    @property
    def defaults(self) -> dict[str, Any]:
        """Parameter name to default value."""
        return {k: p.default for k, p in self.params.items()}

    def build(self, given: Mapping[str, Any] | None = None) -> BuiltModel:
        return self.build_fn(self.resolve(given or {}))


def resolve_params(name: str, params: Mapping[str, Param], given: Mapping[str, Any]) -> dict[str, Any]:
    """A built-in's parameter defaults overlaid with `given`, each value checked and converted."""
    unknown = sorted(set(given) - set(params))
    if unknown:
        accepted = ", ".join(f"{k} (default {p.default!r})" for k, p in params.items())
        raise ModelLoadError(
            f"built-in model {name!r} has no parameter(s) {', '.join(unknown)}; "
            f"it accepts: {accepted or 'no parameters'}"
        )
    resolved = {}
    for key, spec in params.items():
        value = given.get(key, spec.default)
        try:
            resolved[key] = _convert(key, value, spec.default)
        except (TypeError, ValueError) as exc:
            raise ModelLoadError(
                f"built-in model {name!r}: parameter {key}={value!r} is invalid: {exc}"
            ) from exc
    return resolved


def _convert(key: str, value: Any, default: Any) -> Any:
    """Coerce a parameter (which may come from a command line as text)."""
    if key == "datatype":
        name = str(value).upper()
        if name not in DATATYPES:
            raise ValueError(f"expected one of {', '.join(DATATYPES)}")
        return name
    if key == "dims":
        if isinstance(value, str):
            value = json.loads(value) if value.strip().startswith("[") else value.split(",")
        dims = [int(value)] if isinstance(value, int) else [int(d) for d in value]
        if any(d == 0 or d < -1 for d in dims):
            raise ValueError("dims are positive sizes or -1 (variable)")
        return dims
    if isinstance(default, bool):
        raise TypeError("boolean parameters are not used")
    if isinstance(default, int):
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("expected a whole number")
        count = int(value)
        # 0 is allowed where it is the default (it then means "none" or "automatic").
        if count < (0 if key == "leak_bytes" or default == 0 else 1):
            raise ValueError("out of range")
        return count
    if isinstance(default, float):
        ms = float(value)
        if ms < 0:
            raise ValueError("must be >= 0")
        return ms
    return value


_TENSOR_PARAMS = {
    "datatype": Param("FP32", "KServe datatype of the input and output"),
    "dims": Param([-1], "shape after the batch dimension; -1 is a variable size"),
}


def _passthrough_specs(params: dict[str, Any]) -> tuple[list[TensorSpec], list[TensorSpec]]:
    shape = (-1, *params["dims"])
    return (
        [TensorSpec("INPUT0", params["datatype"], shape)],
        [TensorSpec("OUTPUT0", params["datatype"], shape)],
    )


def _build_identity(p: dict[str, Any]) -> BuiltModel:
    ins, outs = _passthrough_specs(p)
    return BuiltModel("identity", p, ins, outs, Echo, onnx_graph="identity")


def _build_sleep(p: dict[str, Any]) -> BuiltModel:
    ins, outs = _passthrough_specs(p)
    effect = SleepEffect(p["sleep_ms"], p["per_sample_ms"])
    return BuiltModel("sleep", p, ins, outs, Echo, lambda device: effect, onnx_graph="identity")


def _build_leaky(p: dict[str, Any]) -> BuiltModel:
    ins, outs = _passthrough_specs(p)
    # One effect per backend instance: each keeps its own memory, as a leak in
    # a real model's instance would.
    return BuiltModel(
        "leaky",
        p,
        ins,
        outs,
        Echo,
        lambda device: LeakEffect(p["leak_bytes"], device),
        onnx_graph="identity",
    )


def _build_mlp(p: dict[str, Any]) -> BuiltModel:
    return BuiltModel(
        "mlp",
        p,
        [TensorSpec("INPUT0", "FP32", (-1, 256))],
        [TensorSpec("OUTPUT0", "FP32", (-1, 10))],
        lambda: make_mlp(p["hidden"], p["layers"]),
        seed=1,
    )


def _build_resnet18(p: dict[str, Any]) -> BuiltModel:
    return BuiltModel(
        "resnet18",
        p,
        [TensorSpec("INPUT0", "FP32", (-1, 3, 224, 224))],
        [TensorSpec("OUTPUT0", "FP32", (-1, 1000))],
        ResNet18,
        seed=18,
    )


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            "identity",
            "Echoes INPUT0 as OUTPUT0 with no computation, in any KServe datatype "
            "(BYTES only on the ONNX backend). What it costs is the server's own "
            "overhead: protocol, decoding, batching, copies and scheduling.",
            64,
            dict(_TENSOR_PARAMS),
            _build_identity,
        ),
        BuiltinModel(
            "mlp",
            "A multi-layer perceptron: FP32 [-1,256] through `layers` Linear+ReLU "
            "layers of width `hidden` to FP32 [-1,10]. Compute-bound matrix "
            "multiplications, so batching visibly raises throughput.",
            64,
            {
                "hidden": Param(1024, "width of the hidden layers"),
                "layers": Param(4, "number of hidden Linear+ReLU layers"),
            },
            _build_mlp,
        ),
        BuiltinModel(
            "resnet18",
            "A ResNet-18 (BasicBlocks, 4 stages of 2, 64-512 channels) with fixed "
            "random weights, FP32 [-1,3,224,224] to FP32 [-1,1000] logits: the "
            "1x3x224x224 image classifier of the usual performance-test template.",
            32,
            {},
            _build_resnet18,
        ),
        BuiltinModel(
            "sleep",
            "Echoes its input after sleeping sleep_ms per batch plus per_sample_ms "
            "per batch row inside the compute phase: a model with a known service "
            "time, for checking the batcher, the queue and the latency statistics.",
            32,
            {
                **_TENSOR_PARAMS,
                "sleep_ms": Param(10.0, "milliseconds slept per batch"),
                "per_sample_ms": Param(0.0, "milliseconds slept per batch row"),
            },
            _build_sleep,
        ),
        BuiltinModel(
            "leaky",
            "Echoes its input and keeps leak_bytes of memory per request for ever "
            "(host memory; CUDA memory when served on a GPU with a CUDA torch): a "
            "deliberate leak for checking that soak tests and the leak detector see one.",
            32,
            {**_TENSOR_PARAMS, "leak_bytes": Param(65536, "bytes kept per request")},
            _build_leaky,
        ),
    )
}


def list_builtin_models() -> list[tuple[str, str]]:
    """(name, description) of every built-in, for `--list-models` and the docs."""
    return [(m.name, m.description) for m in BUILTIN_MODELS.values()]


def describe_builtin_models() -> str:
    """A text listing: name, default max batch size, description, parameters."""
    lines = []
    for m in BUILTIN_MODELS.values():
        lines += [
            f"{m.name} (default max batch size {m.max_batch_size})",
            *textwrap.wrap(m.description, 76, initial_indent="    ", subsequent_indent="    "),
        ]
        lines += [f"    {k}={p.default!r}: {p.help}" for k, p in m.params.items()]
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- ONNX


def _identity_onnx(inp: TensorSpec, out: TensorSpec) -> bytes:
    elem = DATATYPES[inp.datatype].onnx
    dims: list[int | str] = [f"d{i}" if d < 0 else d for i, d in enumerate(inp.shape)]
    dims[0] = "batch"
    graph = helper.make_graph(
        [helper.make_node("Identity", [inp.name], [out.name])],
        "modelsoak_identity",
        [helper.make_tensor_value_info(inp.name, elem, dims)],
        [helper.make_tensor_value_info(out.name, elem, dims)],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="modelsoak"
    )
    model.ir_version = ONNX_IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _export_onnx(built: BuiltModel, path: Path) -> None:
    names_in = [s.name for s in built.inputs]
    names_out = [s.name for s in built.outputs]
    dynamic: dict[str, dict[int, str]] = {}
    for spec in built.inputs + built.outputs:
        dynamic[spec.name] = {i: ("batch" if i == 0 else f"d{i}") for i, d in enumerate(spec.shape) if d < 0}
    # The TorchScript-based exporter: the dynamo one (the default since torch
    # 2.9) needs onnxscript. torch before 2.5 has no `dynamo` argument.
    legacy: dict[str, Any] = {}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        legacy["dynamo"] = False
    with warnings.catch_warnings():
        # Its deprecation warnings would only repeat that on every first use.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            built.module(),
            built.example_inputs(),
            str(path),
            **legacy,
            input_names=names_in,
            output_names=names_out,
            dynamic_axes=dynamic,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
        )


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write` into a temporary file beside `path`, then rename: readers in other
    processes see either no file or the whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a shared cache must be readable
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def iter_state_bytes(module: nn.Module) -> Iterator[bytes]:
    """The module's parameters and buffers as bytes, in a fixed order (for hashing)."""
    for key, tensor in module.state_dict().items():
        yield key.encode()
        yield tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
