"""Config errors as a user reads them: one line per problem naming the key, the value and the fix.

In: pydantic's ``ValidationError`` for a config, the input it was validated from, the file's name
and the ``--set`` overrides applied to it (``Override``). Out: the text of the ``ConfigError``:
a headline that blames the file only for the file's own problems, then per problem the key path
(or the ``--set`` flag it came from), the bad value, what the key takes with an example from its
field's default or bounds, and "did you mean" for an unknown key.
"""
from __future__ import annotations

import difflib
import json
import shlex
import typing
from typing import Any, NamedTuple

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from mlops_ray.config.models import Config


class Override(NamedTuple):
    """One ``--set key=value``: its key path, the value, and ``root``: the shallowest part of the
    path the file did not have (the override created everything from there down)."""
    path: tuple[str, ...]
    value: Any
    root: tuple[str, ...]

    @property
    def flag(self) -> str:
        return _set_flag(self.path, self.value)


def _set_flag(path, value) -> str:
    return "--set " + shlex.quote(f"{'.'.join(path)}={_yaml_value(value)}")


def _yaml_value(v: Any) -> str:
    """``v`` as it is written in YAML (and in a --set value): 16, 0.1, false, [5, 25], {a: 1}, auto."""
    if isinstance(v, str):
        try:
            if v and v.strip() == v and yaml.safe_load(v) == v:
                return v
        except yaml.YAMLError:
            pass
    if isinstance(v, (dict, list)):
        try:
            return yaml.safe_dump(v, default_flow_style=True, sort_keys=False, width=1 << 20).strip()
        except yaml.YAMLError:
            pass
    return json.dumps(v, default=str)


# pydantic error types -> what the key takes; constraint errors already say what they take
_EXPECTED = {"int_parsing": "an integer", "int_type": "an integer", "int_from_float": "a whole number",
             "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
             "bool_type": "true or false", "string_type": "text", "list_type": "a list",
             "dict_type": "a mapping of keys", "model_type": "a mapping of keys",
             "model_attributes_type": "a mapping of keys"}
_CONSTRAINED = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "multiple_of",
                "literal_error", "enum", "string_too_short", "string_too_long", "string_pattern_mismatch",
                "too_short", "too_long"}
_NONE = object()


def format_errors(err: ValidationError, raw: dict, source: str, overrides: tuple = ()) -> str:
    """One line per problem naming the key path (or the ``--set`` override that caused it), the
    bad value and the fix; the headline blames the file only for the file's own problems."""
    errors = _merge_union_branches(err.errors(), raw)
    in_file, in_sets, used = [], [], set()
    for loc, kind, msg, value in errors:
        o = _override_for(loc, overrides)
        line = _problem(loc, kind, msg, value, o)
        if o:
            in_sets.append(line)
            used.add(o.path)
            continue
        # a check of a whole section (valid_fraction + test_fraction) that an override took part in
        at = () if kind in ("missing", "extra_forbidden") else _present(raw, loc)
        within = [x for x in overrides if at and x.path[:len(at)] == at]
        in_file.append(line + (f" (with {', '.join(x.flag for x in within)})" if within else ""))
        used.update(x.path for x in within)
    n = len(in_file) + len(in_sets)
    problems = f"{n} problem{'s' if n != 1 else ''}"
    sets = f"--set override{'s' if len(used) != 1 else ''}"
    head = (f"{source}: {problems}" if not used else f"{problems} in the {sets}" if not in_file
            else f"{source} and its {sets}: {problems}")
    return head + "\n" + "\n".join(in_file + in_sets)


def _present(raw: Any, loc: list[str]) -> tuple[str, ...]:
    """The longest start of ``loc`` that is in the input (a validator may report a key it derived)."""
    node, out = raw, []
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            break
        out.append(part)
    return tuple(out)


def _problem(loc: list[str], kind: str, msg: str, value: Any, o: Override | None) -> str:
    path = ".".join(loc) or "(top level)"
    at_override = o is not None and tuple(loc) == o.path
    lead = f"  {o.flag}: " if o else "  "
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        known = sorted(_aliases(parent)) if parent else []
        guess = difflib.get_close_matches(loc[-1], known, n=1)
        if o is None:
            hint = f"did you mean '{guess[0]}'?" if guess else (
                f"known keys here: {', '.join(known)}" if known else "remove it")
            return f"  {path}: unknown key; {hint}"
        where = f"in {'.'.join(loc[:-1])}" if loc[:-1] else "at the top level"
        if guess and len(loc) <= len(o.path):        # the typo is in the --set key itself
            fixed = o.path[:len(loc) - 1] + (guess[0],) + o.path[len(loc):]
            hint = f"did you mean '{guess[0]}'? ({_set_flag(fixed, o.value)})"
        elif guess:
            hint = f"did you mean '{guess[0]}'?"
        else:
            hint = f"known keys here: {', '.join(known)}" if known else "remove it"
        return f"{lead}unknown key {loc[-1]!r} {where}; {hint}"
    if kind == "missing":
        return f"{lead}{path}: required key is missing; add it"
    if kind in ("value_error", "assertion_error") and msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    shown = "" if at_override or isinstance(value, (dict, list)) or value is None else f" (got {value!r})"
    return f"{lead}{'' if at_override else path + ': '}{msg}{shown}{_expected(loc, kind, o if at_override else None)}"


