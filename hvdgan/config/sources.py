"""Where options come from: job files (YAML), HVDGAN_TRAIN_* variables and command-line options.

Precedence, lowest first: the defaults (hvdgan.config.options), the job file (`--job`), the variables,
the options; the CLI layers them (Click's default_map and auto_envvar_prefix). `build` makes and checks
the TrainConfig, for the command line and for tests alike; an error names where the bad value came
from (`where`: the option, the variable or the job file's key).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from ..errors import HvdganError
from .options import OPTIONS, Spec, TrainConfig

SECTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig))


def load_job_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML job file into {option: value}; an unknown key or a value of the wrong type is an error
    naming the key and the file. Options may be given flat (`lr_g: 2e-4`) or in their sections
    (`optim: {lr_g: 2e-4}`). Relative paths in `data` and `out` stay relative to the working directory,
    as on the command line."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=JobLoader)
    except FileNotFoundError:
        raise HvdganError(f"{path}: job file not found") from None
    except IsADirectoryError:
        raise HvdganError(f"{path}: is a directory, not a job file") from None
    except OSError as exc:  # (unreadable, a symlink loop)
        raise HvdganError(f"{path}: cannot read the job file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise HvdganError(f"{path}: not a text file (a job file is YAML)") from None
    except yaml.YAMLError as exc:
        raise HvdganError(f"{path}{_where(exc)}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise HvdganError(f"{path}: a job file is a mapping of option: value, got {type(raw).__name__}")
    items = []
    for key, value in raw.items():
        if key in SECTIONS and isinstance(value, dict):
            items += [(inner, value[inner], key) for inner in value]
        else:
            items.append((key, value, None))
    values = {}
    for key, value, section in items:
        name = str(key).replace("-", "_")
        spec = OPTIONS.get(name)
        if spec is None or (section and spec.section != section):
            close = list(dict.fromkeys([*difflib.get_close_matches(name, OPTIONS, n=3),  # (lrg: lr_g)
                                        *(f for f in OPTIONS if f.startswith(name[:3]))]))
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise HvdganError(f"{path}: unknown key {f'{section}.' if section else ''}{key!r}{hint}")
        values[name] = _check_type(path, key, spec, value)
    return values


def _where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


class JobLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading floats as YAML 1.2 does: YAML 1.1 (PyYAML's) wants a dot in the mantissa,
    so `lr_g: 1e-4`, as users write it, would be the string "1e-4"."""


JobLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def _check_type(path: Path, key: str, spec: Spec, value: Any) -> Any:
    if value is None:
        if spec.optional:
            return None
        raise HvdganError(f"{path}: {key}: may not be empty")
    if spec.type is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif spec.type is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, spec.type)
    if not ok:
        raise HvdganError(f"{path}: {key}: expected {spec.type.__name__}, got {value!r}")
    return value


def build(values: dict[str, Any], where: str | Callable[[str], str] = "options") -> TrainConfig:
    """The one way to make a TrainConfig: `values` ({option: value}) over the defaults (None: not given, the
    default stays), checked. `where` is a string or a function option -> where its value came from (an
    option, an environment variable or a job file's key), named in errors."""
    name_of = where if callable(where) else (lambda key: f"{where}: {key}")
    unknown = sorted(set(values) - set(OPTIONS))
    if unknown:
        raise HvdganError(f"{where if isinstance(where, str) else 'options'}: unknown key(s) {', '.join(unknown)}")
    given = {k: v for k, v in values.items() if v is not None}
    sections = {}
    for section in SECTIONS:
        cls = type(getattr(TrainConfig(), section))
        sections[section] = cls(**{k: v for k, v in given.items() if OPTIONS[k].section == section})
    cfg = TrainConfig(**sections)
    flat = cfg.flat()
    for name in sorted(flat, key=lambda n: n == "data"):  # the options' order; a missing --data last
        spec, value = OPTIONS[name], flat[name]
        why = None
        if spec.choices and value not in spec.choices and not (value is None and spec.optional):
            why = f"{value!r} is not one of {', '.join(spec.choices)}"
        elif spec.check:
            why = spec.check(value)
        if why:
            raise HvdganError(f"{name_of(name)}: {why}")
    return cfg


def unknown_variables(environ, prefix: str = "HVDGAN_TRAIN_", others=("JOB",)) -> list[str]:
    """A warning for each `prefix` variable that names no option, with the closest name: Click reads only the
    variables it knows, and a misspelt one (HVDGAN_TRAIN_BACTH_SIZE) would change nothing without a word."""
    known = [prefix + name.upper() for name in (*OPTIONS, *others)]
    warnings = []
    for name in sorted(k for k in environ if k.startswith(prefix) and k not in known):
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"{name} is not a variable of hvdgan (ignored){hint}")
    return warnings
