"""pubsub.mqtt3 only: persistent sessions, acks only after the app answered (a SIGKILLed consumer or
sidecar loses nothing), shared and wildcard subscriptions, QoS, retain and metadata on the real
Mosquitto; TLS and broker restarts on private Mosquittos; the whole sidecar with the
dapr/components/mqtt profile driven through the SDK.

The behaviour every broker shares is in test_pubsub_drivers.py.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker_support import EXPECTED, SUBSCRIBER, UseSidecar, deliver_through_sdk
from conftest import SidecarStarter
from dapr.aio.clients import DaprClient as AsyncDaprClient
from mqtt_support import MQTT_URL, forget_sessions, plain_client, require_mosquitto, stop, unique
from sidecar_support import (
    REPO,
    Process,
    RunningSidecar,
    app_process,
    free_port,
    port_accepts,
    read_jsonl,
    sidecar_process,
    stop_all,
    wait_until,
)

from chassis.sidecar._errors import ComponentError, InvalidMetadata
from chassis.sidecar.components import Message
from chassis.sidecar.components.pubsub_mqtt3 import RECEIVE_MAXIMUM, MQTTPubSub

PROFILE_PUBSUB = REPO / "dapr" / "components" / "mqtt" / "pubsub.yaml"
MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")  # for private servers

# Claims what it can, says how many, then hangs without acknowledging: the parent SIGKILLs it.
HOLDER = """
import asyncio, sys
from pathlib import Path
from chassis.sidecar.components.pubsub_mqtt3 import MQTTPubSub

async def main(url, consumer, topic):
    metadata = {"url": url, "consumerID": consumer}
    broker = await MQTTPubSub.open("p", metadata, app_id="app", base_dir=Path.cwd())
    await broker.subscribe("app", topic)
    print(len(await broker.claim("app", 100)), flush=True)
    await asyncio.sleep(60)

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.fixture
def consumer() -> Iterator[str]:
    """This test's consumerID: the client id of the app's session (other groups get `<id>-<group>`)."""
    require_mosquitto()
    consumer = unique("consumer")
    yield consumer
    forget_sessions(consumer, f"{consumer}-g", f"{consumer}-h")


@pytest.fixture
def topic() -> str:
    return unique("topic")


async def open_broker(consumer: str, **metadata: str) -> MQTTPubSub:
    return await MQTTPubSub.open(
        "pubsub", {"url": MQTT_URL, "consumerID": consumer, **metadata}, app_id="app", base_dir=Path.cwd()
    )


@pytest.fixture
async def broker(consumer: str) -> AsyncIterator[MQTTPubSub]:
    broker = await open_broker(consumer)
    yield broker
    await broker.close()


async def claim_all(broker: MQTTPubSub, group: str, count: int) -> list[Message]:
    found: list[Message] = []
    async with asyncio.timeout(10):
        while len(found) < count:
            found += await broker.claim(group, count - len(found))
            await broker.wait(0.05)
    return found


async def test_the_apps_session_is_consumer_id_and_other_groups_get_their_own(broker: MQTTPubSub) -> None:
    assert broker.client_id("app") == broker.consumer_id
    assert broker.client_id("app.outbox") == f"{broker.consumer_id}-app.outbox"
    default = await MQTTPubSub.open("p", {"url": MQTT_URL}, app_id="shop", base_dir=Path.cwd())
    await default.close()
    assert default.client_id("shop") == "shop"  # Dapr's default consumerID: the app id


def start_holder(consumer: str, topic: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, MQTT_URL, consumer, topic], stdout=subprocess.PIPE, text=True
    )


