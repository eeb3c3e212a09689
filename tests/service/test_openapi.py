"""The OpenAPI document against what the service sends, and the README's error table against the document.

No bundle is loaded: ``create_app`` reads its settings and routes; the bundle is loaded only at
start-up (the fuzz run in ``test_openapi_fuzz.py`` checks the document against a running server).
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient
from helpers import REPO

from core.errors import InvalidIdentityError
from index.store import validate_whale_id
from service.config import Settings
from service.errors import error_codes
from service.main import create_app

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    bundle = tmp_path_factory.mktemp("bundle")
    (bundle / "manifest.json").write_text("{}")  # Settings checks the file exists; nothing loads it here
    return create_app(Settings(bundle=bundle, max_files=7, max_upload_bytes=1000, max_image_pixels=5000))


@pytest.fixture(scope="module")
def doc(app):
    return app.openapi()


def operations(doc):
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            yield path, method, op


def readme_error_table() -> set[tuple[int, str]]:
    """(status, code) of every row of the README's error table (a row may name several codes)."""
    rows = re.findall(r"^\| (\d{3}) \| (`[a-z_]+`(?:, `[a-z_]+`)*) \| .+ \|$", (REPO / "README.md").read_text(), re.M)
    return {(int(status), code) for status, codes in rows for code in re.findall(r"`([a-z_]+)`", codes)}


def test_readme_error_table_agrees_with_the_document(doc):
    readme = readme_error_table()
    assert len(readme) >= 18, readme  # the table was found
    assert readme == {(status, code) for status, code, _ in error_codes()}
    in_doc = {
        (int(status), code)
        for _, _, op in operations(doc)
        for status, response in op["responses"].items()
        if int(status) >= 400
        for code in response["content"]["application/json"]["examples"]
    }
    # 405 answers the methods the document does not list, so no operation declares it (see the 405 test)
    assert in_doc == readme - {(405, "method_not_allowed")}
    enum = doc["components"]["schemas"]["ErrorBody"]["properties"]["code"]["enum"]
    assert set(enum) == {code for _, code in readme}


def test_every_error_status_of_every_operation_has_the_error_model(doc):
    assert "HTTPValidationError" not in json.dumps(doc)  # FastAPI's 422 body, which the service never sends
    body = doc["components"]["schemas"]["ErrorBody"]
    assert body["required"] == ["detail", "code"]
    validator = jsonschema_rs.validator_for(body)
    codes_of = {}
    for status, code, _ in error_codes():
        codes_of.setdefault(status, set()).add(code)
    for path, method, op in operations(doc):
        statuses = {int(s) for s in op["responses"] if int(s) >= 400}
        assert 500 in statuses, (method, path)
        if op.get("parameters") or op.get("requestBody"):
            assert 422 in statuses, (method, path)
        if "multipart/form-data" in op.get("requestBody", {}).get("content", {}):  # an upload
            assert {400, 413, 415, 422, 503, 507} <= statuses, (method, path)
        elif method in ("post", "patch", "delete"):  # a change without photos
            assert {422, 503, 507} <= statuses, (method, path)
        for status in statuses:
            content = op["responses"][str(status)]["content"]
            assert list(content) == ["application/json"]
            assert content["application/json"]["schema"] == ERROR_REF
            examples = content["application/json"]["examples"]
            assert set(examples) == codes_of[status], (method, path, status)
            for code, example in examples.items():
                assert example["value"]["code"] == code and example["value"]["detail"]
                assert validator.is_valid(example["value"]), example
    enrol = doc["paths"]["/gallery"]["post"]["responses"]
    assert set(enrol) == {"201", "400", "401", "403", "413", "415", "422", "500", "503", "507"}  # no 404
    thumb = doc["paths"]["/gallery/{whale_id}/images/{image_id}"]["get"]["responses"]
    assert set(thumb) == {"200", "304", "404", "422", "500", "503"}  # a read: no 507, no 413
    assert set(thumb["200"]["headers"]) == {"ETag", "Cache-Control"} and "content" not in thumb["304"]
    assert doc["paths"]["/gallery"]["post"]["responses"]["503"]["headers"]["Retry-After"]["schema"]["type"] == "integer"
    examples = doc["paths"]["/identify"]["post"]["responses"]["413"]["content"]["application/json"]["examples"]
    detail = examples["upload_too_large"]["value"]["detail"]
    assert detail == "upload too large: over the limit of 1000 bytes (raise it with WHALEID_MAX_UPLOAD_BYTES)"


