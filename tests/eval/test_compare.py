"""``mmclip-dist compare`` against runs logged to a real MLflow server (and to a local sqlite store)."""

import os

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from mmclip_devtools.mlflow_server import LocalMlflowServer, process_group_members
from mmclip_dist.cli.main import main
from mmclip_dist.eval.compare import compare_runs, fetch_runs

pytestmark = pytest.mark.integration

# (run name, params, loss history by step, final eval AUC)
SAME = {"train.micro_batch": "8", "model.backbone": "efficientnet_b2"}
RUNS = [
    ("base", {"train.lr": "1e-06", **SAME}, [3.0, 2.0, 1.5, 1.2], 0.71),
    ("high-lr", {"train.lr": "0.0001", **SAME}, [3.0, 1.0, 0.6, 0.4], 0.83),
    ("roi", {"train.lr": "1e-06", **SAME, "loss.roi_weight": "[0.5]"}, [3.1, 2.2, 1.9, 1.7], 0.65),
]


def _log_runs(uri: str, experiment: str) -> list[str]:
    client = MlflowClient(uri)
    exp_id = client.create_experiment(experiment)
    ids = []
    for name, params, losses, auc in RUNS:
        run = client.create_run(exp_id, run_name=name)
        rid = run.info.run_id
        for key, value in params.items():
            client.log_param(rid, key, value)
        # logged out of step order: the final value is the one at the highest step, not the last logged
        for step in [3, 0, 1, 2]:
            client.log_metric(rid, "loss", losses[step], step=step)
        client.log_metric(rid, "eval/auc", auc, step=3)
        client.set_terminated(rid)
        ids.append(rid)
    return ids


def _table_rows(text: str) -> dict[str, list[str]]:
    """``{row name: [cell per run]}`` from rich's box-drawn table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("│")]
        if len(cells) >= 3 and cells[1]:
            rows[cells[1]] = cells[2:-1]
    return rows


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = LocalMlflowServer(tmp_path_factory.mktemp("mlflow"))
    with srv:
        members = process_group_members(srv.pid)
        assert srv.pid in members and len(members) >= 2  # the CLI process plus its uvicorn worker
        yield srv
    # every process of the server's group (uvicorn workers included) is gone
    assert srv.alive_pids() == []
    assert process_group_members(members[0]) == []
    for pid in members:
        assert not os.path.exists(f"/proc/{pid}") or process_group_members(pid) == []


def test_compare_cli_against_mlflow_server(server, tmp_path, capsys):
    ids = _log_runs(server.uri, "cmp-server")
    out_png = tmp_path / "curves.png"
    assert main(["compare", *ids, "--tracking-uri", server.uri, "--plot", str(out_png)]) == 0
    text = capsys.readouterr().out
    rows = _table_rows(text)
    # exactly the params that differ: lr, and roi_weight (absent from two runs)
    param_rows = [k for k in rows if k.startswith(("train.", "model.", "loss."))]
    assert param_rows == ["loss.roi_weight", "train.lr"]
    assert rows["train.lr"] == ["1e-06", "0.0001", "1e-06"]
    assert rows["loss.roi_weight"] == ["—", "—", "[0.5]"]
    # final values: loss at step 3 (logged first), the AUC
    assert rows["loss"] == ["1.2", "0.4", "1.7"]
    assert rows["eval/auc"] == ["0.71", "0.83", "0.65"]
    for name, rid in zip(["base", "high-lr", "roi"], ids):
        assert f"{name} ({rid[:8]})" in text
    img = Image.open(out_png)
    assert img.format == "PNG" and img.size == (1000, 350)  # panels: eval/auc, loss


def test_compare_by_experiment_with_metric_filter(server, tmp_path, capsys):
    _log_runs(server.uri, "cmp-exp")
    out_png = tmp_path / "loss.png"
    argv = ["compare", "--experiment", "cmp-exp", "--tracking-uri", server.uri, "--metrics", "loss"]
    assert main([*argv, "--plot", str(out_png)]) == 0
    rows = _table_rows(capsys.readouterr().out)
    assert rows["loss"] == ["1.2", "0.4", "1.7"]  # oldest run first
    assert "eval/auc" not in rows
    assert Image.open(out_png).size == (500, 350)  # one panel


def test_compare_errors_name_the_missing_thing(server, capsys):
    with pytest.raises(SystemExit, match="no MLflow experiment named 'nope'"):
        main(["compare", "--experiment", "nope", "--tracking-uri", server.uri])
    with pytest.raises(SystemExit, match="run 'deadbeef' not found"):
        main(["compare", "deadbeef", "--tracking-uri", server.uri])
    with pytest.raises(SystemExit, match="one of the two"):
        main(["compare", "--tracking-uri", server.uri])


def test_compare_local_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a sqlite store's default artifact root is ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = _log_runs(uri, "local")
    comp = compare_runs(fetch_runs(MlflowClient(uri), ids[:2]))
    # between the first two runs only the learning rate differs
    assert comp.params == {"train.lr": ["1e-06", "0.0001"]}
    assert comp.metrics == {"eval/auc": [0.71, 0.83], "loss": [1.2, 0.4]}
