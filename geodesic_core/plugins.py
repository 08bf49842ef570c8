"""The user's own code by import path: ``package.module:attribute`` wherever a registry name is accepted.

``--model mypkg.nets:build_net`` names a callable ``(num_classes, in_channels, image_size, **kwargs) -> nn.Module``
and ``--dataset mypkg.data:load`` a callable returning train and test tensors plus the class count (see
`geodesic_core.data`). This module resolves such a path with clear errors (no colon, a module that does not import
or raises on import, a missing attribute, something not callable) and hashes the source it came from, so that
editing the user's file changes every cache key that depends on it.

The current working directory is put on ``sys.path`` (as uvicorn and gunicorn do), so ``--model mynets:build``
finds ``./mynets.py`` from the ``geodesic`` command as it would from ``python -c``.

Importing a module runs its code, so where the path comes from someone else (a deployment's run form), only the
modules listed in ``$GEODESIC_ALLOWED_MODULES`` may be imported: unset, any module (the local user's own command);
set, a comma-separated list of module names whose submodules are allowed too (empty: none). The flows set it to
empty for runs a worker starts, unless the worker's environment lists modules (`flows.common`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import os
import re
import sys
from typing import Any, Callable

from .errors import InputError

ALLOWED_MODULES_ENV = "GEODESIC_ALLOWED_MODULES"
_PART = r"[A-Za-z_][A-Za-z0-9_]*"
IMPORT_PATH_PATTERN = rf"^{_PART}(\.{_PART})*:{_PART}(\.{_PART})*$"
_IMPORT_PATH = re.compile(IMPORT_PATH_PATTERN)


def is_import_path(name: object) -> bool:
    """True for ``module:attribute`` strings (anything with a colon; `parse_import_path` checks the form)."""
    return isinstance(name, str) and ":" in name


def colon_hint(name: str) -> str:
    """For an unknown name that looks like a dotted import path without its colon (``mypkg.nets.build``): the
    suggestion ``; if ... is an import path, write mypkg.nets:build``; else an empty string."""
    if isinstance(name, str) and "." in name and ":" not in name and re.match(rf"^{_PART}(\.{_PART})+$", name):
        module, _, attr = name.rpartition(".")
        return f"; if {name!r} is an import path, separate the module from the callable with a colon: {module}:{attr}"
    return ""


def parse_import_path(path: str, what: str = "object") -> tuple[str, str]:
    """``"pkg.mod:fn"`` -> ``("pkg.mod", "fn")``; a malformed path is an `InputError` naming the expected form."""
    if not isinstance(path, str) or ":" not in path:
        raise InputError(f"{what} {path!r} is not an import path: write it as module:callable "
                         f"(e.g. mypkg.nets:build_net), with a colon between the module and the callable")
    if not _IMPORT_PATH.match(path):
        raise InputError(f"{what} {path!r} is not a valid import path: expected module:callable with dotted Python "
                         f"identifiers on both sides of one colon (e.g. mypkg.nets:build_net)")
    module, attr = path.split(":")
    return module, attr


def check_module_allowed(module_name: str, path: str, what: str) -> None:
    """Raise unless ``$GEODESIC_ALLOWED_MODULES`` is unset or lists ``module_name`` or a package above it."""
    listed = os.environ.get(ALLOWED_MODULES_ENV)
    if listed is None:
        return
    allowed = [m.strip() for m in listed.replace(os.pathsep, ",").split(",") if m.strip()]
    if not any(module_name == m or module_name.startswith(m + ".") for m in allowed):
        raise InputError(f"{what} {path!r}: module {module_name!r} is not among the modules this worker may import "
                         f"(${ALLOWED_MODULES_ENV} = {listed!r}); add it (or its package) to ${ALLOWED_MODULES_ENV} in "
                         f"the worker's environment")


def _import(module_name: str, path: str, what: str):
    check_module_allowed(module_name, path, what)  # before any of its code runs
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise InputError(f"{what} {path!r}: no module named {module_name!r} (looked in the working directory "
                             f"{cwd} and on sys.path); install the package or add its folder to PYTHONPATH") from exc
        raise InputError(f"{what} {path!r}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:  # the user's module raised while importing
        raise InputError(f"{what} {path!r}: importing module {module_name!r} raised {type(exc).__name__}: "
                         f"{str(exc)[:200]}; fix the module so that it imports") from exc


def load_callable(path: str, what: str = "object") -> Callable[..., Any]:
    """The callable an import path names.

    Raises:
        InputError: no colon or a malformed path, a module that is missing or raises on import, a missing
            attribute, an attribute that is not callable.
    """
    module_name, attr = parse_import_path(path, what)
    obj: Any = _import(module_name, path, what)
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"{what} {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"{what} {path!r} names a {type(obj).__name__}, not a callable")
    return obj


def check_signature(fn: Callable, path: str, what: str, expected: str, **kwargs: Any) -> None:
    """``fn`` must accept ``kwargs`` by keyword; otherwise an `InputError` giving the expected signature."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature: left to the call
        return
    try:
        sig.bind(**kwargs)
    except TypeError as exc:
        call = f"{path.split(':')[-1]}({', '.join(f'{k}=...' for k in kwargs)})"
        raise InputError(f"{what} {path!r} has the signature {sig}, which cannot be called as {call} ({exc}); "
                         f"expected {expected}") from exc


def accepts(fn: Callable, name: str) -> bool:
    """Whether ``fn`` takes a keyword argument ``name`` (by name or through ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def _file_bytes(obj: Any) -> bytes:
    try:
        src = inspect.getsourcefile(obj) or getattr(obj, "__file__", None)
    except TypeError:
        src = None
    if src and os.path.isfile(src):
        with open(src, "rb") as fh:
            return fh.read()
    return b""


@functools.lru_cache(maxsize=64)
def _hash_of(path: str, stamp: tuple) -> str:
    module_name, _ = parse_import_path(path)
    h = hashlib.sha256(path.encode())
    h.update(_file_bytes(sys.modules.get(module_name) or _import(module_name, path, "import path")))
    h.update(_file_bytes(load_callable(path)))
    return h.hexdigest()[:16]


def _stamp(path: str) -> tuple:
    """(file, size, mtime) of the module's source: a change to the file gives a new hash in a long process."""
    module_name, _ = parse_import_path(path)
    mod = sys.modules.get(module_name)
    src = getattr(mod, "__file__", None) if mod else None
    if src and os.path.isfile(src):
        st = os.stat(src)
        return (src, st.st_size, st.st_mtime_ns)
    return (src,)


def source_hash(path: str) -> str:
    """Content hash of the file that defines the import path's module and of the file that defines the callable
    (they differ when the module re-exports it): part of every cache key that depends on the user's code."""
    load_callable(path)  # clear errors first
    return _hash_of(path, _stamp(path))
