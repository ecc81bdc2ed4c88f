"""``mmclip-dist compare``: differing params, final metrics and metric curves of MLflow runs."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "compare",
        help="compare MLflow runs: params that differ, final metrics, overlaid metric curves",
        description="Give run ids, or --experiment NAME for all of its runs.",
    )
    parser.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="MLflow run ids to compare")
    parser.add_argument("--experiment", help="compare every run of this MLflow experiment")
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)",
    )
    parser.add_argument("--metrics", default="", help="comma-separated metrics to show and plot (default: all)")
    parser.add_argument("--plot", metavar="OUT.png", help="write the metric histories of the runs to this PNG")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here so `mmclip-dist --help` does not pay for MLflow and matplotlib.
    from mlflow.tracking import MlflowClient

    from mmclip_dist.config import TrackingConfig
    from mmclip_dist.eval.compare import compare_runs, fetch_runs, plot_histories, print_comparison
    from mmclip_dist.tracking import resolve_tracking_uri

    if bool(args.run_ids) == bool(args.experiment):
        raise SystemExit("mmclip-dist compare: give run ids or --experiment NAME (one of the two)")
    uri = resolve_tracking_uri(TrackingConfig(tracking_uri=args.tracking_uri or ""))
    client = MlflowClient(tracking_uri=uri)
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    try:
        runs = fetch_runs(client, args.run_ids, args.experiment)
    except ValueError as err:
        raise SystemExit(f"mmclip-dist compare ({uri}): {err}") from err
    comparison = compare_runs(runs, metrics or None)
    print_comparison(comparison)
    if args.plot:
        out = plot_histories(client, runs, list(comparison.metrics), args.plot)
        print(f"metric curves: {out}")
    return 0
