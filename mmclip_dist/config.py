"""One typed config tree for every command, loaded from YAML with dotted CLI overrides.

Each field carries a one-line description (pydantic ``Field(description=...)``); ``mmclip-dist config
--help-fields`` prints them. ``load_config("launch/configs/debug.yaml", ["train.global_batch=512"])``
reads the file, applies overrides left to right and validates the result, so a typo in a key is an
error naming the key rather than a silently ignored setting.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Secret:
    """Field marker, ``Annotated[str, Secret()]``: the whole value is a credential (salt, key, token, password).

    ``redacted``/``redacted_dump``/``flatten`` replace it by ``REDACTED``; ``mmclip-dist submit`` refuses to put
    it into a Ray job; ``env`` names the environment variable that supplies it instead (from a cluster Secret).
    """

    def __init__(self, env: str = "") -> None:
        self.env = env

    def __repr__(self) -> str:
        return f"Secret(env={self.env!r})"


class Url:
    """Field marker, ``Annotated[str, Url()]``: a URL or path whose ``user:password@`` part is a credential."""

    def __repr__(self) -> str:
        return "Url()"


REDACTED = "<redacted>"
# Environment variables that hold credentials the product (or a library it drives) reads; with the
# ``Secret(env=...)`` names of the config they are what ``secret_env_names`` returns.
CREDENTIAL_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "RAY_AUTH_TOKEN",
    "HF_TOKEN",
)
MIN_SALT_LENGTH = 16
# userinfo of a URL: the "user:password@" between "scheme://" and the host
_USERINFO = re.compile(r"(?<=://)[^/?#@\s]+@")


class _Section(BaseModel):
    # extra="forbid": an unknown key is a user error (usually a typo), never something to ignore.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticConfig(_Section):
    """Synthetic VinDr-format dataset used by the debug mode and the tests."""

    num_patients: int = Field(160, description="patients to generate; each has a left and a right breast")
    height: int = Field(640, description="height of the generated DICOM images in pixels")
    width: int = Field(480, description="width of the generated DICOM images in pixels")
    test_fraction: float = Field(0.25, description="fraction of patients put in the VinDr 'test' split")
    normal_fraction: float = Field(0.0, description="fraction of breasts generated without any lesion")
    seed: int = Field(0, description="random seed; the same seed gives byte-identical DICOMs and CSVs")
    text_hidden: int = Field(128, description="hidden size of the debug BERT that stands in for Bio_ClinicalBERT")
    text_layers: int = Field(2, description="transformer layers of the debug BERT")
    text_vocab: int = Field(1000, description="WordPiece vocabulary trained on the debug report corpus")
    mlm_steps: int = Field(0, description="masked-LM pretraining steps of the debug BERT (0: random init)")


class ShardsConfig(_Section):
    """Turning a DICOM dataset and its CSVs into WebDataset shards."""

    dataset: Literal["vindr", "rsna", "cbis", "generic"] = Field("vindr", description="input adapter")
    input: Annotated[str, Url()] = Field("", description="dataset root folder (or CSV file for 'generic')")
    output: Annotated[str, Url()] = Field("", description="output folder or s3://bucket/prefix for the shards")
    image_size: tuple[int, int] = Field((760, 480), description="stored image size (height, width)")
    flip_to: Literal["left", "right", "none"] = Field(
        "left", description="mirror every breast so the chest wall is on this side ('none' keeps it)"
    )
    missing_view: Literal["skip", "duplicate"] = Field(
        "skip", description="breast lacking CC or MLO: reject it, or duplicate the view it has"
    )
    shard_max_bytes: int = Field(500_000_000, description="target shard size in bytes")
    shard_max_samples: int = Field(100_000, description="upper bound on samples per shard")
    processes: int = Field(2, description="decode processes")
    salt: Annotated[str, Secret(env="MMCLIP_ID_SALT")] = Field(
        "", description=f"secret salt for hashing ids (>= {MIN_SALT_LENGTH} chars); empty reads MMCLIP_ID_SALT"
    )
    max_reject_fraction: float = Field(0.05, description="exit non-zero when more inputs than this are rejected")
    s3_endpoint: Annotated[str | None, Url()] = Field(
        None, description="S3 endpoint URL (None: boto3 default / AWS_ENDPOINT_URL)"
    )
    birads_malignant_min: int = Field(
        4, description="BI-RADS proxy (VinDr): breast BI-RADS >= this is labelled malignant"
    )
    birads_benign_max: int = Field(
        3, description="BI-RADS proxy (VinDr): breast BI-RADS <= this is benign; in between is unknown (-1)"
    )
    test_fraction: float = Field(
        0.0, description="datasets without an official split (RSNA, generic): patients hashed into 'test'"
    )
    report_rewriter: str = Field(
        "", description="'module:attr' of a ReportRewriter that rewrites template reports (e.g. an LLM); '' = off"
    )
    resume: bool = Field(True, description="keep shards an interrupted build already committed and continue")
    phi_policy: Literal["reject", "redact"] = Field(
        "reject", description="text still holding PHI after the record's ids are removed: reject it or redact it"
    )
    allow_burned_in: bool = Field(
        False, description="keep images whose DICOM says BurnedInAnnotation / RecognizableVisualFeatures = YES"
    )

    @field_validator("salt")
    @classmethod
    def _salt_long_enough(cls, salt: str) -> str:
        check_salt(salt, "shards.salt")
        return salt


def check_salt(salt: str, where: str) -> None:
    """A salt short enough to guess makes the hashed ids reversible by brute force: refuse it."""
    if salt and len(salt) < MIN_SALT_LENGTH:
        raise ValueError(
            f"{where} is {len(salt)} characters; an id salt must be at least {MIN_SALT_LENGTH} "
            "(a long random secret, e.g. `openssl rand -hex 16`)"
        )


class DataConfig(_Section):
    """Streaming the shards into training batches."""

    train_shards: Annotated[str, Url()] = Field(
        "", description="folder, s3:// prefix or brace pattern of training shards"
    )
    eval_shards: Annotated[str, Url()] = Field("", description="shards of the held-out split used for evaluation")
    image_size: tuple[int, int] = Field((760, 480), description="model input size (height, width)")
    max_rois: int = Field(4, description="RoIs kept per view; extra boxes are dropped, missing ones masked")
    max_text_len: int = Field(128, description="report tokens kept per view")
    shuffle_buffer: int = Field(1000, description="samples held in the shuffle buffer of each loader worker")
    loader_workers: int = Field(2, description="DataLoader worker processes per training rank")
    epoch_samples: int = Field(0, description="samples per epoch across all ranks; 0 = one pass over the shards")
    split_by_node: bool = Field(
        True, description="give each rank x loader worker its own shards (needs >= that many); false: all resample all"
    )
    train_split: str = Field(
        "train", description="shard name prefix ('{split}-NNNNNN.tar') read when train_shards is a folder"
    )
    eval_split: str = Field("test", description="shard name prefix read when eval_shards is a folder")
    s3_endpoint: Annotated[str | None, Url()] = Field(
        None, description="S3 endpoint URL (None: boto3 default / AWS_ENDPOINT_URL)"
    )
    max_skip_fraction: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="unreadable/undecodable samples skipped before the run stops, as a fraction of its samples",
    )


class ModelConfig(_Section):
    """The MM-CLIP network (paper Sec. 3.1-3.3)."""

    backbone: str = Field("efficientnet_b2", description="timm model name of the visual encoder")
    backbone_weights: str = Field(
        "", description="'' random init, 'timm' for timm's pretrained weights (cache/hub), or a file path"
    )
    text_encoder: str = Field(
        "emilyalsentzer/Bio_ClinicalBERT", description="Hugging Face hub id or local folder of the text encoder"
    )
    tokenizer: str = Field("", description="tokenizer hub id or folder; empty uses text_encoder")
    embed_dim: int = Field(512, description="dimension of the shared image-text embedding space")
    roi_output_size: int = Field(7, description="RoIAlign output grid (square)")
    roi_levels: list[int] = Field(
        [32], description="backbone strides RoIAlign reads (multi-scale, e.g. [8, 16, 32]); [32]: last map only"
    )
    roi_pooling: Literal["mean", "flatten"] = Field(
        "mean", description="RoI grid into the RoI MLP: averaged, or kept spatial (flattened)"
    )
    roi_level_dim: int = Field(
        0, description="per-level 1x1 projection width of the RoI grids before concatenation; 0: raw channels"
    )
    roi_match_dim: int = Field(256, description="width of the cross-modal RoI matching attention (Eq. 5, L)")
    roi_match_heads: int = Field(8, description="attention heads of the RoI matching module")
    dropout: float = Field(0.1, description="dropout in the projection heads")
    init_temperature: float = Field(0.07, description="initial temperature of every learnable logit scale")
    text_pooling: Literal["cls", "mean"] = Field(
        "cls", description="text embedding from the [CLS] token or the mask-weighted mean of all tokens"
    )


class LossConfig(_Section):
    """Loss weights (paper Eq. 10) and distributed-loss knobs."""

    global_weight: float = Field(1.0, description="alpha: weight of the global CLIP loss (Eq. 7)")
    roi_weight: float = Field(0.5, description="beta: weight of the RoI CLIP loss (Eq. 8)")
    cross_view_weight: float = Field(0.2, description="gamma: weight of the cross-view consistency loss (Eq. 9)")
    cross_view_lambda: float = Field(0.1, description="lambda: weight of the squared distance in Eq. 9")
    roi_chunk_size: int = Field(64, description="texts per chunk when scoring RoI matches; bounds memory")
    max_logit_scale: float = Field(100.0, description="clamp on exp(logit scale), as in CLIP")
    roi_checkpoint: bool = Field(True, description="recompute each RoI-matching chunk in backward (bounded memory)")
    clip_chunk_size: int = Field(
        0, description="rows per chunk of the streamed global CLIP loss; 0 materialises the full logit matrix"
    )


class TrainConfig(_Section):
    """Optimisation and the distributed run."""

    num_workers: int = Field(2, description="Ray Train workers (one per GPU on a cluster)")
    use_gpu: bool = Field(False, description="give each worker a GPU")
    cpus_per_worker: int = Field(1, description="CPUs reserved per worker")
    micro_batch: int = Field(8, description="breasts per worker per forward pass")
    global_batch: int = Field(16, description="contrastive batch = workers x micro_batch x accumulation")
    max_steps: int = Field(100, description="optimizer steps to run")
    lr: float = Field(1e-6, description="peak AdamW lr for lr_reference_batch samples (the paper: 1e-6 per 16)")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        "none", description="how lr scales to global_batch: none, linear or sqrt of global_batch / lr_reference_batch"
    )
    lr_reference_batch: int = Field(16, description="global batch that train.lr is stated for")
    weight_decay: float = Field(1e-5, description="AdamW weight decay")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas (the paper's 'momentum 0.9')")
    warmup_steps: int = Field(10, description="linear warm-up steps before cosine decay")
    min_lr_ratio: float = Field(0.0, description="final lr as a fraction of the peak")
    grad_clip: float = Field(1.0, description="gradient-norm clip (0 disables)")
    zero_stage: Literal[0, 1, 2, 3] = Field(1, description="DeepSpeed ZeRO stage")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="training precision (bf16 on GPU)")
    seed: int = Field(0, description="seed for init, dropout and data order")
    log_every: int = Field(1, description="steps between metric logs")
    checkpoint_every: int = Field(50, description="steps between checkpoints (0: only at the end)")
    keep_checkpoints: int = Field(2, description="checkpoints kept in storage")
    storage_path: Annotated[str, Url()] = Field(
        "runs", description="local folder or s3://bucket/prefix for Ray run storage"
    )
    storage_endpoint: Annotated[str | None, Url()] = Field(
        None, description="S3 endpoint of storage_path (None: default)"
    )
    run_name: str = Field("mmclip", description="Ray run name; also the MLflow run name")
    max_failures: int = Field(2, description="worker failures Ray Train recovers from by restoring")
    resume: bool = Field(False, description="resume from the latest checkpoint of run_name")
    export_dir: Annotated[str, Url()] = Field("", description="where to export the final DeepSpeed-independent model")
    step_callback: str | None = Field(None, description="'module:Class' built on every worker, called after each step")

    @model_validator(mode="after")
    def _batch_divides(self) -> TrainConfig:
        accumulation_steps(self.global_batch, self.num_workers, self.micro_batch)
        if self.lr_reference_batch < 1:
            raise ValueError(f"train.lr_reference_batch must be >= 1, got {self.lr_reference_batch}")
        return self


def scaled_lr(train: TrainConfig) -> float:
    """The peak lr the optimizer gets: ``train.lr`` is stated for ``train.lr_reference_batch`` samples (the
    paper's 16) and scaled to ``train.global_batch`` by ``train.lr_scaling`` (none / linear / sqrt)."""
    ratio = train.global_batch / train.lr_reference_batch
    factor = {"none": 1.0, "linear": ratio, "sqrt": ratio**0.5}[train.lr_scaling]
    return train.lr * factor


def accumulation_steps(global_batch: int, world_size: int, micro_batch: int) -> int:
    """Micro-batches per rank per optimizer step: ``world_size x micro_batch x accumulation == global_batch``
    exactly, so the contrastive batch never depends on how it is split."""
    per_pass = world_size * micro_batch
    if global_batch % per_pass != 0 or global_batch < per_pass:
        raise ValueError(
            f"train.global_batch={global_batch} must be a positive multiple of "
            f"world size x micro_batch = {world_size} x {micro_batch} = {per_pass}"
        )
    return global_batch // per_pass


class TrackingConfig(_Section):
    """MLflow tracking."""

    tracking_uri: Annotated[str, Url()] = Field(
        "", description="MLflow tracking URI; empty: MLFLOW_TRACKING_URI or sqlite:///mlflow.db"
    )
    experiment: str = Field("mmclip", description="MLflow experiment name")


EvalMode = Literal["zeroshot", "linear", "finetune"]


class EvalConfig(_Section):
    """Downstream evaluation."""

    task: Literal["malignancy", "mass", "calcification", "density", "birads"] = Field(
        "malignancy", description="label to predict"
    )
    batch_size: int = Field(16, description="breasts per evaluation batch")
    bootstrap: int = Field(1000, description="bootstrap resamples for 95% confidence intervals")
    mode: EvalMode = Field(
        "linear", description="zero-shot prompts, linear probe on frozen features, or full visual fine-tune"
    )
    features: Literal["backbone", "embed", "roi"] = Field(
        "backbone",
        description="probe features: pooled backbone map, global image embedding, or mean RoI embedding of the boxes",
    )
    use_masks: bool = Field(
        True, description="feed the shards' lesion masks to Region Focus (false: zero masks, as for unannotated images)"
    )
    val_fraction: float = Field(0.2, description="patients of the train split held out to pick hyper-parameters")
    probe_c: list[float] = Field(
        [0.001, 0.01, 0.1, 1.0, 10.0], description="inverse L2 strengths tried by the logistic-regression probe"
    )
    finetune_epochs: int = Field(3, description="fine-tune epochs; the best on validation is kept")
    finetune_lr: float = Field(1e-4, description="AdamW learning rate of the fine-tune")
    finetune_weight_decay: float = Field(1e-4, description="AdamW weight decay of the fine-tune")
    finetune_max_gib: float = Field(8.0, description="refuse a fine-tune whose in-memory image cache exceeds this")
    baselines: list[Literal["random", "imagenet"]] = Field(
        ["random", "imagenet"], description="baselines scored with the same probe / fine-tune code"
    )
    imagenet_weights: str = Field(
        "", description="ImageNet baseline backbone: '' skip it, 'timm' (cache/hub), or a timm checkpoint file"
    )
    seed: int = Field(0, description="seed of the validation split, baseline init and fine-tune")
    experiment: str = Field("", description="MLflow experiment of eval runs; empty: '<tracking.experiment>-eval'")


class Config(_Section):
    """The whole tree; every command reads the sections it needs."""

    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig, description="synthetic data")
    shards: ShardsConfig = Field(default_factory=ShardsConfig, description="shard building")
    data: DataConfig = Field(default_factory=DataConfig, description="training data stream")
    model: ModelConfig = Field(default_factory=ModelConfig, description="network")
    loss: LossConfig = Field(default_factory=LossConfig, description="losses")
    train: TrainConfig = Field(default_factory=TrainConfig, description="optimisation and distribution")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="MLflow")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="evaluation")


