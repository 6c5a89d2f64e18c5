"""Pure parts of the local stack."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import pytest

from worker import stack


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xF8 makes the first base64 character '-', which the storage tool
    # would take for an option.
    ids: Iterator[uuid.UUID] = iter(
        [uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" + bytes(15))]
    )
    monkeypatch.setattr(uuid, "uuid4", lambda: next(ids))
    cluster_id = stack.new_cluster_id()
    assert not cluster_id.startswith("-")
    assert base64.urlsafe_b64decode(cluster_id + "==") == b"\x01" + bytes(15)
