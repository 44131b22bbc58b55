"""The admin API's operations (``/v1/admin/...``, admin token): their response models and
entries (handlers: ``gateway.api.handlers.admin``; request models: the services')."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Final

from pydantic import Field

from gateway.api.handlers.admin import ConsentEndIn, ConsentIn
from gateway.api.openapi.common import (
    Commodity,
    Consent,
    ContractEndReason,
    Ean18,
    EndedConsent,
    LevelName,
    Out,
)
from gateway.api.openapi.spec import (
    EAN_SCHEMA,
    JSON,
    UUID_SCHEMA,
    Operation,
    Response,
    path_param,
    problems,
)
from gateway.services import clients, devices, registry
from gateway.services.clients import Granularity

TAG: Final = "admin"
_ADMIN: Final = "adminToken"
#: the problems of an operation with a JSON body, besides its own
_BODY: Final = (400, 401, 413, 415, 422, 503)


class Connection(Out):
    """The ``/v1/admin/meters`` shorthand's view: a connection with its latest contract and
    current meter (the whole history: GET /v1/admin/connections/{ean})."""

    ean: Ean18
    commodity: Commodity
    meter_id: str | None = Field(description="null: no meter installed now")
    customer_id: str
    contract_id: uuid.UUID
    contract_start: dt.datetime
    contract_end: dt.datetime | None = Field(description="exclusive; null: open-ended")
    end_reason: ContractEndReason | None
    level: LevelName
    created_at: dt.datetime
    updated_at: dt.datetime


class AdminContract(Out):
    """A supply contract on a connection (SPEC §3a). Level and consents belong to it; a new
    contract starts at the default level with no consent."""

    contract_id: uuid.UUID
    ean: Ean18
    customer_id: str
    start: dt.datetime
    end: dt.datetime | None = Field(description="exclusive; null: open-ended")
    end_reason: ContractEndReason | None
    level: LevelName
    created_at: dt.datetime
    updated_at: dt.datetime


class MeterInstallation(Out):
    """A meter installed on the connection during [installed_from, installed_until)."""

    meter_id: str
    installed_from: dt.datetime
    installed_until: dt.datetime | None = Field(description="null: still installed")


class ConnectionHistory(Out):
    """A connection with its whole contract and meter history, oldest first."""

    ean: Ean18
    commodity: Commodity
    created_at: dt.datetime
    contracts: list[AdminContract]
    meters: list[MeterInstallation]


class Device(Out):
    """A field device (never its token)."""

    device_id: uuid.UUID
    meter_ids: list[str]
    created_at: dt.datetime
    revoked_at: dt.datetime | None = Field(description="null: the token works")


class NewDevice(Out):
    """A registered device and its token (shown in this answer only)."""

    device_id: uuid.UUID
    token: str
    meter_ids: list[str]


class DeviceList(Out):
    """Every device, oldest first."""

    devices: list[Device]


class DataClient(Out):
    """A data client (never its token)."""

    client_id: uuid.UUID
    name: str
    granularities: list[Granularity]
    purposes: list[str]
    webhook_url: str | None
    created_at: dt.datetime
    rotated_at: dt.datetime | None
    revoked_at: dt.datetime | None


class DataClientWithToken(DataClient):
    """A data client and its token (shown in this answer only)."""

    token: str


class DataClientList(Out):
    """Every data client."""

    clients: list[DataClient]


_EAN: Final = path_param(
    "ean", EAN_SCHEMA, "EAN-18 connection code with a valid GS1 check digit (else 422)"
)


def _id(what: str) -> dict[str, object]:
    return path_param("id", UUID_SCHEMA, f"{what} id (anything else answers 404)")


OPERATIONS: Final[list[Operation]] = [
    Operation(
        "POST",
        "/v1/admin/meters",
        "registerMeter",
        TAG,
        "Register a connection with its first contract and meter",
        description="Shorthand for a new EAN: the connection, a supply contract from "
        "`contract_start` (default level, no consent) and the meter installed from the same "
        "instant. Further contracts: POST /v1/admin/contracts; meter exchanges: POST "
        "/v1/admin/connections/{ean}/meter-exchange.",
        security=_ADMIN,
        request={JSON: registry.ConnectionIn},
        responses={201: Response("registered", {JSON: Connection})},
        problems=problems(
            *_BODY,
            409,
            says={
                409: "the EAN is already registered (add a contract to it), or the meter is "
                "installed on another connection (named in `detail`)"
            },
        ),
    ),
    Operation(
        "GET",
        "/v1/admin/meters/{ean}",
        "getMeter",
        TAG,
        "Show a connection: its latest contract and current meter",
        security=_ADMIN,
        parameters=(_EAN,),
        responses={200: Response("the connection", {JSON: Connection})},
        problems=problems(
            401, 404, 422, 503, says={404: "no connection with this EAN", 422: "not an EAN-18"}
        ),
    ),
    Operation(
        "PATCH",
        "/v1/admin/meters/{ean}",
        "endMeterContract",
        TAG,
        "End the contract open on the connection (contract ended, move-out or switch)",
        description="Shorthand of PATCH /v1/admin/contracts/{id} for the contract open at "
        "`contract_end`: ends it and every consent of it at the same instant.",
        security=_ADMIN,
        parameters=(_EAN,),
        request={JSON: registry.ContractEndIn},
        responses={200: Response("the ended connection", {JSON: Connection})},
        problems=problems(
            *_BODY,
            404,
            409,
            says={
                404: "no connection with this EAN",
                409: "every contract of the connection has ended, or a later contract starts "
                "before `contract_end` (named in `detail`)",
            },
        ),
    ),
    Operation(
        "GET",
        "/v1/admin/connections/{ean}",
        "getConnection",
        TAG,
        "A connection with its whole contract and meter history",
        security=_ADMIN,
        parameters=(_EAN,),
        responses={200: Response("the connection", {JSON: ConnectionHistory})},
        problems=problems(
            401, 404, 422, 503, says={404: "no connection with this EAN", 422: "not an EAN-18"}
        ),
    ),
    Operation(
        "POST",
        "/v1/admin/connections/{ean}/meter-exchange",
        "exchangeMeter",
        TAG,
        "Exchange the meter of a connection",
        description="The installation of the meter in place at `at` ends at `at` and "
        "`meter_id`'s starts at the same instant. Rebind the field device afterwards (PATCH "
        "/v1/admin/devices/{id}).",
        security=_ADMIN,
        parameters=(_EAN,),
        request={JSON: registry.MeterExchangeIn},
        responses={200: Response("the connection with its history", {JSON: ConnectionHistory})},
        problems=problems(
            *_BODY,
            404,
            409,
            says={
                404: "no connection with this EAN",
                409: "the new meter is installed on another connection then (the EAN is named "
                "in `detail`), is already this one's, or no meter is installed on the "
                "connection at `at`",
            },
        ),
    ),
    Operation(
        "POST",
        "/v1/admin/contracts",
        "addContract",
        TAG,
        "Register a supply contract on a connection (move-in, switch to us)",
        description="The contract starts at the default level with no consent; the previous "
        "tenant's choices never carry over. Contracts on one EAN never overlap; a new one may "
        "start at or after the previous one's end.",
        security=_ADMIN,
        request={JSON: registry.ContractIn},
        responses={201: Response("the new contract", {JSON: AdminContract})},
        problems=problems(
            *_BODY,
            404,
            409,
            says={
                404: "no connection with this EAN",
                409: "the period overlaps a contract of the connection (named in `detail`)",
            },
        ),
    ),
    Operation(
        "PATCH",
        "/v1/admin/contracts/{id}",
        "endContract",
        TAG,
        "End a contract (contract ended, move-out or switch)",
        description="In one transaction: the contract ends at `end`, every consent of it still "
        "open then ends at `end` with the same reason (pushed to subscribers), and the "
        "connection's readings measured at or after `end` within the contract are deleted.",
        security=_ADMIN,
        parameters=(_id("contract"),),
        request={JSON: registry.ContractPatchIn},
        responses={200: Response("the ended contract", {JSON: AdminContract})},
        problems=problems(
            *_BODY,
            404,
            409,
            says={
                404: "no such contract",
                409: "the contract has already ended, or a later contract of the connection "
                "starts before `end` (named in `detail`)",
                422: "invalid fields (listed in `errors`), or `end` not after the contract's start",
            },
        ),
    ),
    Operation(
        "POST",
        "/v1/admin/devices",
        "addDevice",
        TAG,
        "Register a field device",
        description="The token is shown in this answer only.",
        security=_ADMIN,
        request={JSON: devices.DeviceIn},
        responses={201: Response("registered", {JSON: NewDevice})},
        problems=problems(*_BODY),
    ),
    Operation(
        "GET",
        "/v1/admin/devices",
        "listDevices",
        TAG,
        "List field devices (without tokens), oldest first",
        security=_ADMIN,
        responses={200: Response("every device", {JSON: DeviceList})},
        problems=problems(401, 503),
    ),
    Operation(
        "PATCH",
        "/v1/admin/devices/{id}",
        "rebindDevice",
        TAG,
        "Bind a device to other meters (after a meter exchange)",
        description="Replaces the device's meter ids; its token stays valid.",
        security=_ADMIN,
        parameters=(_id("device"),),
        request={JSON: devices.DeviceIn},
        responses={200: Response("the device", {JSON: Device})},
        problems=problems(
            *_BODY, 404, 409, says={404: "no such device", 409: "the device is revoked"}
        ),
    ),
    Operation(
        "POST",
        "/v1/admin/devices/{id}/revoke",
        "revokeDevice",
        TAG,
        "Revoke a device's token at once (a stolen or retired dongle)",
        description="Refused from now on by every gateway process. Revoking again changes nothing.",
        security=_ADMIN,
        parameters=(_id("device"),),
        responses={200: Response("the revoked device", {JSON: Device})},
        problems=problems(401, 404, 503, says={404: "no such device"}),
    ),
    Operation(
        "POST",
        "/v1/admin/consents",
        "addConsent",
        TAG,
        "Record an interval consent the customer gave elsewhere (phone, paper)",
        description="The same rules as the customer's own grant.",
        security=_ADMIN,
        request={JSON: ConsentIn},
        responses={201: Response("the consent", {JSON: Consent})},
        problems=problems(
            *_BODY,
            404,
            409,
            says={
                404: "no connection with this EAN, or no contract of this customer on it",
                409: "a consent for this purpose is already active, or no contract is in force",
            },
        ),
    ),
    Operation(
        "POST",
        "/v1/admin/consents/{id}/end",
        "endConsent",
        TAG,
        "End a consent",
        description="Deletes interval readings the consent no longer covers, in the same "
        "transaction.",
        security=_ADMIN,
        parameters=(_id("consent"),),
        request={JSON: ConsentEndIn},
        responses={200: Response("the ended consent", {JSON: EndedConsent})},
        problems=problems(
            *_BODY,
            404,
            409,
            says={404: "no such consent", 409: "the consent has ended or expired already"},
        ),
    ),
    Operation(
        "POST",
        "/v1/admin/clients",
        "addClient",
        TAG,
        "Register a data client (billing system, other recipient)",
        security=_ADMIN,
        request={JSON: clients.ClientIn},
        responses={
            201: Response("the client and its token (shown only here)", {JSON: DataClientWithToken})
        },
        problems=problems(*_BODY),
    ),
    Operation(
        "GET",
        "/v1/admin/clients",
        "listClients",
        TAG,
        "List data clients (without tokens)",
        security=_ADMIN,
        responses={200: Response("every client", {JSON: DataClientList})},
        problems=problems(401, 503),
    ),
    Operation(
        "GET",
        "/v1/admin/clients/{id}",
        "getClient",
        TAG,
        "One data client (without token)",
        security=_ADMIN,
        parameters=(_id("client"),),
        responses={200: Response("the client", {JSON: DataClient})},
        problems=problems(401, 404, 503, says={404: "no such client"}),
    ),
    Operation(
        "POST",
        "/v1/admin/clients/{id}/rotate",
        "rotateClient",
        TAG,
        "Issue a new token for a client; the old token stops working",
        security=_ADMIN,
        parameters=(_id("client"),),
        responses={
            200: Response(
                "the client and its new token (shown only here)", {JSON: DataClientWithToken}
            )
        },
        problems=problems(401, 404, 409, 503, says={404: "no such client", 409: "revoked"}),
    ),
    Operation(
        "POST",
        "/v1/admin/clients/{id}/revoke",
        "revokeClient",
        TAG,
        "Revoke a client's token",
        security=_ADMIN,
        parameters=(_id("client"),),
        responses={200: Response("the revoked client", {JSON: DataClient})},
        problems=problems(401, 404, 409, 503, says={404: "no such client", 409: "revoked"}),
    ),
]
