"""The FastAPI example's tests, run as a node runs it (dev mode by default, `--aleph-mode vm`
to boot the runtime image): `pytest examples/fastapi_app`. The program gets its persistent
volume as `aleph-runtime run` gives it when run without PATH."""

import pytest

pytestmark = pytest.mark.aleph_program(
    volumes=["mount=/var/lib/example,persistent=example"], env={"EXAMPLE_VOLUME": "/var/lib/example"}
)


def test_index(aleph_program):
    index = aleph_program.client.get("/").json()
    assert index["message"] == "Hello from aleph-runtime"
    assert len(index["vm_hash"]) == 64


def test_the_counter_persists_across_restarts(aleph_program):
    first = aleph_program.client.get("/counter").json()["counter"]
    assert aleph_program.client.get("/counter").json()["counter"] == first + 1
    aleph_program.restart()  # a fresh program, the same persistent volume
    assert aleph_program.client.get("/counter").json()["counter"] == first + 2
    assert aleph_program.client.get("/lifespan").json()["events"][-3:] == ["startup", "shutdown", "startup"]


def test_the_node_cache(aleph_program):
    assert aleph_program.client.get("/cache/set/colour/blue").json() is True
    assert aleph_program.client.get("/cache/get/colour").json() == {"key": "colour", "value": "blue"}


def test_an_aleph_message_reaches_on_event(aleph_program):
    answer = aleph_program.event({"hello": "world"})
    assert answer["handled"] is True and answer["type"] == "POST" and len(answer["item_hash"]) == 64


def test_an_exception_is_a_500_with_its_traceback(aleph_program):
    response = aleph_program.client.get("/raise")
    assert response.status_code == 500
    assert "This error is on purpose" in response.text
