"""Issue 22, second red-team pass: each test fails on the code before the fix."""

from __future__ import annotations

import json
import socket
import time

from test_web import client, make_session, served

from budgetsft.sessions.ledger import Ledger


def _raw_post_in_two_parts(url: str, token: str, body: dict, between) -> dict:
    """POST /api/answer: send the headers, call ``between()``, then send the body; return the JSON reply."""
    host, port = url.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    head = (f"POST /api/answer HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head)
        time.sleep(0.3)  # the server has read the headers and authenticated the token
        between()
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    return {"status": status, **json.loads(reply.split(b"\r\n\r\n", 1)[1] or b"{}")}


def test_h1_a_revoke_stops_a_request_already_in_flight(tmp_path):
    path = tmp_path / "s.db"
    tokens = make_session(path, annotators={"alice": 1.0, "mallory": 1.0})
    with served(path) as live, client(live, tokens["mallory"]) as mallory:
        item = mallory.get("/api/next").json()

        def revoke():
            with Ledger.open(path) as led:
                led.revoke_annotator("mallory")

        reply = _raw_post_in_two_parts(live.url, tokens["mallory"], {"query_id": item["query_id"], "label": 0},
                                       revoke)
    assert reply["status"] == 401 and "revoked" in reply["error"]
    with Ledger.open(path) as led:
        assert led.answers() == [] and led.spent() == 0


def test_h1_a_rotated_token_stops_a_request_already_in_flight(tmp_path):
    path = tmp_path / "s.db"
    tokens = make_session(path, annotators={"alice": 1.0})
    with served(path) as live, client(live, tokens["alice"]) as alice:
        item = alice.get("/api/next").json()

        def rotate():
            with Ledger.open(path) as led:
                led.rotate_token("alice")

        reply = _raw_post_in_two_parts(live.url, tokens["alice"], {"query_id": item["query_id"], "label": 0},
                                       rotate)
    assert reply["status"] == 401
    with Ledger.open(path) as led:
        assert led.answers() == []


def test_h1_an_unrevoked_request_in_two_parts_is_recorded(tmp_path):
    path = tmp_path / "s.db"
    tokens = make_session(path, annotators={"alice": 1.0})
    with served(path) as live, client(live, tokens["alice"]) as alice:
        item = alice.get("/api/next").json()
        reply = _raw_post_in_two_parts(live.url, tokens["alice"], {"query_id": item["query_id"], "label": 0},
                                       lambda: None)
    assert reply["status"] == 200 and reply["recorded"] is True
