"""gRPC transport boundaries: malformed request bytes are INVALID_ARGUMENT on every
method of every service (a server interceptor, before any servicer), every listener
binds 127.0.0.1 unless configured, and TLS and mutual TLS by file paths on the servers
and the orchestrator's channels, with a CA the test makes (trustme): a client without a
valid certificate is refused."""

from __future__ import annotations

import asyncio
import importlib
from pathlib import Path

import grpc
import pytest
import trustme
from grpc_health.v1 import health_pb2, health_pb2_grpc

from regen.common import tls
from regen.common.grpc_server import CoreSlot, GrpcHost
from regen.common.settings import TLSFiles
from regen.common.tls import TLSConfigError

SERVICES = ("describer", "generator", "scorer")
# Not a valid encoding of any message: a field with wire type 7 (which does not exist),
# and a length-delimited field cut short.
CORRUPT = b"\x0f\xff\xff\xff\xff"
TRUNCATED = b"\x0a\x05ab"
# Field 1 holding invalid UTF-8: refused where it is a string (VariantsRequest.prompt).
BAD_UTF8 = b"\x0a\x02\xff\xfe"


def definition(service: str):
    return importlib.import_module(f"regen.{service}.grpc_api").DEFINITION


def methods(service: str) -> list[str]:
    from regen.v1 import describer_pb2, generator_pb2, scorer_pb2

    module = {"describer": describer_pb2, "generator": generator_pb2, "scorer": scorer_pb2}[service]
    svc = module.DESCRIPTOR.services_by_name[service.capitalize()]
    return [f"/{svc.full_name}/{m.name}" for m in svc.methods]


async def started(service: str, **kwargs) -> GrpcHost:
    host = GrpcHost("127.0.0.1", 0, **kwargs)
    await host.start(definition(service).registrations(CoreSlot()))
    return host


@pytest.mark.parametrize("service", SERVICES)
def test_malformed_request_bytes_are_invalid_argument_on_every_method(service: str) -> None:
    async def main() -> list[tuple[str, grpc.StatusCode, str]]:
        host = await started(service)
        seen = []
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
                for method in methods(service):
                    streaming = method.endswith("/Generate")
                    call = channel.unary_stream(method) if streaming else channel.unary_unary(method)
                    for payload in (CORRUPT, TRUNCATED, *([BAD_UTF8] if method.endswith("/Variants") else [])):
                        with pytest.raises(grpc.aio.AioRpcError) as caught:
                            reply = call(payload, timeout=10)
                            if streaming:
                                async for _ in reply:
                                    pass
                            else:
                                await reply
                        seen.append((method, caught.value.code(), caught.value.details() or ""))
        finally:
            await host.stop(0)
        return seen

    for method, code, details in asyncio.run(main()):
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, code, details)
        assert "not a valid request message" in details, details


def test_every_listener_binds_127_0_0_1_unless_configured() -> None:
    for service in SERVICES:
        settings_class = definition(service).settings_class
        assert settings_class.model_fields["host"].default == "127.0.0.1", service


