"""--metrics-bind without processes: the Counts message, the counts of one process, the
master's sums over replaced workers, the exposition parsed back, the accept queue."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from trioserve import Config
from trioserve._hooks import ExitReason
from trioserve._metrics import (
    DURATION_BUCKETS,
    MAIN_APP,
    MasterCounts,
    ProcessCounts,
    Sample,
    Totals,
    WorkerSample,
    accept_queue,
)
from trioserve._metrics_server import exposition, registry_for
from trioserve._proto.channel import TO_MASTER, ChannelError, Counts, Decoder, encode
from trioserve._state import ServerState


def _counts(requests: int, *, status: int = 200, open_http: int = 0, in_flight: int = 0) -> Counts:
    counts = ProcessCounts()
    for _ in range(requests):
        counts.request("GET", status, 10, 0.003)
    counts.open["http"] = open_http
    message = counts.counts(None)
    return Counts(
        requests=message.requests,
        durations=message.durations,
        duration_sum=message.duration_sum,
        body_bytes=message.body_bytes,
        rejected=((413, 1),),
        connections=message.connections,
        in_flight=in_flight,
        logs=message.logs,
    )


def test_counts_message_round_trips_over_the_channel() -> None:
    """A Counts message decodes to an equal message, whatever the split of its bytes."""
    message = _counts(3, open_http=2, in_flight=1)
    data = encode(message)
    decoder = Decoder(TO_MASTER)
    assert decoder.feed(data[:17]) == []
    assert decoder.feed(data[17:]) == [message]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("requests", [["GET", "2", 1]]),
        ("requests", [["GET", 2]]),
        ("durations", [1, True]),
        ("duration_sum", "1.5"),
        ("body_bytes", 1.5),
        ("rejected", [[413, 1, 2]]),
        ("in_flight", None),
    ],
)
def test_counts_message_with_a_bad_field_is_refused(field: str, value: object) -> None:
    """A Counts line with a field of the wrong shape is a broken channel, not a crash."""
    raw = json.loads(encode(_counts(1)))
    raw[field] = value
    with pytest.raises(ChannelError, match="bad 'metrics' message"):
        Decoder(TO_MASTER).feed(json.dumps(raw).encode() + b"\n")


def test_process_counts_bucket_method_and_state() -> None:
    """A request lands in the first bucket whose bound it does not exceed; unknown
    methods count as OTHER; rejections and in-flight come from the server state."""
    counts = ProcessCounts()
    counts.request("GET", 204, 5, DURATION_BUCKETS[0])
    counts.request("BREW", 418, 0, 0.2)
    counts.request("GET", 200, 7, 99.0)
    state = ServerState(Config())
    state.active_requests = 2
    state.reject(431)
    state.reject(431)
    message = counts.counts(state)
    assert dict(((m, c), n) for m, c, n in message.requests) == {("GET", 2): 2, ("OTHER", 4): 1}
    assert message.durations[0] == 1
    assert message.durations[DURATION_BUCKETS.index(0.25)] == 1
    assert message.durations[-1] == 1  # +Inf
    assert message.body_bytes == 12
    assert message.rejected == ((431, 2),)
    assert message.in_flight == 2


def test_master_keeps_the_counts_of_a_replaced_worker() -> None:
    """A worker's last report stays in the totals after it exits (SIGKILL included); its
    replacement's reports add to them; gauges count only live workers."""
    master = MasterCounts()
    master.report(MAIN_APP, 0, 100, _counts(5, open_http=3, in_flight=1))
    master.report(MAIN_APP, 1, 101, _counts(2, open_http=1))
    master.report(MAIN_APP, 0, 100, _counts(7, open_http=3, in_flight=1))  # cumulative
    master.exited(100)
    master.report(MAIN_APP, 0, 102, _counts(4, open_http=2))
    master.restarted(MAIN_APP, ExitReason.CRASH)
    totals = master.totals([MAIN_APP])[MAIN_APP]
    assert totals.requests == {("GET", 2): 7 + 2 + 4}
    assert sum(totals.durations) == 13
    assert totals.body_bytes == 130
    assert totals.rejected == {413: 3}
    assert totals.open["http"] == 1 + 2  # the dead worker's 3 are gone
    assert totals.in_flight == 0
    # The totals are computed afresh: asking twice does not add twice.
    assert master.totals([MAIN_APP])[MAIN_APP].requests == {("GET", 2): 13}
    assert master.restarts == {(MAIN_APP, ExitReason.CRASH): 1}