async def test_a_killed_consumer_gets_what_it_held_back_when_its_session_reconnects(
    consumer: str, topic: str
) -> None:
    first = await open_broker(consumer)
    await first.subscribe("app", topic)  # the session exists from now on
    await first.close()
    publisher = await open_broker(unique("publisher"))
    try:
        for i in range(5):  # kept by the broker while nobody is connected
            await publisher.publish(topic, str(i).encode(), {"i": str(i)})
    finally:
        await publisher.close()
    holder = start_holder(consumer, topic)
    try:
        assert holder.stdout is not None
        assert await asyncio.to_thread(holder.stdout.readline) == "5\n"
        os.kill(holder.pid, signal.SIGKILL)  # claimed, never acknowledged
    finally:
        holder.kill()
        await asyncio.to_thread(holder.wait, 10)
        if holder.stdout is not None:
            holder.stdout.close()
    second = await open_broker(consumer)
    try:
        await second.subscribe("app", topic)
        again = await claim_all(second, "app", 5)
        for message in again:
            await second.ack("app", message)
    finally:
        await second.close()
    # Attempt 2: the broker flagged them DUP, its second delivery.
    assert [(m.data, m.metadata, m.attempts) for m in again] == [
        (str(i).encode(), {"i": str(i)}, 2) for i in range(5)
    ]
    third = await open_broker(consumer)
    try:
        await third.subscribe("app", topic)
        assert await third.claim("app", 10) == []  # acknowledged: gone for good
    finally:
        await third.close()


async def test_an_unanswered_message_is_not_acknowledged_when_the_instance_closes(
    consumer: str, topic: str
) -> None:
    first = await open_broker(consumer)
    await first.subscribe("app", topic)
    await first.publish(topic, b"x", {})
    [message] = await first.claim("app", 10)
    await first.retry("app", message, 30)  # RETRY: held here, unacknowledged at the broker
    await first.close()
    second = await open_broker(consumer)
    try:
        await second.subscribe("app", topic)
        [again] = await claim_all(second, "app", 1)
    finally:
        await second.close()
    assert (again.seq, again.data, again.attempts) == (message.seq, b"x", 2)


async def test_clean_session_forgets_what_was_published_while_down(consumer: str, topic: str) -> None:
    first = await open_broker(consumer, cleanSession="true")
    await first.subscribe("app", topic)
    await first.close()
    await publish_once(topic, b"lost")
    second = await open_broker(consumer, cleanSession="true")
    try:
        await second.subscribe("app", topic)
        assert await second.claim("app", 10) == []
        await publish_once(topic, b"kept")
        assert [m.data for m in await claim_all(second, "app", 1)] == [b"kept"]
    finally:
        await second.close()


async def publish_once(topic: str, data: bytes, **metadata: str) -> None:
    publisher = await open_broker(unique("publisher"), **metadata)
    try:
        await publisher.publish(topic, data, {})
    finally:
        await publisher.close()


async def test_a_session_holds_more_unacknowledged_messages_than_mosquittos_default_20(
    broker: MQTTPubSub, topic: str
) -> None:
    await broker.subscribe("app", topic)
    for i in range(60):
        await broker.publish(topic, str(i).encode(), {})
    held = await broker.claim("app", 100)
    assert [m.data for m in held] == [str(i).encode() for i in range(60)]
    assert RECEIVE_MAXIMUM >= 60


async def test_messages_from_other_clients_are_delivered(broker: MQTTPubSub, topic: str) -> None:
    await broker.subscribe("app", topic)
    device = await asyncio.to_thread(plain_client)  # MQTT 3.1.1, as daprd's component: no properties
    try:
        await asyncio.to_thread(lambda: device.publish(topic, b"from daprd", qos=1).wait_for_publish(5))
    finally:
        await asyncio.to_thread(stop, device)
    [message] = await claim_all(broker, "app", 1)
    assert (message.data, message.metadata, message.attempts) == (b"from daprd", {}, 1)
    assert message.seq < 0  # not one of ours
    await broker.ack("app", message)


async def test_a_shared_subscription_spreads_a_topic_over_instances(consumer: str, topic: str) -> None:
    shared = f"$share/workers/{topic}"
    one, two = await open_broker(consumer), await open_broker(f"{consumer}-h")  # one session each
    try:
        for instance in (one, two):
            await instance.subscribe("app", shared)
        for i in range(10):
            await one.publish(topic, str(i).encode(), {})
        got = [await claim_all(one, "app", 5), await claim_all(two, "app", 5)]
    finally:
        await one.close()
        await two.close()
    assert {m.topic for m in got[0] + got[1]} == {shared}  # delivered under the name subscribed to
    assert sorted(int(m.data) for m in got[0] + got[1]) == list(range(10))


