"""The published OpenAPI document (``/openapi.json``), completed so that it says what the service sends.

FastAPI derives the document from the routes' signatures. What the service checks itself, and the
error bodies of its exception handlers, are added here, from the same sources the service uses:

* one error model, ``ErrorBody`` (``detail`` + ``code``, every code of
  :func:`service.errors.error_codes`), for every error status of every operation, with one example
  per code (the real message); FastAPI's own validation-error schema, which the service never
  sends, is removed;
* statuses every operation of a kind can get: 500 everywhere, 413 on every ``POST`` (the body
  limit), 503 (with ``Retry-After``) and 507 where the gallery store is read or written, when the
  service has codes for them;
* the checks on the uploads: at least one photo and at most ``WHALEID_MAX_FILES`` in
  ``POST /gallery``, a photo of at least one byte in an accepted image format, the whale id rules
  (:func:`index.store.validate_whale_id`), and the scoring modes this bundle serves without a
  ``threshold``;
* ``X-API-Key`` as an ``apiKey`` security scheme of the writes when ``WHALEID_API_KEY`` is set (and
  not at all when it is not: the service then ignores the header);
* links from ``POST /gallery`` (and the gallery listings) to the routes that take the returned ids,
  so a client or a stateful fuzzer can follow them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fastapi import FastAPI

ERROR_SCHEMA = "ErrorBody"
ERROR_REF = {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# the photo formats core.preprocess.decode_image accepts, as media types (the bytes are sniffed; the
# part's Content-Type is not read)
IMAGE_MEDIA_TYPES = "image/jpeg, image/png, image/webp, image/bmp, image/gif, image/tiff, image/avif"
API_KEY_HEADER = "X-API-Key"
API_KEY_SCHEME = "ApiKey"


def install_openapi(app: FastAPI) -> None:
    """Serve the completed document from ``app.openapi()`` (and so ``/openapi.json`` and ``/docs``).

    The document is cached once the bundle is loaded (the scoring modes come from it).
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = FastAPI.openapi(app)
            complete_document(doc, app)
            if getattr(app.state, "service", None) is None:
                app.openapi_schema = None  # built before start-up: build again once the bundle is loaded
            return doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def error_examples(settings: Any = None) -> dict[str, str]:
    """A real ``detail`` for the codes whose message is known in advance (code -> detail)."""
    from core.errors import EmptyUploadError, UnknownIdentityError, UnknownImageError
    from core.preprocess import ACCEPTED_FORMATS, INVALID_IMAGE_DETAIL, over_limit
    from service import errors
    from service.limits import MULTIPART_OVERHEAD_BYTES, upload_too_large

    max_files = getattr(settings, "max_files", 20)
    max_upload_bytes = getattr(settings, "max_upload_bytes", 20 * 1024 * 1024)
    max_pixels = getattr(settings, "max_image_pixels", 40_000_000)
    return {
        "missing_field": errors.MISSING_FILE.format(field="file"),
        "empty_upload": EmptyUploadError().detail + " (file 'fluke.jpg')",
        "bad_request": "There was an error parsing the body",
        "missing_api_key": errors.MISSING_API_KEY,
        "invalid_api_key": errors.WRONG_API_KEY,
        "not_found": "Not Found",
        "unknown_identity": UnknownIdentityError("w_1287fbc").detail,
        "unknown_image": UnknownImageError("w_1287fbc", 42).detail,
        "method_not_allowed": "Method Not Allowed",
        "upload_too_large": upload_too_large(max_upload_bytes + MULTIPART_OVERHEAD_BYTES, "/identify"),
        "too_many_files": errors.TOO_MANY_FILES.format(limit=max_files),
        "image_too_large": over_limit("image", f"{max_pixels} pixels", "WHALEID_MAX_IMAGE_PIXELS"),
        "unsupported_format": (
            f"unsupported format: not a raster image of an accepted format ({', '.join(ACCEPTED_FORMATS)})"
        ),
        "invalid_image": INVALID_IMAGE_DETAIL,
        "invalid_whale_id": "invalid whale_id: 'new_whale' is reserved for whales not in the gallery",
        "invalid_request": "invalid request: k: Input should be less than or equal to 20",
        "internal_error": errors.INTERNAL,
    }


def error_response(status: int, codes: list[tuple[str, str]], examples: dict[str, str]) -> dict[str, Any]:
    """The response object of one error status: the error model, the codes it may carry, an example each."""
    from http import HTTPStatus

    if codes:
        description = "\n".join(f"- `{code}`: {when.rstrip('.')}" for code, when in codes)
    else:
        description = HTTPStatus(status).phrase
    content: dict[str, Any] = {"schema": ERROR_REF}
    if codes:
        content["examples"] = {
            code: {"summary": when, "value": {"detail": examples.get(code, when), "code": code}} for code, when in codes
        }
    response: dict[str, Any] = {"description": description, "content": {"application/json": content}}
    if status == 503:
        response["headers"] = {
            "Retry-After": {
                "description": "Seconds to wait before trying again.",
                "schema": {"type": "integer", "minimum": 0},
            }
        }
    return response