def test_the_upload_rules_are_in_the_schema(doc):
    schemas = doc["components"]["schemas"]
    enrol_body = doc["paths"]["/gallery"]["post"]["requestBody"]["content"]["multipart/form-data"]
    enrol = schemas[enrol_body["schema"]["$ref"].rsplit("/", 1)[-1]]
    assert enrol["required"] == ["files"]
    files = enrol["properties"]["files"]
    assert (files["minItems"], files["maxItems"], files["items"]["minLength"]) == (1, 7, 1)
    assert "image/jpeg" in enrol_body["encoding"]["files"]["contentType"]
    identify_body = doc["paths"]["/identify"]["post"]["requestBody"]["content"]["multipart/form-data"]
    identify = schemas[identify_body["schema"]["$ref"].rsplit("/", 1)[-1]]
    assert identify["required"] == ["file"] and identify["properties"]["file"]["minLength"] == 1
    assert "1000 bytes and 5000 pixels" in identify["properties"]["file"]["description"]


def test_ranges_are_in_the_schema(doc):
    list_params = {p["name"]: p["schema"] for p in doc["paths"]["/gallery"]["get"]["parameters"]}
    assert list_params["q"]["maxLength"] == 64
    assert (list_params["limit"]["minimum"], list_params["limit"]["maximum"]) == (1, 1000)
    # SQLite cannot look up a larger integer: such an offset or image id was a 500 (found by the fuzz run)
    assert (list_params["offset"]["minimum"], list_params["offset"]["maximum"]) == (0, 2**63 - 1)
    for method in ("get", "delete"):
        params = doc["paths"]["/gallery/{whale_id}/images/{image_id}"][method]["parameters"]
        image_id = next(p["schema"] for p in params if p["name"] == "image_id")
        assert (image_id["minimum"], image_id["maximum"]) == (1, 2**63 - 1)
    identify = {p["name"]: p["schema"] for p in doc["paths"]["/identify"]["post"]["parameters"]}
    assert (identify["k"]["minimum"], identify["k"]["maximum"]) == (1, 20)


@pytest.mark.parametrize(
    "whale_id",
    ["w_1287fbc", "a", "A" * 64, "A" * 65, "new_whale", "new_whale2", "-x", "x y", "abc\n", "é", "a.b-c_d", "a/b"],
)
def test_whale_id_schema_and_validate_whale_id_agree(doc, whale_id):
    enrol_body = doc["paths"]["/gallery"]["post"]["requestBody"]["content"]["multipart/form-data"]
    schema = doc["components"]["schemas"][enrol_body["schema"]["$ref"].rsplit("/", 1)[-1]]
    schema_valid = jsonschema_rs.validator_for(schema["properties"]["whale_id"]).is_valid(whale_id)
    try:
        validate_whale_id(whale_id)
        service_valid = True
    except InvalidIdentityError:
        service_valid = False
    assert schema_valid == service_valid
    assert schema_valid == (whale_id in ("w_1287fbc", "a", "A" * 64, "new_whale2", "a.b-c_d"))


def test_empty_whale_id_is_schema_valid_and_means_none(doc):
    enrol_body = doc["paths"]["/gallery"]["post"]["requestBody"]["content"]["multipart/form-data"]
    schema = doc["components"]["schemas"][enrol_body["schema"]["$ref"].rsplit("/", 1)[-1]]
    assert jsonschema_rs.validator_for(schema["properties"]["whale_id"]).is_valid("")


