"""The agent in this process: handshake, validation, sessions, streams, limits, refusal."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import _attach_targets as targets
import pytest
from attach_helpers import TIMEOUT, Raw

import pyprobes
from pyprobes.attach import server, session, stream
from pyprobes.attach.protocol import MAX_LINE, MAX_SPECS_PER_MESSAGE
from pyprobes.attach.server import Agent, peer_allowed, peer_credentials
from pyprobes.output.event_queue import EventQueue

HOT = "_attach_targets:hot"


@pytest.fixture
def agent(runtime: Path) -> Iterator[Agent]:
    a = Agent(runtime / "pyprobes")
    a.start()
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def raw(agent: Agent) -> Iterator[Raw]:
    assert agent.path is not None
    r = Raw(agent.path)
    try:
        yield r
    finally:
        r.close()


def greeted(agent: Agent) -> Raw:
    assert agent.path is not None
    r = Raw(agent.path)
    welcome = r.hello()
    assert welcome["type"] == "welcome", welcome
    return r


def wait_for(pred: object, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_socket_file_and_threads(agent: Agent, runtime: Path) -> None:
    path = agent.path
    assert path == runtime / "pyprobes" / f"{os.getpid()}.sock"
    assert (path.stat().st_mode & 0o777) == 0o600
    assert (path.parent.stat().st_mode & 0o777) == 0o700
    names = {t.name: t for t in threading.enumerate()}
    assert names["pyprobes-agent"].daemon
    r = greeted(agent)
    try:
        names = {t.name: t for t in threading.enumerate()}
        client_threads = [n for n in names if n.startswith("pyprobes-agent-client-")]
        assert sorted(client_threads) == ["pyprobes-agent-client-1", "pyprobes-agent-client-1-send"]
        assert all(names[n].daemon for n in client_threads)
    finally:
        r.close()
    wait_for(lambda: not agent.clients())


def test_welcome_says_who_the_process_is(raw: Raw) -> None:
    w = raw.hello()
    assert w["type"] == "welcome" and w["version"] == 1
    assert w["pid"] == os.getpid() and w["uid"] == os.geteuid()
    assert w["python"] == ".".join(map(str, sys.version_info[:3]))
    assert w["pyprobes"] == pyprobes.__version__
    assert w["client"] == 1 and w["clients"] == 0 and w["probes"] == 0
    assert isinstance(w["argv"], list)


def test_hello_comes_first_and_versions_must_match(agent: Agent, raw: Raw) -> None:
    err = raw.request("ping", id=1)
    assert err["type"] == "error" and err["code"] == "handshake" and err["re"] == 1
    err = raw.hello(version=99)
    assert err["code"] == "version" and "speaks version 1" in str(err["message"])
    assert raw.message() is None  # closed after a version mismatch
    r = greeted(agent)  # the agent serves on
    try:
        assert r.request("ping", id=7) == {"type": "ok", "re": 7}
        err = r.request("hello", version=1)
        assert err["code"] == "handshake"
    finally:
        r.close()


BAD = [
    (b"\x00\xff\xfe garbage\n", "bad-json"),
    (b'{"type": "add", "specs": [\n', "bad-json"),
    (b'{"type": "ping", "id": NaN}\n', "bad-json"),
    (b"[" * 5000 + b"\n", "bad-json"),
    (b'{"type": "ping", "id": ' + b"1" * 5000 + b"}\n", "bad-json"),
    (b"[1, 2]\n", "bad-message"),
    (b'{"id": 3}\n', "bad-message"),
    (b'{"type": "shutdown", "id": 3}\n', "unknown-type"),
    (b'{"type": "add", "id": 4}\n', "bad-message"),
    (b'{"type": "add", "id": 4, "specs": "p json:loads"}\n', "bad-message"),
    (b'{"type": "add", "id": 4, "specs": []}\n', "bad-message"),
    (b'{"type": "add", "id": 4, "specs": [1]}\n', "bad-message"),
    (b'{"type": "add", "id": 4, "specs": ["p json:loads"], "code": "x"}\n', "bad-message"),
    (b'{"type": "remove", "id": 5, "handles": [-1]}\n', "bad-message"),
    (b'{"type": "remove", "id": 5, "handles": [true]}\n', "bad-message"),
    (b'{"type": "ping", "id": -1}\n', "bad-message"),
    (b'{"type": "add", "id": 6, "specs": ["p:bad event json:loads"]}\n', "bad-spec"),
    (b'{"type": "add", "id": 6, "specs": ["p json:loads if __import__(1)"]}\n', "bad-spec"),
    (b'{"type": "add", "id": 6, "specs": ["p no_such_module_x:f"]}\n', "probe-error"),
    (b'{"type": "add", "id": 6, "specs": ["p json:no_such_function"]}\n', "probe-error"),
    (
        b'{"type": "add", "id": 6, "specs": ["p pyprobes.engine.registry:_register"]}\n',
        "probe-error",
    ),
    (b'{"type": "remove", "id": 7, "handles": [12]}\n', "no-such-probe"),
    (b'{"type": "enable", "id": 7, "handles": [1]}\n', "no-such-probe"),
]


def test_every_bad_message_gets_an_error_and_changes_nothing(agent: Agent) -> None:
    r = greeted(agent)
    try:
        for line, code in BAD:
            r.send_bytes(line)
            err = r.reply()
            assert err["type"] == "error", (line, err)
            assert err["code"] == code, (line, err)
            assert isinstance(err["message"], str) and err["message"]
            assert pyprobes.registered_probes() == []
        # an id is echoed when the message had one
        r.send_bytes(b'{"type": "shutdown", "id": 41}\n')
        assert r.reply()["re"] == 41
        # a huge line: one error, the rest of the line skipped, the next line served
        r.send_bytes(b'{"type": "ping", "pad": "' + b"x" * (3 * MAX_LINE))
        r.send_bytes(b'"}\n{"type": "ping", "id": 9}\n')
        err = r.reply()
        assert err["code"] == "too-large"
        assert r.reply() == {"type": "ok", "re": 9}
        # too many specs in one message
        many = ["p json:loads"] * (MAX_SPECS_PER_MESSAGE + 1)
        assert r.request("add", id=10, specs=many)["code"] == "limit"
        assert r.request("list", id=11)["probes"] == []
        assert r.request("ping", id=12)["type"] == "ok"
    finally:
        r.close()


def test_all_or_none_and_events_only_to_their_owner(agent: Agent) -> None:
    a = greeted(agent)
    b = greeted(agent)
    try:
        err = a.request("add", id=1, specs=[f"p:one {HOT} n", "p json:nope"])
        assert err["code"] == "probe-error" and "spec 2" in str(err["message"])
        assert pyprobes.registered_probes() == []
        ok = a.request("add", id=2, specs=[f"p:one {HOT} n"])
        assert ok["type"] == "ok" and ok["re"] == 2
        (placed,) = ok["probes"]  # type: ignore[misc]
        assert placed["handle"] == 1 and placed["event"] == "one" and placed["probes"] == 1
        assert b.request("add", id=1, specs=[f"r:two {HOT} $retval"])["type"] == "ok"
        for i in range(5):
            targets.hot(i)
        ev_a = a.until("events")["events"]
        ev_b = b.until("events")["events"]
        assert {e["event"] for e in ev_a} == {"one"}  # type: ignore[index]
        assert {e["event"] for e in ev_b} == {"two"}  # type: ignore[index]
        assert ev_a[0]["args"] == {"n": 0}  # type: ignore[index]
        assert ev_b[0]["retval"] == 1  # type: ignore[index]
        listed = a.request("list", id=3)
        owners = sorted(p["owner"]["event"] for p in listed["probes"])  # type: ignore[attr-defined]
        assert owners == ["one", "two"] and listed["clients"] == 1
        # a leaves without a word: its probe goes, b's stays
        a.close()
        wait_for(lambda: len(pyprobes.registered_probes()) == 1)
        left = b.request("list", id=4)["probes"]
        assert [p["owner"]["event"] for p in left] == ["two"]  # type: ignore[attr-defined,index]
        # b detaches: the queued events, then the summary, then the end
        targets.hot(10)
        b.send({"type": "detach", "id": 5})
        done = b.until("detached")
        assert done["re"] == 5
        assert done["summary"] == [
            {"event": "two", "hits": 6, "misses": 0, "lost": 0, "filtered": 0}
        ]
        assert done["lost"] == {"total": 0, "by_event": {}}
        assert b.message() is None
        assert pyprobes.registered_probes() == []
    finally:
        a.close()
        b.close()


def test_detach_waits_for_a_handler_still_running(agent: Agent) -> None:
    """A handler that was running when detach removed its probe (here it renders the
    argument's str, which takes 0.2 s more than the removal) still has its event sent before
    the summary: the agent waits for the handler itself, not a fixed grace of a few ms."""
    entered, release = threading.Event(), threading.Event()

    class Slow:
        def __str__(self) -> str:
            entered.set()
            release.wait(TIMEOUT)
            return "slow"

    r = greeted(agent)
    try:
        assert r.request("add", id=1, specs=["p:s _attach_targets:other x:str"])["type"] == "ok"
        caller = threading.Thread(target=targets.other, args=(Slow(),))
        caller.start()
        assert entered.wait(TIMEOUT)
        r.send({"type": "detach", "id": 2})
        wait_for(lambda: not pyprobes.registered_probes())  # the probe went, its handler runs on
        time.sleep(0.2)  # the handler is slow (not a synchronisation: the agent must wait it)
        release.set()
        done = r.until("detached")
        caller.join(TIMEOUT)
        assert done["summary"] == [{"event": "s", "hits": 1, "misses": 0, "lost": 0, "filtered": 0}]
        assert [e["args"] for e in r.events] == [{"x": "slow"}]
    finally:
        release.set()
        r.close()


def test_switches_and_wildcards_placed_later_stay_off(agent: Agent) -> None:
    r = greeted(agent)
    try:
        sys.modules.pop("_attach_lazy", None)
        ok = r.request("add", id=1, specs=["p:lz _attach_lazy:*", f"p:h {HOT}"])
        (lz, h) = ok["probes"]  # type: ignore[misc]
        assert lz["probes"] == 0  # nothing imported yet
        assert r.request("disable", id=2, handles=[lz["handle"], h["handle"]])["type"] == "ok"
        import _attach_lazy

        listed = r.request("list", id=3)["probes"]
        assert len(listed) == 2  # type: ignore[arg-type]
        assert all(p["flags"] == ["DISABLED"] for p in listed)  # type: ignore[attr-defined]
        _attach_lazy.lazy_one(1)
        targets.hot(1)
        assert r.request("ping", id=4)["type"] == "ok"
        assert r.events == []
        assert r.request("enable", id=5, handles=[lz["handle"]])["type"] == "ok"
        _attach_lazy.lazy_one(2)
        targets.hot(2)
        events = r.until("events")["events"]
        assert [e["event"] for e in events] == ["lz"]  # type: ignore[index]
        status = r.request("status", id=6)
        enabled = {p["event"]: p["enabled"] for p in status["probes"]}  # type: ignore[attr-defined]
        assert enabled == {"lz": True, "h": False}
        assert r.request("remove", id=7, handles=[lz["handle"], h["handle"]])["type"] == "ok"
        assert pyprobes.registered_probes() == []
    finally:
        r.close()
        sys.modules.pop("_attach_lazy", None)


def test_the_agent_does_not_trace_itself(agent: Agent) -> None:
    r = greeted(agent)
    try:
        ok = r.request("add", id=1, specs=["p:j json:dumps"])
        assert ok["type"] == "ok"
        for i in range(5):  # each reply is encoded with json.dumps on an agent thread
            assert r.request("ping", id=10 + i)["type"] == "ok"
        json.dumps([1])
        events = r.until("events")["events"]
        assert {e["thread_name"] for e in events} == {"MainThread"}  # type: ignore[index]
        status = r.request("status", id=2)
        assert status["probes"][0]["hits"] > len(events)  # type: ignore[index]
        # (the hits on agent threads are counted; their events are not sent)
    finally:
        r.close()
    wait_for(lambda: not pyprobes.registered_probes())


def test_a_stalled_client_loses_events_and_never_blocks_the_program(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "EVENT_CAPACITY", 64)
    monkeypatch.setattr(stream, "RING_CAPACITY", 64)
    r = greeted(agent)
    try:
        r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert r.request("add", id=1, specs=[f"p:h {HOT} n"])["type"] == "ok"
        calls = 30_000
        t0 = time.monotonic()
        for i in range(calls):  # nobody reads: the sender blocks, the queue fills
            targets.hot(i)
        took = time.monotonic() - t0
        assert took < 30
        lost = r.until("lost")
        assert lost["total"] > 0 and set(lost["by_event"]) == {"h"}  # type: ignore[arg-type]
        r.send({"type": "detach", "id": 2})
        done = r.until("detached")
        (row,) = done["summary"]  # type: ignore[misc]
        assert row["hits"] == calls
        assert row["lost"] > 0 and row["lost"] == done["lost"]["total"]  # type: ignore[index]
        assert len(r.events) + row["lost"] == calls
    finally:
        r.close()
    wait_for(lambda: not pyprobes.registered_probes())


def test_limits_on_clients(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "MAX_CLIENTS", 2)
    a, b = greeted(agent), greeted(agent)
    assert agent.path is not None
    c = Raw(agent.path)
    try:
        err = c.message()
        assert err is not None and err["code"] == "limit"
        assert c.message() is None
    finally:
        for x in (a, b, c):
            x.close()


def test_peer_credentials_and_the_rule() -> None:
    s1, s2 = socket.socketpair(socket.AF_UNIX)
    try:
        assert peer_credentials(s1) == (os.getpid(), os.geteuid(), os.getegid())
    finally:
        s1.close()
        s2.close()
    assert peer_allowed(1000, 1000)
    assert peer_allowed(0, 1000)  # root may
    assert not peer_allowed(1001, 1000)
    assert not peer_allowed(65534, 0)


def test_another_uid_is_refused_and_logged(
    agent: Agent, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(server, "peer_credentials", lambda sock: (4321, 65534, 65534))
    assert agent.path is not None
    r = Raw(agent.path)
    try:
        with caplog.at_level(logging.WARNING, logger="pyprobes.agent"):
            err = r.message()
            assert err is not None and err["code"] == "permission"
            assert "only that user or root may attach" in str(err["message"])
            assert r.message() is None
        assert agent.refused == 1
        assert "refused a connection from uid 65534 (pid 4321)" in caplog.text
    finally:
        r.close()


def test_stop_says_bye_and_removes_everything(runtime: Path) -> None:
    a = Agent(runtime / "pyprobes")
    path = a.start()
    r = greeted(a)
    try:
        assert r.request("add", id=1, specs=[f"p {HOT}"])["type"] == "ok"
        a.stop()
        assert r.until("bye")["reason"] == "its agent was stopped"
        assert pyprobes.registered_probes() == []
        assert not path.exists()
        wait_for(lambda: not [t for t in threading.enumerate() if t.name.startswith("pyprobes-")])
    finally:
        r.close()
        a.stop()


def test_module_api_start_is_idempotent(runtime: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyprobes.agent

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    try:
        path = pyprobes.agent.start()
        assert path == str(runtime / "pyprobes" / f"{os.getpid()}.sock")
        assert pyprobes.agent.start() == path and pyprobes.agent.is_running()
        assert pyprobes.agent.socket_path() == path
    finally:
        pyprobes.agent.stop()
    assert not pyprobes.agent.is_running() and pyprobes.agent.socket_path() is None
    assert not Path(path).exists()


def test_push_never_raises() -> None:
    """What the program's threads run for a client: the event queue's put."""
    queue = EventQueue.__new__(EventQueue)
    queue.put(object())  # type: ignore[arg-type]  # no attributes at all: swallowed


def test_no_hello_in_time_closes_the_connection(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session, "HANDSHAKE_TIMEOUT", 0.3)
    assert agent.path is not None
    r = Raw(agent.path)
    try:
        err = r.message()
        assert err is not None and err["code"] == "handshake" and "timeout" in str(err["message"])
        assert r.message() is None
    finally:
        r.close()


def test_probe_limit_per_client(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session, "MAX_PROBES_PER_CLIENT", 1)
    r = greeted(agent)
    try:
        err = r.request("add", id=1, specs=["p _attach_targets:*"])
        assert err["code"] == "limit" and "narrow its wildcard" in str(err["message"])
        assert pyprobes.registered_probes() == []
        assert r.request("add", id=2, specs=[f"p {HOT}"])["type"] == "ok"
        err = r.request("add", id=3, specs=["p _attach_targets:other"])
        assert err["code"] == "limit"
        assert len(pyprobes.registered_probes()) == 1
    finally:
        r.close()
    wait_for(lambda: not pyprobes.registered_probes())


def test_a_client_that_reads_no_replies_gets_none_queued(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "MAX_QUEUED_REPLIES", 8)
    r = greeted(agent)
    try:
        r.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        (client,) = agent.clients()
        n = 1000
        flood = b"".join(b'{"type": "ping", "id": %d}\n' % i for i in range(n))
        sender = threading.Thread(target=r.send_bytes, args=(flood,), daemon=True)
        sender.start()
        peak = 0
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            peak = max(peak, len(client.stream.control))
            time.sleep(0.001)
        assert peak <= 8 + 1
        ids = [r.reply()["re"] for _ in range(n)]  # nothing lost, in order, once read
        assert ids == list(range(n))
        sender.join(TIMEOUT)
    finally:
        r.close()


def test_a_socket_path_too_long_says_what_to_do(tmp_path: Path) -> None:
    from pyprobes.attach.errors import AttachError

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with pytest.raises(AttachError, match="longer than 107 bytes: set XDG_RUNTIME_DIR"):
        Agent(deep).start()


def test_idle_clients_are_let_go_and_free_their_slots(
    agent: Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server, "MAX_CLIENTS", 2)
    agent.idle_timeout = 0.3
    assert agent.path is not None
    holder = greeted(agent)
    idle = greeted(agent)
    others: list[Raw] = []
    try:
        assert holder.request("add", id=1, specs=[f"p {HOT}"])["type"] == "ok"
        full = Raw(agent.path)
        others.append(full)
        err = full.message()
        assert err is not None and err["code"] == "limit"  # both slots held
        bye = idle.message()  # no probes, no request: let go
        assert bye is not None and bye["type"] == "bye"
        assert str(bye["reason"]).startswith("this client held no probes and sent no request for")
        assert "0.3s (PYPROBES_AGENT_IDLE_TIMEOUT)" in str(bye["reason"])
        assert idle.message() is None
        wait_for(lambda: len(agent.clients()) == 1)
        late = greeted(agent)  # its slot is free again
        others.append(late)
        assert late.request("ping", id=2) == {"type": "ok", "re": 2}  # a request: timer anew
        bye = late.message()
        assert bye is not None and bye["type"] == "bye"
        # the client holding a probe was never let go, idle as it was meanwhile
        assert holder.request("ping", id=3) == {"type": "ok", "re": 3}
        assert len(pyprobes.registered_probes()) == 1
    finally:
        for r in (holder, idle, *others):
            r.close()
    wait_for(lambda: not pyprobes.registered_probes())


def test_an_add_matching_too_many_functions_is_refused_whole(agent: Agent) -> None:
    from pyprobes.lang import parse_spec
    from pyprobes.tracer.targets import count_matches

    n = count_matches(parse_spec("p threading:*"))
    assert n > 50
    r = greeted(agent)
    try:
        agent.max_functions = n  # the default is 2,000
        ok = r.request("add", id=1, specs=["p threading:*"])
        assert ok["type"] == "ok" and ok["probes"][0]["probes"] == n  # type: ignore[index]
        assert r.request("remove", id=2, handles=[1])["type"] == "ok"
        agent.max_functions = n - 1
        err = r.request("add", id=3, specs=[f"p {HOT}", "p threading:*"])
        assert err["code"] == "limit" and err["re"] == 3
        assert err["message"] == (
            f"spec 2 (p threading:*) matches {n:,} functions (with the specs before it,"
            f" {n + 1:,}), and one add may probe at most {n - 1:,} (PYPROBES_AGENT_MAX_FUNCTIONS"
            " in the target): narrow its wildcard"
        )
        assert pyprobes.registered_probes() == []  # decided before anything was placed
        agent.max_functions = session.MAX_FUNCTIONS_PER_ADD
        err = r.request("add", id=4, specs=["r *:*"])
        assert err["code"] == "limit" and "at most 2,000" in str(err["message"])
        assert pyprobes.registered_probes() == []
        assert r.request("add", id=5, specs=[f"p {HOT}"])["type"] == "ok"  # served on
    finally:
        r.close()
    wait_for(lambda: not pyprobes.registered_probes())


def test_the_limits_come_from_the_targets_environment(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("PYPROBES_AGENT_IDLE_TIMEOUT", raising=False)
    monkeypatch.delenv("PYPROBES_AGENT_MAX_FUNCTIONS", raising=False)
    assert (Agent().idle_timeout, Agent().max_functions) == (60.0, 2000)
    monkeypatch.setenv("PYPROBES_AGENT_IDLE_TIMEOUT", "2.5")
    monkeypatch.setenv("PYPROBES_AGENT_MAX_FUNCTIONS", "7")
    assert (Agent().idle_timeout, Agent().max_functions) == (2.5, 7)
    with caplog.at_level(logging.WARNING, logger="pyprobes.agent"):
        for idle, most in (("soon", "-3"), ("nan", "2.5"), ("0", "inf")):
            monkeypatch.setenv("PYPROBES_AGENT_IDLE_TIMEOUT", idle)
            monkeypatch.setenv("PYPROBES_AGENT_MAX_FUNCTIONS", most)
            assert (Agent().idle_timeout, Agent().max_functions) == (60.0, 2000)
    assert "PYPROBES_AGENT_IDLE_TIMEOUT='soon' is not a positive number: using 60" in caplog.text
    assert "PYPROBES_AGENT_MAX_FUNCTIONS='-3' is not a positive number: using 2000" in caplog.text


def test_an_add_with_aggregate_sends_aggregates_and_no_events(agent: Agent) -> None:
    """Issue 13.7: the agent aggregates (a probe program where it can) and sends what it
    gathered; the client merges it; nothing is streamed per hit."""
    from pyprobes.output import Aggregator
    from pyprobes.output.aggregate_data import aggregator_from_data

    c = greeted(agent)
    try:
        bad = c.request("add", id=1, specs=[f"r:t {HOT} n"], aggregate={"hist": 3})
        assert bad["code"] == "bad-message" and pyprobes.registered_probes() == []
        ok = c.request(
            "add", id=2, specs=[f"r:t {HOT} n"], aggregate={"hist": "$duration", "by": "n"}
        )
        assert ok["type"] == "ok"
        for i in range(50):
            targets.hot(i % 5)
        got = Aggregator(hist_field="$duration", count=True, by_field="n")
        kinds: list[object] = []
        while got.get("t") is None or got.get("t").hits < 50:  # type: ignore[union-attr]
            msg = c.message()
            assert msg is not None, "no aggregates came"
            kinds.append(msg["type"])
            if msg["type"] == "aggregates":
                got.absorb(aggregator_from_data(got.config, msg["aggregates"]))
        assert "events" not in kinds
        t = got.get("t")
        assert t is not None and t.by is not None
        assert sorted(t.by.most_common()) == [(n, 10) for n in range(5)]
        assert sorted(t.hist_by) == list(range(5)) and t.hist_by[0].count == 10
        c.send({"type": "detach", "id": 3})
        done = c.until("detached")
        assert done["summary"] == [
            {"event": "t", "hits": 50, "misses": 0, "lost": 0, "filtered": 0}
        ]
    finally:
        c.close()


def test_events_a_program_can_record_come_from_the_clients_ring(agent: Agent) -> None:
    """Issue 13.7: a spec whose events a probe program can record writes them into the
    client's ring (JSON Lines written by the core, sent as they are); one it cannot (here
    $caller) takes the event queue. Both arrive as the same events, in order, each."""
    c = greeted(agent)
    try:
        ok = c.request("add", id=1, specs=[f"r:ring {HOT} n $retval", f"r:queue {HOT} n $caller"])
        assert ok["type"] == "ok"
        (session,) = agent._clients.values()
        entries = {e.spec.event: e for e in session.specs()}
        assert entries["ring"].trace is not None and entries["queue"].trace is not None
        assert [p for _, p in entries["ring"].trace.paths()] == ["program"]
        assert next(p for _, p in entries["queue"].trace.paths()).startswith("python")
        for i in range(300):
            targets.hot(i)
        c.send({"type": "detach", "id": 2})
        done = c.until("detached")
        by_event: dict[str, list[dict[str, object]]] = {}
        for e in c.events:
            by_event.setdefault(e["event"], []).append(e)  # type: ignore[arg-type,index]
        ring, queue = by_event["ring"], by_event["queue"]
        assert [e["args"]["n"] for e in ring] == list(range(300))  # type: ignore[index]
        assert [e["args"]["n"] for e in queue] == list(range(300))  # type: ignore[index]
        assert ring[7]["retval"] == queue[7]["retval"] and ring[7]["kind"] == "r"
        assert session.stream._records is not None  # the ring was made and used
        assert done["lost"] == {"total": 0, "by_event": {}}
        rows = {r["event"]: r["hits"] for r in done["summary"]}  # type: ignore[attr-defined,index]
        assert rows == {"ring": 300, "queue": 300}
    finally:
        c.close()


def test_spans_a_program_can_record_come_from_the_ring_linked_to_the_python_paths(
    agent: Agent,
) -> None:
    """attach --otlp: a spans spec a program can record writes its returns into the client's
    ring with their activation links; one on the Python path (here n:repr) encloses them."""
    c = greeted(agent)
    try:
        specs = ["r:o _attach_targets:outer n:repr", f"r:h {HOT} n"]
        ok = c.request("add", id=1, specs=specs, spans=True)
        assert ok["type"] == "ok"
        (session,) = agent._clients.values()
        entries = {e.spec.event: e for e in session.specs()}
        assert [p for _, p in entries["h"].trace.paths()] == ["program"]  # type: ignore[union-attr]
        assert next(p for _, p in entries["o"].trace.paths()).startswith("python")  # type: ignore[union-attr]
        for i in range(3):
            targets.outer(i)
        c.send({"type": "detach", "id": 2})
        c.until("detached")
        outers = [e for e in c.events if e["event"] == "o"]
        hots = [e for e in c.events if e["event"] == "h"]
        assert len(outers) == 3 and len(hots) == 6
        assert session.stream._records is not None and session.stream._records.links
        outer_of = {e["args"]["n"]: e["activation"][0] for e in outers}  # type: ignore[index]
        assert sorted(outer_of) == ["0", "1", "2"]  # n:repr: the Python path's text
        for e in hots:
            _, parent, root, trace, span = e["activation"]  # type: ignore[misc]
            assert parent == root and trace == span == ""
        # each outer call encloses the two hot calls it made: n and n + 1
        parents = {(e["args"]["n"], e["activation"][1]) for e in hots}  # type: ignore[index]
        assert parents == {(i + d, outer_of[str(i)]) for i in range(3) for d in (0, 1)}
    finally:
        c.close()


def test_an_add_with_a_linear_histogram_sends_it_as_aggregates(agent: Agent) -> None:
    """--lhist over the attach protocol: the agent runs it (a program where it can) and the
    client gets the very buckets."""
    from pyprobes.output import Aggregator
    from pyprobes.output.aggregate_data import aggregator_from_data

    c = greeted(agent)
    try:
        for i, bad in enumerate(
            ({"lhist": ["n", 0, 25, 10]}, {"lhist": ["n", 0, 10]}, {"lhist": "n,0,10,1"}),
            start=1,
        ):
            got_bad = c.request("add", id=i, specs=[f"r:t {HOT} n"], aggregate=bad)
            assert got_bad["code"] == "bad-message" and pyprobes.registered_probes() == []
            assert "lhist must be [field, min, max, step]" in got_bad["message"]
        ok = c.request("add", id=9, specs=[f"r:t {HOT} n"], aggregate={"lhist": ["n", 1, 4, 1]})
        assert ok["type"] == "ok"
        for i in range(50):
            targets.hot(i % 5)
        got = Aggregator(lhist_field="n", lhist_bounds=(1, 4, 1))
        while got.get("t") is None or got.get("t").lhist.count < 50:  # type: ignore[union-attr]
            msg = c.message()
            assert msg is not None, "no aggregates came"
            assert msg["type"] != "events"
            if msg["type"] == "aggregates":
                got.absorb(aggregator_from_data(got.config, msg["aggregates"]))
        t = got.get("t")
        assert t is not None and t.lhist is not None
        assert t.lhist.counts() == {0: 10, 1: 10, 2: 10, 3: 10, 4: 10}
        assert t.lhist.total == 10 * (0 + 1 + 2 + 3 + 4)
    finally:
        c.close()


def test_the_counters_come_while_attached(agent: Agent) -> None:
    """Issue 16: each round whose counters changed sends a ``counts`` message with the rows
    ``detached`` will carry, so a client's metrics show the hits while it is attached."""
    c = greeted(agent)
    try:
        ok = c.request("add", id=1, specs=[f"r:t {HOT} n"], aggregate={"count": True})
        assert ok["type"] == "ok"
        for i in range(40):
            targets.hot(i)
        rows: object = None
        while rows != [{"event": "t", "hits": 40, "misses": 0, "lost": 0, "filtered": 0}]:
            rows = c.until("counts")["summary"]
        for i in range(2):
            targets.hot(i)
        while rows != [{"event": "t", "hits": 42, "misses": 0, "lost": 0, "filtered": 0}]:
            rows = c.until("counts")["summary"]
        c.send({"type": "detach", "id": 2})
        assert c.until("detached")["summary"] == rows
    finally:
        c.close()
