"""``bench/fidelity.py``'s settings stay a valid config as the config tree changes (the bench itself takes
half an hour; a rule such as the minimum salt length must not break it unnoticed)."""

from __future__ import annotations

from pathlib import Path

from mmclip_devtools.bench_scripts import load_bench_script


def test_fidelity_settings_load_with_every_path_under_the_workdir(tmp_path: Path) -> None:
    fidelity = load_bench_script("fidelity")
    cfg = fidelity.fidelity_config(tmp_path, ["train.max_steps=7"])
    assert cfg.model.roi_levels == [8, 16, 32] and cfg.model.roi_pooling == "flatten"
    assert cfg.eval.features == "roi" and cfg.train.max_steps == 7
    assert (cfg.synthetic.text_hidden, cfg.synthetic.text_layers) == (128, 2)  # the measured setting
    assert tuple(cfg.data.image_size) == (256, 192) == tuple(cfg.shards.image_size)
    for path in (cfg.shards.output, cfg.data.train_shards, cfg.train.storage_path, cfg.model.text_encoder):
        assert Path(path).is_relative_to(tmp_path), path
