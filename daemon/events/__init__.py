"""CTDB's event-script interface for pyctdbd: the runner, the eventd protocol and server, and
the scripts we ship (``scripts/``)."""

from __future__ import annotations

from pathlib import Path

from .eventd import EventDaemonServer, eventd_socket_path
from .eventd_protocol import (
    CTDB_EVENT_RUN_ALL, EventCommand, EventdProtocolError, EventHeader, EventRequest,
    EventReply, RunRequest, ScriptAction, ScriptRequest, StatusReply, StatusRequest,
    WireScript, decode_reply, decode_request, encode_reply, encode_request,
)
from .runner import (
    MONITOR, OUTPUT_LIMIT, EventResult, EventRunner, ScriptResult, ScriptStatus, format_status,
    status_of,
)
from .scriptdir import EventScriptError, ScriptInfo, list_scripts, set_script_enabled
from .stock import REPLACED_STOCK_SCRIPTS, StockReplacements

SHIPPED_SCRIPTS_DIR = Path(__file__).resolve().parent / "scripts"

__all__ = [
    "CTDB_EVENT_RUN_ALL", "EventCommand", "EventDaemonServer", "EventHeader", "EventReply",
    "EventRequest", "EventResult", "EventRunner", "EventScriptError", "EventdProtocolError",
    "MONITOR", "OUTPUT_LIMIT", "REPLACED_STOCK_SCRIPTS", "RunRequest", "SHIPPED_SCRIPTS_DIR",
    "ScriptAction", "ScriptInfo", "ScriptRequest", "ScriptResult", "ScriptStatus", "StatusReply",
    "StatusRequest", "StockReplacements", "WireScript", "decode_reply", "decode_request",
    "encode_reply", "encode_request", "eventd_socket_path", "format_status", "list_scripts",
    "set_script_enabled", "status_of",
]