def _sample() -> Sample:
    master = MasterCounts()
    master.report("web", 0, 100, _counts(5, open_http=2, in_flight=1))
    master.report("web", 1, 101, _counts(3, status=404))
    master.exited(101)
    master.restarted("web", ExitReason.MAX_REQUESTS)
    return Sample(
        apps=master.totals(["web"]),
        restarts=dict(master.restarts),
        workers={"web": 2},
        processes=[WorkerSample("web", 0, 100, 4096, 0.25)],
        listeners=[],
        master_logs={"warning": 1},
    )


def _values(families: object) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in families  # type: ignore[attr-defined]
        for sample in family.samples
    }


def test_text_exposition_parses_back() -> None:
    """The Prometheus text format parses with prometheus_client's parser and says what
    the master summed."""
    body, content_type = exposition(registry_for(_sample), "")
    assert content_type.startswith("text/plain")
    values = _values(text_string_to_metric_families(body.decode()))
    assert (
        values["trioserve_requests_total", (("app", "web"), ("method", "GET"), ("status", "2xx"))]
        == 5
    )
    assert (
        values["trioserve_requests_total", (("app", "web"), ("method", "GET"), ("status", "4xx"))]
        == 3
    )
    assert values["trioserve_request_duration_seconds_count", (("app", "web"),)] == 8
    assert (
        values["trioserve_request_duration_seconds_bucket", (("app", "web"), ("le", "0.005"))] == 8
    )
    assert values["trioserve_requests_in_flight", (("app", "web"),)] == 1
    assert values["trioserve_connections_open", (("app", "web"), ("kind", "http"))] == 2
    rejected = (("app", "web"), ("reason", "body_too_large"), ("status", "413"))
    assert values["trioserve_request_rejections_total", rejected] == 2
    cause = (("app", "web"), ("cause", "max_requests"))
    assert values["trioserve_worker_restarts_total", cause] == 1
    assert values["trioserve_worker_restarts_total", (("app", "web"), ("cause", "memory"))] == 0
    worker = (("app", "web"), ("worker", "0"))
    assert values["trioserve_worker_resident_memory_bytes", worker] == 4096
    assert values["trioserve_worker_heartbeat_age_seconds", worker] == 0.25
    assert values["trioserve_log_messages_total", (("level", "warning"),)] == 1


def test_openmetrics_when_the_accept_header_asks() -> None:
    """Accept: application/openmetrics-text gets OpenMetrics, which its parser reads."""
    accept = "application/openmetrics-text; version=1.0.0,text/plain;q=0.5"
    body, content_type = exposition(registry_for(_sample), accept)
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
    values = _values(openmetrics_families(body.decode()))  # type: ignore[no-untyped-call]
    assert (
        values["trioserve_requests_total", (("app", "web"), ("method", "GET"), ("status", "2xx"))]
        == 5
    )


def test_totals_skip_durations_of_another_bucket_layout() -> None:
    """A report whose histogram has other buckets is not mixed into the sums."""
    totals = Totals()
    odd = _counts(1)
    totals.add(
        Counts(
            requests=odd.requests,
            durations=(1, 2),
            duration_sum=9.0,
            body_bytes=0,
            rejected=(),
            connections=(),
            in_flight=0,
            logs=(),
        ),
        live=True,
    )
    assert sum(totals.durations) == 0 and totals.duration_sum == 0.0


@pytest.mark.skipif(not hasattr(socket, "TCP_INFO"), reason="TCP_INFO is Linux's")
def test_accept_queue_of_a_listening_socket() -> None:
    """TCP_INFO on a listening socket gives the connections waiting and the backlog."""
    with socket.create_server(("127.0.0.1", 0), backlog=7) as server:
        assert accept_queue(server) == (0, 7)
        clients = [socket.create_connection(server.getsockname()) for _ in range(2)]
        try:
            assert accept_queue(server) == (2, 7)
        finally:
            for client in clients:
                client.close()
    with socket.socket() as unbound:
        assert accept_queue(unbound) is None


def test_the_metrics_page_lists_exactly_the_metrics_served() -> None:
    """docs/metrics.md's table names every metric family a scrape has, and no other."""
    page = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    listed = set(re.findall(r"^\| `(trioserve_\w+)` \|", page, re.M))
    served = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in text_string_to_metric_families(
            exposition(registry_for(_sample), "")[0].decode()
        )
    }
    assert listed == served
