"""modelsoak's load generator: `locust -f loadgen/ --host grpc://HOST:PORT`.

This is the one file in this folder (the library is the `loadtest` package):
exactly one concrete User class and one LoadTestShape. Protocol, model, batch
size, scenario, SLO file and the rest are options (loadtest.flags; `modelsoak
--help` lists them beside Locust's own, since Locust prints --help before it
imports a locustfile; in the web UI they are the "Custom parameters"); with
--scenario none, -u / -r / -t behave as in plain Locust.
"""

from __future__ import annotations

# grpcio must be told about gevent before any channel exists, or every call
# blocks the whole worker process.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

from locust import LoadTestShape, User, constant, task  # noqa: E402

from loadtest.plugin import tick  # noqa: E402  (registers the event listeners)
from loadtest.user import Session  # noqa: E402


class InferenceUser(User):
    """Sends inference requests over its own gRPC channel, back to back (closed
    loop) or when the open-loop schedule says so."""

    wait_time = constant(0)

    def on_start(self) -> None:
        self.session = Session(self.environment, self.host)

    def on_stop(self) -> None:
        self.session.close()

    @task
    def infer(self) -> None:
        self.session.step()


class ScenarioShape(LoadTestShape):
    """Follows --scenario's phases; with no scenario, Locust's -u / -r / -t."""

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        return tick(self)
