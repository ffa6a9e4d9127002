"""The config through the CLI: the schema's descriptions, the messages of bad --set overrides and
bad values, and a read-only command on an empty store that leaves the store as it was."""
import json
import socket

import pytest
from typer.testing import CliRunner

from mlops_ray.cli import app
from mlops_ray.errors import ExitCode

pytestmark = pytest.mark.unit

QUICKSTART = "configs/quickstart.yaml"
SMALL = """name: small
data: {source: data/x, label: y, split: {test_fraction: 0.2}}
tune:
  num_samples: 8
rollout:
  min_requests: 200
"""


def cli(*args: str):
    res = CliRunner().invoke(app, list(args))
    return res, " ".join(res.output.split())


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(SMALL)
    return str(path)


# --------------------------------------------------------------------------- schema
def test_every_key_of_the_schema_has_a_description():
    res, _ = cli("config", "schema")
    assert res.exit_code == 0, res.output
    schema = json.loads(res.stdout)
    missing = []

    def walk(node, where: str):
        if isinstance(node, dict):
            for key, prop in (node.get("properties") or {}).items():
                if not str(prop.get("description") or "").strip():
                    missing.append(f"{where}.{key}")
            for k, v in node.items():
                walk(v, f"{where}.{k}" if k not in ("properties", "$defs") else where)
        elif isinstance(node, list):
            for v in node:
                walk(v, where)

    walk(schema, "Config")
    assert schema["$defs"] and not missing, f"keys without a description: {missing}"


# --------------------------------------------------------------------------- --set overrides
@pytest.mark.parametrize("override, expected", [
    ("tune.num_smaples=4", "--set tune.num_smaples=4: unknown key 'num_smaples' in tune; did you mean "
                           "'num_samples'? (--set tune.num_samples=4)"),
    ("tnue.num_samples=4", "--set tnue.num_samples=4: unknown key 'tnue' at the top level; did you mean "
                           "'tune'? (--set tune.num_samples=4)"),
    ("serve.autoscaling.max_replica=3", "--set serve.autoscaling.max_replica=3: unknown key 'max_replica' in "
                                        "serve.autoscaling; did you mean 'max_replicas'?"),
])
def test_a_typo_in_a_set_override_names_the_override_not_the_file(override, expected):
    res, text = cli("run", QUICKSTART, "--set", override)
    assert res.exit_code == ExitCode.CONFIG, res.output
    assert "Invalid configuration: 1 problem in the --set override" in text
    assert expected in text
    assert QUICKSTART not in text                  # the file is fine: it is not blamed


def test_a_set_below_a_plain_value_or_with_bad_yaml_is_a_config_error(small):
    res, text = cli("config", "check", small, "--set", "tune.num_samples.max=4")
    assert res.exit_code == ExitCode.CONFIG, res.output
    assert ("--set tune.num_samples.max=4: tune.num_samples is 8, not a section with keys; set "
            "tune.num_samples itself, e.g. --set tune.num_samples=16") in text
    res, text = cli("config", "check", small, "--set", "tune.space={eta:")
    assert res.exit_code == ExitCode.CONFIG, res.output
    assert "--set 'tune.space={eta:': the value is not valid YAML" in text and "Unexpected" not in text


def test_a_set_into_a_section_checked_as_a_whole_names_both(small):
    res, text = cli("config", "check", small, "--set", "data.split.valid_fraction=0.9")
    assert res.exit_code == ExitCode.CONFIG, res.output
    assert f"{small} and its --set override: 1 problem" in text
    assert ("data.split: valid_fraction + test_fraction = 1.1 leaves no training rows; make their sum smaller "
            "than 1 (with --set data.split.valid_fraction=0.9)") in text


@pytest.mark.parametrize("override, expected", [
    ("tune.num_samples=many", "--set tune.num_samples=many: Input should be a valid integer, unable to parse "
                              "string as an integer; expected an integer, e.g. --set tune.num_samples=16"),
    ("tune.max_concurrent=some", "expected an integer, e.g. --set tune.max_concurrent=1"),
    ("data.split.valid_fraction=lots", "expected a number, e.g. --set data.split.valid_fraction=0.1"),
    ("serve.access_log=perhaps", "expected true or false, e.g. --set serve.access_log=false"),
    ("rollout.steps=5", "expected a list, e.g. --set 'rollout.steps=[5, 25, 50, 100]'"),
    ("tune.scheduler=fifo", "Input should be 'asha', 'median' or 'none'; e.g. --set tune.scheduler=asha"),
    ("tune.num_samples=0", "Input should be greater than or equal to 1; e.g. --set tune.num_samples=16"),
])
def test_a_bad_value_in_a_set_override_says_what_is_expected(small, override, expected):
    res, text = cli("config", "check", small, "--set", override)
    assert res.exit_code == ExitCode.CONFIG, res.output
    assert "Invalid configuration: 1 problem in the --set override" in text
    assert expected in text
    assert small not in text


def test_a_bad_value_in_the_file_says_what_is_expected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMALL.replace("num_samples: 8", "num_samples: many"))
    res, text = cli("config", "check", str(bad))
    assert res.exit_code == ExitCode.CONFIG, res.output
    assert f"{bad}: 1 problem" in text
    assert ("tune.num_samples: Input should be a valid integer, unable to parse string as an integer "
            "(got 'many'); expected an integer, e.g. num_samples: 16") in text
    assert "--set" not in text


