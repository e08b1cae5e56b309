"""Server settings: one pydantic-settings class, the only place that reads ``DDRNET_*`` variables.

Precedence, highest first: command-line options, environment (``DDRNET_<FIELD>``), a YAML file
(``--config``), defaults. Defaults that depend on the machine (instances, threads, preprocessing
workers) are derived from the cores this process may use (:func:`derive_defaults`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from inference.placement import derive_placement, memory_limit_bytes
from inference.precision import check_combination, check_cpu_bf16

# Default of preprocess_wait_ms: about two photos' decode + transform on one core (BENCHMARKS.md,
# "Preprocessing": 4-10 ms, 25 ms for a large photo).
PREPROCESS_WAIT_MS = 10.0

RuntimeName = Literal["auto", "lite", "onnxruntime", "openvino", "mindspore"]
DeviceName = Literal["cpu", "gpu", "ascend"]


class ServerSettings(BaseSettings):
    """Everything `ddrnet serve` can be told. Field docs are the option help texts."""

    model_config = SettingsConfigDict(env_prefix="DDRNET_", extra="forbid", validate_default=True)

    model_repository: Path = Field(description="model repository root (<repo>/<model>/<version>/model.json)")
    models: list[str] = Field(default_factory=list, description="serve only these model names (default: all)")
    http_host: str = Field("127.0.0.1", description="HTTP bind address (0.0.0.0 in containers)")
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP port (0 = pick a free port)")
    grpc_host: str = Field("127.0.0.1", description="gRPC bind address")
    grpc_port: int = Field(8001, ge=-1, le=65535, description="gRPC port (0 = pick a free port; -1 disables)")

    runtime: RuntimeName = Field("auto", description="auto | lite | onnxruntime | openvino | mindspore")
    precision: Literal["fp32", "bf16", "fp16", "int8"] = Field(
        "fp32",
        description="fp32 | bf16 (OpenVINO on a CPU with AVX512_BF16/AMX) | fp16 (GPU: ONNX Runtime "
        "CUDA/TensorRT; Ascend: Lite) | int8 (the calibrated model.int8.onnx: OpenVINO or ONNX Runtime); "
        "only versions whose export verified the precision are served (ddrnet export --precisions)",
    )
    runtime_python: Path | None = Field(
        None, description="Python interpreter for the worker processes (e.g. a Python 3.7 venv with Lite)"
    )
    device: DeviceName = Field("cpu", description="device for the runtime: cpu | gpu | ascend")
    device_id: int = Field(0, ge=0, description="device index on gpu/ascend")
    instances: int | None = Field(None, ge=1, le=64, description="worker processes per model")
    threads_per_instance: int | None = Field(None, ge=1, le=256, description="runtime threads per instance")
    preprocess_workers: int | None = Field(None, ge=1, le=256, description="decode + transform threads")

    max_batch_size: int = Field(8, ge=1, le=1024, description="largest batch sent to an instance")
    preferred_batch_sizes: list[int] = Field(
        default_factory=list, description="static batch sizes (padding) for runtimes that need fixed shapes"
    )
    max_queue_delay_ms: float = Field(
        0.0, ge=0, le=10_000, description="wait up to this long for a fuller batch (0 = dispatch when free)"
    )
    preprocess_wait_ms: float = Field(
        PREPROCESS_WAIT_MS, ge=0, le=10_000,
        description="a free instance waits up to this long for images still being decoded that would join "
        "its batch (0 = never; a lone request never waits)",
    )
    max_queue_size: int = Field(256, ge=1, le=1_000_000, description="queued images per model before 503")
    request_timeout_ms: float = Field(
        30_000, gt=0, le=3_600_000, description="default deadline; a shorter client deadline wins"
    )

    max_request_bytes: int = Field(32 * 2**20, ge=1024, description="largest HTTP body / gRPC message")
    grpc_max_concurrent_rpcs: int = Field(
        256, ge=1, le=1_000_000,
        description="gRPC calls in progress at once (health checks included); more get RESOURCE_EXHAUSTED",
    )
    grpc_max_concurrent_streams: int = Field(
        100, ge=1, le=1_000_000, description="concurrent calls per gRPC connection (HTTP/2 streams)",
    )
    max_image_pixels: int = Field(40_000_000, ge=1, description="largest decoded image (width x height)")
    max_decode_memory_bytes: int | None = Field(
        None, ge=1 << 20,
        description="memory images being decoded may hold at once (mode-aware estimate from each header); "
        "an image over it is 413, a request that cannot get room in time 503 (default: a quarter of the "
        "memory limit, at least one largest image, at most 4 GiB)",
    )
    max_images_per_request: int = Field(64, ge=1, le=4096, description="images in one classify request")

    infer_timeout_s: float = Field(
        120.0, gt=0, le=86_400,
        description="a batch running longer means a hung worker: it is killed and restarted, the batch "
        "retried once",
    )
    max_worker_down_s: float = Field(
        300.0, ge=0,
        description="liveness fails once an instance has had no working worker this long (its restarts keep "
        "failing), so Kubernetes restarts the pod (0 = never)",
    )
    poll_interval_s: float = Field(5.0, ge=0, description="repository poll period (0 = never reload)")
    model_control: Literal["poll", "explicit", "none"] = Field(
        "poll",
        description="poll: serve every model, pick up new versions by polling | none: serve every model, "
        "never poll | explicit: serve --models at start, others on POST /v2/repository/models/{m}/load (gRPC "
        "RepositoryModelLoad), unload likewise, no polling",
    )
    shutdown_timeout_s: float = Field(30.0, ge=0, description="SIGTERM drain bound")

    auth_token: str | None = Field(None, description="bearer token required on inference endpoints")
    tls_cert: Path | None = Field(None, description="PEM certificate: enables HTTPS and gRPC TLS")
    tls_key: Path | None = Field(None, description="PEM private key for --tls-cert")

    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_json: bool = Field(False, description="JSON log lines (for log shippers)")
    web_ui: bool = Field(True, description="serve the web page at / (try images, watch the models)")
    access_log: bool = Field(
        False, description="one log line per HTTP request (with tracing on, each names its trace_id)"
    )
    otel_endpoint: str | None = Field(
        None,
        description="send traces by OTLP to this collector (e.g. http://collector:4318, or :4317 with "
        "--otel-protocol grpc); OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT turns tracing on too (the otel extra)",
    )
    otel_protocol: Literal["http/protobuf", "grpc"] | None = Field(
        None, description="OTLP protocol (default: OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL, else http/protobuf)"
    )

    @field_validator("model_repository")
    @classmethod
    def _repository_exists(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"model repository {value} is not a directory")
        return value

    @field_validator("runtime_python")
    @classmethod
    def _interpreter_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not (value.is_file() and os.access(value, os.X_OK)):
            raise ValueError(f"runtime python {value} is not an executable file")
        return value

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _sorted_sizes(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError("batch sizes must be positive")
        return sorted(set(value))

    @model_validator(mode="after")
    def _consistent(self) -> ServerSettings:
        if self.preferred_batch_sizes and self.preferred_batch_sizes[-1] > self.max_batch_size:
            raise ValueError(
                f"preferred batch size {self.preferred_batch_sizes[-1]} exceeds max_batch_size "
                f"{self.max_batch_size}"
            )
        check_combination(self.precision, self.runtime, self.device)  # a PrecisionError is a ValueError
        if self.precision == "bf16":
            check_cpu_bf16()
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be given together")
        for path in (self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")
        return derive_defaults(self)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if settings_cls.model_config.get("yaml_file"):  # set by load_settings(config_file=...)
            sources.append(YamlConfigSettingsSource(settings_cls))
        return tuple(sources)


def derive_defaults(settings: ServerSettings) -> ServerSettings:
    """Fill the machine-dependent defaults (instances, threads per instance, preprocessing workers) by
    the runtime layer's one placement rule (``inference.placement.derive_placement``, where the
    measurements behind it are). A worker under ``runtime_python`` (PyPI's MindSpore Lite 2.0) runs
    single-threaded instances."""
    placement = derive_placement(
        device=settings.device,
        single_threaded=settings.device == "cpu" and settings.runtime_python is not None,
        instances=settings.instances,
        threads_per_instance=settings.threads_per_instance,
        preprocess_workers=settings.preprocess_workers,
    )
    settings.instances = placement.instances
    settings.threads_per_instance = placement.threads_per_instance
    settings.preprocess_workers = placement.preprocess_workers
    if settings.max_decode_memory_bytes is None:
        settings.max_decode_memory_bytes = default_decode_budget(settings.max_image_pixels)
    return settings


#: Bytes one pixel may take while it is decoded and converted (a 16-bit big-endian TIFF: 2 stored, 9
#: converting; RGBA/CMYK take 4 + 4), used to size the default decode budget for the largest image.
WORST_BYTES_PER_PIXEL = 11
MAX_DEFAULT_DECODE_BUDGET = 4 << 30


def default_decode_budget(max_image_pixels: int) -> int:
    """A quarter of the memory limit (a container's, else the machine's), at most 4 GiB, and never
    less than what the largest image allowed (``max_image_pixels``) needs, so one always fits."""
    quarter = min(memory_limit_bytes() // 4, MAX_DEFAULT_DECODE_BUDGET)
    return max(quarter, max_image_pixels * WORST_BYTES_PER_PIXEL + (64 << 20))


def load_settings(config_file: Path | None = None, **overrides: Any) -> ServerSettings:
    """Build settings from an optional YAML file, the environment and explicit overrides.

    ``overrides`` with value None count as "not given", so argparse defaults never mask the
    environment or the file.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    settings_cls = ServerSettings
    if config_file is not None:
        if not Path(config_file).is_file():
            raise ValueError(f"settings file {config_file} does not exist")
        config = SettingsConfigDict(**{**ServerSettings.model_config, "yaml_file": str(config_file)})
        settings_cls = type("FileServerSettings", (ServerSettings,), {"model_config": config})
    return settings_cls(**given)
