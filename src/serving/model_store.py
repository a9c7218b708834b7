"""The champion the API serves: loaded from the registry or a bundle folder, swapped atomically.

A `LoadedModel` is immutable. The store holds one reference to the current one; a reload builds the
new model completely, then replaces the reference in one assignment. A request takes the reference
once at its start, so requests in flight during a swap finish on the model they started with.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from src.core.bundle import (
    DEFAULT_CLASS_INDEX,
    MODEL_FILE,
    SEGMENTATION_FILE,
    SERVING_FILE,
    SPEC_FILE,
    Bundle,
    ServingInfo,
    input_dtype,
    load_bundle,
)
from src.core.feature_spec import FeatureSpec, transform_records
from src.core.loan import ParsedApplication
from src.core.segment_params import SegmentParams, assign_segment
from src.serving.schemas import Factor
from src.utils.config import Config
from src.utils.errors import ConfigError, DataError, TransientError
from src.utils.logging import get_logger

log = get_logger(component="serving.model_store")

Backend = Literal["onnx", "spark"]
REGISTRY_SCHEME = "models:/"
ALIAS_SEPARATOR = "@"
POSITIVE_CLASS = DEFAULT_CLASS_INDEX
# Downloads of retired models kept on disk (the current one is never deleted).
KEEP_DOWNLOADS = 2


# --- scoring -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    """The model's answer for one application."""

    probability: float
    segment: str
    factors: list[Factor]


class Scorer(Protocol):
    """What a backend does with a batch of parsed applications."""

    # True when a call takes long enough to be run off the event loop.
    blocking: bool

    def score(self, apps: Sequence[ParsedApplication], top_factors: int) -> list[Scored]: ...


@dataclass(frozen=True)
class Segmenter:
    """The serving segmentation of the bundle, assigned in numpy."""

    params: SegmentParams
    assign: Callable[[SegmentParams, np.ndarray], list[int]]

    @classmethod
    def load(cls, bundle: Bundle) -> Segmenter:
        return cls(SegmentParams.model_validate(bundle.segmentation_json), assign_segment)

    def bands(self, apps: Sequence[ParsedApplication]) -> list[str]:
        rows = np.array([a.vector(self.params.features) for a in apps], dtype=np.float64)
        return [self.params.bands[c] for c in self.assign(self.params, rows)]


@dataclass(frozen=True)
class _Group:
    """One model input as occlusion sees it: its columns in the vector and its reference."""

    name: str
    columns: list[int]
    reference_vector: np.ndarray
    reference_value: float | str | None


def _groups(spec: FeatureSpec) -> list[_Group]:
    groups: list[_Group] = []
    index = 0
    for f in spec.numeric:
        capped = min(max(f.impute, f.lower), f.upper)
        scaled = np.array([(capped - f.mean) / f.std])
        groups.append(_Group(f.name, [index], scaled, f.impute))
        index += 1
    for c in spec.categorical:
        width = len(c.levels)
        groups.append(_Group(c.name, list(range(index, index + width)), np.zeros(width), None))
        index += width
    return groups