class ConfigError(ValueError):
    """A config file or override that does not fit the tree."""


def apply_override(tree: dict[str, Any], override: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (``1e-4``, ``[760, 480]``, ``null``)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not of the form section.key=value")
    dotted, raw = override.split("=", 1)
    keys = dotted.strip().split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {key!r} is not a section")
    node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file (or start from defaults), apply dotted overrides, validate."""
    tree: dict[str, Any] = {}
    if path is not None:
        if not Path(path).is_file():
            raise ConfigError(
                f"config file {str(path)!r} not found; pass --config with an existing YAML (e.g. launch/configs/debug.yaml)"
            )
        text = Path(path).read_text()
        tree = yaml.safe_load(text) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    for override in overrides:
        apply_override(tree, override)
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        where = f" in {path}" if path else ""
        raise ConfigError(
            f"invalid config{where}: {_describe_errors(err)} (`mmclip-dist config --docs` lists every key)"
        ) from None


def _describe_errors(err: ValidationError) -> str:
    """Every problem on one line, ``dotted.field: message (got value)``; a ``Secret`` field's value is never shown."""
    secret = {name for name, info in _field_infos(Config) if _marker(info, Secret) is not None}
    parts = []
    for problem in err.errors(include_url=False):
        dotted = ".".join(str(part) for part in problem["loc"])
        if problem["type"] == "extra_forbidden":
            parts.append(f"{dotted}: unknown key")
            continue
        shown = (
            ""
            if dotted in secret or "input" not in problem
            else f" (got {strip_url_credentials(repr(problem['input']))})"
        )
        parts.append(f"{dotted}: {problem['msg']}{shown}")
    return "; ".join(parts)


def _field_infos(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, field info) of every leaf field of a config class."""
    rows: list[tuple[str, Any]] = []
    for name, info in model.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            rows.extend(_field_infos(info.annotation, f"{prefix}{name}."))
        else:
            rows.append((f"{prefix}{name}", info))
    return rows


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML, secrets included: for a config file a command will read back.

    Anything that logs or publishes a config (MLflow, manifests, job metadata, the terminal) uses
    ``redacted_dump`` instead.
    """
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def strip_url_credentials(value: str) -> str:
    """``s3://key:secret@host/x`` -> ``s3://<redacted>@host/x``; a value without userinfo is returned as is."""
    return _USERINFO.sub(f"{REDACTED}@", value)


def url_credentials(value: str) -> list[str]:
    """The ``user:password`` parts of every URL in ``value`` (empty when there is none)."""
    return [m.group(0)[:-1] for m in _USERINFO.finditer(value)]


def _marker(info: Any, kind: type) -> Any:
    return next((m for m in info.metadata if isinstance(m, kind)), None)


def _walk_fields(model: BaseModel, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted name, field info, value) of every leaf field of a config model."""
    rows: list[tuple[str, Any, Any]] = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            rows.extend(_walk_fields(value, f"{prefix}{name}."))
        else:
            rows.append((f"{prefix}{name}", info, value))
    return rows


def secret_fields(cfg: BaseModel) -> list[tuple[str, str]]:
    """``(dotted field, credential)`` for every credential the config holds: ``Secret`` values and the
    ``user:password`` of ``Url`` values. Empty values are not credentials."""
    found: list[tuple[str, str]] = []
    for dotted, info, value in _walk_fields(cfg):
        if _marker(info, Secret) is not None and value:
            found.append((dotted, str(value)))
        elif _marker(info, Url) is not None and isinstance(value, str):
            found.extend((dotted, cred) for cred in url_credentials(value))
    return found


def secret_env_names(model: type[BaseModel] | None = None) -> list[str]:
    """Environment variables whose values are credentials: ``CREDENTIAL_ENV`` and every ``Secret(env=...)``."""
    names = list(CREDENTIAL_ENV)
    for _, info in _field_infos(model or Config):
        if (marker := _marker(info, Secret)) is not None and marker.env:
            names.append(marker.env)
    return names


def redacted(cfg: BaseModel) -> dict[str, Any]:
    """``model_dump(mode="json")`` with every ``Secret`` value replaced by ``REDACTED`` and the credentials of
    every ``Url`` value stripped: the only form in which a config is logged, tracked or published."""
    tree = cfg.model_dump(mode="json")
    for dotted, info, value in _walk_fields(cfg):
        keys = dotted.split(".")
        node = tree
        for key in keys[:-1]:
            node = node[key]
        if _marker(info, Secret) is not None and value:
            node[keys[-1]] = REDACTED
        elif _marker(info, Url) is not None and isinstance(value, str):
            node[keys[-1]] = strip_url_credentials(value)
    return tree


def redacted_dump(cfg: BaseModel) -> str:
    """``redacted(cfg)`` as YAML: the config.yaml logged to MLflow and printed by ``mmclip-dist config``."""
    return yaml.safe_dump(redacted(cfg), sort_keys=False)


def redact_text(text: str, cfg: BaseModel) -> str:
    """A log line or message with every credential of ``cfg`` (and any URL userinfo) replaced by ``REDACTED``."""
    for _, secret in sorted(secret_fields(cfg), key=lambda item: -len(item[1])):
        text = text.replace(secret, REDACTED)
    return strip_url_credentials(text)


def flatten(cfg: Config) -> dict[str, Any]:
    """``{"train.lr": 1e-6, ...}``: one entry per leaf of ``redacted(cfg)``, for MLflow params and run comparison."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else key, value)
        else:
            out[prefix] = node

    walk("", redacted(cfg))
    return out


def field_docs(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted name, description, default) of every leaf field, for ``mmclip-dist config --docs``."""
    rows: list[tuple[str, str, Any]] = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        dotted = f"{prefix}{name}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(field_docs(annotation, dotted + "."))
        else:
            rows.append((dotted, info.description or "", info.get_default(call_default_factory=True)))
    return rows
