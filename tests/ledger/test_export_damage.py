"""A damaged export gets a verdict, never a traceback and never "verified".

Real exports (the demo story with its checkpoints and a witness's cosignature, and a second,
smaller registry of another operator) are damaged in every way a file can be: an item
duplicated, dropped or moved, the file cut at any byte, a bit flipped anywhere, two exports
spliced, an empty file, garbage, and items that declare lengths far beyond the file. Each time
`audit_export` must give a failed report with a position and a sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_tamper import Demo, copy_db, demo_db, url  # noqa: F401 - demo_db is a fixture

import ledger.audit as audit_module
from ledger.application import Registry
from ledger.audit import AuditReport, audit_export, export
from ledger.checkpoints import witness
from ledger.keys import Keyring


@dataclass(frozen=True)
class Export:
    data: bytes
    items: list[tuple[int, int]]  # (start, end) byte offsets of each msgpack item
    operator_key: str

    def kinds(self) -> list[str]:
        out = []
        for start, end in self.items:
            item = msgpack.unpackb(self.data[start:end], raw=False)
            out.append("header" if isinstance(item, dict) else item[0])
        return out

    def item(self, i: int) -> bytes:
        start, end = self.items[i]
        return self.data[start:end]

    def duplicated(self, i: int) -> bytes:
        """The export with item i listed twice in a row."""
        _, end = self.items[i]
        return self.data[:end] + self.item(i) + self.data[end:]

    def without(self, i: int) -> bytes:
        start, end = self.items[i]
        return self.data[:start] + self.data[end:]

    def exported_at_value(self) -> range:
        """The bytes of the header's export time: the one value nothing signs (see the test)."""
        start, end = self.items[0]
        header = self.data[start:end]
        key = msgpack.packb("exported_at")
        at = start + header.index(key) + len(key)
        value = msgpack.unpackb(self.data[at:end], raw=False)
        return range(at + 1, at + len(msgpack.packb(value)))


def item_bounds(data: bytes) -> list[tuple[int, int]]:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    bounds, start = [], 0
    for _ in unpacker:
        bounds.append((start, unpacker.tell()))
        start = unpacker.tell()
    return bounds


def write_export(app: Registry, path: Path, operator_key: str) -> Export:
    export(app.recorder, path)
    data = path.read_bytes()
    return Export(data, item_bounds(data), operator_key)


@pytest.fixture(scope="module")
def demo_export(demo_db: Demo, tmp_path_factory: pytest.TempPathFactory) -> Export:  # noqa: F811
    """The demo story's export, with its three checkpoints and fujian-eco's cosignature."""
    folder = tmp_path_factory.mktemp("demo-export")
    db = copy_db(demo_db.path, folder / "registry.db")
    app = Registry(url(db), keyring=demo_db.keyring, auto_checkpoint=False)
    try:
        witness(app, "fujian-eco", demo_db.keyring.get("fujian-eco"), folder / "w.json",
                demo_db.operator_key)
        found = write_export(app, folder / "demo.export", demo_db.operator_key)
    finally:
        app.close()
    assert found.kinds().count("w") == 1 and found.kinds().count("c") == len(demo_db.checkpoints)
    return found


@pytest.fixture(scope="module")
def other_export(tmp_path_factory: pytest.TempPathFactory) -> Export:
    """A smaller registry of another operator, with a checkpoint and a cosignature."""
    folder = tmp_path_factory.mktemp("other-export")
    keyring = Keyring()
    app = Registry(url(folder / "other.db"), keyring=keyring, auto_checkpoint=False)
    try:
        app.submit("initialise", "registry", "other-init", {
            "origin": "carbon-ledger.test/other", "operator_id": "registry", "name": "Other"})
        for pid, role in (("other-regulator", "regulator"), ("other-holder", "holder")):
            app.submit("register_participant", "registry", f"other-{pid}",
                       {"participant_id": pid, "name": pid, "role": role})
        app.operator_checkpointer().make()
        operator_key = app.projection().genesis.operator_key
        witness(app, "other-regulator", keyring.get("other-regulator"), folder / "w.json",
                operator_key)
        return write_export(app, folder / "other.export", operator_key)
    finally:
        app.close()


def verdict(tmp_path: Path, data: bytes, operator_key: str) -> AuditReport:
    """The report on `data` as an export file, which must be a refusal with a position."""
    file = tmp_path / "damaged.export"
    file.write_bytes(data)
    report = audit_export(file, operator_key, workers=1)
    assert not report.ok, f"a damaged export verified: {report.to_dict()}"
    assert report.failure is not None and report.failure.position >= 1 and report.failure.what
    return report


