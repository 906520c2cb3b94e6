"""The hello example's tests, run as a node runs it (dev mode by default, `--aleph-mode vm`
to boot the runtime image): `pytest examples/hello`. The `aleph_program` fixture starts the
test file's directory with `aleph-runtime run` once for the module."""


def test_plain_text(aleph_program):
    response = aleph_program.client.get("/some/where")
    assert response.status_code == 200
    assert response.text == "Hello from aleph-runtime! You asked for /some/where\n"


def test_json(aleph_program):
    answer = aleph_program.client.get("/json").json()
    assert answer["path"] == "/json"
    assert answer["python"].startswith("3.")


def test_the_access_log_shows_each_request(aleph_program):
    mark = aleph_program.mark()
    aleph_program.client.get("/logged")
    aleph_program.wait_for_output(r"GET /logged 200", after=mark)
