"""LocalMlflowServer: starts a real ``mlflow server``, serves the REST API, leaves no process behind."""

import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from mmclip_devtools.mlflow_server import LocalMlflowServer, free_port, process_group_members


@pytest.mark.integration
def test_server_serves_tracking_and_artifacts_then_stops_every_process(tmp_path):
    port = free_port()
    server = LocalMlflowServer(tmp_path / "srv", port=port)
    with server:
        assert server.uri == f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{server.uri}/health", timeout=5) as resp:
            assert resp.status == 200
        members = process_group_members(server.pid)
        # `mlflow server` forks uvicorn: the group holds more than the process we started
        assert server.pid in members and len(members) >= 2
        client = MlflowClient(server.uri)
        exp = client.create_experiment("srv")
        run = client.create_run(exp)
        client.log_metric(run.info.run_id, "loss", 0.5, step=1)
        (tmp_path / "note.txt").write_text("hello")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.5}
    assert server.alive_pids() == []
    assert process_group_members(members[0]) == []
    # the store and the proxied artifact live under root
    assert (tmp_path / "srv" / "mlflow.db").is_file()
    assert [p.name for p in (tmp_path / "srv" / "artifacts").rglob("note.txt")] == ["note.txt"]
    with pytest.raises(RuntimeError, match="not started"):
        _ = LocalMlflowServer(tmp_path / "x").uri


@pytest.mark.integration
def test_server_start_failure_reports_the_log(tmp_path):
    # a port already in use with a fixed port: the start fails and the error carries the server log
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = LocalMlflowServer(tmp_path, port=port, startup_timeout=60)
        with pytest.raises(RuntimeError, match="mlflow server"):
            server.start()
        assert server.alive_pids() == []
