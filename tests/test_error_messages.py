"""What a user reads when a backend cannot be reached: the host and port, and why; no object reprs (aiohttp's
``ssl:<ssl.SSLContext object at 0x...>``), in the error and in what genroute logs."""

from __future__ import annotations

import logging
import re

import pytest

from genroute import BackendUnavailable, Router
from genroute.engines.errors import map_error
from genroute.testing import Fault

from .conftest import gemini_config
from .server_ports import free_port

_REPR = re.compile(r"object at 0x|<\w+(\.\w+)* object")


def _refused_config(gemini_server) -> tuple[dict, int]:
    port = free_port()  # nothing listens there: the connection is refused
    config = gemini_config(gemini_server)
    config["engines"]["gemini"]["base_url"] = f"http://127.0.0.1:{port}"
    return config, port


@pytest.mark.parametrize("call", ["generate", "stream"])
def test_a_refused_connection_names_the_host_and_port_and_the_cause(gemini_server, call, caplog) -> None:
    config, port = _refused_config(gemini_server)
    with Router.from_config(config) as router, caplog.at_level(logging.DEBUG, logger="genroute"), \
            pytest.raises(BackendUnavailable) as failed:
        if call == "generate":
            router.generate("hi")
        else:
            list(router.stream("hi"))
    message = str(failed.value)
    assert f"cannot connect to 127.0.0.1:{port}: Connection refused" in message
    assert not _REPR.search(message) and "ssl:" not in message
    logged = [r.getMessage() for r in caplog.records]
    assert not [line for line in logged if _REPR.search(line)]


def test_a_connection_the_server_resets_names_where_it_was_sent(gemini_server) -> None:
    config = gemini_config(gemini_server)
    config["engines"]["gemini"]["retry"]["attempts"] = 1
    gemini_server.fault(Fault.reset())
    with Router.from_config(config) as router, pytest.raises(BackendUnavailable) as failed:
        router.generate("hi")
    message = str(failed.value)
    assert f"(at 127.0.0.1:{gemini_server.port})" in message and "reset" in message.lower()
    assert not _REPR.search(message)


def test_an_object_repr_in_a_transport_errors_text_is_its_class_name() -> None:
    class Handle:
        pass

    mapped = map_error(ConnectionResetError(f"lost {object.__repr__(Handle())} mid-read"))
    assert isinstance(mapped, BackendUnavailable)
    assert str(mapped) == "ConnectionResetError: lost Handle mid-read"
