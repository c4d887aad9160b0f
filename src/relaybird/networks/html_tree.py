"""A small element tree from the standard library's HTML parser, for reading Mastodon's HTML.

Mastodon's status HTML is a handful of tags (`p`, `br`, `a`, `span`, a few formatting ones) that
the server has already sanitised; reading it needs elements, their attributes and their text, in
order. BeautifulSoup did that on top of the same `html.parser`, at several times the cost per
status and ~5 MB of imports, for features (searching, editing, encodings) never used here.

The tree follows the lenient rules browsers and BeautifulSoup's `html.parser` builder share for
bad markup: an end tag closes the nearest open element of its name (and whatever was opened inside
it), an end tag with no open element of its name is ignored, void elements never have children,
and whatever is still open at the end is closed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser

#: Elements that never have content, so that their end tag (if any) is not waited for.
VOID_ELEMENTS = frozenset(
    {
        "area",
        "base",
        "br",
        "col",
        "embed",
        "hr",
        "img",
        "input",
        "link",
        "meta",
        "param",
        "source",
        "track",
        "wbr",
    }
)


@dataclass
class Element:
    """An element: its lower-case name, its attributes (last one wins) and its children in order.

    Children are text (`str`) or elements; comments, declarations and processing instructions are
    not kept, as no reader of a status wants them.
    """

    name: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list[Element | str] = field(default_factory=list)

    def get(self, attribute: str) -> str | None:
        return self.attrs.get(attribute)

    def get_text(self) -> str:
        """All text inside, in document order; iterative, so any depth of nesting is safe."""
        parts: list[str] = []
        stack: list[Element | str] = [self]
        while stack:
            node = stack.pop()
            if isinstance(node, str):
                parts.append(node)
            else:
                stack.extend(reversed(node.children))
        return "".join(parts)

    def find_all(self, name: str) -> list[Element]:
        """Every element of that name inside, in document order (iterative, like `get_text`)."""
        found: list[Element] = []
        stack: list[Element] = [
            child for child in reversed(self.children) if not isinstance(child, str)
        ]
        while stack:
            node = stack.pop()
            if node.name == name:
                found.append(node)
            stack.extend(child for child in reversed(node.children) if not isinstance(child, str))
        return found


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("[document]")
        self.open: list[Element] = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {name: value or "" for name, value in attrs})
        self.open[-1].children.append(element)
        if tag not in VOID_ELEMENTS:
            self.open.append(element)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.open[-1].children.append(Element(tag, {name: value or "" for name, value in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.open) - 1, 0, -1):
            if self.open[depth].name == tag:
                del self.open[depth:]
                return

    def handle_data(self, data: str) -> None:
        children = self.open[-1].children
        if children and isinstance(children[-1], str):
            children[-1] += data
        else:
            children.append(data)


def parse_html(html: str) -> Element:
    """The document as a tree under an element named `[document]`; never raises for markup."""
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root
