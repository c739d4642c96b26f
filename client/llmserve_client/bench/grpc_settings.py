"""The load generator's gRPC client settings, chosen before grpc is imported.

grpc's default TCP client endpoints (EventEngine's) cost the load generator about a third more
CPU per streamed message than iomgr's on these cores (bare echo server, C=64: 46-52 against
26-34 µs per message; 19-21k against 24-31k messages/s), CPU it takes from the server it
measures. grpc reads `GRPC_EXPERIMENTS` once, when it starts, so the load generator sets it
before importing grpc; the servers the suite starts get their environment without it.
"""

import logging
import os
import sys

logger = logging.getLogger(__name__)

EXPERIMENTS_VARIABLE = "GRPC_EXPERIMENTS"
LOAD_GENERATOR_EXPERIMENTS = "-event_engine_client"

_set_here = False


def use_iomgr_client() -> None:
    """Makes this process's gRPC channels use iomgr's TCP client.

    A `GRPC_EXPERIMENTS` the user set is kept as it is (for the servers too). Without effect, and
    said so, once grpc has been imported.
    """
    global _set_here
    if EXPERIMENTS_VARIABLE in os.environ:
        return
    if "grpc" in sys.modules:
        logger.info("grpc is already imported: the load generator keeps its default TCP client")
        return
    os.environ[EXPERIMENTS_VARIABLE] = LOAD_GENERATOR_EXPERIMENTS
    _set_here = True


def client_experiments() -> str:
    """The experiments this process's grpc runs with (the report's record)."""
    return os.environ.get(EXPERIMENTS_VARIABLE, "")


def server_environment() -> dict[str, str]:
    """The environment for servers: the load generator's own gRPC settings left out."""
    env = dict(os.environ)
    if _set_here:
        del env[EXPERIMENTS_VARIABLE]
    return env
