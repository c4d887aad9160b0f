"""The element tree that Mastodon's status HTML is read with, on good and on broken markup."""

from __future__ import annotations

from relaybird.networks.html_tree import Element, parse_html
from relaybird.networks.mastodon_format import html_to_text


def names(element: Element) -> list[object]:
    return [
        child if isinstance(child, str) else (child.name, names(child))
        for child in element.children
    ]


def test_elements_attributes_and_text_in_document_order() -> None:
    root = parse_html(
        '<p>Hi <a href="https://x.example/" class="u-url mention">@<span>bob</span></a>!</p>'
    )
    assert names(root) == [("p", ["Hi ", ("a", ["@", ("span", ["bob"])]), "!"])]
    link = root.find_all("a")[0]
    assert link.get("href") == "https://x.example/"
    assert link.get("class") == "u-url mention"
    assert root.get_text() == "Hi @bob!"


def test_entities_are_decoded_and_attributes_without_value_are_empty() -> None:
    root = parse_html("<p>a &amp; b &lt;3 &#128038; &unknown;</p><input disabled>")
    assert root.get_text() == "a & b <3 \U0001f426 &unknown;"
    assert root.find_all("input")[0].get("disabled") == ""


def test_void_elements_take_no_children_and_stray_end_tags_are_ignored() -> None:
    root = parse_html("<p>one<br>two</br></span>three<img src=x>four</p>")
    assert names(root) == [("p", ["one", ("br", []), "twothree", ("img", []), "four"])]


def test_an_end_tag_closes_what_was_left_open_inside_it() -> None:
    root = parse_html("<p><strong>bold <em>both</p><p>after")
    assert names(root) == [("p", [("strong", ["bold ", ("em", ["both"])])]), ("p", ["after"])]


def test_comments_and_declarations_are_not_text() -> None:
    root = parse_html("<!DOCTYPE html><p>a<!-- hidden -->b<?pi x?></p>")
    assert root.get_text() == "ab"


def test_any_depth_of_nesting_is_read_without_recursion() -> None:
    depth = 50_000
    root = parse_html("<span>" * depth + "deep" + "</span>" * depth)
    assert root.get_text() == "deep"
    assert len(root.find_all("span")) == depth
    assert html_to_text("<p>" + "<span>" * depth + "deep" + "</span>" * depth + "</p>")[0] == "deep"
