"""The OpenAPI document (lipsync_server/openapi/): valid OpenAPI 3.1, every route of the app documented and
every documented route real, served open at /openapi.json, generated from the declarations (options,
typed errors, job statuses), and docs/api.md its rendering. tests/e2e/test_schemathesis.py checks the
running server against it."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from helpers import make_settings
from openapi_spec_validator import validate

from harness import ROOT
from lipsync_server.app import create_app
from lipsync_server.openapi.document import AUTOMATIC, document, path_of
from lipsync_server.openapi.markdown import markdown
from lipsync_server.openapi.operations import OPERATIONS
from lipsync_server.payload import Body
from lipsync_stores.jobs import STATUSES
from lipsync_stores.store import check_alias
from wav2lip_core.config import Settings
from wav2lip_core.errors import BadRequest
from wav2lip_core.schema import Options

API_MD = ROOT / "docs" / "api.md"


@pytest.fixture(scope="module")
def keyed_app(tmp_path_factory: pytest.TempPathFactory):
    """The app with API_KEY set and no models (nothing here needs them: they fail to load, quickly)."""
    tmp = tmp_path_factory.mktemp("openapi")
    return create_app(make_settings(tmp / "no-models", api_key="secret", avatar_dir=tmp / "avatars", job_dir=tmp / "jobs"))


@pytest.fixture(scope="module")
def doc(keyed_app) -> dict:
    return document(keyed_app)


def routes(app) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every rule of the app, without the HEAD and OPTIONS Flask adds."""
    return {(path_of(r), m.lower()) for r in app.url_map.iter_rules() for m in (r.methods or set()) - AUTOMATIC}


def test_the_document_is_valid_openapi_3_1(doc: dict) -> None:
    validate(doc)  # raises OpenAPIValidationError naming the first problem
    assert doc["openapi"].startswith("3.1")


def test_every_route_is_documented_and_every_documented_route_exists(keyed_app, doc: dict) -> None:
    documented = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert documented == routes(keyed_app)
    assert {"/sync", "/v1/animation", "/talk-status/{talk_id}", "/openapi.json"} <= {p for p, _ in documented}  # drop-in routes too
    assert set(OPERATIONS) == set(keyed_app.view_functions), "operations.OPERATIONS must name exactly the app's endpoints"


def test_the_document_is_served_without_the_api_key(keyed_app, doc: dict) -> None:
    client = keyed_app.test_client()
    served = client.get("/openapi.json")
    assert served.status_code == 200 and served.mimetype == "application/json"
    assert served.get_json() == doc
    assert client.get("/api/avatars").status_code == 401  # the key is set: the API routes want it
    keyed = {(p, m) for p, ops in doc["paths"].items() for m, op in ops.items() if op["security"]}
    assert ("/api/generate", "post") in keyed and ("/sync", "post") in keyed
    assert not {p for p, _ in keyed} & {"/openapi.json", "/health", "/metrics", "/api/jobs/{job_id}/video"}  # open routes


def test_the_request_options_are_the_declared_ones(doc: dict) -> None:
    """schema.Options → GenerateJson: each option's bounds or choices, default and error code, once."""
    props = doc["components"]["schemas"]["GenerateJson"]["properties"]
    for f in fields(Options):
        spec, prop = f.metadata["spec"], props[f.name]
        assert spec.code in prop["description"] and spec.doc in prop["description"], f.name
        if spec.kind == "choice":
            assert prop["enum"] == [*spec.choices, None]
        elif spec.kind == "ints4":
            assert (prop["items"]["minimum"], prop["items"]["maximum"], prop["minItems"]) == (spec.lo, spec.hi, 4)
        else:
            assert (prop["minimum"], prop["maximum"]) == (spec.lo, spec.hi)
    assert props["pads"]["default"] == list(Options().pads)
    job = doc["components"]["schemas"]["Job"]["properties"]["status"]["enum"]
    assert job == list(STATUSES)


def test_error_answers_carry_the_codes_raised_for_them(doc: dict) -> None:
    """Codes come from the raise sites (ast) and the option specs; a class default never raised is not documented."""
    generate = doc["paths"]["/api/generate"]["post"]["responses"]

    def codes(status: str) -> set[str]:
        return set(generate[status]["content"]["application/json"]["schema"]["properties"]["error"]["properties"]["code"]["enum"])

    assert {f.metadata["spec"].code for f in fields(Options)} | {"invalid_json", "invalid_base64", "missing_field"} <= codes("400")
    assert "bad_request" not in codes("400")  # BadRequest's default: every raise names its code
    assert {"bad_image", "bad_audio", "unsupported_content_type"} == codes("415") - {"bad_video", "no_audio_track"}
    assert {"busy", "not_ready", "models_missing"} <= codes("503") and "Retry-After" in generate["503"]["headers"]
    assert "MAX_REQUEST_BYTES" in generate["413"]["description"]  # the setting behind the limit (config.Settings)
    assert "409" in doc["paths"]["/api/jobs/{job_id}/video"]["get"]["responses"]


@pytest.mark.parametrize("name", ["x\n", "..", ".", "a" * 129, "a/b", ""])
def test_an_avatar_name_outside_the_documented_pattern_is_refused(name: str) -> None:
    """store.NAME is published as the `avatar_id` pattern; the server holds names to it as ECMA-262 reads it."""
    with pytest.raises(BadRequest, match="avatar"):
        Body({"avatar_id": name}).avatar_id()
    with pytest.raises(BadRequest, match="avatar name"):
        check_alias(name)


def test_docs_api_md_is_the_rendering_of_the_document() -> None:
    """docs/api.md is what `python -m lipsync_server.openapi.markdown` prints (the app's routes, default settings)."""
    rendered = markdown(document(create_app(Settings())))
    assert API_MD.read_text() == rendered, "docs/api.md is stale: python -m lipsync_server.openapi.markdown > docs/api.md"
    assert "### `POST /api/generate`" in rendered and "### `GET /talk-status/{talk_id}`" in rendered


def test_an_undocumented_route_is_refused(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path / "no-models"))
    app.add_url_rule("/api/secret", view_func=lambda: "", endpoint="secret")
    with pytest.raises(LookupError, match=r"/api/secret .*'secret'.* not documented"):
        document(app)
