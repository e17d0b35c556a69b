"""Messages handed over inside one process: the inbox's bound and order, the loop
handoff, and a running gateway whose capture hands its utterances over as objects."""
import asyncio
import select
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.handoff import Inbox, ToLoop
from daemon.links import Sender, bind_local, unbind_local
from emoclap import wire
from emoclap.record import Utterance


def segment(seq, audio=None):
    return wire.Message("segment", utterance=Utterance("s", "customer", seq, 0.0, 1.0, 1000.0, 1001.0,
                                                       audio=audio))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 8), st.lists(st.integers(0, 5), max_size=40))
def test_the_inbox_is_a_bounded_fifo_and_readable_exactly_while_it_holds_something(limit, ops):
    inbox, model, seq = Inbox(limit), [], 0
    try:
        for op in ops:
            if op:  # put
                seq += 1
                accepted = inbox.put(segment(seq))
                assert accepted == (len(model) < limit)
                if accepted:
                    model.append(seq)
            else:
                got = [m.utterance.seq for m in inbox.take(3)]
                assert got == model[:3]
                del model[:3]
            readable = bool(select.select([inbox.fd], [], [], 0)[0])
            assert readable == bool(model) and len(inbox) == len(model)
    finally:
        inbox.close()
    assert not inbox.put(segment(0))  # closed: refused, never raises


def test_a_blocking_writer_waits_for_room_and_gives_up_at_its_timeout():
    inbox = Inbox(1)
    assert inbox.put(segment(1))
    started = time.monotonic()
    assert not inbox.put(segment(2), block=True, timeout_s=0.2)
    assert 0.15 < time.monotonic() - started < 2.0
    threading.Timer(0.1, inbox.take, (1,)).start()
    assert inbox.put(segment(3), block=True, timeout_s=5.0)  # room made by the reader
    assert [m.utterance.seq for m in inbox.take(5)] == [3]
    inbox.close()


def test_a_sender_to_an_in_process_endpoint_hands_over_the_utterance_itself_and_speech_without_audio():
    import numpy as np

    from emoclap.privacy import PrivacyPolicy

    inbox = Inbox(8)
    bind_local("inproc://handoff-test", inbox)
    try:
        sender = Sender("inproc://handoff-test", 8)
        audio = np.ones(160, np.float32)
        customer = Utterance("a", "customer", 1, 0.0, 1.0, 1000.0, 1001.0, audio=audio)
        staff = Utterance("b", "staff", 1, 0.0, 1.0, 1000.0, 1001.0, audio=audio)
        sender.dispatch([customer, staff], PrivacyPolicy())
        sender.tick(force=True)
        got = inbox.take(8)
        assert [m.kind for m in got] == ["segment", "speech", "status"]
        assert got[0].utterance is customer  # no copy, no framing
        assert got[1].utterance.audio is None and got[1].utterance.station == "b"
        assert got[2].get("segmented") == {"a": 1, "b": 1}
    finally:
        unbind_local("inproc://handoff-test")
        inbox.close()


def test_the_loop_handoff_counts_what_waits_untaken():
    async def main():
        link = ToLoop(asyncio.get_running_loop(), limit=2)
        writer = threading.Thread(target=lambda: [link.deliver(segment(i)) for i in range(2)])
        writer.start()
        writer.join()
        full = link.room()
        first = await link.get()
        return full, first.utterance.seq, link.room(), link.get_nowait().utterance.seq, link.get_nowait()

    assert asyncio.run(main()) == (False, 0, True, 1, None)


def test_a_running_gateway_takes_its_own_capture_in_process_and_a_socket_for_edges_elsewhere(tmp_path, tiny_bundle):
    from tests.servicekit import service_config, with_service

    cfg = service_config(tmp_path, tiny_bundle)

    async def body(svc):
        broker = svc.parts.broker
        return broker.inbox is not None, broker.pull is None

    assert with_service(cfg, body) == (True, True)
    cfg = service_config(tmp_path / "b", tiny_bundle)
    cfg.stages.utterances = f"ipc://{tmp_path}/u.sock"

    async def remote(svc):
        return svc.parts.broker.inbox is None, svc.parts.broker.pull is not None

    assert with_service(cfg, remote) == (True, True)