def complete_document(doc: dict[str, Any], app: FastAPI) -> dict[str, Any]:
    """Complete FastAPI's document in place (see the module docstring) and return it."""
    from service.errors import error_codes

    settings = getattr(app.state, "settings", None)
    service = getattr(app.state, "service", None)
    by_status: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for status, code, when in error_codes():
        by_status[status].append((code, when))
    examples = error_examples(settings)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas[ERROR_SCHEMA] = {
        "title": ERROR_SCHEMA,
        "description": "The body of every error response (4xx and 5xx).",
        "type": "object",
        "required": ["detail", "code"],
        "properties": {
            "detail": {"type": "string", "description": "What went wrong, for a person; stable for a cause."},
            "code": {
                "type": "string",
                "enum": sorted({code for codes in by_status.values() for code, _ in codes}),
                "description": "What went wrong, for a program (the README's error table says when each is sent).",
            },
        },
        "example": {"detail": examples["empty_upload"], "code": "empty_upload"},
    }
    operation_ids = {
        (method, path): op.get("operationId") for path, ops in doc["paths"].items() for method, op in ops.items()
    }
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method not in HTTP_METHODS:
                continue
            statuses = {int(s) for s in op.get("responses", {}) if s.isdigit() and int(s) >= 400}
            statuses.add(500)
            if op.get("parameters") or op.get("requestBody"):
                statuses.add(422)  # FastAPI's validation
            if method == "post":
                statuses.add(413)  # service.limits.BodyLimitMiddleware
            if path.startswith(("/gallery", "/audit")) or method == "post":
                statuses.add(503)  # the store (or an upload's temporary file) cannot be used right now
            if method in ("post", "delete", "patch"):
                statuses.add(507)  # no space left for the change
            responses = op.setdefault("responses", {})
            for status in sorted(statuses):
                if status in (503, 507) and status not in by_status:
                    continue
                responses[str(status)] = error_response(status, by_status.get(status, []), examples)
            _complete_body(doc, op, settings)
            _complete_parameters(op, service)
            _complete_security(doc, op, settings)
    _add_links(doc, operation_ids)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    _complete_thumbnail(doc)
    metrics = doc["paths"].get("/metrics", {}).get("get")
    if metrics is not None:
        metrics["responses"]["200"]["content"] = {"text/plain": {"schema": {"type": "string"}}}
    return doc


def _complete_thumbnail(doc: dict[str, Any]) -> None:
    """The thumbnail's caching: ``ETag`` and ``Cache-Control`` on 200, ``If-None-Match`` answered 304."""
    op = doc["paths"].get("/gallery/{whale_id}/images/{image_id}", {}).get("get")
    if op is None:
        return
    op.setdefault("parameters", []).append(
        {
            "name": "If-None-Match",
            "in": "header",
            "required": False,
            "description": "The ETag of a thumbnail already held: 304 when it is still this photo's.",
            "schema": {"type": "string"},
        }
    )
    op["responses"]["200"]["headers"] = {
        "ETag": {"description": "The photo's checksum (image ids are never reused).", "schema": {"type": "string"}},
        "Cache-Control": {"description": "public, max-age=31536000, immutable", "schema": {"type": "string"}},
    }
    op["responses"]["304"] = {"description": "Not Modified: If-None-Match names this thumbnail's ETag."}


def _complete_body(doc: dict[str, Any], op: dict[str, Any], settings: Any) -> None:
    """The upload rules of a multipart body: photos in image formats, non-empty, how many; whale id rules."""
    from index.store import NEW_WHALE, whale_id_pattern

    body = op.get("requestBody", {}).get("content", {}).get("multipart/form-data")
    if body is None:
        return
    ref = body.get("schema", {}).get("$ref", "")
    schema = doc["components"]["schemas"].get(ref.rsplit("/", 1)[-1], body.get("schema", {}))
    limits = ""
    if settings is not None:
        limits = (
            f" At most {settings.max_upload_bytes} bytes and {settings.max_image_pixels} pixels "
            f"(width x height) a photo."
        )
    if op.get("operationId", "").startswith("identify_"):
        schema["additionalProperties"] = False  # POST /identify refuses form fields it does not know
    encoding = body.setdefault("encoding", {})
    for name, prop in schema.get("properties", {}).items():
        items = prop.get("items") if prop.get("type") == "array" else None
        target = items if items is not None else prop
        if target.get("contentMediaType") == "application/octet-stream" or target.get("format") == "binary":
            target["format"] = "binary"  # OpenAPI 3.0's spelling of contentMediaType, still read by many tools
            target["minLength"] = 1
            prop["description"] = (
                prop.get("description", "")
                + " A photo has at least 1 byte, in one of the formats "
                + IMAGE_MEDIA_TYPES
                + " (recognised from its bytes)."
                + limits
            ).strip()
            encoding[name] = {"contentType": IMAGE_MEDIA_TYPES}
            if items is not None:
                prop["minItems"] = 1
                if settings is not None:
                    prop["maxItems"] = settings.max_files
        elif name == "whale_id":
            # index.store.validate_whale_id; an empty value means "none given" (a new readable id). The
            # reserved name is a lookahead, not a `not` keyword: schemathesis cannot judge a `not` in a
            # body that holds files.
            rule = whale_id_pattern().removeprefix("^")
            schema["properties"][name] = {
                "type": "string",
                "pattern": f"^$|^(?!{NEW_WHALE}$){rule}",
                "title": prop.get("title", "Whale Id"),
                "description": prop.get("description", "")
                + " 1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit; not "
                f"'{NEW_WHALE}' (reserved).",
            }
        elif any(option.get("type") == "null" for option in prop.get("anyOf", [])):
            # an optional form field: "not given" is leaving it out (multipart has no null; the text "null"
            # would be a value), so the document offers only the field's own type
            kept = [option for option in prop["anyOf"] if option.get("type") != "null"]
            schema["properties"][name] = {**{k: v for k, v in prop.items() if k != "anyOf"}, **kept[0]}