async def test_wildcard_subscriptions_deliver_under_the_filter(broker: MQTTPubSub, topic: str) -> None:
    await broker.subscribe("app", f"{topic}/+/created")
    await broker.subscribe("app", f"{topic}/exact")
    await broker.publish(f"{topic}/eu/created", b"a", {})
    await broker.publish(f"{topic}/exact", b"b", {})
    got = await claim_all(broker, "app", 2)
    assert [(m.topic, m.data) for m in got] == [(f"{topic}/+/created", b"a"), (f"{topic}/exact", b"b")]


async def test_qos_2_publishes_but_deliveries_wait_for_the_app(consumer: str, topic: str) -> None:
    first = await open_broker(consumer, qos="2")
    await first.subscribe("app", topic)
    await first.publish(topic, b"x", {})
    [message] = await first.claim("app", 10)
    await first.close()  # not answered: with a QoS 2 delivery it would be gone after PUBREC
    second = await open_broker(consumer, qos="2")
    try:
        await second.subscribe("app", topic)
        [again] = await claim_all(second, "app", 1)
        await second.ack("app", again)
    finally:
        await second.close()
    assert (again.seq, again.attempts) == (message.seq, 2)


async def test_qos_0_is_accepted_and_delivers_while_connected(consumer: str, topic: str) -> None:
    broker = await open_broker(consumer, qos="0")
    try:
        await broker.subscribe("app", topic)
        await broker.publish(topic, b"x", {})
        [message] = await claim_all(broker, "app", 1)
        await broker.ack("app", message)  # nothing to acknowledge at QoS 0
    finally:
        await broker.close()
    assert message.data == b"x"


async def test_retain_from_metadata_and_per_request(broker: MQTTPubSub, topic: str) -> None:
    await broker.publish(f"{topic}/a", b"kept", {"retain": "true"})
    await publish_once(f"{topic}/b", b"kept too", retain="true")
    await broker.publish(f"{topic}/c", b"not kept", {})
    await broker.subscribe("g", f"{topic}/+")  # a later subscriber gets the retained ones
    got = await claim_all(broker, "g", 2)
    assert sorted(m.data for m in got) == [b"kept", b"kept too"]
    for sub in ("a", "b"):  # an empty retained message removes it from the broker
        await broker.publish(f"{topic}/{sub}", b"", {"retain": "true"})
    with pytest.raises(ComponentError, match="retain"):
        await broker.publish(topic, b"x", {"retain": "perhaps"})


async def test_publish_to_a_wildcard_topic_is_a_component_error(broker: MQTTPubSub) -> None:
    with pytest.raises(ComponentError):
        await broker.publish("orders/#", b"x", {})


async def test_unreachable_broker_fails_with_one_line_without_the_password() -> None:
    port = free_port()
    with pytest.raises(ComponentError) as caught:
        await open_broker("c", url=f"tcp://user:secret@127.0.0.1:{port}")
    assert f"error connecting to mqtt at 127.0.0.1:{port}" in str(caught.value)
    assert "secret" not in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        ({"url": ""}, "url"),
        ({"url": "http://user:secret@localhost:1883"}, "url"),
        ({"url": "ws://localhost:9001"}, "url"),
        ({"url": "tcp://localhost:99999"}, "url"),
        ({"url": "tcp://:1883"}, "url"),
        ({"qos": "3"}, "qos"),
        ({"qos": "one"}, "qos"),
        ({"retain": "maybe"}, "retain"),
        ({"cleanSession": "yes please"}, "cleanSession"),
        ({"caCert": "-----BEGIN CERTIFICATE-----"}, "caCert"),  # TLS needs ssl://
        ({"url": "ssl://localhost:8883", "caCert": "not a certificate"}, "caCert"),
        ({"url": "ssl://localhost:8883", "clientCert": "-----BEGIN CERTIFICATE-----"}, "clientKey"),
        ({"url": "ssl://localhost:8883", "clientKey": "-----BEGIN PRIVATE KEY-----"}, "clientCert"),
    ],
)
async def test_invalid_metadata(metadata: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidMetadata) as caught:
        await open_broker("c", **metadata)
    assert caught.value.field == field
    assert "secret" not in str(caught.value)  # the url may hold a password: never repeated


