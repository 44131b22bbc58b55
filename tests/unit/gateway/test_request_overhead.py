"""The single-telegram path's cheap forms keep the behaviour of what they replaced: the
hand-formatted request id, memoised metric series, the withheld counts, the shared encoder, the
log records without caller frames."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import re
import uuid
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter

from consent.levels import Granularity
from gateway import metrics
from gateway.api.client_address import address_text, parse_address
from gateway.api.middleware import new_request_id
from gateway.cli.serve import _LOG_ENCODER, JsonFormatter, _timestamp, configure_logging
from gateway.ingest.best_cache import BestCache
from gateway.ingest.consent_index import ConsentIndex
from gateway.ingest.pipeline import EPOCHS_MAX, IngestPipeline, IngestResult
from gateway.jsonenc import dumps, json_default

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_request_ids_are_canonical_random_uuid4s() -> None:
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for rid in ids:
        assert UUID4.fullmatch(rid), rid
        parsed = uuid.UUID(rid)
        assert str(parsed) == rid and parsed.version == 4 and parsed.variant == uuid.RFC_4122
    # every variant digit and every digit of a random position turn up: the bits are random
    assert {rid[19] for rid in ids} == set("89ab")
    assert {rid[0] for rid in ids} == set("0123456789abcdef")


def test_a_forked_child_draws_its_own_request_ids() -> None:
    # the random digits are drawn for many ids at once; a worker forked after its parent drew
    # them must not hand out the parent's next ids
    new_request_id()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id to the parent, then out without pytest's teardown
        os.write(write_end, new_request_id().encode())
        os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        child_id = pipe.read()
    assert UUID4.fullmatch(child_id)
    assert child_id != new_request_id()


def test_children_are_prometheus_own_series() -> None:
    registry = CollectorRegistry()
    counter = PromCounter("t_total", "test", ["reason"], registry=registry)
    by = metrics.Children(counter)
    assert by("a") is by("a") is counter.labels("a")
    by("a").inc()
    by("a").inc(2)
    counter.labels("b").inc()
    assert registry.get_sample_value("t_total", {"reason": "a"}) == 3
    assert by("b") is counter.labels("b")


def test_children_stop_memoising_past_the_bound() -> None:
    registry = CollectorRegistry()
    counter = PromCounter("u_total", "test", ["reason"], registry=registry)
    by = metrics.Children(counter)
    for i in range(metrics.Children.MAX + 5):
        by(str(i)).inc()
    assert len(by._children) == metrics.Children.MAX
    assert registry.get_sample_value("u_total", {"reason": str(metrics.Children.MAX + 4)}) == 1


def _withheld_by_rule(depths: list[list[int]]) -> dict[Granularity, int]:
    """The rule spelt out: a reading at depth d is withheld from each granularity past d."""
    out: Counter[Granularity] = Counter()
    for interval, counts in zip((Granularity.PT15M, Granularity.PT1H), depths, strict=True):
        for depth, count in enumerate(counts):
            for granularity in (Granularity.P1M, Granularity.P1D, interval)[depth:]:
                out[granularity] += count
    return {g: n for g, n in out.items() if n}


def test_withheld_counts_follow_the_depth_rule() -> None:
    cases = [
        [[0, 0, 0, 0], [0, 0, 0, 0]],
        [[0, 0, 0, 7], [0, 0, 0, 3]],
        [[1, 0, 0, 0], [0, 0, 0, 0]],
        [[0, 2, 0, 5], [0, 0, 4, 1]],
        [[3, 1, 2, 9], [1, 2, 3, 4]],
    ]
    for depths in cases:
        result = IngestResult(depths=[list(d) for d in depths])
        assert result.withheld == _withheld_by_rule(depths), depths


def test_shared_encoder_matches_json_dumps() -> None:
    value = {
        "at": dt.datetime(2026, 3, 29, 1, 30, tzinfo=dt.UTC),
        "id": uuid.UUID(int=5),
        "ids": frozenset({"b", "a"}),
        "text": "é\u2028",
        "n": [1, 2.5, None, True],
    }
    assert dumps(value) == json.dumps(value, default=json_default)
    # the ingest handler's pre-formatted common answer is what the encoder would write
    for accepted in (1, 100):
        answer = b'{"accepted": %d, "rejected": []}' % accepted
        assert answer == dumps({"accepted": accepted, "rejected": []}).encode()


def test_pipeline_epochs_are_the_timestamps_and_bounded() -> None:
    pipeline = IngestPipeline(ConsentIndex(), BestCache())
    base = dt.datetime(2026, 10, 25, 0, 0, tzinfo=dt.UTC)
    for i in range(EPOCHS_MAX + 10):
        t = base + dt.timedelta(seconds=7 * i)
        assert pipeline._epoch(t) == int(t.timestamp())
    assert 0 < len(pipeline._epochs) <= EPOCHS_MAX
    # an equal instant in another zone is the same key and the same seconds
    amsterdam = base.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert pipeline._epochs.get(amsterdam, pipeline._epoch(amsterdam)) == int(base.timestamp())


def test_logging_collects_no_caller_frame_and_lines_stay_the_same(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``configure_logging`` turns off what no JSON line shows (the caller's frame, thread and
    process names), and a line keeps every field it had."""
    for name in ("_srcfile", "logThreads", "logProcesses", "logMultiprocessing"):
        monkeypatch.setattr(logging, name, getattr(logging, name))
    if hasattr(logging, "logAsyncioTasks"):
        monkeypatch.setattr(logging, "logAsyncioTasks", logging.logAsyncioTasks)
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    configure_logging("info")
    root.addHandler(Keep())
    logging.getLogger("gateway.access").info("request", extra={"status": 200, "route": "/x"})
    (record,) = records
    caller = (record.pathname, record.lineno, record.funcName)
    assert caller == ("(unknown file)", 0, "(unknown function)")
    assert record.threadName is None and record.processName is None
    (line,) = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry.pop("ts")
    assert entry == {
        "level": "INFO",
        "logger": "gateway.access",
        "msg": "request",
        "status": 200,
        "route": "/x",
    }


