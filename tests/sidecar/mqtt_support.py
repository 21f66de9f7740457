"""Helpers for tests against the real Mosquitto on 127.0.0.1:1883: the server check and cleanup.

Every test uses a consumerID (the base of its sessions' client ids) and topics of its own, so tests
running in parallel never take each other's sessions over. Sessions are persistent, so each test
forgets the ones it made at the end.
"""

from __future__ import annotations

import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from chassis.testing import requires_server

HOST, PORT = "127.0.0.1", 1883
MQTT_URL = f"tcp://{HOST}:{PORT}"
START_MOSQUITTO = "mosquitto -d -c /etc/mosquitto/mosquitto.conf"


def require_mosquitto() -> None:
    """Skip the test with one line when Mosquitto is down (fail under CI=true)."""
    requires_server("Mosquitto", HOST, PORT, START_MOSQUITTO)


def unique(label: str = "t") -> str:
    """A consumerID or topic no other test (or test run) uses."""
    return f"chassis-test-{label}-{uuid.uuid4().hex[:10]}"


def plain_client() -> mqtt.Client:
    """A connected MQTT 3.1.1 client, as daprd's component or a device, its network thread running."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect(HOST, PORT)
    client.loop_start()
    return client


def stop(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def forget_sessions(*client_ids: str) -> None:
    """Delete persistent sessions: connecting with a clean start and no expiry replaces each one."""
    for client_id in client_ids:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = 0
        client.on_connect = lambda c, *_: c.disconnect()
        client.connect(HOST, PORT, clean_start=True, properties=properties)
        client.loop_forever(timeout=0.1)  # returns once disconnected