class OnnxScorer:
    """Calibrated probability with onnxruntime and the bundle's calibration table, segment with
    numpy, top factors by occlusion (in calibrated probability)."""

    blocking = False

    def __init__(self, bundle: Bundle, threads: int) -> None:
        import onnxruntime as ort

        self.spec = FeatureSpec.model_validate(bundle.spec_json)
        self._transform = transform_records
        options = ort.SessionOptions()
        # One request is a few dozen rows: threads cost more in hand-off than they save.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # A session of our own rather than Bundle.session(): it needs the thread settings.
        self.session = ort.InferenceSession(
            str(bundle.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].shape[-1] not in (len(self.spec.features), None):
            raise DataError(f"{bundle.path}: the ONNX model does not take the spec's features")
        self.input_name = inputs[0].name
        self.input_dtype = input_dtype(self.session)
        self.output_name = bundle.serving.onnx_output
        if self.output_name not in [o.name for o in self.session.get_outputs()]:
            raise DataError(f"{bundle.path}: the ONNX model has no output '{self.output_name}'")
        self.calibration = bundle.calibration
        self.segmenter = Segmenter.load(bundle)
        self.groups = _groups(self.spec)
        # Occlusion layout, row 0 the application itself, row k its input k at the reference:
        # one np.where builds every copy of a request at once.
        width = len(self.spec.features)
        self._occluded = np.zeros((len(self.groups) + 1, width), dtype=bool)
        self._reference = np.zeros((len(self.groups) + 1, width))
        for k, group in enumerate(self.groups, start=1):
            self._occluded[k, group.columns] = True
            self._reference[k, group.columns] = group.reference_vector

    def probabilities(self, matrix: np.ndarray) -> np.ndarray:
        """Calibrated probability of default of each row of a feature matrix (one onnxruntime
        call, then the calibration table)."""
        (out,) = self.session.run(
            [self.output_name], {self.input_name: matrix.astype(self.input_dtype, copy=False)}
        )
        if isinstance(out, list):  # ZipMap output: one {class: probability} per row
            raw = np.array([row[POSITIVE_CLASS] for row in out], dtype=np.float64)
        else:
            raw = np.asarray(out, dtype=np.float64)[:, POSITIVE_CLASS]
        return self.calibration.apply(raw)

    def score(self, apps: Sequence[ParsedApplication], top_factors: int) -> list[Scored]:
        matrix = self._transform(self.spec, [a.values for a in apps])
        n, width = matrix.shape
        if top_factors > 0:
            # Per application: itself, then one copy per input with that input replaced by its
            # reference. All of it in one onnxruntime call.
            g = len(self.groups)
            block = np.where(self._occluded[None], self._reference[None], matrix[:, None, :])
            probs = self.probabilities(block.reshape(n * (g + 1), width)).reshape(n, g + 1)
            base = probs[:, 0]
            effects = base[:, None] - probs[:, 1:]
        else:
            base = self.probabilities(matrix)
            effects = np.zeros((n, 0))
        bands = self.segmenter.bands(apps)
        return [
            Scored(float(base[i]), bands[i], self._factors(apps[i], effects[i], top_factors))
            for i in range(n)
        ]

    def _factors(self, app: ParsedApplication, effects: np.ndarray, k: int) -> list[Factor]:
        order = np.argsort(-np.abs(effects), kind="stable")[:k]
        factors = []
        for j in order:
            effect = float(effects[j])
            if effect == 0.0:
                break
            group = self.groups[j]
            value = app.values.get(group.name)
            factors.append(
                Factor(
                    feature=group.name,
                    value=value if isinstance(value, float | str) or value is None else str(value),
                    reference=group.reference_value,
                    effect=effect,
                    direction="raises_risk" if effect > 0 else "lowers_risk",
                )
            )
        return factors


# --- where bundles come from ---------------------------------------------------------------------


def _file_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for name in (SERVING_FILE, SPEC_FILE, SEGMENTATION_FILE):
        path = folder / name
        digest.update(path.read_bytes() if path.is_file() else b"-")
    model = folder / MODEL_FILE
    digest.update(str(model.stat().st_mtime_ns if model.is_file() else 0).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Located:
    """A loaded bundle and what the source calls it."""

    bundle: Bundle
    version: str | None
    alias: str | None
    download: Path | None = None  # the temporary folder to delete once the model is retired


class BundleSource(Protocol):
    uri: str

    def current_key(self) -> str:
        """Cheap identity of what the source points at now; a new key means reload."""
        ...

    def fetch(self, key: str) -> Located:
        """The bundle of `key`, read and checked."""
        ...


@dataclass(frozen=True)
class LocalSource:
    """A bundle folder (e.g. models/registered): reloaded when its files change."""

    folder: Path

    @property
    def uri(self) -> str:
        return str(self.folder)

    def current_key(self) -> str:
        if not (self.folder / SERVING_FILE).is_file():
            raise DataError(
                f"{self.folder}: no serving bundle ({SERVING_FILE} missing); run `dvc repro` "
                "(the register stage writes it) or point serving.bundle_path at one"
            )
        return _file_digest(self.folder)

    def fetch(self, key: str) -> Located:
        return Located(load_bundle(self.folder), None, None)


@dataclass
class RegistrySource:
    """`models:/<name>@<alias>` (polled) or `models:/<name>/<version>` in the MLflow registry."""

    uri: str
    cfg: Config
    _client: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        reference = self.uri.removeprefix(REGISTRY_SCHEME)
        if ALIAS_SEPARATOR in reference:
            self.name, self.alias = reference.split(ALIAS_SEPARATOR, 1)
            self.version = None
        else:
            self.name, _, version = reference.rpartition("/")
            self.alias, self.version = None, version
        if not self.name or not (self.alias or self.version):
            raise ConfigError(f"serving.model_uri: '{self.uri}' is not models:/NAME@ALIAS")

    def client(self) -> Any:
        if self._client is None:
            import mlflow
            from mlflow import MlflowClient

            from src.utils.tracking import resolve_tracking_uri

            uri, _ = resolve_tracking_uri(self.cfg)
            mlflow.set_tracking_uri(uri)
            self._client = MlflowClient(tracking_uri=uri)
        return self._client

    def current_key(self) -> str:
        if self.version is not None:
            return self.version
        try:
            return str(self.client().get_model_version_by_alias(self.name, self.alias).version)
        except Exception as exc:
            # Unknown alias, registry down or not up yet: retried at the next poll either way.
            raise TransientError(f"{self.uri}: cannot resolve the alias: {exc}") from exc

    def fetch(self, key: str) -> Located:
        self.client()
        # Pinned to the version the alias pointed at when polled: no race with a moving alias.
        target = Path(tempfile.mkdtemp(prefix=f"credit-risk-serving-v{key}-"))
        try:
            bundle = load_bundle(f"{REGISTRY_SCHEME}{self.name}/{key}", dst=target)
        except DataError:
            shutil.rmtree(target, ignore_errors=True)
            raise
        except Exception as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise TransientError(f"{self.uri}: cannot download version {key}: {exc}") from exc
        return Located(bundle, key, self.alias, download=target)


def make_source(cfg: Config, bundle_path: Path | None = None) -> BundleSource:
    """The source the serving config names: a bundle folder if given, else the model URI."""
    folder = bundle_path or cfg.serving.bundle_path
    if folder is not None:
        return LocalSource(cfg.path(folder).resolve())
    uri = cfg.serving.model_uri
    if uri.startswith(REGISTRY_SCHEME):
        return RegistrySource(uri, cfg)
    return LocalSource(cfg.path(uri).resolve())


# --- the store -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """Everything one request needs, fixed at load time."""

    info: ServingInfo
    version: str
    alias: str | None
    source: str
    backend: Backend
    scorer: Scorer
    loaded_at: datetime
    download: Path | None


ScorerFactory = Callable[[Bundle], Scorer]
ReloadListener = Callable[[str, "LoadedModel | None"], None]


def onnx_factory(threads: int) -> ScorerFactory:
    """Scorers that run the bundle's ONNX model."""
    return lambda bundle: OnnxScorer(bundle, threads)


class ModelStore:
    """Holds the current model; `refresh` reloads when the source moved, `start` polls."""

    def __init__(
        self,
        source: BundleSource,
        backend: Backend,
        factory: ScorerFactory,
        poll_interval_s: float,
        listener: ReloadListener | None = None,
    ) -> None:
        self.source = source
        self.backend = backend
        self.factory = factory
        self.poll_interval_s = poll_interval_s
        self.listener = listener or (lambda outcome, model: None)
        self._current: LoadedModel | None = None
        self._key: str | None = None
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._retired: list[Path] = []
        self.last_error: str | None = None

    @property
    def current(self) -> LoadedModel | None:
        """The model to use for one request: read once, keep for the whole request."""
        return self._current

    def refresh(self, force: bool = False) -> bool:
        """Load the source's bundle if it changed (or `force`); True when a new model went live."""
        with self._reload_lock:  # one reload at a time; requests never take this lock
            try:
                key = self.source.current_key()
                if key == self._key and not force:
                    return False
                model = self._load(key)
                # A bundle folder replaced while it was read: keep the model, but leave the key
                # unrecorded so the next poll loads the folder again.
                settled = self.source.current_key() == key
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("model.reload_failed", source=self.source.uri, error=self.last_error,
                            serving=self._current.version if self._current else None)
                self.listener("failed", self._current)
                return False
            previous, self._current, self._key = self._current, model, key if settled else None
            self.last_error = None
        log.info("model.loaded", source=self.source.uri, version=model.version, alias=model.alias,
                 backend=self.backend, previous=previous.version if previous else None)
        self.listener("loaded", model)
        self._forget(previous)
        return True

    def _load(self, key: str) -> LoadedModel:
        located = self.source.fetch(key)
        try:
            scorer = self.factory(located.bundle)
        except Exception:
            if located.download is not None:
                shutil.rmtree(located.download, ignore_errors=True)
            raise
        return LoadedModel(
            info=located.bundle.serving,
            version=located.version or located.bundle.version,
            alias=located.alias,
            source=self.source.uri,
            backend=self.backend,
            scorer=scorer,
            loaded_at=datetime.now(UTC),
            download=located.download,
        )

    def _forget(self, previous: LoadedModel | None) -> None:
        # The ONNX session lives in memory; a retired model's download is deleted one reload
        # later, so a request that started just before the swap never loses its files.
        if previous is None or previous.download is None:
            return
        self._retired.append(previous.download)
        while len(self._retired) >= KEEP_DOWNLOADS:
            shutil.rmtree(self._retired.pop(0), ignore_errors=True)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            self.refresh()

    def start(self) -> None:
        """Poll the source every `poll_interval_s` in a daemon thread."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, name="model-poller", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop polling (waits for a reload in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Stop polling and delete every download this store made."""
        self.stop()
        current = self._current
        downloads = [*self._retired, *([current.download] if current and current.download else [])]
        for folder in downloads:
            shutil.rmtree(folder, ignore_errors=True)
        self._retired.clear()