def test_the_undamaged_exports_verify(demo_export: Export, other_export: Export,
                                      tmp_path: Path) -> None:
    for e in (demo_export, other_export):
        file = tmp_path / "clean.export"
        file.write_bytes(e.data)
        report = audit_export(file, e.operator_key, workers=1)
        assert report.ok, report.to_dict()
        assert report.cosignatures == 1
    # the splices below change the counts only because the two sizes differ
    assert len(demo_export.items) != len(other_export.items)


# The damage, case by case, with the position and sentence it gets ----------------------------

def test_a_checkpoint_listed_twice_is_named_at_its_size(demo_export: Export, tmp_path: Path) -> None:
    i = demo_export.kinds().index("c")
    size = msgpack.unpackb(demo_export.item(i))[1]
    _, end = demo_export.items[i]
    failure = verdict(tmp_path, demo_export.duplicated(i), demo_export.operator_key).failure
    assert failure.position == size
    assert f"the checkpoint at size {size} is listed twice" in failure.what
    assert f"byte {end:,}" in failure.what


def test_a_cosignature_listed_twice_is_named_at_its_size(demo_export: Export,
                                                         tmp_path: Path) -> None:
    i = demo_export.kinds().index("w")
    size = msgpack.unpackb(demo_export.item(i))[1]
    failure = verdict(tmp_path, demo_export.duplicated(i), demo_export.operator_key).failure
    assert failure.position == size
    assert f"fujian-eco's cosignature of the checkpoint at size {size} is listed twice" in failure.what


def test_checkpoints_out_of_order_are_named(demo_export: Export, tmp_path: Path) -> None:
    kinds = demo_export.kinds()
    first = kinds.index("c")
    a, b = demo_export.item(first), demo_export.item(first + 1)
    start, _ = demo_export.items[first]
    _, end = demo_export.items[first + 1]
    data = demo_export.data[:start] + b + a + demo_export.data[end:]
    failure = verdict(tmp_path, data, demo_export.operator_key).failure
    assert failure.position == msgpack.unpackb(a)[1]
    assert "out of order" in failure.what


def test_a_cosignature_without_its_checkpoint_is_named(demo_export: Export, tmp_path: Path) -> None:
    kinds = demo_export.kinds()
    last_checkpoint = len(kinds) - 1 - kinds[::-1].index("c")
    size = msgpack.unpackb(demo_export.item(last_checkpoint))[1]
    failure = verdict(tmp_path, demo_export.without(last_checkpoint),
                      demo_export.operator_key).failure
    assert failure.position == size
    assert f"names no checkpoint at size {size} in the file" in failure.what


@pytest.mark.parametrize("cut", [0, 1, 7])
def test_an_export_cut_to_nothing_is_named_at_position_1(demo_export: Export, tmp_path: Path,
                                                          cut: int) -> None:
    failure = verdict(tmp_path, demo_export.data[:cut], demo_export.operator_key).failure
    assert failure.position == 1
    assert "not a carbon-ledger export" in failure.what or "empty" in failure.what