def _complete_parameters(op: dict[str, Any], service: Any) -> None:
    """The scoring modes this bundle serves without a threshold (others are refused with 422); before a
    bundle is loaded, every registered mode (:mod:`index.modes`)."""
    from index import modes as registry

    for param in op.get("parameters", []):
        if param.get("name") == "scoring" and param.get("in") == "query":
            if service is None:
                param["schema"] = {"anyOf": [{"type": "string", "enum": registry.names()}, {"type": "null"}]}
                continue
            modes = [m for m in service.available_modes() if m in service.manifest.thresholds]
            param["schema"] = {"type": "string", "enum": modes, "title": "Scoring"}
            param["description"] = (
                "Scoring mode (default: the bundle's). The modes of this bundle with a calibrated new_whale "
                "threshold; GET /ready lists them all (scoring_modes)."
            )


def _complete_security(doc: dict[str, Any], op: dict[str, Any], settings: Any) -> None:
    """``X-API-Key`` as what it is: a security scheme when ``WHALEID_API_KEY`` is set, else nothing.

    FastAPI lists the header as an optional parameter of the writes; the service ignores it unless a
    key is set, and then refuses a write without it (401) or with a wrong one (403).
    """
    params = op.get("parameters", [])
    keyed = [p for p in params if p.get("in") == "header" and p.get("name", "").lower() == API_KEY_HEADER.lower()]
    if not keyed:
        return
    op["parameters"] = [p for p in params if p not in keyed]
    if not op["parameters"]:
        del op["parameters"]
    if getattr(settings, "api_key", None) is not None:
        doc["components"].setdefault("securitySchemes", {})[API_KEY_SCHEME] = {
            "type": "apiKey",
            "in": "header",
            "name": API_KEY_HEADER,
            "description": "The key of WHALEID_API_KEY; writes need it (401 without, 403 wrong); reads do not.",
        }
        op["security"] = [{API_KEY_SCHEME: []}]


def _add_links(doc: dict[str, Any], operation_ids: dict[tuple[str, str], str | None]) -> None:
    """OpenAPI links from the responses that return whale and image ids to the routes that take them."""
    whale = {"whale_id": "$response.body#/whale_id"}
    image = {"whale_id": "$response.body#/whale_id", "image_id": "$response.body#/image_ids/0"}
    targets = {
        "GetWhale": (("get", "/gallery/{whale_id}"), whale),
        "GetThumbnail": (("get", "/gallery/{whale_id}/images/{image_id}"), image),
        "DeleteImage": (("delete", "/gallery/{whale_id}/images/{image_id}"), image),
        "DeleteWhale": (("delete", "/gallery/{whale_id}"), whale),
    }
    sources = {
        # source operation, its success status, how it names the ids
        ("post", "/gallery"): ("201", {}),
        ("get", "/gallery"): ("200", {"$response.body#/whale_id": "$response.body#/whales/0/whale_id"}),
        ("get", "/gallery/{whale_id}"): (
            "200",
            {
                "$response.body#/whale_id": "$request.path.whale_id",
                "$response.body#/image_ids/0": ("$response.body#/images/0/image_id"),
            },
        ),
    }
    for (method, path), (status, rename) in sources.items():
        response = doc["paths"].get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        links = {}
        for name, (target, params) in targets.items():
            op_id = operation_ids.get(target)
            if op_id is None or target == (method, path):
                continue
            values = {p: rename.get(expr, expr) for p, expr in params.items()}
            if (method, path) == ("get", "/gallery") and "image_id" in values:
                continue  # the listing names whales, not photos
            links[name] = {"operationId": op_id, "parameters": values}
        if links:
            response["links"] = links
