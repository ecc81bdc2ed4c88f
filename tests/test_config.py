"""Secrets as a property of the typed config: markers, redaction, salt length, error messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmclip_dist.config import (
    REDACTED,
    ConfigError,
    Secret,
    Url,
    flatten,
    load_config,
    redact_text,
    redacted,
    redacted_dump,
    secret_env_names,
    secret_fields,
)
from mmclip_dist.tracking import loggable_params

DEBUG = Path(__file__).resolve().parents[1] / "launch" / "configs" / "debug.yaml"
SALT = "planted-salt-4f1e9c0a7b"
URL_FIELDS = {
    "shards.output": "s3://AKIDOUT:planted-out@bucket/shards",
    "shards.s3_endpoint": "http://AKIDS3:planted-s3@seaweedfs:8333",
    "data.train_shards": "s3://AKIDTRAIN:planted-train@bucket/train",
    "data.s3_endpoint": "http://AKIDDATA:planted-data@seaweedfs:8333",
    "train.storage_endpoint": "http://AKIDST:planted-storage@seaweedfs:8333",
    "tracking.tracking_uri": "http://alice:planted-mlflow@mlflow:5000",
}


def _planted() -> object:
    return load_config(DEBUG, [f"shards.salt={SALT}", *(f"{k}={v}" for k, v in URL_FIELDS.items())])


def test_markers_name_the_secret_fields() -> None:
    from mmclip_dist.config import Config, _field_infos

    marked = {name: info.metadata for name, info in _field_infos(Config) if info.metadata}
    assert [type(m) for m in marked["shards.salt"]] == [Secret]
    for name in URL_FIELDS:
        assert any(isinstance(m, Url) for m in marked[name]), name
    assert "MMCLIP_ID_SALT" in secret_env_names() and "AWS_SECRET_ACCESS_KEY" in secret_env_names()


def test_redaction_removes_every_planted_value() -> None:
    cfg = _planted()
    found = dict(secret_fields(cfg))
    assert found["shards.salt"] == SALT and found["tracking.tracking_uri"] == "alice:planted-mlflow"
    assert set(found) == {"shards.salt", *URL_FIELDS}
    for text in (redacted_dump(cfg), repr(flatten(cfg)), repr(loggable_params(cfg))):
        assert "planted" not in text and SALT not in text
    tree = redacted(cfg)
    assert tree["shards"]["salt"] == REDACTED
    assert tree["tracking"]["tracking_uri"] == f"http://{REDACTED}@mlflow:5000"
    assert tree["data"]["train_shards"] == f"s3://{REDACTED}@bucket/train"
    assert yaml.safe_load(redacted_dump(cfg)) == tree
    # Everything else survives untouched (the redacted config is still a useful record of the run).
    assert tree["train"] == {**cfg.train.model_dump(mode="json"), "storage_endpoint": tree["train"]["storage_endpoint"]}
    line = f"loading {cfg.data.train_shards} with salt {SALT} and http://bob:pw@elsewhere/x"
    assert (
        redact_text(line, cfg)
        == f"loading s3://{REDACTED}@bucket/train with salt {REDACTED} and http://{REDACTED}@elsewhere/x"
    )


def test_unset_secrets_stay_visibly_unset() -> None:
    tree = redacted(load_config(DEBUG))
    assert tree["shards"]["salt"] == "" and tree["tracking"]["tracking_uri"] == ""


def test_short_salt_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigError, match="shards.salt is 11 characters; an id salt must be at least 16") as err:
        load_config(DEBUG, ["shards.salt=short-salty"])
    assert "short-salty" not in str(err.value)
    # Other fields still show the offending value.
    with pytest.raises(ConfigError, match=r"train.lr: .*\(got 'abc'\)"):
        load_config(DEBUG, ["train.lr=abc"])
    with pytest.raises(ConfigError) as err:
        load_config(DEBUG, ["tracking.tracking_uri=[1]", "data.s3_endpoint=[http://u:planted@h]"])
    assert "planted" not in str(err.value)
