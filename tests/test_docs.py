"""The documentation against the code: docs/config.md is what docs/gen_config.py makes of the config's
models, and the README, docs/architecture.md and configs/quickstart.yaml name only keys that exist."""
from __future__ import annotations

import importlib.util
import re
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mlops_ray.config import Config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.unit
PAGES = ("README.md", "docs/architecture.md")
# dotted names that start like a section but are Ray's or a file's: `ray.data.read_parquet`, `model.ubj`
NOT_KEYS = ("ray.data", "ray.train", "ray.tune", "ray.serve", "ray.init", "ray.get", "ray.put", "ray.remote",
            "serve.run", "serve.batch", "serve.deployment", "model.ubj")


def _generator():
    spec = importlib.util.spec_from_file_location("gen_config", ROOT / "docs" / "gen_config.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _unknown_key(path: str) -> str | None:
    """None when the dotted key path names a config key; else the part that does not."""
    gen, model, parts = _generator(), Config, path.split(".")
    while parts:
        part = parts.pop(0)
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return part
        models = gen._models_in(field.annotation)
        if not parts:
            return None
        if not models:              # a plain mapping (gate.min.auc, monitor.min_effect.amount) takes any name
            return None if typing.get_origin(field.annotation) is dict and len(parts) == 1 else parts[0]
        suffix, model = models[0]
        if suffix:                  # schema.columns.<name>.dtype: the next part is the user's name
            parts.pop(0)
            if not parts:
                return None
    return None


def test_config_reference_is_what_the_generator_makes_of_the_schema():
    page = ROOT / "docs" / "config.md"
    want = _generator().render()
    have = page.read_text() if page.exists() else ""
    assert have == want, ("docs/config.md is out of date with the config's models (mlops_ray.config); "
                          "regenerate it with `make docs`")


def test_the_reference_lists_every_key_of_every_section():
    text = (ROOT / "docs" / "config.md").read_text()
    for name, field in Config.model_fields.items():
        model = next(iter(_generator()._models_in(field.annotation)), (None, None))[1]
        keys = [f"{field.alias or name}.{f.alias or n}" for n, f in model.model_fields.items()] if model else [name]
        for key in keys:
            assert f"| `{key}` |" in text, f"docs/config.md has no row for {key}"


def test_the_key_check_finds_a_key_that_does_not_exist():
    assert _unknown_key("monitor.predlog_flush_s") is None and _unknown_key("schema.columns.amount.min") is None
    assert _unknown_key("gate.min.auc") is None and _unknown_key("serve.autoscaling.max_replicas") is None
    assert _unknown_key("monitor.predlog_flush_secs") == "predlog_flush_secs"
    assert _unknown_key("serve.autoscaling.max_replica") == "max_replica"


@pytest.mark.parametrize("page", PAGES)
def test_pages_name_only_config_keys_that_exist(page):
    """Every `section.key` in backticks is a key of the config (files such as `registry.py` aside)."""
    path = ROOT / page
    if not path.exists():
        pytest.skip(f"{page} is not written yet")
    sections = "|".join(f.alias or n for n, f in Config.model_fields.items())
    found = re.findall(rf"`((?:{sections})(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(?:[ =:][^`]*)?`", path.read_text())
    bad = sorted({k for k in found if not re.search(r"\.(py|md|yaml|json|jsonl|parquet|lock)$", k)
                  and not k.startswith(NOT_KEYS) and _unknown_key(k)})
    assert not bad, f"{page} names config keys that do not exist: {bad}"


def test_readme_config_table_names_only_sections_and_keys_that_exist():
    """A row of the table is | `section` | what it sets |; each `word` in backticks in it is a key of that
    section (at any depth) or a value one of its keys takes (commands are written `mlops-ray feedback`)."""
    text = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| ((?:`[a-z_]+`(?:, )?)+) \| (.*) \|$", text, re.M)
    assert rows, "the README's configuration table (| `section` | what it sets |) is missing"
    gen = _generator()
    for first, what in rows:
        for section in re.findall(r"`([a-z_]+)`", first):
            field = next((f for n, f in Config.model_fields.items() if (f.alias or n) == section), None)
            assert field is not None, f"README's config table names section {section!r}, which does not exist"
            models = gen._models_in(field.annotation)
            if not models:
                continue
            names = _names_and_values(models[0][1], gen)
            for word in re.findall(r"`([a-z][a-z0-9_]*)`", what):
                assert word in names, f"README's config table names {section}.{word}, which is not a key"


def _names_and_values(model, gen) -> set[str]:
    """Every key name at any depth under ``model``, and every literal value they take."""
    out: set[str] = set()
    for n, f in model.model_fields.items():
        out.add(f.alias or n)
        out |= {str(v) for v in _literals(f.annotation)}
        for _, sub in gen._models_in(f.annotation):
            out |= _names_and_values(sub, gen)
    return out


def _literals(ann) -> list:
    if typing.get_origin(ann) is typing.Literal:
        return list(typing.get_args(ann))
    return [v for a in typing.get_args(ann) for v in _literals(a)]


def test_readme_yaml_examples_are_valid_configs():
    """Each YAML block of the README that is a whole config (it has name and data) loads as one."""
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)]
    configs = [b for b in blocks if isinstance(b, dict) and {"name", "data"} <= set(b)]
    assert configs, "the README has no minimal config (a ```yaml block with name and data)"
    for raw in configs:
        Config.model_validate(raw)


def test_quickstart_commented_examples_are_valid_when_uncommented():
    """A commented key in configs/quickstart.yaml (`  # address: auto`, with its commented children) is one
    a user may uncomment: the config still loads with it, so the comment names a key that exists."""
    lines = (ROOT / "configs" / "quickstart.yaml").read_text().splitlines()
    base = yaml.safe_load("\n".join(lines))
    section, tried = None, 0
    for i, line in enumerate(lines):
        if re.match(r"[a-z_]+:", line):
            section = line.split(":", 1)[0]
        m = re.match(r"^  # ([a-z_]+):", line)
        if not m or section is None:
            continue
        block = [line[:2] + line[4:]]
        for nxt in lines[i + 1:]:
            if not re.match(r"^  #   ", nxt):
                break
            block.append(nxt[:2] + nxt[4:])
        snippet = yaml.safe_load("\n".join(b[2:] for b in block))
        raw = {**base, section: {**(base.get(section) or {}), **snippet}}
        try:
            Config.model_validate(raw)
        except ValidationError as e:
            pytest.fail(f"configs/quickstart.yaml line {i + 1}, uncommented, is not a valid config: {e}")
        tried += 1
    assert tried >= 5, "configs/quickstart.yaml's commented examples were not found"