def _access_record(**fields: object) -> logging.LogRecord:
    """A record as the metrics middleware's ``access_log.info("request", extra=...)`` makes."""
    logger = logging.getLogger("gateway.access")
    return logger.makeRecord(logger.name, logging.INFO, "", 0, "request", (), None, extra=fields)


ACCESS = {
    "method": "POST",
    "route": "/v1/admin/meters/{ean}",
    "status": 200,
    "duration_ms": 0.41,
    "request_id": "0b1c6f0e-1d2a-4c5b-9e7f-0123456789ab",
    "client": "2001:db8::1",
}


@pytest.mark.parametrize(
    "fields",
    [
        ACCESS,
        {**ACCESS, "client": None, "duration_ms": 1234.5, "status": 499},
        # text the encoder escapes: quotes, backslashes, control and non-ASCII characters
        {**ACCESS, "method": 'GE"T\\', "route": "/é\n\t\x00"},
    ],
)
def test_access_lines_are_what_the_general_path_writes(fields: dict[str, object]) -> None:
    formatter = JsonFormatter()
    record = _access_record(**fields)
    line = formatter.format(record)
    assert formatter._access_line(record) == line  # the short path wrote it
    entry = json.loads(line)
    assert entry.pop("ts") == dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat()
    assert entry == {"level": "INFO", "logger": "gateway.access", "msg": "request", **fields}
    # the same text, byte for byte, as the general encoder's for the same fields in this order
    assert line == _LOG_ENCODER.encode(json.loads(line))


@pytest.mark.parametrize(
    "record",
    [
        _access_record(**{**ACCESS, "extra_field": 1}),  # more than the access fields
        _access_record(**{k: v for k, v in ACCESS.items() if k != "client"}),  # fewer
        _access_record(**{**ACCESS, "status": "200"}),  # another type
        _access_record(**{**ACCESS, "duration_ms": float("nan")}),  # not finite
        _access_record(**{**ACCESS, "client": ("127.0.0.1",)}),  # not text
    ],
)
def test_other_access_records_take_the_general_path(record: logging.LogRecord) -> None:
    formatter = JsonFormatter()
    assert formatter._access_line(record) is None
    extras = {k: v for k, v in record.__dict__.items() if k not in JsonFormatter._STANDARD}
    head = {
        "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(),
        "level": "INFO",
        "logger": "gateway.access",
        "msg": "request",
    }
    assert formatter.format(record) == _LOG_ENCODER.encode({**head, **extras})


def test_client_address_text_is_the_addresses_own_and_remembered() -> None:
    for text in ("127.0.0.1", "2001:0db8:0000:0000:0000:0000:0000:0001", "::ffff:192.0.2.7"):
        address = parse_address(text)
        assert address is not None
        assert address_text(address) == str(address)
        assert address_text(address) is address_text(address)  # built once
    v6 = parse_address("2001:0db8:0000:0000:0000:0000:0000:0001")
    mapped = parse_address("::ffff:192.0.2.7")
    assert v6 is not None and mapped is not None
    assert (address_text(v6), address_text(mapped)) == ("2001:db8::1", "192.0.2.7")


def test_log_times_are_what_datetime_writes() -> None:
    # the text of datetime.fromtimestamp(created, UTC).isoformat(), its rounding included:
    # whole seconds (no fraction), halves of a microsecond, a fraction that rounds up into the
    # next second, and a sample of times from 1970 to 2096
    rng = random.Random(14)
    edges = [0.5, 1.0, 86399.9999999, 1796000000.0, 1796000000.5]
    edges += [1796000000 + f for f in (0.0000004, 0.0000005, 0.0000015, 0.9999995, 0.9999996)]
    sample = [rng.uniform(0, 4e9) for _ in range(20_000)]
    sample += [1796000000 + rng.randrange(10**6) / 1e6 for _ in range(20_000)]
    record = logging.makeLogRecord({})
    for created in edges + sample:
        record.created = created
        expected = dt.datetime.fromtimestamp(created, dt.UTC).isoformat()
        assert _timestamp(record) == expected, created
