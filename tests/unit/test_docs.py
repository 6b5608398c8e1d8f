"""The params reference, docs/params.md, is what rlhf.docs makes of params.yaml: every key, its default, its comment."""
import yaml

from rlhf import docs
from tests.conftest import REPO


def keys(tree: dict, prefix: str = "") -> list[str]:
    """Every dotted key of a parsed params.yaml, sections included."""
    out = []
    for key, value in tree.items():
        out.append(prefix + key)
        if isinstance(value, dict):
            out += keys(value, f"{prefix}{key}.")
    return out


def test_docs_params_md_is_generated_from_params_yaml():
    """Fails when params.yaml changed and `make docs` was not run (or docs/params.md was edited by hand)."""
    assert (REPO / "docs" / "params.md").read_text() == docs.render((REPO / "params.yaml").read_text()), \
        "docs/params.md is stale: run `make docs` (python -m rlhf.docs --write) and commit it"


def test_every_params_key_has_a_row_with_its_default():
    """Every key appears (a top-level section as a heading, any other key as a row), with the default params.yaml
    gives it."""
    text = (REPO / "params.yaml").read_text()
    rendered = docs.render(text)
    tree = yaml.safe_load(text)
    for key in keys(tree):
        assert f"| `{key}` |" in rendered or ("." not in key and f"## `{key}`" in rendered), key
    for entry in docs.entries(text):
        node = tree
        for part in entry["key"].split("."):
            node = node[part]
        if not isinstance(node, dict) or not node:
            assert yaml.safe_load(entry["default"]) == node, entry["key"]


def test_comments_attach_to_the_right_key():
    """A comment-only line far right continues the key above; one at the key's indent heads the key below; a pipe
    in a comment is escaped so the table keeps its columns."""
    text = ("top:                # the section\n"
            "  a: 1              # first line\n"
            "                    # continued\n"
            "  # heads b\n"
            "  b: x | y          # b's own\n")
    assert [(e["key"], e["default"], e["comment"]) for e in docs.entries(text)] == [
        ("top", "", "the section"), ("top.a", "1", "first line continued"), ("top.b", "x | y", "b's own heads b")]
    assert "| `top.b` | `x \\| y` | b's own heads b |" in docs.render(text)
