"""The manual matches the binary.

- every directive `xrayd --list-directives` reports has a doc line and an
  anchor in html-docs/directives.html (d-NAME for core directives,
  d-MODULE-NAME for a filter module's);
- the committed directives.html is exactly what contrib/gen-directive-docs.py
  produces from the binary now, so the reference cannot drift;
- every internal link of every html-docs page (file and #fragment) resolves.

The binary is $XRAYD_BIN, or objs/xrayd in the repository.  Stdlib only.
"""

import html.parser
import os
import subprocess
import sys
import urllib.parse

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(REPO, "html-docs")
GEN = os.path.join(REPO, "contrib", "gen-directive-docs.py")
DIRECTIVES_HTML = os.path.join(DOCS, "directives.html")


def xrayd_bin():
    path = os.path.abspath(os.environ.get("XRAYD_BIN") or os.path.join(REPO, "objs", "xrayd"))
    if not os.access(path, os.X_OK):
        pytest.fail("no xrayd binary at %s: run `make` first (or set XRAYD_BIN)" % path)
    return path


def list_directives():
    r = subprocess.run([xrayd_bin(), "--list-directives"], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    rows = []
    for line in r.stdout.decode("utf-8").splitlines():
        if not line.strip():
            continue
        fields = line.split("\t", 4)
        assert len(fields) == 5, "want name<TAB>contexts<TAB>type<TAB>default<TAB>doc: %r" % line
        rows.append([f.strip() for f in fields])
    assert rows, "--list-directives printed nothing"
    return rows


class PageParser(html.parser.HTMLParser):
    """Collects the ids and the href/src targets of one page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids = set()
        self.dup_ids = set()
        self.links = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("id", "name") and value is not None and (name == "id" or tag == "a"):
                if value in self.ids and name == "id":
                    self.dup_ids.add(value)
                self.ids.add(value)
            if name in ("href", "src") and value is not None:
                self.links.append((tag, value, self.getpos()[0]))


def parse_page(path):
    p = PageParser()
    with open(path, encoding="utf-8") as f:
        p.feed(f.read())
    p.close()
    return p


def html_pages():
    return sorted(f for f in os.listdir(DOCS) if f.endswith(".html"))


# Nested blocks (of a relay block, or the agent's); their directives are
# anchored d-BLOCK-NAME.
# "proxy" is such a block only for a directive no other block takes (the
# ones shared with relay blocks keep d-NAME).
BLOCKS = ("tls", "upstream_tls", "agent", "application", "peer", "http", "proxy", "firewall")


def _blocks(ctx):
    return [c for c in ctx if c in BLOCKS and (c != "proxy" or ctx == ["proxy"])]


def expected_anchors(rows):
    for name, contexts, _type, _default, _doc in rows:
        ctx = [c.strip() for c in contexts.split(",") if c.strip()]
        modules = [c[len("filter:"):] for c in ctx if c.startswith("filter:")]
        blocks = _blocks(ctx)
        if any(not c.startswith("filter:") and c not in blocks for c in ctx):
            yield name, "d-" + name
        for m in modules:
            yield "%s (filter %s)" % (name, m), "d-%s-%s" % (m, name)
        for b in blocks:
            yield "%s (%s)" % (name, b), "d-%s-%s" % (b, name)


def test_every_directive_has_a_doc_line():
    rows = list_directives()
    missing = [r[0] + " (" + r[1] + ")" for r in rows if r[4] in ("", "-")]
    assert not missing, "directives without a doc line: " + ", ".join(missing)
    bad_ctx = [r[0] for r in rows
               if not all(c in ("main", "relay") + BLOCKS or c.startswith("filter:")
                          for c in r[1].split(","))]
    assert not bad_ctx, "directives with an unknown context: " + ", ".join(bad_ctx)


def test_every_directive_has_an_anchor():
    rows = list_directives()
    ids = parse_page(DIRECTIVES_HTML).ids
    missing = ["%s -> #%s" % (what, anchor)
               for what, anchor in expected_anchors(rows) if anchor not in ids]
    assert not missing, ("directives.html lacks anchors (regenerate it with "
                         "`python3 contrib/gen-directive-docs.py objs/xrayd "
                         "html-docs/directives.html`): " + "; ".join(missing))


def test_committed_reference_is_current():
    r = subprocess.run([sys.executable, GEN, xrayd_bin()], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr.decode(errors="replace")
    with open(DIRECTIVES_HTML, encoding="utf-8") as f:
        committed = f.read()
    assert r.stdout.decode("utf-8") == committed, (
        "html-docs/directives.html differs from what the generator produces now; "
        "run `python3 contrib/gen-directive-docs.py objs/xrayd html-docs/directives.html` "
        "and commit the result")


def test_internal_links_resolve():
    pages = html_pages()
    assert "index.html" in pages and "directives.html" in pages
    parsed = {p: parse_page(os.path.join(DOCS, p)) for p in pages}
    broken = []
    for page, parser in parsed.items():
        for dup in sorted(parser.dup_ids):
            broken.append("%s: duplicate id %r" % (page, dup))
        for tag, link, line in parser.links:
            u = urllib.parse.urlsplit(link)
            if u.scheme or u.netloc or link.startswith("//"):
                continue  # external: not checked offline
            target = page if u.path == "" else os.path.normpath(
                os.path.join(os.path.dirname(page), urllib.parse.unquote(u.path)))
            full = os.path.join(DOCS, target)
            if not os.path.isfile(full):
                broken.append("%s:%d: %s -> no file %s" % (page, line, link, target))
                continue
            if u.fragment:
                if target not in parsed:
                    broken.append("%s:%d: %s -> fragment into a non-page" % (page, line, link))
                elif urllib.parse.unquote(u.fragment) not in parsed[target].ids:
                    broken.append("%s:%d: %s -> no id %r in %s"
                                  % (page, line, link, u.fragment, target))
    assert not broken, "broken internal links:\n  " + "\n  ".join(broken)
