"""Offline Earth Engine test helpers: reading the Cloud API serialization of an ee object, fake HTTP errors
and a fake clock. Used by the tests of pipeline/earthengine (mosaic, exports, ingest, post-steps)."""
from __future__ import annotations

import json
import re

import ee
import googleapiclient.errors
import httplib2

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def http_error(status: int, message: str = "server says no") -> googleapiclient.errors.HttpError:
    """A googleapiclient HttpError as the Cloud API client raises it."""
    response = httplib2.Response({"status": str(status), "reason": message})
    content = json.dumps({"error": {"code": status, "message": message}}).encode()
    return googleapiclient.errors.HttpError(response, content)


class Recorder:
    """A fake clock whose sleep advances it, recording every sleep."""

    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def walk_tree(tree) -> list[tuple[str, dict]]:
    """Every (functionName, arguments) inside an already-serialized Cloud API tree."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if "functionInvocationValue" in node:
                call = node["functionInvocationValue"]
                # A call of a computed function (e.g. a parsed expression) has a functionReference instead of a name.
                found.append((call.get("functionName", "(functionReference)"), call.get("arguments", {})))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree)
    return found


def invocations(obj) -> list[tuple[str, dict]]:
    """Every (functionName, arguments) in the expanded Cloud API serialization of an ee object."""
    return walk_tree(ee.serializer.encode(obj, is_compound=False, for_cloud_api=True))


def const(argument):
    """The constant of a serialized argument (None when it is not a constant)."""
    return argument.get("constantValue") if isinstance(argument, dict) else None


def calls(obj, name: str) -> list[dict]:
    """The arguments of every invocation of `name`."""
    return [args for fn, args in invocations(obj) if fn == name]
