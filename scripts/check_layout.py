#!/usr/bin/env python3
"""Layout rules CI enforces (ARCHITECTURE.md, "Invariants"):

1. No import cycles between source files of a crate. A file imports another
   when it names an item defined there (`use crate::a::b::Item`, `super::X`,
   an inline `crate::a::b::f()` path); a parent's `mod child;` is not an
   import. Re-exports (`pub use child::X`) are followed to the defining file.
2. No source file over MAX_LINES lines outside tests (files named tests.rs or
   under tests/ or benches/ are tests).
3. Sans-IO cores never do I/O or read a clock: files under the core folders
   named in CORE_DIRS never mention tokio, rusqlite, axum, rumqttc, reqwest,
   std::fs, Instant::now or SystemTime::now.

Usage: python3 scripts/check_layout.py [--verbose]. Exit 1 on any violation.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CRATES = {
    "protocol": "protocol/src",
    "onnx": "onnx/src",
    "agent": "agent/src",
    "controller": "controller/src",
    "tests": "tests/src",
}
MAX_LINES = 900
CORE_DIRS = ["agent/src/core", "controller/src/core"]
CORE_BANNED = [
    r"\btokio\b",
    r"\brusqlite\b",
    r"\baxum\b",
    r"\brumqttc\b",
    r"\breqwest\b",
    r"\bstd::fs\b",
    r"Instant::now",
    r"SystemTime::now",
]

ITEM_RE = re.compile(
    r"^\s*(?:pub(?:\([^)]*\))?\s+)?(?:async\s+|const\s+|unsafe\s+|extern\s+\"C\"\s+)*"
    r"(?:struct|enum|fn|trait|type|const|static|union|macro_rules!)\s+([A-Za-z_][A-Za-z0-9_]*)",
    re.M,
)
MOD_RE = re.compile(r"^\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_0-9]+)\s*;", re.M)
USE_RE = re.compile(r"\buse\s+([^;]+);", re.S)
INLINE_RE = re.compile(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)")


def strip_comments_and_strings(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'r#*"(?:.|\n)*?"#*', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def strip_test_modules(text):
    """Drops inline `#[cfg(test)] mod NAME { ... }` blocks (brace matched)."""
    out = []
    i = 0
    pat = re.compile(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")
    while True:
        m = pat.search(text, i)
        if not m:
            out.append(text[i:])
            break
        out.append(text[i : m.start()])
        depth = 1
        j = m.end()
        while j < len(text) and depth:
            if text[j] == "{":
                depth += 1
            elif text[j] == "}":
                depth -= 1
            j += 1
        i = j
    return "".join(out)


def expand_use_tree(tree):
    """`a::{b, c::{d, e as f}}` -> [[a, b], [a, c, d], [a, c, e]]."""
    tree = re.sub(r"\s+", "", tree)

    def split_top(s):
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        if cur:
            parts.append(cur)
        return parts

    def go(prefix, s):
        if "{" in s and (s.find("{") < s.find("::") + 1000000):
            idx = s.find("{")
            head = s[:idx].rstrip(":")
            inner = s[idx + 1 : s.rfind("}")]
            head_parts = [p for p in head.split("::") if p]
            res = []
            for part in split_top(inner):
                res.extend(go(prefix + head_parts, part))
            return res
        s = re.sub(r"as\w+$", "", s) if False else s.split(" as ")[0]
        s = re.sub(r"as[A-Za-z_][A-Za-z0-9_]*$", "", s) if "as" in s and "::" not in s[-3:] else s
        parts = [p for p in s.split("::") if p]
        return [prefix + parts]

    return go([], tree)


class Crate:
    def __init__(self, name, src):
        self.name = name
        self.src = os.path.join(ROOT, src)
        self.files = {}  # module path tuple -> relative file path
        self.text = {}  # rel file -> stripped text
        self.items = {}  # rel file -> set of item names
        self.reexports = {}  # rel file -> {name: full path list}
        self.globs = {}  # rel file -> [module path lists]
        self._scan()

    def _scan(self):
        for dirpath, _dirs, names in os.walk(self.src):
            for n in names:
                if not n.endswith(".rs"):
                    continue
                full = os.path.join(dirpath, n)
                rel = os.path.relpath(full, self.src)
                parts = rel[:-3].split(os.sep)
                if parts[-1] in ("lib", "main") and len(parts) == 1:
                    mod = ()
                elif parts[-1] == "mod":
                    mod = tuple(parts[:-1])
                else:
                    mod = tuple(parts)
                if parts == ["main"] and os.path.exists(os.path.join(self.src, "lib.rs")):
                    continue  # the bin target is its own crate
                self.files[mod] = rel
                raw = open(full, encoding="utf-8").read()
                text = strip_test_modules(strip_comments_and_strings(raw))
                self.text[rel] = text
                self.items[rel] = set(ITEM_RE.findall(text)) | set(MOD_RE.findall(text))
        for mod, rel in self.files.items():
            rex, globs = {}, []
            for m in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", self.text[rel]):
                for path in expand_use_tree(m.group(1)):
                    absol = self.absolute(mod, rel, path)
                    if absol is None:
                        continue
                    if absol[-1] == "*":
                        globs.append(absol[:-1])
                    else:
                        rex[absol[-1]] = absol
            self.reexports[rel] = rex
            self.globs[rel] = globs

    def is_dir_module(self, rel):
        base = os.path.basename(rel)
        return base in ("mod.rs", "lib.rs", "main.rs")

    def absolute(self, mod, rel, path):
        if not path:
            return None
        if path[0] == "crate":
            return list(path[1:])
        if path[0] in ("self", "super"):
            cur = list(mod)
            i = 0
            if path[0] == "self":
                i = 1
            while i < len(path) and path[i] == "super":
                cur = cur[:-1]
                i += 1
            return cur + list(path[i:])
        # `use child::X` in a module refers to its child module when one exists.
        if tuple(list(mod) + [path[0]]) in self.files:
            return list(mod) + list(path)
        return None

    def resolve(self, path, depth=0):
        """Returns the file that defines the item a full path names."""
        if depth > 8:
            return None
        for k in range(len(path), -1, -1):
            mod = tuple(path[:k])
            if mod in self.files:
                rel = self.files[mod]
                rest = path[k:]
                if not rest:
                    return rel
                name = rest[0]
                if name in self.items[rel]:
                    return rel
                if name in self.reexports[rel]:
                    target = self.reexports[rel][name] + rest[1:]
                    return self.resolve(target, depth + 1) or rel
                for g in self.globs[rel]:
                    got = self.resolve(list(g) + rest, depth + 1)
                    if got and got != rel:
                        return got
                return rel
        return None

    def edges(self):
        out = {rel: set() for rel in self.text}
        for mod, rel in self.files.items():
            text = self.text[rel]
            paths = []
            for m in USE_RE.finditer(text):
                paths.extend(expand_use_tree(m.group(1)))
            for m in INLINE_RE.finditer(text):
                paths.append(m.group(1).split("::"))
            for path in paths:
                absol = self.absolute(mod, rel, path)
                if absol is None or (absol and absol[-1] == "*"):
                    if absol:
                        absol = absol[:-1]
                    else:
                        continue
                target = self.resolve(absol)
                if target and target != rel:
                    out[rel].add(target)
        return out


def sccs(graph):
    index, low, stack, on, res = {}, {}, [], set(), []
    counter = [0]
    sys.setrecursionlimit(10000)

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                res.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return res


def is_test_file(rel):
    parts = rel.split(os.sep)
    return parts[-1] == "tests.rs" or "tests" in parts[:-1] or parts[-1].endswith("_tests.rs")


def main():
    verbose = "--verbose" in sys.argv
    failures = []
    for name, src in CRATES.items():
        if not os.path.isdir(os.path.join(ROOT, src)):
            continue
        crate = Crate(name, src)
        graph = crate.edges()
        graph = {k: {t for t in v if not is_test_file(t)} for k, v in graph.items() if not is_test_file(k)}
        if verbose:
            for k in sorted(graph):
                print(f"{name}: {k} -> {sorted(graph[k])}")
        for comp in sccs(graph):
            failures.append(f"{name}: import cycle between {', '.join(src + '/' + c for c in comp)}")
        for rel in crate.text:
            if is_test_file(rel):
                continue
            n = sum(1 for _ in open(os.path.join(crate.src, rel), encoding="utf-8"))
            if n > MAX_LINES:
                failures.append(f"{name}: {src}/{rel} has {n} lines (limit {MAX_LINES} outside tests)")
    for core in CORE_DIRS:
        d = os.path.join(ROOT, core)
        if not os.path.isdir(d):
            continue
        for dirpath, _dirs, names in os.walk(d):
            for n in names:
                if not n.endswith(".rs"):
                    continue
                full = os.path.join(dirpath, n)
                rel = os.path.relpath(full, ROOT)
                text = strip_test_modules(strip_comments_and_strings(open(full, encoding="utf-8").read()))
                if is_test_file(rel):
                    continue
                for pat in CORE_BANNED:
                    if re.search(pat, text):
                        failures.append(f"{rel}: a sans-IO core mentions {pat.strip(chr(92) + 'b')}")
    for f in failures:
        print(f, file=sys.stderr)
    if failures:
        print(f"layout: {len(failures)} violation(s)", file=sys.stderr)
        return 1
    print("layout: no import cycles, no oversized files, cores free of I/O")
    return 0


if __name__ == "__main__":
    sys.exit(main())
