#!/usr/bin/env python3
"""Writes every ```cpp block of README.md into one C++ file (readme_doctest).

    extract.py README.md OUT.cpp STAMP

Convention, in README.md: a block may use the names the prose uses
throughout, predeclared (DEFAULTS below: the README network as `network` and
`net`, its `spec`, an `adam` over `network`; a block's own declarations hide
them). Anything else the prose assumes goes in an HTML comment on the line(s)
just before the block,
    <!-- doctest[ compile-only][ if=MACRO][ (note)]: C++ placed before the block -->
(helpers in prelude.h); compile-only: built, not run (a block that needs
files or peers); if=MACRO: only where MACRO is defined.

Each block gets its own namespace: `#include` lines go to the top of the
file; a block with `int main(` stays at namespace scope (main renamed);
otherwise column-0 class/struct/enum/union/template and function definitions
stay at namespace scope and the other lines form the body of a function run()
(statements, as the prose shows them). `#line` points compiler
errors at README.md. OUT.cpp is rewritten only when its text changes (a prose
edit recompiles nothing); STAMP is touched on every run.
"""
import os
import re
import sys

COMMENT = re.compile(r"<!--\s*doctest\b(?P<flags>[^:>]*?)(?::(?P<context>.*?))?\s*-->\s*$", re.S)
FLAG = re.compile(r"^(compile-only|if=\w+)$")
HOISTED = re.compile(r"^(class|struct|enum|union|template)\b")
# Column 0 only: an indented "if (x) {" inside a loop is a statement.
FUNCTION = re.compile(r"^(?=\w)(?!(?:if|for|while|switch|return|else|do)\b)[\w:<>,*& ]+?\b\w+\s*\([^=;]*\)\s*(const\s*)?(->\s*[\w:<>]+\s*)?\{\s*$")
DEFAULTS = ("  auto network = readme_network(); auto net = readme_network(); auto spec = readme_spec();\n"
            "  torch::optim::Adam adam(network->parameters());")
RESET = "#line RESET"  # placeholder, numbered once the file is assembled
MAIN = re.compile(r"\bint\s+main\s*\(")


def fail(path, line, message):
    sys.exit(f"{path}:{line}: {message}")


def blocks(path, lines):
    """Yields (first code line number, code lines, flags, context, context line number)."""
    i, fence = 0, None
    while i < len(lines):
        stripped = lines[i].strip()
        if fence is None and stripped.startswith("```"):
            fence = stripped[3:].strip().lower()
            start, indent = i + 1, len(lines[i]) - len(lines[i].lstrip())
        elif fence is not None and stripped == "```":
            if fence in ("cpp", "c++"):
                flags, context, context_line = parse_comment(path, lines, start - 1)
                code = [l[indent:] if l[:indent].strip() == "" else l for l in lines[start:i]]
                yield start + 1, code, flags, context, context_line
            fence = None
        i += 1
    if fence is not None:
        fail(path, start, "unclosed ``` block")


def parse_comment(path, lines, fence_index):
    """The doctest comment ending on the line before the fence, if any."""
    end = fence_index - 1
    if end < 0 or not lines[end].rstrip().endswith("-->"):
        return set(), "", 0
    begin = end
    while begin >= 0 and "<!--" not in lines[begin]:
        begin -= 1
    text = "\n".join(lines[begin:end + 1]).strip()
    match = COMMENT.match(text)
    if begin < 0 or not match:
        return set(), "", 0
    flags = set(re.sub(r"\([^)]*\)", " ", match.group("flags")).split())  # "(why)" notes are for readers
    for flag in flags:
        if not FLAG.match(flag):
            fail(path, begin + 1, f"unknown doctest flag {flag!r} (compile-only, if=MACRO)")
    context = match.group("context") or ""
    start = match.start("context") + len(context) - len(context.lstrip()) if context.strip() else 0
    return flags, context.strip(), begin + 1 + text[:start].count("\n")


