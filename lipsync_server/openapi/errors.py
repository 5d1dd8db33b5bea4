"""The documented error responses, derived from the typed errors and from where they are raised.

Each `LipSyncError` subclass declares its HTTP status and default code (wav2lip_core/errors.py); a
raise site may name a finer code (`BadRequest(..., code="invalid_json")`). The codes of a class are
every constant `code=` where wav2lip_core constructs it (read from the source with `ast`, so a code
is documented the moment it is raised), its default where it is constructed without one, and, for
`BadRequest`, the option specs' codes (schema.Options: `Spec.check` raises with `code=self.code`).
Werkzeug's own errors on a route (a path that matches no rule) keep the code web.http_error gives them.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterable
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

from werkzeug.exceptions import HTTPException

from lipsync_server.web import http_code, unexpected_error
from wav2lip_core.errors import BadRequest, LipSyncError
from wav2lip_core.schema import Options

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("wav2lip_core", "lipsync_stores", "lipsync_server")  # the modules whose raise sites name codes
Source = type[LipSyncError] | type[HTTPException]


def error_classes() -> dict[str, type[LipSyncError]]:
    """`LipSyncError` and its subclasses (recursively), by class name."""
    found: dict[str, type[LipSyncError]] = {}
    stack = [LipSyncError]
    while stack:
        cls = stack.pop()
        found[cls.__name__] = cls
        stack.extend(cls.__subclasses__())
    return found


def _constant_keywords(call: ast.Call) -> dict[str, Any]:
    return {k.arg: k.value.value for k in call.keywords if k.arg and isinstance(k.value, ast.Constant)}


def _called_name(node: ast.AST) -> str | None:
    """`X` of a call `X(...)` or `module.X(...)`."""
    if not isinstance(node, ast.Call):
        return None
    func = node.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


@cache
def raised() -> dict[str, frozenset[tuple[int, str]]]:
    """Class name → every (status, code) an error of that class can carry: each constant `code=` where it is
    constructed, and its own default where it is constructed without one (or nowhere: raised by name only)."""
    classes = error_classes()
    found: dict[str, set[tuple[int, str]]] = {name: set() for name in classes}
    for path in sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            name = _called_name(node)
            if name in classes:
                given = _constant_keywords(node)  # type: ignore[arg-type]
                if "code" not in given and any(k.arg == "code" for k in node.keywords):  # type: ignore[attr-defined]
                    continue  # computed when raised (Spec.check): declared elsewhere
                found[name].add((given.get("status", classes[name].status), given.get("code", classes[name].code)))
    found[BadRequest.__name__] |= {(BadRequest.status, f.metadata["spec"].code) for f in fields(Options)}
    return {name: frozenset(pairs or {(classes[name].status, classes[name].code)}) for name, pairs in found.items()}


@dataclass(frozen=True)
class ErrorKind:
    """One class of error a route answers: its statuses and codes, and what it means."""

    name: str
    doc: str
    pairs: frozenset[tuple[int, str]]


def kind(source: Source) -> ErrorKind:
    """The documented form of a typed error class, or of a Werkzeug error class."""
    described = unexpected_error if source is LipSyncError else source  # the base class's doc is about the class
    doc = (inspect.getdoc(described) or "").split("\n\n")[0].replace("\n", " ")
    if issubclass(source, HTTPException):
        error = source()
        return ErrorKind(source.__name__, error.description or doc, frozenset({(error.code or 500, http_code(error))}))
    return ErrorKind(source.__name__, doc if described.__doc__ else "", raised()[source.__name__])


def by_status(sources: Iterable[Source]) -> dict[int, tuple[list[str], list[ErrorKind]]]:
    """Status → (its codes, sorted; the kinds that answer it), for the given error classes."""
    out: dict[int, tuple[set[str], list[ErrorKind]]] = {}
    for k in map(kind, sources):
        for status, code in sorted(k.pairs):
            codes, kinds = out.setdefault(status, (set(), []))
            codes.add(code)
            if k not in kinds:
                kinds.append(k)
    return {status: (sorted(codes), kinds) for status, (codes, kinds) in sorted(out.items())}


def error_schema(codes: list[str]) -> dict[str, Any]:
    """The error contract, `{"error": {"code", "message"}}`, with the codes one status can carry."""
    error = {
        "type": "object",
        "required": ["code", "message"],
        "additionalProperties": False,
        "properties": {
            "code": {"type": "string", "enum": codes, "description": "stable, machine-readable: never renamed"},
            "message": {"type": "string", "description": "what was wrong, with the value; for people, not for matching"},
        },
    }
    return {"type": "object", "required": ["error"], "additionalProperties": False, "properties": {"error": error}}
