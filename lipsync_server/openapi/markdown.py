"""docs/api.md: the OpenAPI document rendered as Markdown, for people.

`python -m lipsync_server.openapi.markdown > docs/api.md` writes it from the app's document;
tests/server/test_openapi.py fails when the checked-in file differs from what this renders.
"""

from __future__ import annotations

import json
from typing import Any

Doc = dict[str, Any]
INTRO = (
    "Generated from the server's OpenAPI 3.1 document (`GET /openapi.json`) by `python -m lipsync_server.openapi.markdown`: "
    "do not edit; `tests/server/test_openapi.py` fails when it is stale."
)


def cell(text: object) -> str:
    """Text for a table cell: one line, pipes escaped."""
    return str(text).replace("\n", " ").replace("|", "\\|")


def anchor(name: str) -> str:
    return f"[{name}](#{name.lower()})"


def type_text(schema: Doc) -> str:
    """A JSON Schema in a few words: `integer 0–1073741824`, `[integer ×4]`, `"box" or "feather"`, a link to a component."""
    if "$ref" in schema:
        return anchor(schema["$ref"].rsplit("/", 1)[1])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return " or ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    kind = schema.get("type", "any")
    if isinstance(kind, list):
        return " or ".join("null" if k == "null" else type_text({**schema, "type": k}) for k in kind)
    if kind == "array":
        n, item = schema.get("minItems"), type_text(schema.get("items", {}))
        return f"[{item} ×{n}]" if n is not None and n == schema.get("maxItems") else f"array of {item}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return f"object of {type_text(schema['additionalProperties'])}"
    return kind + _detail(schema)


def number(value: object) -> str:
    """1048576 as itself, 60.0 as 60."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _detail(schema: Doc) -> str:
    if "minimum" in schema or "maximum" in schema:
        return f" {number(schema.get('minimum', '…'))}–{number(schema.get('maximum', '…'))}"
    if schema.get("contentMediaType") == "application/octet-stream":
        return " (a file)"
    for key, shown in (("contentEncoding", "{}"), ("format", "{}"), ("pattern", "matching `{}`")):
        if key in schema:
            return f" ({shown.format(schema[key])})"
    return ""


def fields_table(schema: Doc) -> list[str]:
    """One row per property: name, type, required, default, doc."""
    required = set(schema.get("required", []))
    rows = ["| field | type | required | default | description |", "|---|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        need = "yes" if name in required else ""
        rows.append(f"| `{name}` | {cell(type_text(prop))} | {need} | {default} | {cell(prop.get('description', ''))} |")
    return rows


def groups(schema: Doc) -> list[str]:
    """The body's "one of" / "at least one of" rules, in words."""
    out = []
    for group in schema.get("allOf", []):
        for key, words in (("oneOf", "exactly one of"), ("anyOf", "at least one of")):
            if key in group:
                out.append(f"{words}: " + ", ".join(f"`{g['required'][0]}`" for g in group[key]))
    return out


def responses_table(responses: Doc) -> list[str]:
    rows = ["| status | content | meaning |", "|---|---|---|"]
    for status, answer in responses.items():
        content = answer.get("content", {})
        if set(content) == {"application/json"} and "error" in content["application/json"].get("schema", {}).get("properties", {}):
            codes = content["application/json"]["schema"]["properties"]["error"]["properties"]["code"]["enum"]
            shown = "error: " + ", ".join(f"`{c}`" for c in codes)
        else:
            shown = ", ".join(f"`{t}`" + (f" {type_text(c['schema'])}" if c.get("schema") else "") for t, c in content.items()) or "empty"
        rows.append(f"| {status} | {cell(shown)} | {cell(answer['description'])} |")
    return rows


def operation(path: str, method: str, op: Doc) -> list[str]:
    more = op["description"] if op["description"] != op["summary"] else ""
    out = [f"### `{method.upper()} {path}`", "", f"**{op['summary']}.** {more}".rstrip()]
    out += ["", "API key: " + ("yes, when `API_KEY` is set" if op["security"] else "never")]
    for p in op.get("parameters", []):
        out += [f"Path parameter `{p['name']}`: {type_text(p['schema'])}, {p['schema'].get('description', '')}"]
    if "requestBody" in op:
        content = op["requestBody"]["content"]
        out += ["Body: " + " or ".join(f"`{t}` {type_text(c['schema'])}" for t, c in content.items())]
    links = {name: link for answer in op["responses"].values() for name, link in answer.get("links", {}).items()}
    out += [f"Then: `{name}` with `{p}` = `{e}`" for name, link in links.items() for p, e in link["parameters"].items()]
    return [*out, "", *responses_table(op["responses"]), ""]


def markdown(doc: Doc) -> str:
    """The whole of docs/api.md."""
    info = doc["info"]
    out = [f"# {info['title']}: HTTP API {info['version']}", "", INTRO, "", info["summary"], info["description"], ""]
    for tag in (t["name"] for t in doc["tags"]):
        out += [f"## {tag}", ""]
        for path, methods in doc["paths"].items():
            out += [line for method, op in methods.items() if op["tags"] == [tag] for line in operation(path, method, op)]
    out += ["## Schemas", ""]
    for name, schema in doc["components"]["schemas"].items():
        out += [f"### {name}", "", *([schema["description"], ""] if "description" in schema else [])]
        out += [*(f"- {g}" for g in groups(schema)), *([""] if groups(schema) else []), *fields_table(schema), ""]
    return "\n".join(out)


def main() -> None:
    """Print docs/api.md for the app's routes (app.py is the composition root: imported only here, when run)."""
    from lipsync_server.app import create_app
    from wav2lip_core.config import Settings

    from .document import document

    print(markdown(document(create_app(Settings()))), end="")


if __name__ == "__main__":
    main()
