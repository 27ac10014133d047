"""Faust's Kafka transport with a configurable fetch wait.

Faust's aiokafka driver hard-codes ``fetch_max_wait_ms=1500``. A broker answers a fetch
as soon as data arrives (Apache Kafka parks it in purgatory), or only when the wait
expires (measured on the local Tansu broker: p50 ~150 ms at 500 ms, ~6 ms at 20 ms).
With 1,500 ms every order waited ~1 s for its verdict locally. ``KAFKA_FETCH_MAX_WAIT_MS``
sets it for Faust's consumer here and for the batch consumer.
"""

from __future__ import annotations

import faust
from faust.transport.drivers import aiokafka as driver


def transport_class(fetch_max_wait_ms: int) -> type[driver.Transport]:
    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport):
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read by aiokafka when its fetcher starts
            return consumer

    class Consumer(driver.Consumer):
        def _new_consumer_thread(self):
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(driver.Transport):
        pass

    Transport.Consumer = Consumer
    return Transport


class App(faust.App):
    """A Faust app whose consumer uses :func:`transport_class` (``fetch_max_wait_ms`` kwarg)."""

    def __init__(self, *args, fetch_max_wait_ms: int = 50, **kwargs):
        self._fetch_max_wait_ms = fetch_max_wait_ms
        super().__init__(*args, **kwargs)

    def _new_transport(self):
        return transport_class(self._fetch_max_wait_ms)(self.conf.broker_consumer, self)
