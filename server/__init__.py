"""modelsoak's gRPC inference server: a model behind KServe v2, Triton's extensions
and TorchServe's API, with per-request timing and memory probes."""

__version__ = "0.1.0"
