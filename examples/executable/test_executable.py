"""The executable example's tests (run.sh serving HTTP on 127.0.0.1:8080): `pytest
examples/executable`. In dev mode the program listens on this machine's port 8080 itself,
so nothing else may hold it while these run."""


def test_get(aleph_program):
    response = aleph_program.client.get("/some/where")
    assert response.status_code == 200
    assert response.text == "Hello from an executable program! path=/some/where\n"


def test_post_echoes_the_body(aleph_program):
    response = aleph_program.client.post("/echo", content=b"ping")
    assert response.status_code == 200
    assert response.content == b"echo: ping"