def definition_end(code, i):
    """The last line of the definition (or declaration) starting at code[i]."""
    depth, opened = 0, False
    for j in range(i, len(code)):
        depth += code[j].count("{") - code[j].count("}")
        opened = opened or "{" in code[j]
        if depth <= 0 and (opened or code[j].rstrip().endswith(";")):
            return j
    return len(code) - 1


def split(code):
    """(namespace-scope pieces, body pieces, includes), pieces as (offset, lines)."""
    includes, scope, body = [], [], []
    if any(MAIN.search(l) for l in code):
        scope.append((0, [MAIN.sub("auto readme_main(", l) if not l.lstrip().startswith("#include") else "" for l in code]))
        includes = [l.strip() for l in code if l.lstrip().startswith("#include")]
        return scope, body, includes
    i = 0
    while i < len(code):
        line = code[i]
        if line.lstrip().startswith("#include"):
            includes.append(line.strip())
            i += 1
        elif HOISTED.match(line) or FUNCTION.match(line):
            j = definition_end(code, i)
            scope.append((i, code[i:j + 1]))
            i = j + 1
        else:
            if body and body[-1][0] + len(body[-1][1]) == i:
                body[-1][1].append(line)
            else:
                body.append((i, [line]))
            i += 1
    return scope, body, includes


def generate(path, lines, out_path):
    source = os.path.abspath(path).replace("\\", "/")
    includes, parts, entries = [], [], []
    for n, (line, code, flags, context, context_line) in enumerate(blocks(path, lines), 1):
        scope, body, block_includes = split(code)
        includes += [i for i in block_includes if i not in includes]
        guard = next((f[3:] for f in flags if f.startswith("if=")), None)
        out = [f"// README.md:{line}"]
        if guard:
            out.append(f"#if defined({guard})")
        out += [f"namespace readme_block_{n} {{", "using namespace readme_doctest;"]
        for offset, piece in scope:
            out += [f'#line {line + offset} "{source}"', *piece]
        is_main = any(MAIN.search(l) for l in code)
        out += [RESET, "void run() {"]
        if not is_main:
            out += [DEFAULTS, "{"]  # the block's own names hide these
        if context:
            out += [f'#line {context_line} "{source}"', context]
        for offset, piece in body:
            out += [f'#line {line + offset} "{source}"', *piece]
        out.append(RESET)
        out.append("  readme_doctest::check_main_result(readme_main);" if is_main else "}")
        out += ["}", f"}}  // namespace readme_block_{n}"]
        if guard:
            out.append("#endif")
        parts.append("\n".join(out))
        entry = f"{{{line}, {'false' if 'compile-only' in flags else 'true'}, &readme_block_{n}::run}},"
        entries.append(f"#if defined({guard})\n    {entry}\n#endif" if guard else f"    {entry}")
    text = "\n".join([
        f"// Generated from {source} by tests/readme_doctest/extract.py: do not edit.",
        '#include "readme_doctest/prelude.h"',
        *includes,
        "",
        "\n\n".join(parts),
        "",
        "int main() {",
        "  return readme_doctest::run_blocks({",
        *entries,
        "  });",
        "}",
        "",
    ])
    # Lines after a README piece are the generated file's own again.
    out_lines = text.split("\n")
    return "\n".join(f'#line {i + 2} "{out_path}"' if l == RESET else l for i, l in enumerate(out_lines))


def main():
    readme, out, stamp = sys.argv[1:4]
    with open(readme, encoding="utf-8") as f:
        text = generate(readme, f.read().split("\n"), os.path.abspath(out))
    try:
        with open(out, encoding="utf-8") as f:
            unchanged = f.read() == text
    except FileNotFoundError:
        unchanged = False
    if not unchanged:
        with open(out, "w", encoding="utf-8") as f:
            f.write(text)
    with open(stamp, "w"):
        pass


if __name__ == "__main__":
    main()