def test_a_value_that_fits_no_member_of_a_union_is_one_problem_at_its_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMALL.replace("source: data/x", "source: 5") + "features: {numeric: 5}\n")
    res, text = cli("config", "check", str(bad))
    assert res.exit_code == ExitCode.CONFIG, res.output
    assert f"{bad}: 2 problems" in text
    assert "data.source: Input should be a valid string or a valid list (got 5)" in text
    assert "features.numeric: Input should be 'auto' or a valid list (got 5); e.g. numeric: auto" in text
    assert "list[str]" not in text


def test_problems_of_the_file_and_of_an_override_are_told_apart(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(SMALL.replace("  min_requests: 200", "  min_request: 200"))
    res, text = cli("config", "check", str(bad), "--set", "tune.num_smaples=4")
    assert res.exit_code == ExitCode.CONFIG, res.output
    assert f"Invalid configuration: {bad} and its --set override: 2 problems" in text
    assert "rollout.min_request: unknown key; did you mean 'min_requests'?" in text
    assert "--set tune.num_smaples=4: unknown key 'num_smaples' in tune; did you mean 'num_samples'?" in text


# --------------------------------------------------------------------------- read-only on an empty store
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_deploy_on_an_empty_store_fails_clearly_and_creates_no_tracking_database(tmp_path):
    store = tmp_path / "store"
    res, text = cli("deploy", QUICKSTART, "--set", f"store={store}", "--set", f"serve.port={_free_port()}")
    assert res.exit_code == ExitCode.REGISTRY, res.output
    assert "Registry error: there is no registered model 'fraud-quickstart'" in text
    assert "run the pipeline to train and register one" in text
    assert not (store / "mlflow.db").exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert not store.exists()                          # not even the empty folders of the write probe


def test_reads_and_the_reachability_probe_leave_an_empty_store_without_a_database(tmp_path):
    from mlops_ray.config import RegistryConfig
    from mlops_ray.errors import RegistryError
    from mlops_ray.registry import Registry

    reg = Registry(RegistryConfig(), str(tmp_path / "store"), "p")
    assert reg.champion() is None and reg.get_alias("champion") is None and reg.aliases_of("1") == []
    for read in (lambda: reg.resolve("champion"), lambda: reg.load_bundle("3"), lambda: reg.version_tags("1"),
                 lambda: reg.set_alias("champion", "1"), lambda: reg.client):
        with pytest.raises(RegistryError, match="there is no registered model 'p'"):
            read()
    reg.check_reachable()
    assert not (tmp_path / "store").exists()


# --------------------------------------------------------------------------- global flags
@pytest.mark.parametrize("flag", ["--debug", "--verbose", "-v"])
def test_the_global_flags_are_accepted_after_the_command(tmp_path, flag):
    """The error says "rerun with --debug"; `mlops-ray run CONFIG --debug` is how people write that."""
    missing = str(tmp_path / "missing.yaml")
    res, text = cli("config", "check", missing, flag)
    assert "No such option" not in text
    assert res.exit_code == ExitCode.CONFIG, text
    assert "missing.yaml" in text


def test_debug_after_the_command_shows_the_traceback(tmp_path):
    res = CliRunner().invoke(app, ["config", "check", str(tmp_path / "missing.yaml"), "--debug"])
    assert res.exit_code == ExitCode.CONFIG
    assert "Traceback" in res.output


def test_the_words_after_a_double_dash_are_not_taken_as_global_flags(monkeypatch):
    """`submit CONFIG -- run --verbose` forwards --verbose to the job's command; it is not this command's."""
    from mlops_ray.cli import cluster as cli_module
    seen = {}

    def fake_submit(cfg, config, command, **kw):
        seen["command"], seen["verbose"] = command, kw["verbose"]
        return {"job_id": "j", "upload_files": 0, "upload_bytes": 0, "working_dir": ".", "dashboard_url": "-",
                "follow": ["a", "b", "c"]}
    monkeypatch.setattr("mlops_ray.cluster.jobs.submit", fake_submit)
    monkeypatch.setattr(cli_module, "_load", lambda path, sets: None)
    res = CliRunner().invoke(app, ["submit", QUICKSTART, "--", "run", "--verbose"])
    assert res.exit_code == 0, res.output
    assert seen == {"command": ["run", "--verbose"], "verbose": False}


# --------------------------------------------------------------------------- internal errors
def test_an_internal_error_exits_1_and_debug_prints_its_traceback(small, monkeypatch):
    """An exception that is not one of the project's errors is a bug: exit 1 and a plain message that
    points to --debug; with --debug the traceback itself (the CLI's error handler, not the config)."""
    import mlops_ray.cli.options

    def load_config_with_a_bug(*args, **kwargs):
        raise KeyError("slot_the_code_forgot")

    monkeypatch.setattr(mlops_ray.cli.options, "load_config", load_config_with_a_bug)
    res = CliRunner().invoke(app, ["config", "check", small])
    assert res.exit_code == ExitCode.UNEXPECTED == 1
    assert "Unexpected error (KeyError): 'slot_the_code_forgot'" in res.stderr
    assert "This is a bug in mlops-ray; rerun with --debug for the traceback." in res.stderr
    assert "Traceback" not in res.stderr
    res = CliRunner().invoke(app, ["--debug", "config", "check", small])
    assert res.exit_code == 1
    assert "Traceback" in res.stderr and "load_config_with_a_bug" in res.stderr
    assert "KeyError" in res.stderr and "slot_the_code_forgot" in res.stderr
    assert "This is a bug in mlops-ray" not in res.stderr
