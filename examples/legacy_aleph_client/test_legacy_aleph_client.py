"""The legacy aleph_client example's tests (what needs no network): `pytest
examples/legacy_aleph_client`."""


def test_index(aleph_program):
    assert aleph_program.client.get("/").json()["message"] == "Hello from the legacy aleph_client API"


def test_the_node_cache(aleph_program):
    assert aleph_program.client.get("/cache").json() == {"value": "value", "after_delete": None}


def test_an_aleph_message_reaches_the_legacy_event_handler(aleph_program):
    assert aleph_program.event({"hello": "world"}) == {"result": "Good"}
