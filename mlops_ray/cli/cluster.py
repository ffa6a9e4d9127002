"""Cluster-facing commands: `cluster check` (KubeRay and cluster-launcher manifests) and `submit`
(an mlops-ray command run on a Ray cluster through the Jobs API).

In: manifest files, or a config path and the command to run remotely. Out: every problem of the
manifests (exit 2), or the submitted job's id and outcome (exit 11 when it failed, 7 when the
dashboard cannot be reached).
"""
from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from mlops_ray.cli.options import Json, State, _guard, _load
from mlops_ray.cli.render import _emit_json, _job_log, _print_cluster_check, _print_job_submitted, _print_submit
from mlops_ray.cluster.manifests import check_files


def cluster_check(files: List[str] = typer.Argument(..., help="Manifests: KubeRay RayCluster/RayJob/RayService "
                                                              "YAML or a `ray up` cluster config."),
                  root: Optional[str] = typer.Option(None, "--root", help="Project root that referenced "
                                                     "configs are relative to (default: nearest pyproject.toml)."),
                  crds: Optional[str] = typer.Option(None, "--crds", help="Folder of KubeRay CRDs (default: "
                                                     "$MLOPS_RAY_KUBERAY_CRDS, else the CRDs shipped in "
                                                     "mlops_ray/cluster/schemas/kuberay)."),
                  json_out: Json = False):
    """Validate manifests against KubeRay's CRDs / Ray's ray-schema.json and the rules only the
    controller checks; exit 2 with every problem named."""
    with _guard(json_out):
        res = check_files(files, root=root, crd_dir=crds)
        _emit_json({"ok": True, "files": res}) if json_out else _print_cluster_check(res)


def submit_cmd(config: Annotated[str, typer.Argument(help="Pipeline YAML, inside the project.")],
               command: Optional[List[str]] = typer.Argument(None, metavar="-- COMMAND [ARGS]...",
                                                             help="The mlops-ray command to run on the cluster."),
               address: Optional[str] = typer.Option(None, "--address", help="The cluster's dashboard URL (default: "
                                                     "RAY_API_SERVER_ADDRESS, an http RAY_ADDRESS, else "
                                                     "http://127.0.0.1:8265)."),
               wait: bool = typer.Option(False, "--wait", help="Stream the job's logs; exit with its outcome."),
               exclude: Optional[List[str]] = typer.Option(None, "--exclude", help="Leave this out of the upload "
                                                           "(gitignore syntax, from the project root); repeatable."),
               project_dir: Optional[str] = typer.Option(None, "--project-dir", help="Project root to upload "
                                                         "(default: where pyproject.toml is, at or above here)."),
               max_upload_mib: float = typer.Option(100.0, "--max-upload-mib", min=0.001,
                                                    help="Refuse a bigger upload (the dashboard takes 100 MiB)."),
               json_out: Annotated[bool, typer.Option("--json", help="Result as JSON; job logs then go to "
                                                                     "stderr.")] = False):
    """Run an mlops-ray command on a Ray cluster through the Jobs API; the project root is its working_dir.

    mlops-ray submit configs/quickstart.yaml --address http://127.0.0.1:8265 --wait -- run

    Exit 0: submitted (with --wait: SUCCEEDED); 11: the job FAILED or was STOPPED; 7: the
    dashboard is unreachable, is not a Ray dashboard or refuses the token; 2: bad command or upload.
    """
    # imported here: the Jobs client costs ~20 ms (asyncio, http), which `mlops-ray --help` must not pay
    from mlops_ray.cluster import jobs
    with _guard(json_out):
        cfg = _load(config, jobs.set_args(command or []))
        res = jobs.submit(cfg, config, command or [], address=address, wait=wait, excludes=exclude or [],
                          max_upload_bytes=int(max_upload_mib * 1024 ** 2), project_dir=project_dir,
                          verbose=State.verbose, on_log=_job_log(json_out),
                          on_submitted=(lambda res: None) if json_out else _print_job_submitted)
        _emit_json(res) if json_out else _print_submit(res, wait)
