"""The pytest plugin, run the way users run it: sample test files in a pytester directory.

The outer tests are plain functions: pytester starts pytest in a subprocess, which runs
its own trio (trio mode, from the ini file written here) and loads the plugin from its
``pytest11`` entry point, as an installed trioserve does.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TIMEOUT = 60

APPS = '''
import os
from pathlib import Path


async def hello(scope, receive, send):
    """Answers "hello"; writes "shutdown" to ./lifespan.txt at lifespan shutdown."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                Path("lifespan.txt").write_text("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


async def pid(scope, receive, send):
    """Answers with the pid of the process that served the request."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})


async def boom(scope, receive, send):
    """Fails every request."""
    if scope["type"] == "http":
        raise ValueError("boom")


async def echo(stream):
    """A raw TCP echo handler."""
    async for data in stream:
        await stream.send_all(data)
'''


@pytest.fixture
def samples(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester directory in trio mode with the sample apps in ``apps.py``."""
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(apps=APPS)
    return pytester


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=TIMEOUT)


def refused(port: int) -> bool:
    """Whether a connection to 127.0.0.1:port is refused (nothing listens there)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_server_fixture_serves_asgi_raw_tcp_and_unix_sockets(samples: pytest.Pytester) -> None:
    """trioserve_server serves an ASGI app to httpx, a raw TCP handler to a trio stream
    and an app on a unix socket; trioserve_client talks to any of the HTTP ones."""
    samples.makepyfile(
        test_samples="""
        import httpx
        import pytest
        import trio

        from apps import echo, hello
        from trioserve import Config, ConfigError
        from trioserve.testing import Server


        async def test_asgi_with_httpx(trioserve_server):
            server = await trioserve_server(hello)
            assert isinstance(server, Server)
            assert isinstance(server.config, Config) and server.config.workers == 0
            assert server.addresses == [("127.0.0.1", server.port)]
            assert server.url == f"http://127.0.0.1:{server.port}"
            assert server.ws_url == f"ws://127.0.0.1:{server.port}"
            async with httpx.AsyncClient() as client:
                response = await client.get(server.url + "/")
            assert response.text == "hello"


        async def test_raw_tcp_handler(trioserve_server):
            server = await trioserve_server(echo)
            assert server.url == f"tcp://127.0.0.1:{server.port}"
            async with await trio.open_tcp_stream(*server.addresses[0]) as stream:
                await stream.send_all(b"ping")
                assert await stream.receive_some() == b"ping"


        async def test_client_fixture(trioserve_server, trioserve_client):
            client = await trioserve_client(await trioserve_server(hello), timeout=5)
            assert isinstance(client, httpx.AsyncClient)
            assert (await client.get("/")).text == "hello"


        async def test_unix_socket(trioserve_server, trioserve_client):
            server = await trioserve_server(hello, unix=True)
            [path] = server.addresses
            assert server.url == f"unix:{path}"
            client = await trioserve_client(server)
            assert (await client.get("/")).text == "hello"


        async def test_bad_setting_is_a_config_error(trioserve_server):
            with pytest.raises(ConfigError, match="did you mean 'workers'"):
                await trioserve_server(hello, workerz=2)
            with pytest.raises(ConfigError, match="workers: expected an integer"):
                await trioserve_server(hello, workers=-1)
        """
    )
    result = run(samples)
    result.assert_outcomes(passed=5)


def test_two_servers_in_one_test_get_their_own_ports(samples: pytest.Pytester) -> None:
    """Two servers started by one test listen on different ports and both answer."""
    samples.makepyfile(
        test_two="""
        from apps import echo, hello


        async def test_two(trioserve_server, trioserve_client):
            first = await trioserve_server(hello)
            second = await trioserve_server(hello)
            third = await trioserve_server(echo)
            assert len({first.port, second.port, third.port}) == 3
            for server in (first, second):
                client = await trioserve_client(server)
                assert (await client.get("/")).text == "hello"
            async with await third.connect() as stream:
                await stream.send_all(b"ping")
                assert await stream.receive_some() == b"ping"
        """
    )
    run(samples).assert_outcomes(passed=1)


def test_teardown_stops_the_server_frees_the_port_and_runs_lifespan_shutdown(
    samples: pytest.Pytester,
) -> None:
    """After the test, the port refuses connections, the unix socket file is gone and
    the app's lifespan shutdown ran; even when the test failed."""
    samples.makepyfile(
        test_teardown="""
        from pathlib import Path

        from apps import hello


        async def test_record_the_port(trioserve_server):
            server = await trioserve_server(hello)
            Path("port.txt").write_text(str(server.port))
            unix = await trioserve_server(hello, unix=True)
            Path("socket.txt").write_text(unix.addresses[0])
            assert Path(unix.addresses[0]).exists()
            assert not Path("lifespan.txt").exists()


        async def test_failing_test_too(trioserve_server):
            server = await trioserve_server(hello)
            Path("port2.txt").write_text(str(server.port))
            assert False, "the test fails"
        """
    )
    run(samples).assert_outcomes(passed=1, failed=1)
    assert refused(int((samples.path / "port.txt").read_text()))
    assert refused(int((samples.path / "port2.txt").read_text()))
    assert not Path((samples.path / "socket.txt").read_text()).exists()
    assert (samples.path / "lifespan.txt").read_text() == "shutdown"