class PrivateMosquitto:
    """A Mosquitto of this test's own (free port, persistence in tmp_path), so it can be restarted."""

    def __init__(self, folder: Path, extra: str = "") -> None:
        self.port = free_port()
        self.url = f"tcp://127.0.0.1:{self.port}"
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {folder}/\n"
            f"user {getpass.getuser()}\n"  # as root it would switch to `mosquitto`, who cannot write here
            + extra
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(MOSQUITTO), "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: port_accepts(self.port), what=f"mosquitto on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: Mosquitto saves its sessions before it exits
            self.process.wait(10)


@pytest.fixture
def private_mosquitto(tmp_path: Path) -> Iterator[PrivateMosquitto]:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    server = PrivateMosquitto(tmp_path)
    server.start()
    yield server
    server.stop()


async def test_a_broker_restart_keeps_the_session_and_the_connections_come_back(
    private_mosquitto: PrivateMosquitto, topic: str
) -> None:
    broker = await open_broker("c", url=private_mosquitto.url)
    try:
        await broker.subscribe("app", topic)
        await broker.publish(topic, b"before", {})
        [held] = await broker.claim("app", 10)
        await asyncio.to_thread(private_mosquitto.stop)
        during = asyncio.create_task(broker.publish(topic, b"during", {}))  # paho resends it
        await asyncio.sleep(0.2)
        await asyncio.to_thread(private_mosquitto.start)
        await asyncio.wait_for(during, 15)
        again = await claim_all(broker, "app", 2)
        for message in again:
            await broker.ack("app", message)
    finally:
        await broker.close()
    assert [(m.seq, m.data, m.attempts) for m in again] == [
        (held.seq, b"before", 2),
        (again[1].seq, b"during", 1),
    ]


async def test_a_clean_session_subscribes_again_after_a_broker_restart(
    private_mosquitto: PrivateMosquitto, topic: str
) -> None:
    broker = await open_broker("c", url=private_mosquitto.url, cleanSession="true")
    try:
        await broker.subscribe("app", topic)
        await asyncio.to_thread(private_mosquitto.stop)
        await asyncio.to_thread(private_mosquitto.start)
        async with asyncio.timeout(15):
            while not (got := await broker.claim("app", 10)):
                await broker.publish(topic, b"after", {})  # lost until the subscription is back
                await broker.wait(0.2)
    finally:
        await broker.close()
    assert got[0].data == b"after"


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA and, signed by it, a server certificate for localhost and a client certificate (PEM files)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test-ca")
    (folder / "san.ext").write_text("subjectAltName=DNS:localhost\n")
    for name in ("server", "client"):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", "san.ext",
        )  # fmt: skip
    return {
        name: folder / name for name in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")
    }


async def test_tls_with_a_client_certificate(tmp_path: Path, topic: str) -> None:
    if MOSQUITTO is None or shutil.which("openssl") is None:
        pytest.skip("mosquitto or openssl is not installed")
    files = make_certificates(tmp_path)
    server = PrivateMosquitto(
        tmp_path,
        f"cafile {files['ca.pem']}\ncertfile {files['server.pem']}\nkeyfile {files['server.key']}\n"
        "require_certificate true\n",
    )
    server.start()
    pem = {name: await asyncio.to_thread(path.read_text) for name, path in files.items()}
    url = f"ssl://localhost:{server.port}"
    try:
        broker = await open_broker(
            "c", url=url, caCert=pem["ca.pem"], clientCert=pem["client.pem"], clientKey=pem["client.key"]
        )
        try:
            await broker.subscribe("app", topic)
            await broker.publish(topic, b"over tls", {})
            [message] = await claim_all(broker, "app", 1)
        finally:
            await broker.close()
        assert message.data == b"over tls"
        with pytest.raises(ComponentError, match="error connecting to mqtt"):
            await open_broker("c", url=url, caCert=pem["ca.pem"])  # the server requires a certificate
        with pytest.raises(ComponentError, match="CERTIFICATE_VERIFY_FAILED"):
            await open_broker("c", url=url)  # the system's CAs do not know this one
    finally:
        server.stop()