def _expected(loc: list[str], kind: str, o: Override | None) -> str:
    """'; expected an integer, e.g. num_samples: 16' from the error type and the key's field: its
    default, else a value its bounds allow. The example is a --set when the value came from one."""
    if kind not in _EXPECTED and kind not in _CONSTRAINED and kind != "union":
        return ""
    what = "" if kind not in _EXPECTED else f"expected {_EXPECTED[kind]}"
    found = _field_at(loc)
    example = _NONE if found is None else _example(found[1])
    if example is _NONE:
        return f"; {what}" if what else ""
    shown = _set_flag(found[0], example) if o else f"{found[0][-1]}: {_yaml_value(example)}"
    return f"; {what + ', ' if what else ''}e.g. {shown}"


def _field_at(loc: list[str]):
    """(key path, FieldInfo) of the deepest config field on ``loc`` (below it: list items, dict values)."""
    for k in range(len(loc), 0, -1):
        parent = _model_at(loc[:k - 1])
        fields = {(f.alias or name): f for name, f in parent.model_fields.items()} if parent else {}
        if loc[k - 1] in fields:
            return tuple(loc[:k]), fields[loc[k - 1]]
    return None


def _example(field) -> Any:
    """A valid value of ``field`` to show: its default, else one its numeric bounds allow; _NONE if neither."""
    default = field.get_default(call_default_factory=True)
    if default not in (None, PydanticUndefined, {}, []) and not isinstance(default, BaseModel) and not (
            isinstance(default, dict) and any(isinstance(v, BaseModel) for v in default.values())):
        return default
    bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
    kinds = {a for a in typing.get_args(field.annotation) or (field.annotation,) if a is not type(None)}
    lo = bounds.get("ge", bounds.get("gt"))
    hi = bounds.get("le", bounds.get("lt"))
    if lo is None and hi is None:
        return _NONE
    if kinds == {int}:
        if lo is not None:
            return int(lo) + ("gt" in bounds)
        return int(hi) - ("lt" in bounds)
    if kinds == {float}:
        if lo is not None and hi is not None:
            return (lo + hi) / 2
        return lo + 1 if lo is not None else hi - 1
    return _NONE


def _override_for(loc: list[str], overrides) -> Override | None:
    """The override a problem at ``loc`` comes from: its value or what it created holds ``loc``;
    the most specific one when several wrote there."""
    key = tuple(loc)
    best, score = None, -1
    for o in overrides:
        if key[:len(o.root)] != o.root:
            continue
        common = next((i for i, (a, b) in enumerate(zip(key, o.path)) if a != b), min(len(key), len(o.path)))
        if common > score:
            best, score = o, common
    return best


def _merge_union_branches(errors: list[dict], raw: Any) -> list[tuple]:
    """(loc, type, msg, input) per problem. A value that fits no member of a Union comes back as one
    error per member, each under a tag (data.source.str, data.source.list[str]); they become one
    problem at the key: 'Input should be a valid string or a valid list'."""
    keyed = []
    for e in errors:
        clean, node = [], raw
        for i, part in enumerate(e["loc"]):
            if isinstance(node, dict) and str(part) in node:
                node = node[str(part)]
            elif isinstance(node, list) and isinstance(part, int) and part < len(node):
                node = node[part]
            elif e["type"] not in ("missing", "extra_forbidden") and isinstance(part, str) and i > 0:
                continue                  # not in the input: a union member's tag (or a key a validator made)
            else:
                node = None
            clean.append(str(part))
        keyed.append((tuple(clean), e))
    branches = {}
    for key, e in keyed:
        if len(key) < len(e["loc"]):
            branches[key] = branches.get(key, 0) + 1
    out: list[list] = []
    index: dict[tuple, int] = {}
    for key, e in keyed:
        if branches.get(key, 0) < 2 or len(key) == len(e["loc"]):
            out.append([[str(p) for p in e["loc"]], e["type"], e["msg"], e.get("input")])
        elif key in index:
            merged = out[index[key]]
            more = e["msg"][len("Input should be "):] if e["msg"].startswith("Input should be ") else e["msg"]
            merged[1], merged[2] = "union", f"{merged[2]} or {more}"
        else:
            index[key] = len(out)
            out.append([list(key), e["type"], e["msg"], e.get("input")])
    return [tuple(x) for x in out]


def _model_at(loc: list[str]):
    """The pydantic model class found at a key path, or None (used for 'did you mean')."""
    model: Any = Config
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        fields = {(f.alias or k): f for k, f in model.model_fields.items()}
        if part not in fields:
            return None
        ann = fields[part].annotation
        nxt = _dict_value_model(ann)
        if nxt is not None:
            if not parts:
                return None
            parts.pop(0)  # the free dict key
        else:
            nxt = _unwrap_model(ann)
            if nxt is None:
                return None
        model = nxt
    return model


def _unwrap_model(ann):
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for a in typing.get_args(ann):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None


def _dict_value_model(ann):
    if typing.get_origin(ann) is dict:
        return _unwrap_model(typing.get_args(ann)[1])
    return None


def _aliases(model) -> set[str]:
    return {(f.alias or k) for k, f in model.model_fields.items()}



def not_a_section(path: tuple[str, ...], value: Any, here: tuple[str, ...], current: Any) -> str:
    """The message for ``--set path=value`` when the file holds ``current``, not a section, at ``here``."""
    found = _field_at(list(here))
    example = _NONE if found is None else _example(found[1])
    fix = f", e.g. {_set_flag(here, example)}" if example is not _NONE else ""
    return (f"{_set_flag(path, value)}: {'.'.join(here)} is {_yaml_value(current)}, not a "
            f"section with keys; set {'.'.join(here)} itself{fix}")
