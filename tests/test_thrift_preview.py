"""Argument previews: readable, identical across protocols, and cut at the limit."""

from __future__ import annotations

import pytest
from thrift.Thrift import TType
from thrift_messages import ALL_PROTOCOLS, message

from gateway.thrift import MalformedMessage, ProtocolKind
from gateway.thrift.preview import preview_args

FIELDS = [
    (1, TType.STRING, b"disk full"),
    (2, (TType.LIST, TType.I32), [1, 2]),
    (3, (TType.MAP, TType.STRING, TType.DOUBLE), [(b"k", 1.5)]),
    (4, TType.STRUCT, [(1, TType.BOOL, True), (2, TType.STRING, b"\xff\x00")]),
]


@pytest.mark.parametrize("kind", ALL_PROTOCOLS)
def test_preview_renders_arguments_by_field_id(kind: ProtocolKind) -> None:
    """Every protocol gives the same text: fields by id, JSON strings, hex for non-UTF-8."""
    text = preview_args(message(kind, "alertSupervisor", FIELDS), kind, 200)
    assert text == '{1: "disk full", 2: [1, 2], 3: {"k": 1.5}, 4: {1: true, 2: 0xff00}}'


def test_preview_is_cut_at_the_limit() -> None:
    """Longer arguments are cut to ``limit`` characters plus an ellipsis."""
    data = message(ProtocolKind.BINARY, "alertSupervisor", [(1, TType.STRING, b"x" * 10_000)])
    assert preview_args(data, ProtocolKind.BINARY, 12) == '{1: "xxxxxxx…'


def test_preview_of_a_malformed_body_raises() -> None:
    """A body that breaks before the preview is full is a MalformedMessage, as for call keys."""
    data = message(ProtocolKind.BINARY, "alertSupervisor", FIELDS)
    with pytest.raises(MalformedMessage):
        preview_args(data[:-12], ProtocolKind.BINARY, 500)