def test_405_names_every_method_of_the_path(app):
    client = TestClient(app)  # no lifespan: routing and the error handlers only
    for method, path, allow in [
        ("OPTIONS", "/gallery", "GET, POST"),
        ("PUT", "/gallery", "GET, POST"),
        ("OPTIONS", "/gallery/w_1287fbc", "GET, PATCH, DELETE"),
        ("PUT", "/gallery/w_1287fbc/images/3", "GET, PATCH, DELETE"),
        ("GET", "/gallery/w_1287fbc/merge", "POST"),
        ("GET", "/identify", "POST"),
    ]:
        r = client.request(method, path)
        assert r.status_code == 405, (method, path)
        assert r.headers["allow"] == allow, (method, path)
        assert r.json() == {"detail": "Method Not Allowed", "code": "method_not_allowed"}


def test_an_unexpected_error_is_500_with_the_internal_error_code(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    app = create_app(Settings(bundle=tmp_path))

    @app.get("/boom")
    def boom():
        raise RuntimeError("a bug")

    r = TestClient(app, raise_server_exceptions=False).get("/boom")
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error", "code": "internal_error"}


def test_links_from_enrolment_to_the_routes_that_take_its_ids(doc):
    ids = {op["operationId"]: (method, path) for path, method, op in operations(doc)}
    links = doc["paths"]["/gallery"]["post"]["responses"]["201"]["links"]
    assert {name: ids[link["operationId"]] for name, link in links.items()} == {
        "GetWhale": ("get", "/gallery/{whale_id}"),
        "DeleteWhale": ("delete", "/gallery/{whale_id}"),
        "GetThumbnail": ("get", "/gallery/{whale_id}/images/{image_id}"),
        "DeleteImage": ("delete", "/gallery/{whale_id}/images/{image_id}"),
    }
    assert links["DeleteImage"]["parameters"] == {
        "whale_id": "$response.body#/whale_id",
        "image_id": "$response.body#/image_ids/0",
    }
    detail_links = doc["paths"]["/gallery/{whale_id}"]["get"]["responses"]["200"]["links"]
    assert detail_links["GetThumbnail"]["parameters"] == {
        "whale_id": "$request.path.whale_id",
        "image_id": "$response.body#/images/0/image_id",
    }


def test_scoring_modes_are_those_the_bundle_serves_without_a_threshold(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    app = create_app(Settings(bundle=tmp_path))
    scoring = next(p for p in app.openapi()["paths"]["/identify"]["post"]["parameters"] if p["name"] == "scoring")
    # before a bundle is loaded: every registered mode
    assert scoring["schema"]["anyOf"][0]["enum"] == ["embedding", "local", "fused", "edge_fused"]
    app.state.service = SimpleNamespace(
        available_modes=lambda: ["embedding", "local", "fused"],
        manifest=SimpleNamespace(thresholds={"embedding": 0.5, "fused": 0.4}),
    )
    scoring = next(p for p in app.openapi()["paths"]["/identify"]["post"]["parameters"] if p["name"] == "scoring")
    assert scoring["schema"]["enum"] == ["embedding", "fused"]


def test_the_api_key_is_a_security_scheme_of_the_writes_when_set(doc, tmp_path):
    # without WHALEID_API_KEY the service ignores the header: no operation takes it
    params = [p["name"].lower() for _, _, op in operations(doc) for p in op.get("parameters", [])]
    assert "x-api-key" not in params and "securitySchemes" not in doc["components"]
    assert not any("security" in op for _, _, op in operations(doc))
    (tmp_path / "manifest.json").write_text("{}")
    keyed = create_app(Settings(bundle=tmp_path, api_key="s3cret")).openapi()
    assert keyed["components"]["securitySchemes"]["ApiKey"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The key of WHALEID_API_KEY; writes need it (401 without, 403 wrong); reads do not.",
    }
    secured = {(method, path) for path, method, op in operations(keyed) if op.get("security") == [{"ApiKey": []}]}
    assert secured == {
        ("post", "/gallery"),
        ("delete", "/gallery/{whale_id}"),
        ("delete", "/gallery/{whale_id}/images/{image_id}"),
        ("patch", "/gallery/{whale_id}"),
        ("post", "/gallery/{whale_id}/merge"),
        ("post", "/gallery/{whale_id}/move"),
        ("patch", "/gallery/{whale_id}/images/{image_id}"),
    }
    assert "s3cret" not in json.dumps(keyed)
