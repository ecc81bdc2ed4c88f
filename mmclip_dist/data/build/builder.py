"""``build_shards(cfg.shards)``: dataset CSVs + DICOMs → WebDataset shards, manifest and rejects.

Steps: the adapter reads the CSVs into records; every record gets its salted key and split; each
split is sorted by key (a fixed order that does not depend on CSV row order); worker processes turn
records into samples in that order (``Pool.imap`` keeps it); ``SplitWriter`` cuts and commits shards.
An interrupted build restarted with the same inputs resumes after the last committed shard and ends
with byte-identical output.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import multiprocessing
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from mmclip_dist.config import ShardsConfig, redacted
from mmclip_dist.data.build import deid
from mmclip_dist.data.build.adapters import read_dataset
from mmclip_dist.data.build.records import UNUSED_IMAGE_REASONS, BreastRecord, Reject
from mmclip_dist.data.build.reports import load_rewriter
from mmclip_dist.data.build.sample_files import Sample, SampleSpec, breast_key, make_sample, patient_key
from mmclip_dist.data.build.shard_writer import ShardInfo, ShardSink, SplitWriter, load_resume, write_manifest
from mmclip_dist.data.codecs import ZSTD_LEVEL
from mmclip_dist.data.shard_format import MANIFEST, SCHEMA_VERSION
from mmclip_dist.data.synthetic import TRUTH_FILE

LABEL_NAMES = {"1": "malignant", "0": "benign", "-1": "unknown"}


@dataclass
class BuildResult:
    """What a build wrote; ``manifest`` is the content of manifest.json."""

    output: str
    manifest: dict[str, Any]
    shards: list[ShardInfo]
    rejects: list[dict[str, str]]

    @property
    def samples(self) -> int:
        return int(self.manifest["samples"])

    @property
    def inputs(self) -> int:
        return int(self.manifest["inputs"])

    @property
    def lost(self) -> int:
        """Rejects that lost data (not images left out by design, see ``UNUSED_IMAGE_REASONS``)."""
        return sum(r["reason"] not in UNUSED_IMAGE_REASONS for r in self.rejects)

    @property
    def reject_fraction(self) -> float:
        """Rejects that lost data / (samples + those rejects)."""
        return self.lost / max(1, self.samples + self.lost)

    def rejects_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(r["reason"] for r in self.rejects).items()))


def is_synthetic(root: str | Path) -> bool:
    """Whether ``root`` was written by the synthetic generator (its ids identify nobody: default salt is fine)."""
    return (Path(root) / TRUTH_FILE).is_file()


def assign_split(patient_hash: str, test_fraction: float) -> str:
    """'test' for a stable ``test_fraction`` of patients (by their salted hash), else 'train'."""
    return "test" if int(patient_hash[:8], 16) / 0x1_0000_0000 < test_fraction else "train"


def prepare(cfg: ShardsConfig) -> tuple[dict[str, list[tuple[str, BreastRecord]]], list[Reject], str, str, str, int]:
    """Adapter + keys + splits: ``({split: [(key, record)] sorted}, adapter rejects, label_source, salt, fingerprint,
    inputs)`` where ``inputs`` is the number of breasts the CSVs name (kept or rejected)."""
    salt = deid.resolve_salt(cfg.salt, is_synthetic(cfg.input))
    result = read_dataset(cfg)
    rejects = list(result.rejects)
    splits: dict[str, list[tuple[str, BreastRecord]]] = {}
    seen: dict[str, str] = {}
    for record in result.records:
        key = breast_key(record, salt)
        if key in seen:
            rejects.append(Reject(record.source, "duplicate_id", f"same breast as {seen[key]}; the first is kept"))
            continue
        seen[key] = record.source
        if not record.split:
            record.split = assign_split(patient_key(record, salt), cfg.test_fraction)
        splits.setdefault(record.split, []).append((key, record))
    for items in splits.values():
        items.sort(key=lambda item: item[0])
    fingerprint = _fingerprint(cfg, salt, splits)
    return dict(sorted(splits.items())), rejects, result.label_source, salt, fingerprint, result.inputs


def _fingerprint(cfg: ShardsConfig, salt: str, splits: dict[str, list[tuple[str, BreastRecord]]]) -> str:
    """Keyed digest of everything that decides the output bytes; a resumed build must match it."""
    content = {
        k: v
        for k, v in cfg.model_dump(mode="json").items()
        if k not in ("input", "output", "processes", "resume", "salt", "max_reject_fraction", "s3_endpoint")
    }
    digest = hmac.new(salt.encode(), digestmod=hashlib.sha256)
    digest.update(json.dumps([SCHEMA_VERSION, ZSTD_LEVEL, content], sort_keys=True).encode())
    for split, items in sorted(splits.items()):
        for key, record in items:
            digest.update(json.dumps([split, key, dataclasses.asdict(record)], sort_keys=True, default=str).encode())
    return digest.hexdigest()


# Worker-process state, set once per process by the pool initializer (the spec holds the rewriter).
_SPEC: SampleSpec | None = None


def _init_worker(spec: SampleSpec) -> None:
    global _SPEC
    _SPEC = spec


def _work(record: BreastRecord) -> Sample | Reject:
    assert _SPEC is not None
    return make_sample(record, _SPEC)


def _results(records: list[BreastRecord], spec: SampleSpec, pool: Any) -> Iterator[Sample | Reject]:
    if pool is None:
        return (make_sample(r, spec) for r in records)
    # imap (not imap_unordered): results come back in input order, which makes the shards deterministic.
    return pool.imap(_work, records, chunksize=1)


def build_shards(cfg: ShardsConfig, progress: bool = True) -> BuildResult:
    """Build (or resume building) the shards described by ``cfg`` and return what was written."""
    splits, adapter_rejects, label_source, salt, fingerprint, inputs = prepare(cfg)
    spec = SampleSpec(
        image_size=(cfg.image_size[0], cfg.image_size[1]),
        flip_to=cfg.flip_to,
        salt=salt,
        rewriter=load_rewriter(cfg.report_rewriter),
        phi_policy=cfg.phi_policy,
        allow_burned_in=cfg.allow_burned_in,
    )
    sink = ShardSink(cfg.output, cfg.s3_endpoint)
    # The manifest marks a finished build; remove it first so a half-rebuilt output never looks finished.
    sink.delete(MANIFEST)
    sink.clean_staging()

    deid.load_detector()
    # One BLAS thread per process (the pool's workers inherit it): the resize's small matrix products
    # (preprocess.resize_lanczos) cost ~10x the CPU time with OpenBLAS threads spin-waiting between them,
    # and the build already runs one process per core.
    blas = threadpool_limits(1, user_api="blas")
    pool = None
    if cfg.processes > 1:
        # fork: workers inherit the imported modules, so start-up costs milliseconds, not an interpreter.
        pool = multiprocessing.get_context("fork").Pool(cfg.processes, initializer=_init_worker, initargs=(spec,))
    all_shards: list[ShardInfo] = []
    shard_rejects: list[dict[str, str]] = []
    try:
        for split, items in splits.items():
            resume = load_resume(sink, split, fingerprint) if cfg.resume else None
            writer = SplitWriter(sink, split, fingerprint, cfg.shard_max_bytes, cfg.shard_max_samples, resume)
            todo = [record for _, record in items[writer.position :]]
            bar = _progress(len(items), writer.position, split, progress)
            for result in _results(todo, spec, pool):
                if isinstance(result, Reject):
                    writer.add_reject(result)
                else:
                    writer.add_sample(result.key, result.files, result.label, result.deid)
                    for reject in result.rejects:  # parts of a sample left out (a CBIS ROI mask of another size)
                        writer.add_reject(reject, advance=False)
                bar.update(1)
            bar.close()
            shards = writer.finish()
            all_shards.extend(shards)
            for shard in shards:
                shard_rejects.extend(shard.rejects)
            shard_rejects.extend(writer.trailing_rejects())
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        sink.close()
        blas.restore_original_limits()

    # Adapter rejects quote CSV cells (a bad label, a bad box): the PHI detector redacts whatever they hold.
    rejects = [{**r.to_json(), "detail": deid.redact_phi(r.detail)} for r in adapter_rejects] + shard_rejects
    manifest = _manifest(cfg, splits, all_shards, rejects, label_source, fingerprint, inputs)
    write_manifest(sink, manifest, rejects)
    return BuildResult(output=cfg.output, manifest=manifest, shards=all_shards, rejects=rejects)


def _manifest(
    cfg: ShardsConfig,
    splits: dict[str, list[tuple[str, BreastRecord]]],
    shards: list[ShardInfo],
    rejects: list[dict[str, str]],
    label_source: str,
    fingerprint: str,
    inputs: int,
) -> dict[str, Any]:
    config = redacted(cfg)  # the salt and URL credentials are secrets (config field markers): never written out
    split_info: dict[str, dict[str, Any]] = {}
    for split in splits:
        mine = [s for s in shards if s.split == split]
        labels: Counter[str] = Counter()
        for shard in mine:
            labels.update(shard.labels)
        split_info[split] = {
            "samples": sum(s.samples for s in mine),
            "shards": [s.name for s in mine],
            "labels": {name: int(labels.get(code, 0)) for code, name in LABEL_NAMES.items()},
        }
    samples = sum(info["samples"] for info in split_info.values())
    if label_source == "birads_proxy":
        rule = (
            f"BI-RADS proxy, not pathology: breast BI-RADS >= {cfg.birads_malignant_min} malignant, "
            f"<= {cfg.birads_benign_max} benign, otherwise unknown (-1)"
        )
    else:
        rule = "pathology (biopsy-proven or dataset cancer label)"
    return {
        "schema": SCHEMA_VERSION,
        "dataset": cfg.dataset,
        "label_source": label_source,
        "label_rule": rule,
        "inputs": inputs,
        "samples": samples,
        "rejects": {
            "total": len(rejects),
            "lost": sum(r["reason"] not in UNUSED_IMAGE_REASONS for r in rejects),
            "by_reason": dict(sorted(Counter(r["reason"] for r in rejects).items())),
        },
        "splits": split_info,
        "shards": [
            {"name": s.name, "split": s.split, "samples": s.samples, "sha256": s.sha256, "bytes": s.bytes}
            for s in shards
        ],
        "image_size": list(cfg.image_size),
        "deid": _deid_summary(cfg, shards, rejects),
        "fingerprint": fingerprint,
        "config": config,
    }


def _deid_summary(cfg: ShardsConfig, shards: list[ShardInfo], rejects: list[dict[str, str]]) -> dict[str, Any]:
    """What de-identification did: texts rejected or redacted for PHI, burned-in images rejected or kept."""
    done: Counter[str] = Counter()
    for shard in shards:
        done.update(shard.deid)
    reasons = Counter(r["reason"] for r in rejects)
    return {
        "phi_policy": cfg.phi_policy,
        "phi_detector": deid.detector_version(),
        "rejected_phi_in_text": reasons[deid.PHI_REASON],
        "samples_phi_redacted": done["phi_redacted"],
        "identifiers_removed": done["identifiers_removed"],
        "allow_burned_in": cfg.allow_burned_in,
        "rejected_burned_in": reasons[deid.BURNED_IN_REASON],
        "samples_burned_in_kept": done["burned_in_kept"],
    }


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, done: int, split: str, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=f"shards {split}", unit="breast", file=sys.stderr, dynamic_ncols=True)