async def test_sidecar_with_the_mqtt_profile_delivers_through_the_sdk(
    tmp_path: Path,
    topic: str,
    started: list[Process],
    start_sidecar: SidecarStarter,
    dapr_env: UseSidecar,
) -> None:
    require_mosquitto()
    app_id = unique("app")  # the default consumerID: the client id of the app's session
    resources = tmp_path / "resources"
    resources.mkdir()
    shutil.copy(PROFILE_PUBSUB, resources / "pubsub.yaml")
    sidecars: list[RunningSidecar] = []

    def start_and_keep(*args: Any, **options: Any) -> RunningSidecar:
        sidecars.append(start_sidecar(*args, **options))
        return sidecars[-1]

    try:
        deliveries = await deliver_through_sdk(
            tmp_path,
            resources,
            app_id=app_id,
            topic=topic,
            started=started,
            start_sidecar=start_and_keep,
            dapr_env=dapr_env,
        )
        assert deliveries == EXPECTED  # RETRY: held by the sidecar, delivered again after the back-off
        stop_all(sidecars)  # SIGTERM: the sidecar settles what is in flight, then disconnects
        # SUCCESS was acknowledged once the app answered: the session gives nothing back.
        session = await MQTTPubSub.open("p", {"url": MQTT_URL}, app_id=app_id, base_dir=tmp_path)
        try:
            await session.subscribe(app_id, topic)
            assert await session.claim(app_id, 10) == []
        finally:
            await session.close()
    finally:
        forget_sessions(app_id)


async def test_a_sigkilled_sidecar_loses_nothing(
    tmp_path: Path,
    topic: str,
    started: list[Process],
    start_sidecar: SidecarStarter,
    dapr_env: UseSidecar,
) -> None:
    """Sidecar B delivers to its app; it is SIGKILLed mid-stream and restarted while A keeps publishing."""
    require_mosquitto()
    app_id = unique("app")
    resources = tmp_path / "resources"
    resources.mkdir()
    shutil.copy(PROFILE_PUBSUB, resources / "pubsub.yaml")
    records, script = tmp_path / "deliveries.jsonl", tmp_path / "subscriber.py"
    script.write_text(SUBSCRIBER)
    app_port = free_port()
    app = app_process(str(script), app_port, tmp_path, {"TOPIC": topic, "RECORD_FILE": str(records)})
    subscriber = sidecar_process(app_id, tmp_path, app_port=app_port, resources=[resources])
    started += [app, subscriber]
    app.spawn()
    app.wait_ready(lambda: port_accepts(app_port), "listening")
    subscriber.spawn()
    subscriber.wait_ready(lambda: subscriber.healthy("/v1.0/healthz"), "subscribed")  # /healthz: after it
    dapr_env(start_sidecar(unique("publisher"), resources=[resources]))
    published = [f"e-{i}" for i in range(300)]
    try:
        async with AsyncDaprClient() as sdk:
            for i, event_id in enumerate(published):
                if i == 100:  # mid-stream: some delivered, some held by B, some not yet sent to it
                    await asyncio.to_thread(
                        wait_until, lambda: len(read_jsonl(records)) >= 20, what="deliveries"
                    )
                    subscriber.kill()
                await sdk.publish_event(
                    "pubsub", topic, event_id, publish_metadata={"cloudevent.id": event_id}
                )
        subscriber.spawn()  # the same app id: its session, with what it held and what came meanwhile

        def all_delivered() -> bool:
            return {d["id"] for d in read_jsonl(records)} >= set(published)

        await asyncio.to_thread(wait_until, all_delivered, timeout=30, what="every event delivered")
    finally:
        forget_sessions(app_id)
