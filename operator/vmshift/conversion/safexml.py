"""Hardened parsing of untrusted XML into a small tree. Pure: no I/O except reading the data given.

It reads only the bytes, text, stream or file it is given, with line numbers kept. Parsing goes through
defusedxml's expat reader: entity declarations and external references are refused by it, and a
document type declaration of any kind is refused here (an OVF descriptor needs none, and DTDs are
where billion-laughs and XXE attacks live). The size is bounded before parsing when it is known and
while reading when it is not; depth, element count and kept text are bounded while parsing, so a
hostile document costs little time and memory before it is refused.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any
from xml.sax import SAXParseException
from xml.sax.handler import ContentHandler, ErrorHandler

from defusedxml.common import EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.expatreader import DefusedExpatParser

MiB = 1024 * 1024


@dataclass(frozen=True)
class XmlLimits:
    """How much an untrusted document may cost before it is refused."""

    #: Largest document accepted, in bytes (UTF-8 bytes for text input).
    max_bytes: int = 8 * MiB
    #: Deepest element nesting accepted. Real OVF descriptors nest about ten levels.
    max_depth: int = 64
    #: Most elements accepted. Real descriptors hold hundreds; VirtualBox's a few thousand at most.
    max_elements: int = 20_000
    #: Characters of text kept per element; the rest is read and dropped (EULAs can be long).
    max_text_chars: int = 64 * 1024
    #: Bytes read and fed to the parser at a time.
    chunk_bytes: int = 64 * 1024


DEFAULT_LIMITS = XmlLimits()


class XmlRefused(ValueError):
    """The document was refused; ``problem`` says why and ``line``/``path`` where, when known."""

    def __init__(self, problem: str, *, line: int | None = None, column: int | None = None,
                 path: str | None = None) -> None:
        self.problem = problem
        self.line = line
        self.column = column
        self.path = path
        where = []
        if line is not None:
            where.append(f"line {line}" + (f", column {column}" if column is not None else ""))
        if path:
            where.append(f"at {path}")
        super().__init__(f"{problem} ({'; '.join(where)})" if where else problem)


@dataclass(eq=False, slots=True)
class XmlNode:
    """One element: namespace URI, local name, attributes in Clark notation, line, children, text."""

    ns: str
    name: str
    attrs: dict[str, str]
    line: int
    parent: XmlNode | None = None
    children: list[XmlNode] = field(default_factory=list)
    ordinal: int = 1  # position among the parent's children of the same name, from 1
    _text: list[str] = field(default_factory=list)
    _text_len: int = 0
    _counts: dict[str, int] = field(default_factory=dict)  # children per name

    @property
    def text(self) -> str:
        """The element's own character data, stripped of surrounding white space."""
        return "".join(self._text).strip()

    def attr(self, local: str, ns: str | None = None) -> str | None:
        """The attribute ``local`` in namespace ``ns``; without ``ns``, unqualified or any namespace."""
        if ns is not None:
            return self.attrs.get(f"{{{ns}}}{local}")
        if local in self.attrs:
            return self.attrs[local]
        suffix = "}" + local
        for key, value in self.attrs.items():
            if key.endswith(suffix):
                return value
        return None

    def iter(self) -> Iterator[XmlNode]:
        """This element and every descendant, in document order."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def path(self) -> str:
        """Where the element sits, as ``/Envelope/VirtualSystem/VirtualHardwareSection/Item[3]``."""
        parts: list[str] = []
        node: XmlNode | None = self
        while node is not None:
            label = node.name
            if node.parent is not None and node.parent._counts.get(node.name, 0) > 1:
                label += f"[{node.ordinal}]"
            parts.append(label)
            node = node.parent
        return "/" + "/".join(reversed(parts))


class _Refusal(Exception):
    """Raised from inside the parser's callbacks to stop at the first limit crossed."""

    def __init__(self, problem: str, path: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path = path


class _TreeBuilder(ContentHandler):
    def __init__(self, limits: XmlLimits) -> None:
        super().__init__()
        self.limits = limits
        self.root: XmlNode | None = None
        self.current: XmlNode | None = None
        self.depth = 0
        self.elements = 0
        self.line_of: Any = lambda: None

    def startElementNS(self, name: tuple[str | None, str], qname: str | None, attrs: Any) -> None:
        self.depth += 1
        self.elements += 1
        uri, local = name
        if self.depth > self.limits.max_depth:
            raise _Refusal(f"elements nest deeper than {self.limits.max_depth} levels", self._where(local))
        if self.elements > self.limits.max_elements:
            raise _Refusal(f"the document holds more than {self.limits.max_elements} elements",
                           self._where(local))
        attributes = {
            (f"{{{a_uri}}}{a_local}" if a_uri else a_local): value
            for (a_uri, a_local), value in attrs.items()
        }
        node = XmlNode(uri or "", local, attributes, self.line_of() or 0, self.current)
        if self.current is None:
            self.root = node
        else:
            self.current.children.append(node)
            node.ordinal = self.current._counts.get(local, 0) + 1
            self.current._counts[local] = node.ordinal
        self.current = node

    def _where(self, local: str) -> str:
        if self.current is None:
            return "/" + local
        path = self.current.path()
        if len(path) > 200:  # a hostile nesting: keep the message short
            path = "..." + path[-200:]
        return f"{path}/{local}"

    def endElementNS(self, name: tuple[str | None, str], qname: str | None) -> None:
        self.depth -= 1
        if self.current is not None:
            self.current = self.current.parent

    def characters(self, content: str) -> None:
        node = self.current
        if node is None or node._text_len >= self.limits.max_text_chars:
            return
        keep = content[: self.limits.max_text_chars - node._text_len]
        node._text.append(keep)
        node._text_len += len(keep)


class _RaisingErrors(ErrorHandler):
    def warning(self, exception: BaseException) -> None:  # expat warnings are not fatal
        return None


class _Reader(DefusedExpatParser):
    """defusedxml's expat reader that also refuses every document type declaration."""

    def __init__(self) -> None:
        super().__init__(namespaceHandling=1, forbid_dtd=False, forbid_entities=True, forbid_external=True)

    def reset(self) -> None:
        super().reset()
        self._parser.StartDoctypeDeclHandler = self._start_doctype
        self._parser.EndDoctypeDeclHandler = self._end_doctype

    def _start_doctype(self, name: str, sysid: str | None, pubid: str | None, internal: bool) -> None:
        if sysid or pubid:
            raise _Refusal(
                f"the document declares an external DTD <!DOCTYPE {name} ... {sysid or pubid!r}>; "
                "external DTDs and entities are never fetched, and an OVF descriptor needs no DTD"
            )
        if not internal:
            raise _Refusal(f"the document carries a document type declaration <!DOCTYPE {name}>; "
                           "an OVF descriptor needs no DTD")
        # With an internal subset, let an entity declaration inside it be reported by name first.

    def _end_doctype(self) -> None:
        raise _Refusal("the document carries a document type declaration (DTD) with an internal subset; "
                       "an OVF descriptor needs no DTD")


class _Feeder:
    """Feeds one parser, counting bytes against the limit and translating every refusal."""

    def __init__(self, limits: XmlLimits) -> None:
        self.limits = limits
        self.reader = _Reader()
        self.builder = _TreeBuilder(limits)
        self.builder.line_of = self.reader.getLineNumber
        self.reader.setContentHandler(self.builder)
        self.reader.setErrorHandler(_RaisingErrors())
        self.fed = 0

    def _fail(self, problem: str, path: str | None = None, column: bool = True) -> XmlRefused:
        line = col = None
        try:
            line = int(self.reader.getLineNumber())
            col = int(self.reader.getColumnNumber()) if column else None
        except Exception:  # the parser may not have started yet
            pass
        if path is None and self.builder.current is not None:
            path = self.builder.current.path()
        return XmlRefused(problem, line=line, column=col, path=path)

    def feed(self, chunk: bytes | str, size: int) -> None:
        self.fed += size
        if self.fed > self.limits.max_bytes:
            raise XmlRefused(
                f"the document is larger than the limit of {self.limits.max_bytes} bytes "
                f"({self.limits.max_bytes // MiB} MiB); refused after reading {self.fed} bytes"
            )
        self._guard(lambda: self.reader.feed(chunk))

    def close(self) -> XmlNode:
        self._guard(self.reader.close)
        if self.builder.root is None:
            raise XmlRefused("the document holds no element")
        return self.builder.root

    def _guard(self, step: Any) -> None:
        try:
            step()
        except _Refusal as refusal:
            raise self._fail(refusal.problem, refusal.path) from None
        except EntitiesForbidden as exc:
            kind = "an external entity" if exc.sysid or exc.pubid else "an entity"
            target = f" pointing at {exc.sysid or exc.pubid!r}" if exc.sysid or exc.pubid else ""
            raise self._fail(
                f"the document declares {kind} {exc.name!r}{target}; entity declarations are refused "
                "(they enable entity-expansion and external-entity attacks)"
            ) from None
        except ExternalReferenceForbidden as exc:
            raise self._fail(
                f"the document refers to an external resource {exc.sysid or exc.pubid!r}; "
                "external references are never fetched"
            ) from None
        except SAXParseException as exc:
            raise XmlRefused(f"not well-formed XML: {exc.getMessage()}", line=exc.getLineNumber(),
                             column=exc.getColumnNumber()) from None
        except LookupError as exc:  # expat asks Python's codecs for an encoding it does not know itself
            raise self._fail(f"the XML declaration names an encoding that is not known ({exc}); use UTF-8") \
                from None


def parse_bytes(data: bytes | str, limits: XmlLimits = DEFAULT_LIMITS) -> XmlNode:
    """The tree of ``data`` (bytes, or text already decoded); XmlRefused names what is wrong."""
    if len(data) > limits.max_bytes:
        raise XmlRefused(
            f"the document is larger than the limit of {limits.max_bytes} bytes "
            f"({limits.max_bytes // MiB} MiB): it holds {len(data)} "
            + ("bytes" if isinstance(data, bytes) else "characters")
        )
    feeder = _Feeder(limits)
    step = limits.chunk_bytes
    for start in range(0, len(data), step):
        chunk = data[start : start + step]
        size = len(chunk.encode("utf-8")) if isinstance(chunk, str) else len(chunk)
        feeder.feed(chunk, size)
    return feeder.close()


def parse_stream(stream: IO[bytes], limits: XmlLimits = DEFAULT_LIMITS) -> XmlNode:
    """The tree of a binary stream read in chunks; refused as soon as it passes ``max_bytes``."""
    feeder = _Feeder(limits)
    while True:
        chunk = stream.read(limits.chunk_bytes)
        if not chunk:
            break
        feeder.feed(chunk, len(chunk))
    return feeder.close()


def parse_file(path: str | os.PathLike[str], limits: XmlLimits = DEFAULT_LIMITS) -> XmlNode:
    """The tree of the file at ``path``: its size is checked before anything is read."""
    size = os.stat(path).st_size
    if size > limits.max_bytes:
        raise XmlRefused(
            f"the document is larger than the limit of {limits.max_bytes} bytes "
            f"({limits.max_bytes // MiB} MiB): the file holds {size} bytes"
        )
    with open(path, "rb") as stream:
        return parse_stream(stream, limits)