# --- TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate it
    signed, and a client certificate of another CA; as PEM files."""
    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("regen-orchestrator")
    stranger = other_ca.issue_cert("regen-orchestrator")
    files = {
        "ca": ca.cert_pem,
        "other_ca": other_ca.cert_pem,
        "server_cert": server.cert_chain_pems[0],
        "server_key": server.private_key_pem,
        "client_cert": client.cert_chain_pems[0],
        "client_key": client.private_key_pem,
        "stranger_cert": stranger.cert_chain_pems[0],
        "stranger_key": stranger.private_key_pem,
    }
    paths = {}
    for name, blob in files.items():
        paths[name] = folder / f"{name}.pem"
        blob.write_to_path(str(paths[name]))
    return paths


async def health_of(address: str, credentials: grpc.ChannelCredentials | None) -> grpc.StatusCode:
    channel = (
        grpc.aio.insecure_channel(address) if credentials is None else grpc.aio.secure_channel(address, credentials)
    )
    async with channel:
        try:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def credentials(pki, ca: str = "ca", cert: str | None = None) -> grpc.ChannelCredentials:
    return tls.channel_credentials(
        TLSFiles(
            ca_file=pki[ca],
            cert_file=pki[f"{cert}_cert"] if cert else None,
            key_file=pki[f"{cert}_key"] if cert else None,
        )
    )


def test_tls_server_refuses_plaintext_and_untrusted_clients(pki) -> None:
    async def main() -> dict[str, grpc.StatusCode]:
        host = await started("scorer", tls=TLSFiles(cert_file=pki["server_cert"], key_file=pki["server_key"]))
        address = f"127.0.0.1:{host.port}"
        try:
            return {
                "trusting client": await health_of(address, credentials(pki)),
                "plaintext client": await health_of(address, None),
                "client trusting another CA": await health_of(address, credentials(pki, ca="other_ca")),
            }
        finally:
            await host.stop(0)

    codes = asyncio.run(main())
    assert codes == {
        "trusting client": grpc.StatusCode.OK,
        "plaintext client": grpc.StatusCode.UNAVAILABLE,
        "client trusting another CA": grpc.StatusCode.UNAVAILABLE,
    }


def test_mutual_tls_refuses_a_client_without_a_valid_certificate(pki) -> None:
    server_tls = TLSFiles(cert_file=pki["server_cert"], key_file=pki["server_key"], ca_file=pki["ca"])

    async def main() -> dict[str, grpc.StatusCode]:
        host = await started("generator", tls=server_tls)
        address = f"127.0.0.1:{host.port}"
        try:
            return {
                "signed client": await health_of(address, credentials(pki, cert="client")),
                "no client certificate": await health_of(address, credentials(pki)),
                "certificate of another CA": await health_of(address, credentials(pki, cert="stranger")),
                "plaintext": await health_of(address, None),
            }
        finally:
            await host.stop(0)

    codes = asyncio.run(main())
    assert codes["signed client"] == grpc.StatusCode.OK
    assert all(code == grpc.StatusCode.UNAVAILABLE for name, code in codes.items() if name != "signed client"), codes


def test_the_orchestrator_channels_speak_tls_when_configured(pki) -> None:
    from regen.orchestrator.clients import ScorerClient
    from regen.orchestrator.settings import RetryPolicy

    server_tls = TLSFiles(cert_file=pki["server_cert"], key_file=pki["server_key"], ca_file=pki["ca"])

    async def check(client_tls: TLSFiles | None) -> grpc.StatusCode:
        host = await started("scorer", tls=server_tls)
        tls.use_client_tls(client_tls)
        client = ScorerClient(f"127.0.0.1:{host.port}", RetryPolicy())
        try:
            await client.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        finally:
            await client.channel.close()
            await host.stop(0)

    try:
        with_cert = TLSFiles(ca_file=pki["ca"], cert_file=pki["client_cert"], key_file=pki["client_key"])
        assert asyncio.run(check(with_cert)) == grpc.StatusCode.OK
        assert asyncio.run(check(TLSFiles(ca_file=pki["ca"]))) == grpc.StatusCode.UNAVAILABLE
        assert asyncio.run(check(None)) == grpc.StatusCode.UNAVAILABLE
    finally:
        tls.use_client_tls(None)


def test_tls_settings_errors_name_the_setting(tmp_path, pki) -> None:
    with pytest.raises(ValueError, match="cert_file and key_file together"):
        TLSFiles(cert_file=pki["server_cert"])
    with pytest.raises(TLSConfigError, match=r"tls.key_file: cannot read .*missing.pem"):
        tls.server_credentials(TLSFiles(cert_file=pki["server_cert"], key_file=tmp_path / "missing.pem"))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(TLSConfigError, match=r"orchestrator.tls.ca_file: .*junk.pem is not a PEM file"):
        tls.use_client_tls(TLSFiles(ca_file=tmp_path / "junk.pem"))
    with pytest.raises(TLSConfigError, match="mutual TLS needs the server's cert_file"):
        tls.server_credentials(TLSFiles(ca_file=pki["ca"]))


def test_regen_check_speaks_mutual_tls(pki) -> None:
    """A vendor's server behind mTLS passes `regen check` given the CA and a client
    certificate; without them it is named unreachable, and a bad file is named by option."""
    from support import broken_generator
    from typer.testing import CliRunner

    from regen.cli.main import app

    server = tls.server_credentials(
        TLSFiles(cert_file=pki["server_cert"], key_file=pki["server_key"], ca_file=pki["ca"])
    )
    client = ["--tls-ca", str(pki["ca"]), "--tls-cert", str(pki["client_cert"]), "--tls-key", str(pki["client_key"])]
    runner = CliRunner()
    with broken_generator.serve("none", credentials=server) as address:
        trusted = runner.invoke(app, ["check", "generator", address, *client])
        plaintext = runner.invoke(app, ["check", "generator", address, "--connect-timeout", "2"])
        no_cert = runner.invoke(
            app, ["check", "generator", address, "--tls-ca", str(pki["ca"]), "--connect-timeout", "2"]
        )
    assert trusted.exit_code == 0, trusted.output
    assert "0 failed" in trusted.output
    assert plaintext.exit_code == 2 and "cannot reach" in plaintext.output and "or TLS?" in plaintext.output
    assert no_cert.exit_code == 2 and "does it trust this client?" in no_cert.output

    missing = runner.invoke(app, ["check", "generator", address, "--tls-ca", str(pki["ca"]) + ".missing"])
    assert missing.exit_code == 2 and "--tls-ca: cannot read" in missing.output
    alone = runner.invoke(app, ["check", "generator", address, "--tls-cert", str(pki["client_cert"])])
    assert alone.exit_code == 2 and "--tls-cert and --tls-key go together" in alone.output