def test_an_app_that_raises_fails_the_test_with_its_traceback(samples: pytest.Pytester) -> None:
    """An exception trioserve logged (the app raised, the client got a 500) fails the test
    at teardown as ServerErrorLogged, with the app's traceback; take_errors() expects it."""
    samples.makepyfile(
        test_boom="""
        from apps import boom


        async def test_boom(trioserve_server, trioserve_client):
            client = await trioserve_client(await trioserve_server(boom))
            assert (await client.get("/")).status_code == 500


        async def test_boom_expected(trioserve_server, trioserve_client):
            server = await trioserve_server(boom)
            client = await trioserve_client(server)
            assert (await client.get("/")).status_code == 500
            [record] = server.take_errors()
            assert "exception in ASGI app" in record.getMessage()
            assert isinstance(record.exc_info[1], ValueError)
        """
    )
    result = run(samples)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            '*apps.py", line *, in boom',
            '*raise ValueError("boom")',
            "*ValueError: boom",
            "*direct cause*",
            "*ServerErrorLogged: trioserve logged 1 error while serving*",
            "*exception in ASGI app while serving GET / ?ValueError: boom?",
            "FAILED test_boom.py::test_boom - *",
        ]
    )


def test_process_fixture_runs_the_cli_with_workers(samples: pytest.Pytester) -> None:
    """trioserve_process runs `python -m trioserve` with --workers 2: the URL comes from
    its ready line, worker_pids() lists the workers that answer, stop() exits 0."""
    samples.makepyfile(
        test_process="""
        import signal

        from trioserve.testing import ServerProcess


        async def test_workers(trioserve_process, trioserve_client):
            proc = await trioserve_process("apps:pid", "--workers", "2")
            assert isinstance(proc, ServerProcess)
            assert proc.url == f"http://127.0.0.1:{proc.port}"
            assert any(proc.url in line for line in proc.lines)
            workers = proc.worker_pids()
            assert len(workers) == 2
            client = await trioserve_client(proc, headers={"connection": "close"})
            assert int((await client.get("/")).text) in workers
            proc.send_signal(signal.SIGTTOU)
            assert await proc.wait_for_line("workers: 2 -> 1")
            assert await proc.stop() == 0
            assert proc.returncode == 0
            assert proc.worker_pids() == []


        async def test_not_ready(trioserve_process):
            proc = await trioserve_process("apps:missing", ready=False)
            assert await proc.wait() == 4
            assert "has no attribute 'missing'" in await proc.wait_for_line("error")
        """
    )
    run(samples).assert_outcomes(passed=2)


def test_process_fixture_stops_and_reaps_after_a_failing_test(samples: pytest.Pytester) -> None:
    """A process the test left running is stopped and reaped at teardown, workers
    included, though the test failed."""
    samples.makepyfile(
        test_left_running="""
        from pathlib import Path


        async def test_fails(trioserve_process):
            proc = await trioserve_process("apps:hello", "--workers", "1")
            pids = [proc.pid, *proc.worker_pids()]
            Path("pids.txt").write_text(" ".join(map(str, pids)))
            Path("port.txt").write_text(str(proc.port))
            raise RuntimeError("the test fails")
        """
    )
    run(samples).assert_outcomes(failed=1)
    pids = [int(pid) for pid in (samples.path / "pids.txt").read_text().split()]
    assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert refused(int((samples.path / "port.txt").read_text()))


def test_client_fixture_without_httpx_fails_saying_so(samples: pytest.Pytester) -> None:
    """Without httpx, a test using trioserve_client fails with "httpx is not installed"."""
    samples.makeconftest("import sys\n\nsys.modules['httpx'] = None\n")
    samples.makepyfile(
        test_no_httpx="""
        async def test_client(trioserve_client):
            pass
        """
    )
    result = run(samples)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*trioserve_client: httpx is not installed*"])