def test_an_export_cut_after_some_records_is_audited_up_to_the_cut(demo_export: Export,
                                                                   tmp_path: Path) -> None:
    # cut in the middle of record 41: records 1..40 are checked, the failure is at 41
    start, end = demo_export.items[41]
    report = verdict(tmp_path, demo_export.data[:(start + end) // 2], demo_export.operator_key)
    assert report.failure.position <= 41
    assert report.records == report.failure.position - 1


def test_garbage_and_a_foreign_file_are_not_exports(demo_db: Demo, tmp_path: Path) -> None:  # noqa: F811
    for data in (bytes(range(256)) * 4, demo_db.path.read_bytes()[:4096], b'{"format": 1}'):
        failure = verdict(tmp_path, data, demo_db.operator_key).failure
        assert failure.position == 1


def test_a_huge_declared_length_is_refused_without_reading_it(demo_export: Export,
                                                              tmp_path: Path) -> None:
    _, header_end = demo_export.items[0]
    for bomb in HUGE:
        data = demo_export.data[:header_end] + bomb + demo_export.data[header_end:]
        failure = verdict(tmp_path, data, demo_export.operator_key).failure
        assert failure.position == 1, bomb


def test_items_after_the_end_are_named(demo_export: Export, tmp_path: Path) -> None:
    failure = verdict(tmp_path, demo_export.data + demo_export.item(1),
                      demo_export.operator_key).failure
    assert "after the end marker" in failure.what


def test_a_header_with_a_field_of_its_own_is_refused(demo_export: Export, tmp_path: Path) -> None:
    start, end = demo_export.items[0]
    header = msgpack.unpackb(demo_export.item(0), raw=False)
    header["note"] = "added"
    data = msgpack.packb(header) + demo_export.data[end:]
    failure = verdict(tmp_path, data, demo_export.operator_key).failure
    assert failure.position == 1 and "note" in failure.what


def test_damage_read_by_the_reader_process_gets_the_same_verdict(
        demo_export: Export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start, end = demo_export.items[41]
    data = demo_export.data[:(start + end) // 2]
    inline = verdict(tmp_path, data, demo_export.operator_key).failure
    monkeypatch.setattr(audit_module, "READER_MIN_RECORDS", 0)
    assert verdict(tmp_path, data, demo_export.operator_key).failure == inline


# Any damage at all --------------------------------------------------------------------------

# Items that declare far more than the file holds: arrays, maps, bytes, text and an extension
# of 2^32 - 1 elements or bytes, and an array of 65,535.
HUGE = [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff",
        b"\xdb\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01", b"\xdc\xff\xff",
        b"\x97\xa1r\x01\xc6\xff\xff\xff\x00"]


@st.composite
def damaged(draw: st.DrawFn, demo: Export, other: Export) -> bytes:
    e = demo
    n = len(e.items)
    kinds = e.kinds()
    how = draw(st.sampled_from(["duplicate", "drop", "swap", "truncate", "flip", "splice items",
                                "splice bytes", "garbage", "garbage after the header", "huge"]))
    if how == "duplicate":
        return e.duplicated(draw(st.integers(0, n - 1)))
    if how == "drop":
        # A checkpoint or a cosignature may go unnoticed (an export proves what it holds, not
        # that it is whole: docs/audit.md); the header, a record and the end may not.
        i = draw(st.sampled_from([i for i, k in enumerate(kinds) if k in ("header", "r", "end")]))
        return e.without(i)
    if how == "swap":
        i = draw(st.integers(0, n - 2))
        j = draw(st.integers(i + 1, n - 1))
        parts = [e.item(k) for k in range(n)]
        parts[i], parts[j] = parts[j], parts[i]
        return b"".join(parts)
    if how == "truncate":
        return e.data[:draw(st.integers(0, len(e.data) - 1))]
    if how == "flip":
        # Every bit but those of the export time in the header, which nothing signs or counts:
        # a changed time is no damage anyone could find.
        unsigned = e.exported_at_value()
        at = draw(st.integers(0, len(e.data) - 1).filter(lambda b: b not in unsigned))
        bit = draw(st.integers(0, 7))
        return e.data[:at] + bytes([e.data[at] ^ (1 << bit)]) + e.data[at + 1:]
    if how == "splice items":
        i = draw(st.integers(0, n))
        j = draw(st.integers(0, len(other.items) - 1))  # at least the other's end marker
        prefix = e.data[:e.items[i][0]] if i < n else e.data
        return prefix + other.data[other.items[j][0]:]
    if how == "splice bytes":
        x = draw(st.integers(0, len(e.data)))
        y = draw(st.integers(0, len(other.data) - 1))
        return e.data[:x] + other.data[y:]
    if how == "garbage":
        return draw(st.binary(max_size=2048))
    if how == "garbage after the header":
        return e.item(0) + draw(st.binary(min_size=1, max_size=512))
    i = draw(st.integers(1, n - 1))
    start, end = e.items[i]
    bomb = draw(st.sampled_from(HUGE))
    return e.data[:start] + bomb + (e.data[start:] if draw(st.booleans()) else e.data[end:])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
@example(data=None)  # the export with one checkpoint listed twice, always
def test_any_damage_gets_a_verdict_with_a_position(demo_export: Export, other_export: Export,
                                                   tmp_path: Path, data: st.DataObject) -> None:
    if data is None:
        damaged_bytes = demo_export.duplicated(demo_export.kinds().index("c"))
    else:
        damaged_bytes = data.draw(damaged(demo_export, other_export))
    verdict(tmp_path, damaged_bytes, demo_export.operator_key)

