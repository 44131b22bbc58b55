"""The API document as one server-rendered HTML page (``GET /docs``): every operation with its
parameters, request body and responses per status, and every schema, linked. No script, no
CDN, nothing fetched: deployments may have no internet, and the portal's CSP style applies.

Our own renderer rather than Swagger UI or Redoc from a wheel: those are large single-page
apps that render with JavaScript (blank without it, hard for screen readers to navigate), and
the document is small enough for headings and tables. Structure for assistive technology:
one ``h1``, a ``nav`` of operations by tag, ``main`` with a ``section`` per tag (``h2``), an
``article`` per operation (``h3``) and captioned tables.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from html import escape
from typing import Any, Final

_REF_PREFIX: Final = "#/components/schemas/"

_STYLE: Final = (
    "body{font-family:system-ui,sans-serif;max-width:72rem;margin:0 auto;padding:0 1rem;"
    "line-height:1.4}table{border-collapse:collapse;margin:.5rem 0 1rem;width:100%}"
    "th,td{border:1px solid #bbb;padding:.25rem .5rem;text-align:left;vertical-align:top}"
    "caption{text-align:left;font-weight:bold;padding:.25rem 0}article{border-top:1px solid #ccc;"
    "margin-top:1.5rem}code.m{font-weight:bold}.s{font-family:ui-monospace,monospace;"
    "font-size:.9rem}a:focus{outline:3px solid #1a5fb4}nav ul{columns:2}"
)


def _anchor(name: str) -> str:
    return "schema-" + name


def _link(ref: str) -> str:
    name = ref.removeprefix(_REF_PREFIX)
    return f"<a href='#{escape(_anchor(name))}'>{escape(name)}</a>"


def schema_text(schema: Any) -> str:
    """A one-line HTML description of ``schema``: its type, with ``$ref``s as links, and the
    constraints a client must meet (format, pattern, bounds, enum, default)."""
    if not isinstance(schema, dict):
        return escape(json.dumps(schema))
    parts: list[str] = []
    if "$ref" in schema:
        parts.append(_link(schema["$ref"]))
    for key, word in (("oneOf", "one of"), ("anyOf", "any of")):
        if key in schema:
            branches = [schema_text(s) for s in schema[key]]
            if key == "anyOf" and len(branches) == 2 and "null" in branches:
                branches.remove("null")
                parts.append(f"{branches[0]} or null")
            else:
                parts.append(f"{word} ({' | '.join(branches)})")
    if "const" in schema:
        parts.append(f"<code>{escape(json.dumps(schema['const']))}</code>")
    if "enum" in schema:
        values = ", ".join(f"<code>{escape(json.dumps(v))}</code>" for v in schema["enum"])
        parts.append(f"one of {values}")
    kind = schema.get("type")
    if kind is not None and "enum" not in schema and "const" not in schema:
        kinds = kind if isinstance(kind, list) else [kind]
        text = " or ".join(escape(k) for k in kinds)
        if "array" in kinds:
            text = text.replace("array", f"array of {schema_text(schema.get('items', {}))}")
        if "object" in kinds and isinstance(schema.get("additionalProperties"), dict):
            text += f" (name → {schema_text(schema['additionalProperties'])})"
        parts.append(text)
    facts = []
    for key in ("format", "pattern"):
        if key in schema:
            facts.append(f"{key} <code>{escape(str(schema[key]))}</code>")
    for key, word in (
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("minLength", "length ≥"),
        ("maxLength", "length ≤"),
        ("minItems", "items ≥"),
        ("maxItems", "items ≤"),
    ):
        if key in schema:
            facts.append(f"{word} {escape(str(schema[key]))}")
    if "default" in schema:
        facts.append(f"default <code>{escape(json.dumps(schema['default']))}</code>")
    text = " ".join(parts) or "any"
    return f"{text} ({'; '.join(facts)})" if facts else text


def _table(caption: str, head: Iterable[str], rows: list[list[str]]) -> str:
    cells = "".join(f"<th scope='col'>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><caption>{escape(caption)}</caption><tr>{cells}</tr>{body}</table>"


def _text(value: Any) -> str:
    return escape(str(value or ""))


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    op_id = op.get("operationId", f"{method}-{path}")
    out = [
        f"<article id='{escape(op_id)}' aria-labelledby='{escape(op_id)}-h'>",
        f"<h3 id='{escape(op_id)}-h'><code class='m'>{method.upper()}</code> "
        f"<code>{escape(path)}</code></h3>",
        f"<p>{_text(op.get('summary'))}</p>",
    ]
    if op.get("description"):
        out.append(f"<p>{_text(op['description'])}</p>")
    security = [name for req in op.get("security", []) for name in req]
    out.append(
        f"<p>Operation id <code>{escape(op_id)}</code>. Authentication: "
        f"{escape(', '.join(security)) if security else 'none'}.</p>"
    )
    params = op.get("parameters", [])
    if params:
        rows = [
            [
                f"<code>{escape(p['name'])}</code>",
                escape(p["in"]),
                "yes" if p.get("required") else "no",
                f"<span class='s'>{schema_text(p.get('schema', {}))}</span>",
                _text(p.get("description")),
            ]
            for p in params
        ]
        out.append(_table("Parameters", ("Name", "In", "Required", "Schema", "Description"), rows))
    body = op.get("requestBody")
    if body:
        rows = [
            [escape(media), f"<span class='s'>{schema_text(c.get('schema', {}))}</span>"]
            for media, c in body.get("content", {}).items()
        ]
        required = "required" if body.get("required") else "optional"
        out.append(_table(f"Request body ({required})", ("Media type", "Schema"), rows))
    rows = []
    for status, response in op.get("responses", {}).items():
        content = response.get("content") or {"": {}}
        for media, c in content.items():
            rows.append(
                [
                    escape(str(status)),
                    _text(response.get("description")),
                    escape(media) or "(no body)",
                    f"<span class='s'>{schema_text(c['schema'])}</span>" if "schema" in c else "",
                ]
            )
    out.append(_table("Responses", ("Status", "Description", "Media type", "Schema"), rows))
    out.append("</article>")
    return "".join(out)


def _schema(name: str, schema: dict[str, Any]) -> str:
    anchor = _anchor(name)
    out = [
        f"<article id='{escape(anchor)}' aria-labelledby='{escape(anchor)}-h'>",
        f"<h3 id='{escape(anchor)}-h'>{escape(name)}</h3>",
    ]
    if schema.get("description"):
        out.append(f"<p>{_text(schema['description'])}</p>")
    props = schema.get("properties")
    if props:
        required = set(schema.get("required", ()))
        rows = [
            [
                f"<code>{escape(prop)}</code>",
                f"<span class='s'>{schema_text(s)}</span>",
                "yes" if prop in required else "no",
                _text(s.get("description") if isinstance(s, dict) else ""),
            ]
            for prop, s in props.items()
        ]
        out.append(_table("Members", ("Name", "Schema", "Required", "Description"), rows))
        extra = schema.get("additionalProperties")
        if extra is False:
            out.append("<p>No other members.</p>")
        elif extra is True or extra is None:
            out.append("<p>Other members may be present.</p>")
    else:
        out.append(f"<p class='s'>{schema_text(schema)}</p>")
    out.append("</article>")
    return "".join(out)


def render(doc: dict[str, Any]) -> str:
    """The whole document as an HTML page."""
    info = doc["info"]
    title = f"{info['title']} API {info['version']}"
    by_tag: dict[str, list[tuple[str, str, dict[str, Any]]]] = {}
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            tag = (op.get("tags") or ["other"])[0]
            by_tag.setdefault(tag, []).append((path, method, op))
    tags = [t["name"] for t in doc.get("tags", [])] + sorted(
        set(by_tag) - {t["name"] for t in doc.get("tags", [])}
    )
    described = {t["name"]: t.get("description", "") for t in doc.get("tags", [])}
    servers = ", ".join(f"<code>{escape(s['url'])}</code>" for s in doc.get("servers", []))
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<header><h1>{escape(title)}</h1><p>{_text(info.get('description'))}</p>",
        f"<p>Server: {servers or '<code>/</code>'}. Machine-readable: "
        "<a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p></header>",
        "<nav aria-label='Operations'><h2>Operations</h2>",
    ]
    for tag in tags:
        if tag not in by_tag:
            continue
        out.append(f"<h3>{escape(tag)}</h3><ul>")
        for path, method, op in by_tag[tag]:
            op_id = op.get("operationId", f"{method}-{path}")
            out.append(
                f"<li><a href='#{escape(op_id)}'><code>{method.upper()} {escape(path)}</code></a>"
                f" {_text(op.get('summary'))}</li>"
            )
        out.append("</ul>")
    out.append("<p><a href='#schemas'>Schemas</a></p></nav><main>")
    for tag in tags:
        if tag not in by_tag:
            continue
        out.append(f"<section aria-labelledby='tag-{escape(tag)}'>")
        out.append(f"<h2 id='tag-{escape(tag)}'>{escape(tag)}</h2>")
        if described.get(tag):
            out.append(f"<p>{_text(described[tag])}</p>")
        out.extend(_operation(path, method, op) for path, method, op in by_tag[tag])
        out.append("</section>")
    out.append("<section aria-labelledby='schemas'><h2 id='schemas'>Schemas</h2>")
    for name, schema in doc.get("components", {}).get("schemas", {}).items():
        out.append(_schema(name, schema))
    out.append("</section></main></body></html>")
    return "".join(out)
