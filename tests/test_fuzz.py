"""Hostile requests against a running platform: predict, feedback, admin and the online store over real HTTP.

Every answer must be 2xx, or 4xx with a message (no traceback, no terminal
codes); never 5xx; and a normal prediction must still be answered after each.
Part one is a list of hand-written requests (size, depth, types, encodings,
names, weights, numbers, keys); part two generates bodies with hypothesis from
the schemas the app's own ``/openapi.json`` declares.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from urllib.parse import quote

import pytest

from lakeloop.features import online
from lakeloop.serving.service import admin_token
from shared_platform import DEPLOYED, FEEDBACK_TOKEN, MAX_BYTES, MAX_ROWS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # starts the shared platform when run alone
ROW = {"amount": 150.0, "country": "US"}
PREDICT = "/v1/models/fraud/predict"
TRAFFIC = "/v1/admin/models/fraud/traffic"
DEPLOY = "/v1/admin/models/fraud/deploy"


# -- HTTP, as raw as needed --------------------------------------------------------------------
def send(port: int, method: str, path: str, body=None, headers=None, content_type="application/json",
         chunked: bool = False) -> tuple[int, bytes, dict]:
    """One request on a fresh connection; ``body`` is bytes as sent, or an object sent as JSON."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        hdrs = {**({"Content-Type": content_type} if content_type else {}), **(headers or {})}
        if data is not None and "Content-Length" not in hdrs and not chunked:
            hdrs["Content-Length"] = str(len(data))
        if chunked:
            hdrs["Transfer-Encoding"] = "chunked"
        for k, v in hdrs.items():
            conn.putheader(k, v)
        conn.endheaders()
        if data is not None:
            if chunked:
                for i in range(0, len(data), 16_384):
                    part = data[i:i + 16_384]
                    conn.send(b"%x\r\n%s\r\n" % (len(part), part))
                conn.send(b"0\r\n\r\n")
            else:
                try:
                    conn.send(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # answered (413) and closed before the whole body was sent: the answer is still there
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


def raw_http(port: int, request: bytes) -> tuple[int, bytes]:
    """Bytes as they are (header values no client library would send); the status line and body back."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(request)  # the request says "Connection: close": the server ends the answer by closing
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    answer = b"".join(chunks)
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def assert_sane(status: int, raw: bytes, what) -> dict:
    """2xx, or 4xx with a message; never 5xx; no traceback or terminal codes in the body."""
    assert status < 500, (what, status, raw[:500])
    text = raw.decode("utf-8", "replace")
    assert "Traceback" not in text and "\x1b[" not in text, (what, text[:500])
    try:
        answer = json.loads(raw) if raw else {}
    except ValueError:
        answer = {"raw": text}
    if status >= 400:
        message = answer.get("error") or answer.get("detail") or answer.get("raw") if isinstance(answer, dict) \
            else None
        assert message, (what, status, text[:300])
    return answer if isinstance(answer, dict) else {"value": answer}


@pytest.fixture
def platform(serve_platform):
    """The platform shared with test_serving.py (tests/shared_platform.py), `fraud` v1 taking all traffic and
    no shadow (whatever an earlier test set); yields (ll, the deployed versions, v1 first)."""
    ll, versions, state = serve_platform
    assert not state["closed"], "the shared platform was stopped: its modules must run together (conftest)"
    ll.serving.traffic("fraud", {versions[0]: 100})
    return ll, versions[:DEPLOYED]


def predict_ok(ll) -> dict:
    status, raw, _ = send(ll.config.serve.port, "POST", PREDICT, {"rows": [ROW]})
    assert status == 200, ("the server stopped answering a normal predict", status, raw[:300])
    return json.loads(raw)


def served_request(ll, rows: int = 1) -> str:
    status, raw, _ = send(ll.config.serve.port, "POST", PREDICT, {"rows": [ROW] * rows})
    assert status == 200, raw
    return json.loads(raw)["request_id"]


def from_schema(schema: dict, any_json):
    """A hypothesis strategy of values that fit ``schema``: the JSON Schema subset the app's body schemas use.

    (hypothesis-jsonschema does not run with this hypothesis version, so this small generator stands in.)
    """
    from hypothesis import strategies as st

    if "anyOf" in schema:
        return st.one_of(*[from_schema(s, any_json) for s in schema["anyOf"]])
    kind = schema.get("type")
    if kind == "object":
        props, required = schema.get("properties", {}), set(schema.get("required", []))
        fixed = st.fixed_dictionaries({k: from_schema(v, any_json) for k, v in props.items() if k in required},
                                      optional={k: from_schema(v, any_json) for k, v in props.items()
                                                if k not in required})
        extra = schema.get("additionalProperties", True)
        if extra is False:
            return fixed
        more = st.dictionaries(st.text(max_size=8), from_schema(extra, any_json) if isinstance(extra, dict)
                               else any_json, max_size=3)
        return st.tuples(fixed, more).map(lambda t: {**t[1], **t[0]})
    if kind == "array":
        return st.lists(from_schema(schema.get("items", {}), any_json), min_size=schema.get("minItems", 0),
                        max_size=4)
    if kind == "string":
        return st.text(max_size=12)
    if kind == "integer":
        return st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum"))
    if kind == "number":
        return st.floats(min_value=schema.get("minimum"), max_value=schema.get("maximum"), allow_nan=False,
                         allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    return any_json


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# -- part one: hand-written hostile requests --------------------------------------------------
def hostile_cases(ll, versions) -> list[tuple]:
    """``(name, port, method, path, body, headers, expected status or None (any 2xx/4xx), needle or None, kw)``."""
    serve_port, online_port = ll.config.serve.port, ll.config.online.port
    admin = {"Authorization": f"Bearer {admin_token(ll)}"}
    fbk = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
    read = {"Authorization": f"Bearer {online.read_token(ll)}"}
    big_string = "x" * (MAX_BYTES + 10)
    cases = []

    def p(name, body, status=None, needle=None, path=PREDICT, method="POST", headers=None, **kw):
        cases.append((f"predict: {name}", serve_port, method, path, body, headers, status, needle, kw))

    def f(name, body, status=None, needle=None, headers=fbk, path="/v1/feedback", **kw):
        cases.append((f"feedback: {name}", serve_port, "POST", path, body, headers, status, needle, kw))

    def a(name, body, status=None, needle=None, path=TRAFFIC, method="PUT", headers=admin, **kw):
        cases.append((f"admin: {name}", serve_port, method, path, body, headers, status, needle, kw))

    def o(name, body, status=None, needle=None, path="/v1/features/user_rows", headers=read, method="POST", **kw):
        cases.append((f"online: {name}", online_port, method, path, body, headers, status, needle, kw))

    # predict: size and depth
    p("100,000 nested brackets", nested(100_000), 400, "limit is 32")
    p("100,000 nested objects", b'{"a":' * 100_000 + b"1" + b"}" * 100_000, 413)
    p("nesting just past the limit", b'{"rows": [{"amount": ' + nested(40) + b"}]}", 400, "levels deep")
    p("nested value in a row", {"rows": [{"amount": [[[1]]], "country": "US"}]}, 422, "must be a number")
    p("body over serve.max_bytes", {"rows": [{**ROW, "country": big_string}]}, 413, "limit is")
    p("chunked body over the limit, no Content-Length", {"rows": [{**ROW, "country": big_string}]}, 413,
      "limit is", chunked=True)
    p("chunked body within the limit", {"rows": [ROW]}, 200, chunked=True)
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            ).encode()
    body = json.dumps({"rows": [ROW]}).encode()
    p("Content-Length claims a terabyte, no body sent", None, 413, "limit is",
      raw=head + b"Content-Length: 1000000000000\r\n\r\n")
    p("Content-Length shorter than the body", None, 400, "not valid JSON",
      raw=head + b"Content-Length: 5\r\n\r\n" + body)
    p("Content-Length not a number", None, 400, raw=head + b"Content-Length: abc\r\n\r\n" + body)
    p("Content-Length negative", None, 400, raw=head + b"Content-Length: -5\r\n\r\n" + body)
    p("two Content-Lengths", None, 400, raw=head + b"Content-Length: 5\r\nContent-Length: 500\r\n\r\n" + body)
    p("non-Latin-1 bytes in the Authorization header", None, 200,
      raw=head + b"Authorization: Bearer \xff\xfe\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    p("too many rows", {"rows": [ROW] * (MAX_ROWS + 1)}, 413, f"limit is {MAX_ROWS}")
    # predict: numbers
    p("1e309", b'{"rows": [{"amount": 1e309, "country": "US"}]}', 422, "float64")
    p("-1e309", b'{"rows": [{"amount": -1e309, "country": "US"}]}', 422, "float64")
    p("10^400 integer", b'{"rows": [{"amount": 1' + b"0" * 400 + b', "country": "US"}]}', 422, "amount")
    p("10^5000 integer", b'{"rows": [{"amount": 1' + b"0" * 5000 + b', "country": "US"}]}', 422, "float64")
    p("NaN", b'{"rows": [{"amount": NaN, "country": "US"}]}', 422, "NaN")
    p("Infinity", b'{"rows": [{"amount": Infinity, "country": "US"}]}', 422, "Infinity")
    p("-Infinity", b'{"rows": [{"amount": -Infinity, "country": "US"}]}', 422)
    p("1e308 is finite", {"rows": [{"amount": 1e308, "country": "US"}]}, 200)
    p("1e-400 underflows to 0", b'{"rows": [{"amount": 1e-400, "country": "US"}]}', 200)
    p("-0.0", b'{"rows": [{"amount": -0.0, "country": "US"}]}', 200)
    p("huge float in an unused field", b'{"rows": [{"amount": 1, "country": "US", "x": 1e400}]}', 422)
    # predict: encodings and content types
    p("invalid UTF-8", b'{"rows": [{"amount": 1, "country": "\xff\xfe"}]}', 400, "UTF-8")
    p("UTF-16 with BOM", json.dumps({"rows": [ROW]}).encode("utf-16"), 400, "UTF-8")
    p("UTF-16-LE without BOM", json.dumps({"rows": [ROW]}).encode("utf-16-le"), 400)
    p("UTF-32", json.dumps({"rows": [ROW]}).encode("utf-32"), 400)
    p("UTF-8 BOM", b"\xef\xbb\xbf" + json.dumps({"rows": [ROW]}).encode(), 400, "byte order mark")
    p("text/plain content type, JSON body", {"rows": [ROW]}, None, content_type="text/plain")
    p("form content type", b"rows=1&x=2", 400, content_type="application/x-www-form-urlencoded")
    p("multipart body", b"--b\r\nContent-Disposition: form-data; name=rows\r\n\r\n1\r\n--b--", 400,
      content_type="multipart/form-data; boundary=b")
    p("no content type", {"rows": [ROW]}, None, content_type=None)
    p("NUL bytes", b'{"rows": [{"amount": 1, "country": "U\x00S"}]}', 400)
    p("escaped NUL in a string", b'{"rows": [{"amount": 1, "country": "U\\u0000S"}]}', 200)
    p("lone surrogate escape", b'{"rows": [{"amount": 1, "country": "\\ud800"}]}', None)
    p("emoji country", {"rows": [{"amount": 1, "country": "\U0001F600"}]}, 200)
    # predict: shapes and types
    p("empty body", b"", 400, "empty")
    p("whitespace body", b"   \n ", 400)
    p("null body", b"null", 422)
    p("list body", b"[]", 422)
    p("number body", b"123", 422)
    p("string body", b'"rows"', 422)
    p("truncated JSON", b'{"rows": [', 400, "not valid JSON")
    p("trailing garbage", b'{"rows": []} xyz', 400)
    p("rows null", {"rows": None}, 422)
    p("rows an object", {"rows": {"a": 1}}, 422)
    p("rows a list of numbers", {"rows": [1, 2]}, 422, "row 0")
    p("rows a list of lists", {"rows": [[1, "US"]]}, 422)
    p("rows with null", {"rows": [None]}, 422)
    p("unknown top-level field", {"rows": [ROW], "instances": [ROW]}, 422, "unknown request field")
    p("extra field in a row", {"rows": [{**ROW, "colour": "red"}]}, 422, "unexpected field")
    p("non-ASCII field name", {"rows": [{**ROW, "Größe": 1}]}, 422, "unexpected field")
    p("10 KB field name", {"rows": [{**ROW, "k" * 10_000: 1}]}, 422, "unexpected field")
    p("amount a string", {"rows": [{**ROW, "amount": "high"}]}, 422, "must be a number")
    p("amount a boolean", {"rows": [{**ROW, "amount": True}]}, 422, "must be a number")
    p("amount an object", {"rows": [{**ROW, "amount": {"v": 1}}]}, 422)
    p("country a number", {"rows": [{**ROW, "country": 5}]}, 422, "must be a string")
    p("duplicate keys", b'{"rows": [{"amount": 1, "amount": 2, "country": "US"}]}', 200)
    p("routing_key an object", {"rows": [ROW], "routing_key": {"a": 1}}, 422, "routing_key")
    p("routing_key a boolean", {"rows": [ROW], "routing_key": True}, 422, "routing_key")
    p("routing_key 10 KB", {"rows": [ROW], "routing_key": "k" * 10_000}, 422, "routing_key")
    p("version a word", {"rows": [ROW], "version": "latest"}, 422, "version")
    p("version negative", {"rows": [ROW], "version": -1}, 422, "version")
    p("version a float", {"rows": [ROW], "version": 1.5}, 422, "version")
    p("version not served", {"rows": [ROW], "version": 99}, 404, "no served version")
    p("version 10^400", b'{"rows": [{"amount": 1, "country": "US"}], "version": 1' + b"0" * 400 + b"}", 422)
    # predict: names and methods
    for name in ("nope", "%C3%B1and%C3%BA", "%E6%A8%A1%E5%9E%8B", "%F0%9F%98%80", "a" * 3000, "%00",
                 "%20", "fraud%0A", "fraud%27%20OR%201%3D1", "..%2F..%2Fetc"):
        p(f"model name {name[:24]}", {"rows": [ROW]}, 404, path=f"/v1/models/{name}/predict")
    p("GET on predict", None, 405, method="GET")
    p("DELETE on predict", None, 405, method="DELETE")
    p("path with a slash in the name", {"rows": [ROW]}, 404, path="/v1/models/a/b/predict")
    p("client X-Request-Id is not honoured", {"rows": [ROW]}, 200, headers={"X-Request-Id": "mine-1234567890"},
      check=lambda ans: ans["request_id"] != "mine-1234567890")
    p("admin X-Request-Id is honoured", {"rows": [ROW]}, 200,
      headers={**admin, "X-Request-Id": "trusted-1234567890"},
      check=lambda ans: ans["request_id"] == "trusted-1234567890")
    p("admin X-Request-Id with spaces", {"rows": [ROW]}, 400, "X-Request-Id",
      headers={**admin, "X-Request-Id": "has spaces"})

    # feedback
    rid = served_request(ll)
    rid2 = served_request(ll, rows=2)
    status, raw, _ = send(serve_port, "POST", PREDICT, {"rows": [ROW], "version": versions[1]})
    pinned = json.loads(raw)["request_id"]
    f("a request whose client pinned the version", {"request_id": pinned, "label": 1}, 409, "pinned")
    f("no token", {"request_id": rid, "label": 1}, 401, headers=None)
    f("wrong token", {"request_id": rid, "label": 1}, 401, headers={"Authorization": "Bearer nope"})
    f("a never-served request id", {"request_id": "0" * 32, "label": 1}, 404, "not answered")
    f("label not a class", {"request_id": rid, "label": 2}, 422, "classes are [0, 1]")
    f("label a string", {"request_id": rid, "label": "1"}, 422, "not a class")
    f("label a boolean", {"request_id": rid, "label": True}, 422)
    f("label an object", {"request_id": rid, "label": {"v": 1}}, 422, "one value")
    f("label a list", {"request_id": rid, "label": [1]}, 422)
    f("label null", {"request_id": rid, "label": None}, 422, "null")
    f("label NaN", b'{"request_id": "%s", "label": NaN}' % rid.encode(), 422, "NaN")
    f("label 1e309", b'{"request_id": "%s", "label": 1e309}' % rid.encode(), 422, "float64")
    f("label 10^400", b'{"request_id": "%s", "label": 1%s}' % (rid.encode(), b"0" * 400), 422, "float64")
    f("label 1e308", {"request_id": rid, "label": 1e308}, 422, "not a class")
    f("pinning a version", {"request_id": rid, "label": 1, "version": 2}, 400, "version")
    f("labels too few", {"request_id": rid2, "labels": [1]}, 400, "2 row(s)")
    f("labels too many", {"request_id": rid, "labels": [1] * (MAX_ROWS + 1)}, 413, f"limit is {MAX_ROWS}")
    f("labels empty", {"request_id": rid, "labels": []}, 400)
    f("labels a dict", {"request_id": rid, "labels": {"0": 1}}, 400)
    f("label and labels", {"request_id": rid, "label": 1, "labels": [1]}, 400, "exactly one")
    f("row out of range", {"request_id": rid, "label": 1, "row": 5}, 400, "1 row(s)")
    f("row negative", {"request_id": rid, "label": 1, "row": -1}, 400, "row")
    f("row a string", {"request_id": rid, "label": 1, "row": "0"}, 400, "row")
    f("request id a number", {"request_id": 12345, "label": 1}, 400, "request_id")
    f("request id empty", {"request_id": "", "label": 1}, 400, "request_id")
    f("request id with spaces", {"request_id": "a b", "label": 1}, 400, "request_id")
    f("request id 10 KB", {"request_id": "a" * 10_000, "label": 1}, 400, "request_id")
    f("request id non-ASCII", {"request_id": "ñandú", "label": 1}, 400, "request_id")
    f("unknown field", {"request_id": rid, "label": 1, "weight": 5}, 400, "unknown feedback field")
    f("body a list", [{"request_id": rid, "label": 1}], 400)
    f("100,000 nested brackets", nested(100_000), 400, "limit is 32")
    f("body over the limit", {"request_id": rid, "label": 1, "reason": big_string}, 413)
    f("invalid UTF-8", b'{"request_id": "\xff", "label": 1}', 400, "UTF-8")
    f("UTF-16", json.dumps({"request_id": rid, "label": 1}).encode("utf-16"), 400)
    f("empty body", b"", 400)
    f("the first label", {"request_id": rid, "label": 1}, 200,
      check=lambda ans: ans["rows"] == [0] and ans["corrected"] is False and ans["version"] == versions[0])
    f("a second label for the same row", {"request_id": rid, "label": 0}, 409, "correct")
    f("a correction without a token", {"request_id": rid, "label": 0}, 401, path="/v1/feedback/correct",
      headers=None)
    f("a correction with the feedback token", {"request_id": rid, "label": 0, "reason": "typo"}, 200,
      path="/v1/feedback/correct", check=lambda ans: ans["corrected"] is True)
    f("a correction that is not a class", {"request_id": rid, "label": 7}, 422, path="/v1/feedback/correct")
    f("a correction for a never-served id", {"request_id": "f" * 32, "label": 1}, 404,
      path="/v1/feedback/correct", headers=admin)
    f("labels for both rows", {"request_id": rid2, "labels": [0, 1]}, 200)
    f("then row 1 again", {"request_id": rid2, "label": 1, "row": 1}, 409)

    # admin: traffic payloads
    a("no token", {"weights": {"1": 100}}, 401, headers=None)
    a("wrong token", {"weights": {"1": 100}}, 401, headers={"Authorization": "Bearer wrong"})
    a("a feedback token is not an admin token", {"weights": {"1": 100}}, 401, headers=fbk)
    a("unknown version key", {"weights": {"abc": 100}}, 400, "abc")
    a("weight a word", {"weights": {"1": "lots"}}, 400, "lots")
    a("weights a list", {"weights": [100]}, 400, "weights must be an object")
    a("shadow a number", {"weights": {"1": 100}, "shadow": 5}, 400, "shadow")
    a("shadow of unknown versions", {"weights": {"1": 100}, "shadow": [42]}, 400, "not deployed")
    a("weight 1e309", b'{"weights": {"1": 1e309}}', 400, "float64")
    a("weight NaN", b'{"weights": {"1": NaN}}', 400, "NaN")
    a("weight Infinity", b'{"weights": {"1": Infinity, "2": 1}}', 400, "Infinity")
    a("weight 10^400", b'{"weights": {"1": 1' + b"0" * 400 + b"}}", 400, "float64")
    a("negative weight", {"weights": {"1": 100, "2": -5}}, 400, "negative")
    a("all weights zero", {"weights": {"1": 0, "2": 0}}, 400, "positive")
    a("no weights", {}, 400, "weights")
    a("weights null", {"weights": None}, 400, "weights")
    a("weight a boolean", {"weights": {"1": True}}, 400, "number")
    a("version not deployed", {"weights": {"42": 100}}, 400, "not deployed")
    a("sticky a word", {"weights": {"1": 100}, "sticky": "yes"}, 400, "sticky")
    a("unknown field", {"weights": {"1": 100}, "mode": "fast"}, 400, "unknown field")
    a("body a list", [100], 400, "object")
    a("body a string", b'"weights"', 400)
    a("100,000 nested brackets", nested(100_000), 400, "limit is 32")
    a("invalid UTF-8", b'{"weights": {"\xff": 1}}', 400, "UTF-8")
    a("non-ASCII model", {"weights": {"1": 100}}, 404, path="/v1/admin/models/%C3%B1and%C3%BA/traffic")
    a("model name with quotes", {"weights": {"1": 100}}, 404, path="/v1/admin/models/o%27brien/traffic")
    # admin: deploy, promote, rollback
    a("deploy weight a word", {"version": versions[1], "weight": "x"}, 400, "weight", path=DEPLOY, method="POST")
    a("deploy weight 1e309", b'{"version": 2, "weight": 1e309}', 400, "float64", path=DEPLOY, method="POST")
    a("deploy weight NaN", b'{"version": 2, "weight": NaN}', 400, path=DEPLOY, method="POST")
    a("deploy weight negative", {"version": versions[1], "weight": -1}, 400, "negative", path=DEPLOY,
      method="POST")
    a("deploy weight over 100", {"version": versions[1], "weight": 101}, 400, "0..100", path=DEPLOY,
      method="POST")
    a("deploy version a word", {"version": "abc"}, 400, "version", path=DEPLOY, method="POST")
    a("deploy version and alias", {"version": 1, "alias": "champion"}, 400, "not both", path=DEPLOY,
      method="POST")
    a("deploy alias an object", {"alias": {"a": 1}}, 400, "alias", path=DEPLOY, method="POST")
    a("deploy shadow a word", {"version": versions[1], "shadow": "yes"}, 400, "shadow", path=DEPLOY,
      method="POST")
    a("deploy unknown version", {"version": 99}, 404, path=DEPLOY, method="POST")
    a("deploy unknown alias", {"alias": "nope"}, 404, path=DEPLOY, method="POST")
    a("deploy to a non-ASCII model", {"version": 1}, 404, path="/v1/admin/models/%E6%A8%A1%E5%9E%8B/deploy",
      method="POST")
    a("promote version a word", {"version": "x"}, 400, path="/v1/admin/models/fraud/promote", method="POST")
    a("promote force a word", {"version": 1, "force": "yes"}, 400, "force",
      path="/v1/admin/models/fraud/promote", method="POST")
    a("promote version 10^400", b'{"version": 1' + b"0" * 400 + b"}", 400,
      path="/v1/admin/models/fraud/promote", method="POST")
    a("rollback with fields", {"to": 1}, 400, "no fields", path="/v1/admin/models/fraud/rollback", method="POST")
    a("GET on traffic", None, 405, method="GET")

    # the online store's HTTP endpoint
    o("no token", {"user_id": ["u1"]}, 401, headers=None)
    o("wrong token", {"user_id": ["u1"]}, 401, headers={"Authorization": "Bearer wrong"})
    o("a lookup", {"entities": [{"user_id": "u1"}]}, 200)
    o("unhashable entity key", {"entities": [{"user_id": {"a": 1}}]}, 400)
    o("list entity key", {"entities": [{"user_id": [1, 2]}]}, 400)
    o("key column of objects", {"user_id": [{"a": 1}]}, 400)
    o("NaN key", b'{"user_id": [NaN]}', None)
    o("10^400 key", b'{"user_id": [1' + b"0" * 400 + b"]}", None)
    o("missing key", {"entities": [{"customer": "u1"}]}, 400, "user_id")
    o("entities null", {"entities": None}, 400)
    o("body a number", b"42", 400)
    o("invalid JSON", b"{not json", 400, "JSON")
    o("invalid UTF-8", b'{"user_id": ["\xff"]}', 400)
    o("100,000 nested brackets", nested(100_000), 400)
    o("too many entities", {"user_id": [f"u{i}" for i in range(ll.config.online.max_entities + 1)]}, 413)
    o("body over the limit", {"user_id": ["u" * (ll.config.online.max_bytes + 10)]}, 413)
    o("unknown view", {"user_id": ["u1"]}, 404, path="/v1/features/nope")
    o("non-ASCII view", {"user_id": ["u1"]}, 404, path="/v1/features/%C3%B1and%C3%BA")
    return cases


def test_hostile_requests_get_a_2xx_or_a_4xx_with_a_message_and_serving_goes_on(platform):
    from ray import serve

    ll, versions = platform
    v1_app = f"lakeloop-fraud-v{versions[0]}"
    deployed_at = serve.status().applications[v1_app].last_deployed_time_s
    cases = hostile_cases(ll, versions)
    assert len(cases) >= 100, len(cases)
    wrong = []
    for name, port, method, path, body, headers, expected, needle, kw in cases:
        kw = dict(kw)
        check = kw.pop("check", None)
        if "raw" in kw:  # bytes as they are: header values no client library would send
            status, raw = raw_http(port, kw.pop("raw"))
        else:
            status, raw, _ = send(port, method, path, body, headers, **kw)
        answer = assert_sane(status, raw, name)
        if expected is not None and status != expected:
            wrong.append((name, expected, status, raw[:200]))
        elif needle is not None and needle not in json.dumps(answer, ensure_ascii=False):
            wrong.append((name, f"a message with {needle!r}", status, raw[:200]))
        elif check is not None and not check(answer):
            wrong.append((name, "the check", status, raw[:200]))
        predict_ok(ll)
    assert not wrong, "\n".join(map(str, wrong))
    # nothing the admin cases sent changed the traffic or restarted version 1
    listing = predict_ok(ll) and json.loads(send(ll.config.serve.port, "GET", "/v1/models")[1])
    traffic = listing["models"]["fraud"]["traffic"]
    assert traffic[str(versions[0])] == 100.0 and set(traffic.values()) <= {100.0, 0.0}, traffic
    assert serve.status().applications[v1_app].last_deployed_time_s == deployed_at


def test_feedback_corrections_replace_the_label_and_are_audited(platform):
    from lakeloop.monitoring import read_events
    from lakeloop.monitoring.metric import read_feedback

    ll, _ = platform
    port = ll.config.serve.port
    auth = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
    rid = served_request(ll)
    assert send(port, "POST", "/v1/feedback", {"request_id": rid, "label": 1}, auth)[0] == 200
    assert send(port, "POST", "/v1/feedback", {"request_id": rid, "label": 0}, auth)[0] == 409
    status, raw, _ = send(port, "POST", "/v1/feedback/correct", {"request_id": rid, "label": 0, "reason": "typo"},
                          auth)
    assert status == 200 and json.loads(raw)["corrected"] is True
    deadline = time.monotonic() + 60
    table = ll.lake.table("logs.feedback")
    while True:  # both labels reach the lake (the writer flushes every second)
        rows = table.to_pandas(filters=[("request_id", "=", rid)]) if table.exists() else []
        events = read_events(ll, "fraud", kinds=["feedback_corrected"])
        mine = events[events["details"].astype(str).str.contains(rid)] if len(events) else events
        if len(rows) == 2 and len(mine) == 1:
            break
        assert time.monotonic() < deadline, (rows, mine)
        time.sleep(0.3)
    labels = read_feedback(ll, [rid])  # what the live metric and the canary read
    assert len(labels) == 1 and labels.iloc[0]["label"] == "0"  # the correction replaced the label, not added
    assert "typo" in mine.iloc[0]["reason"]


def test_request_bodies_generated_from_the_openapi_schema_never_get_a_5xx(platform):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    ll, versions = platform
    port = ll.config.serve.port
    status, raw, _ = send(port, "GET", "/openapi.json", None)
    spec = json.loads(raw)
    routes = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            schema = (op.get("requestBody") or {}).get("content", {}).get("application/json", {}).get("schema")
            if schema is not None:
                routes.append((path, method.upper(), schema))
    described = {p for p, _, _ in routes}
    assert {"/v1/models/{name}/predict", "/v1/feedback", "/v1/feedback/correct", "/v1/admin/models/{name}/deploy",
            "/v1/admin/models/{name}/traffic", "/v1/admin/models/{name}/promote"} <= described, described
    tokens = {"admin": {"Authorization": f"Bearer {admin_token(ll)}"},
              "feedback": {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}, "none": {}}
    junk = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                   max_size=3), max_leaves=8)
    requests = st.one_of(*[
        st.tuples(st.just(path), st.just(method), st.one_of(from_schema(schema, junk), junk),
                  st.sampled_from(["fraud", "nope", "ñ"]), st.sampled_from(sorted(tokens)))
        for path, method, schema in routes])
    seen = []

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(requests)
    def check(request):
        path, method, body, name, token = request
        if "admin" in path and isinstance(body, dict) and body.get("version") not in (None, *versions):
            body = {**body, "version": versions[-1]}  # never start a replica for a version not yet deployed
        status, raw, _ = send(port, method, path.replace("{name}", quote(name)), body, tokens[token])
        assert_sane(status, raw, (path, body))
        seen.append(status)
        predict_ok(ll)

    check()
    assert any(200 <= s < 300 for s in seen) and any(400 <= s < 500 for s in seen), sorted(set(seen))
